"""Exact inversion: undoing a run of a reversible solver (docs/inversion.md).

A *reversible* solver (a :class:`~diffsolve.solvers.base.ReversibleSolver` with
``unstep(i, x_i, x_next) -> x_prev``, e.g. ``"bdia"``) can be walked back through the very run that
produced a sample. Its update needs two states, so undoing it needs the last two:
:func:`diffsolve.sample_reversible` returns them in a :class:`ReversibleSample`, and
:func:`invert_exact` (or :func:`diffsolve.invert` given that object) recovers x_T to rounding error,
with one model call per step but the first. This module depends only on the driver, so that
:func:`diffsolve.invert` can dispatch to it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .driver import Driver, _resolve_sigmas
from .solvers.base import ReversibleSolver, Solver, advance, as_protocol
from .validation import check_sigma_range
from .wrapper import DiffusionODE

__all__ = ["ReversibleSample", "invert_exact"]


@dataclass(frozen=True, eq=False)
class ReversibleSample:
    """A sample together with what undoing its run needs.

    Attributes:
        x: the sample (model space, the dtype of x_T): what :func:`diffsolve.sample` returns.
        x_prev: the state one grid step before it (model space, at ``sigmas[-2]``).
        sigmas: the decreasing float64 grid of the run.
        solver: the (reversible) solver instance that made it, with its options.
    """

    x: torch.Tensor
    x_prev: torch.Tensor
    sigmas: torch.Tensor
    solver: Solver
    # the solver's own states (sigma form, state dtype): inverting from these avoids a
    # round trip through the model's space
    xbar: torch.Tensor = field(repr=False, default=None)
    xbar_prev: torch.Tensor = field(repr=False, default=None)


def _check_reversible(solver: Solver) -> None:
    if not isinstance(solver, ReversibleSolver):
        raise ValueError(
            f"solver {solver.name!r} is not reversible (it has no exact inverse); exact inversion needs "
            "a ReversibleSolver (one with unstep()), e.g. 'bdia'. For approximate encoding use "
            "diffsolve.invert(ode, x0, solver=...)"
        )


def invert_exact(
    ode: DiffusionODE,
    state: ReversibleSample,
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    check_finite: bool | Literal["step"] = True,
    allow_out_of_range: bool = False,
):
    """Undo the run that made ``state`` (from :func:`sample_reversible`): returns its x_T.

    Walks the solver's exact inverse (``unstep``) from the last two states back up the same
    grid: len(sigmas) - 2 model calls. The result equals the original x_T up to rounding
    amplified by the method (BDIA: 1/g per step; see :mod:`diffsolve.solvers.bdia`), provided
    ``ode`` is the model the sample was made with. The run's grid must lie in ``ode``'s sigma range, as for
    :func:`diffsolve.sample` (``allow_out_of_range`` is its).
    """
    if not isinstance(state, ReversibleSample):
        raise TypeError(f"invert_exact needs the ReversibleSample from sample_reversible, got {type(state).__name__}")
    if not isinstance(ode, DiffusionODE):
        raise TypeError(f"expected the ODE from diffsolve.wrap(...), got {type(ode).__name__}")
    _check_reversible(state.solver)
    solver = state.solver
    sig = state.sigmas.tolist()
    check_sigma_range(ode, sig, allow_out_of_range=allow_out_of_range, name="the ReversibleSample's sigmas")
    n = len(sig) - 1
    # the driver's steps run upward: its step k undoes the solver's step n - 1 - k
    up = sig[::-1]
    d = Driver(
        ode,
        state.x,
        up,
        callback=callback,
        progress=progress,
        return_trajectory=return_trajectory,
        check_finite=check_finite,
        desc=f"diffsolve {solver.name} inverse",
    )
    try:
        x_next = state.xbar if state.xbar is not None else d.start_state(state.x)
        x = state.xbar_prev if state.xbar_prev is not None else d.ode.to_xbar(state.x_prev.to(x_next.dtype), sig[-2])
        proto = as_protocol(solver)
        run = proto.init(d.ode, sig, _no_noise)
        d.after_step(0, x, None, up[0], up[1])  # the last state before the sample: known, no model call
        for i in range(n - 1, 0, -1):
            x_prev = advance(proto.unstep(i, x, x_next, run), d.ode)
            d.after_step(n - i, x_prev, None, sig[i], sig[i - 1])
            x_next, x = x, x_prev
        out = d.finish(x, sig[0])
    finally:
        d.close()
    return (out, d.traj) if return_trajectory else out


def _no_noise(like: torch.Tensor) -> torch.Tensor:  # pragma: no cover - reversible solvers draw none
    raise RuntimeError("a reversible solver must not draw noise")


def _invert_state(ode, state, solver, steps, grid, sigmas, solver_options, **kwargs):
    """:func:`diffsolve.invert` given a ReversibleSample: check the arguments agree, then invert exactly."""
    own = state.solver
    if solver is None:
        ok = True  # invert's default: the state's own solver decides
    elif isinstance(solver, Solver):
        ok = solver is own
    elif isinstance(solver, str):
        ok = solver == own.name
    else:
        ok = solver is type(own)
    if not ok:
        raise ValueError(
            f"this ReversibleSample was made by {own.name!r}; invert it with that solver "
            f"(or leave solver= out), not {solver!r}"
        )
    if solver_options:
        raise ValueError(
            f"options {sorted(solver_options)} given with a ReversibleSample: it carries its solver's options"
        )
    grid_options = kwargs.pop("grid_options", None)
    if steps is not None or grid is not None or sigmas is not None:
        # invert's grid runs upward: compare it, flipped, with the run's own
        sig = _resolve_sigmas(ode, steps, grid, sigmas, grid_options, increasing=True).flip(0)
        if sig.shape != state.sigmas.shape or not torch.equal(sig, state.sigmas):
            raise ValueError(
                "the grid given to invert differs from the grid the ReversibleSample was made on; "
                "leave steps/grid/sigmas out to use its own"
            )
    return invert_exact(ode, state, **kwargs)
