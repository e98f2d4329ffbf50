"""The benchmark's error type."""


class BenchError(ValueError):
    """Bad benchmark input (unknown problem, solver, grid, model path, unreachable NFE...).

    The message names the bad value and the allowed choices; the CLI prints it and exits with 2.
    """
