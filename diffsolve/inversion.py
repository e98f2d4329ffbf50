"""Inversion: encoding data to x_T, exactly or approximately, and measuring the round trip.

Two kinds of inversion live in diffsolve:

* **Approximate** (:func:`diffsolve.invert`): the deterministic ODE run upward from data on
  the reversed grid (docs/math.md E42), with any deterministic solver. Encoding then decoding
  leaves an error of the solver's order (claim 12); :func:`reconstruction_error` measures it.
* **Exact** (this module): a *reversible* solver (a :class:`~diffsolve.solvers.base.ReversibleSolver`
  with ``unstep(i, x_i, x_next) -> x_prev``, e.g. ``"bdia"``) can be walked back through the
  very run that produced a sample. Its update needs two states, so undoing it needs the last
  two: :func:`sample_reversible` returns them in a :class:`ReversibleSample`, and
  :func:`invert_exact` (or :func:`diffsolve.invert` given that object) recovers x_T to rounding
  error, with one model call per step but the first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from .driver import _resolve_sigmas, state_dtype_for
from .exact import ReversibleSample, _check_reversible, invert_exact
from .sampling import invert, make_solver, sample
from .solvers.base import Solver
from .validation import refuse_generator
from .wrapper import DiffusionODE

__all__ = ["ReversibleSample", "sample_reversible", "invert_exact", "reconstruction_error"]


def sample_reversible(
    ode: DiffusionODE,
    x_T: torch.Tensor,
    solver: str | type | Solver = "bdia",
    steps: int | None = None,
    grid: str | None = None,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    check_finite: bool | Literal["step"] = True,
    grid_options: dict[str, Any] | None = None,
    **solver_options: Any,
) -> ReversibleSample:
    """:func:`diffsolve.sample` with a reversible solver, keeping the last two states.

    ``result.x`` is the same tensor ``sample`` returns; pass the whole result to
    :func:`invert_exact` (or :func:`diffsolve.invert`) to get x_T back.
    """
    refuse_generator(solver_options, "sample_reversible")
    s = make_solver(solver, **solver_options)
    _check_reversible(s)
    sig = _resolve_sigmas(ode, steps, grid, sigmas, grid_options, increasing=False)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a callable taking one dict, got {type(callback).__name__}")
    kept: list[torch.Tensor] = []  # the sigma-form states after the last two steps

    def keep(info):
        kept[:] = [*kept[-1:], info["xbar"]]
        if callback is not None:
            callback(info)

    x = sample(ode, x_T, s, sigmas=sig, callback=keep, progress=progress, check_finite=check_finite)
    xbar = kept[-1]
    # one step: the state before it is the start state
    xbar_prev = kept[0] if len(kept) == 2 else ode.to_xbar(x_T.to(state_dtype_for(x_T.dtype)), float(sig[0]))
    x_prev = ode.from_xbar(xbar_prev, float(sig[-2])).to(x.dtype)
    return ReversibleSample(x=x, x_prev=x_prev, sigmas=sig, solver=s, xbar=xbar, xbar_prev=xbar_prev)


def reconstruction_error(
    ode: DiffusionODE,
    x0: torch.Tensor,
    solver: str | type | Solver = "ddim",
    steps: int | None = None,
    grid: str | None = None,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    *,
    norm: str = "max",
    grid_options: dict[str, Any] | None = None,
    **solver_options: Any,
) -> torch.Tensor:
    """Round-trip error of encoding then decoding ``x0`` with one solver on one grid.

    Runs :func:`diffsolve.invert` (upward on the reversed grid) then :func:`diffsolve.sample`
    (down the grid) and returns one number per sample: the largest absolute difference
    (``norm="max"``, as in docs/math.md claim 12) or the root-mean-square (``norm="rms"``).
    ``sigmas``, when given, is the decreasing sampling grid.
    """
    if norm not in ("max", "rms"):
        raise ValueError(f"norm={norm!r} is not known; allowed: max, rms")
    sig = _resolve_sigmas(ode, steps, grid, sigmas, grid_options, increasing=False)
    x_T = invert(ode, x0, solver, sigmas=sig.flip(0), **solver_options)
    x_rec = sample(ode, x_T, solver, sigmas=sig, **solver_options)
    diff = (x_rec.to(torch.float64) - x0.to(torch.float64)).reshape(x0.shape[0], -1)
    return diff.abs().amax(dim=1) if norm == "max" else diff.pow(2).mean(dim=1).sqrt()
