"""Run the ``diffsolve`` command line in-process (imported by test modules: ``from cli_run import run_cli``)."""

from diffsolve import cli


def run_cli(argv, capsys):
    """``(exit code, stdout, stderr)`` of ``diffsolve <argv>``; argparse's SystemExit is turned into its code."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err
