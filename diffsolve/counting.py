"""Model calls of a run, counted before it runs: :func:`count_calls` and :func:`steps_for_nfe`.

A solver's real number of model calls on a grid is not always ``steps * calls_per_step``: the
step into sigma = 0 is one call for every solver (docs/math.md E27), multistep solvers and the
Heun family take a cheaper last step, the analytical first step (AFS) saves the first call, and
some grids return more levels than the steps asked for (``ddim-uniform`` adds sigma_min before 0).
So the count is measured: a dry run of the very solver on the very grid with :class:`ZeroModel`,
a model that costs nothing. This is the one place the package counts calls; the benchmark, the
tuner and the pictures all ask it.

A dry run counts the calls of a solver whose calls do not depend on the model's outputs (every
fixed-call solver, stochastic ones included: the noise does not change how often the model is
called). An adaptive solver (class attribute ``adaptive = True``: it picks its steps from the
error of the data) has no such count; :func:`count_calls` refuses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["ZeroModel", "count_calls", "steps_for_nfe", "is_adaptive"]

_F64 = torch.float64
#: dry-run counts kept in memory: (solver, options, afs, sigmas, schedule) -> calls
_MEMO: dict = {}
_MEMO_LIMIT = 8192


class ZeroModel:
    """A model that costs nothing: it returns one preallocated zero tensor shaped like its input.

    Counting calls with it (:func:`count_calls`) and sampling with it (the framework's own per-step
    cost, ``diffsolve.bench.overhead``) both use this one model.
    """

    def __init__(self):
        self._out: torch.Tensor | None = None
        self.calls = 0

    def __call__(self, x, t, **_):
        out = self._out
        if out is None or out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
            out = self._out = torch.zeros_like(x)
        self.calls += 1
        return out


def is_adaptive(solver) -> bool:
    """Whether a solver (name, class or instance) picks its own steps from the data, so that its number
    of model calls is not fixed by the grid: the Solver contract's class attribute ``adaptive``."""
    from .driver import make_solver
    from .solvers.base import Solver

    if isinstance(solver, str):
        from .plugins.registry import get_registry

        cls = get_registry().solver(solver)
    else:
        cls = type(solver) if isinstance(solver, Solver) else solver
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        make_solver(solver)  # the registry's own error for a wrong argument
    return cls.adaptive  # the contract attribute (Solver.adaptive)


def _zero_ode(sigmas: list[float], schedule):
    from .schedules import SigmaSchedule
    from .wrapper import DiffusionODE

    if schedule is None:
        finite = [s for s in sigmas if 0 < s < math.inf]
        hi = max(finite) if finite else 1.0
        lo = min(finite) if finite else 0.0
        # a VP schedule covering the grid, and a v-prediction: both defined at sigma = 0 and sigma = inf
        schedule = SigmaSchedule(sigma_min=min(lo, hi / 2), sigma_max=hi, space="vp")
        return DiffusionODE(ZeroModel(), schedule, prediction="v")
    prediction = "v" if schedule.space in ("vp", "flow") else "eps"
    return DiffusionODE(ZeroModel(), schedule, prediction=prediction)


def _memo_key(solver, options: dict, afs: bool, sigmas: list[float], schedule):
    if not isinstance(solver, (str, type)):
        return None  # an instance may carry state: counted every time
    try:
        key = (solver, tuple(sorted(options.items())), afs, tuple(sigmas), id(schedule))
        hash(key)
    except TypeError:  # an unhashable option value
        return None
    return key


def count_calls(solver, sigmas: Sequence[float] | torch.Tensor, *, afs: bool = False, schedule=None, **options) -> int:
    """The real number of model calls of one run of ``solver`` (a registered name, a Solver class or an
    instance) with ``options`` on the grid ``sigmas`` (decreasing; a grid from :func:`diffsolve.grid`),
    counted by a dry run with :class:`ZeroModel` on a one-element state.

    Args:
        afs: count with the analytical first step (the first model call, at ``sigmas[0]``, is answered
            without the model; see :mod:`diffsolve.tuning`), as a recipe with ``afs=True`` runs.
        schedule: the schedule the run will use (default: a VP sigma schedule spanning the grid); only a
            solver that reads the schedule in its set-up needs it.

    Raises ValueError for an adaptive solver (its calls depend on the model: see :func:`is_adaptive`)
    and for what the run itself refuses (a grid the solver cannot take).
    """
    from .grids import validate_sigmas
    from .recipe_ode import run_parts

    if is_adaptive(solver):
        name = solver if isinstance(solver, str) else getattr(solver, "name", type(solver).__name__)
        raise ValueError(
            f"solver {name!r} is adaptive: it picks its steps from the model's outputs, so its number of model "
            "calls is known only after a run (read ode.nfe); count_calls needs a fixed-call solver"
        )
    if not isinstance(afs, bool):
        raise TypeError(f"afs must be True or False, got {afs!r}")
    sig = [float(s) for s in validate_sigmas(sigmas, name="sigmas").tolist()]
    key = _memo_key(solver, options, afs, sig, schedule)
    if key is not None and key in _MEMO:
        return _MEMO[key][0]
    ode = _zero_ode(sig, schedule)
    run_parts(
        ode,
        torch.zeros(1, 1, dtype=_F64),
        solver,
        options,
        sig,
        afs,
        generator=torch.Generator().manual_seed(0),
        check_finite=False,
        allow_out_of_range=True,
    )
    calls = int(ode.nfe)
    if key is not None:
        if len(_MEMO) >= _MEMO_LIMIT:
            _MEMO.clear()
        _MEMO[key] = (calls, schedule)  # the schedule is held so that its id is not reused while cached
    return calls


def steps_for_nfe(solver, nfe: int, *, grid: str, schedule, afs: bool = False, **options) -> int | None:
    """The most steps of ``solver`` on the registered ``grid`` of ``schedule`` whose real number of model
    calls (:func:`count_calls`) is at most ``nfe``; None when no step count fits.

    The search starts at ``(nfe + afs) // calls_per_step``, lowers the step count while the run needs
    more than ``nfe`` calls and raises it while one more step still fits (a solver whose last step is
    cheaper, a grid with fewer levels). It assumes the count does not fall when a step is added, which
    holds for every registered solver and grid (tests/test_counting.py). A step count the grid refuses
    (ValueError, e.g. a published table of fixed length) is skipped.
    """
    from .driver import make_grid, make_solver

    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    per_step = max(1, int(getattr(make_solver(solver, **options), "calls_per_step", 1) or 1))
    top = nfe + (1 if afs else 0)  # every step needs a model call, except the one AFS answers

    def calls(steps: int) -> int | None:
        try:
            sig = make_grid(grid, schedule, steps)
        except ValueError:
            return None
        return count_calls(solver, sig, afs=afs, schedule=schedule, **options)

    start = max(1, min(top, top // per_step))
    best = None
    for steps in range(start, 0, -1):  # down to the first step count that fits
        c = calls(steps)
        if c is not None and c <= nfe:
            best = steps
            break
    if best is None:  # the grid refused every count from start down (e.g. ddim-quad needs 2 steps): look above
        for steps in range(start + 1, top + 1):
            c = calls(steps)
            if c is not None:
                if c <= nfe:
                    best = steps
                break
    if best is None:
        return None
    for steps in range(best + 1, top + 1):  # up while one more step still fits
        c = calls(steps)
        if c is None:
            continue
        if c > nfe:
            break
        best = steps
    return best
