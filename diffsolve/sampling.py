"""Sampling and encoding: :func:`sample` and :func:`invert`, on the driver (:mod:`diffsolve.driver`).

Both check their arguments before the first model call, resolve the grid, make the solver and run
it through the one driver loop. ``invert`` given a :class:`~diffsolve.exact.ReversibleSample`
undoes that run exactly (:func:`diffsolve.invert_exact`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch

from .driver import (  # noqa: F401 - re-exported: the registry's front door lives beside sample
    Driver,
    _check_call,
    _check_grad,
    _check_run,
    _resolve_sigmas,
    _run,
    grid,
    list_grids,
    list_solvers,
    make_grid,
    make_noise_sampler,
    make_solver,
    sample_core,
    state_dtype_for,
)
from .exact import ReversibleSample, _invert_state
from .recipe import Recipe
from .solvers.base import Solver
from .validation import refuse_generator
from .wrapper import DiffusionODE

__all__ = ["sample", "invert", "make_grid", "grid", "list_solvers", "list_grids", "make_noise_sampler", "make_solver"]


class _DefaultSolver(str):
    """The default ``solver="ddim"`` of :func:`sample`, as an object of its own: with ``recipe=``, a
    solver the caller names (``"ddim"`` included) is a conflict, the untouched default is not."""


_DEFAULT_SOLVER = _DefaultSolver("ddim")


def sample(
    ode: DiffusionODE,
    x_T: torch.Tensor,
    solver: str | type | Solver = _DEFAULT_SOLVER,
    steps: int | None = None,
    grid: str | None = None,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    check_finite: bool | Literal["step"] = True,
    grid_options: dict[str, Any] | None = None,
    grad: bool = False,
    allow_out_of_range: bool = False,
    recipe: Recipe | None = None,
    **solver_options: Any,
):
    """Sample: integrate the ODE (or SDE) from ``x_T`` down the grid.

    Args:
        ode: from :func:`diffsolve.wrap`.
        x_T: the start state in the model's own space at the grid's first sigma
            (standard normal for a VP model).
        solver: a registered name (:func:`list_solvers`), a Solver class or an instance (an instance
            holds options only and may serve several runs at once).
        steps, grid: number of steps on a registered grid (default: the schedule's
            ``default_grid``); or pass ``sigmas`` (strictly decreasing) instead. ``sigmas`` may
            start at ``inf``, the pure-noise level of a flow, v or x0 model (``x_T`` is then the
            noise itself): the first step is the limit of DDIM (E30), xbar_1 = D + sigma_1 x_T, as
            FlowMatchEuler's first step from t = 1 (:func:`diffsolve.diffusers_grid`).
        generator: noise for stochastic solvers: one generator, or a list of one per sample.
        callback: called after every step with a dict ``i, sigma, sigma_next, x`` (model
            space), ``xbar``, ``denoised``, ``nfe``.
        progress: show a tqdm bar.
        return_trajectory: also return the list of states (model space), start included.
        check_finite: raise :class:`NonFiniteError` naming the step where NaN/inf first
            appeared. ``True`` records a sum of every model output (on the device, read once
            after the loop: no host sync per step) and checks the final state; ``"step"`` also
            sums the state after every step, to name the step of a solver overflow; ``False``
            checks nothing.
        grad: keep the autograd graph (to differentiate through the run, e.g. to tune a
            grid); by default the run is under ``torch.no_grad()``, as diffusers pipelines and
            k-diffusion samplers are, so its memory does not grow with the steps.
        allow_out_of_range: the grid must lie in the model's range ``[sigma_min, sigma_max]``
            (its schedule's; sigma = 0 always allowed; relative tolerance
            :data:`diffsolve.validation.RANGE_RTOL` for rounding), else a ValueError naming the
            range. True evaluates the model at the nearest end of its range instead, eps held there.
        recipe: a :class:`~diffsolve.Recipe` from :func:`diffsolve.tune` (or ``Recipe.load``): it
            fixes the solver, its options and the grid, so give none of those with it.
        solver_options: passed to the solver (``eta=`` for DDIM, ...).

    Every argument is checked before the first model call (:mod:`diffsolve.validation`): a
    wrong one is a ValueError or TypeError naming it.

    Returns:
        The final state in the model's space (and the trajectory if asked).
    """
    run = dict(
        generator=generator,
        callback=callback,
        progress=progress,
        return_trajectory=return_trajectory,
        check_finite=check_finite,
        grid_options=grid_options,
        grad=grad,
        allow_out_of_range=allow_out_of_range,
    )
    if recipe is not None:
        given = [
            name
            for name, value in (("solver", solver), ("steps", steps), ("grid", grid), ("sigmas", sigmas))
            if value is not None and not (name == "solver" and value is _DEFAULT_SOLVER)
        ]
        given += [f"{k} (a solver option)" for k in solver_options]
        if grid_options is not None:
            given.append("grid_options")
        if given:
            raise ValueError(
                f"a recipe fixes the solver, its options and its grid: pass recipe= alone, without "
                f"{', '.join(given)} (recipe solver: {getattr(recipe, 'solver', '?')!r})"
            )
        if not isinstance(recipe, Recipe):
            raise TypeError(
                f"recipe must be a diffsolve.Recipe (from diffsolve.tune or Recipe.load), got {type(recipe).__name__}"
            )
        return recipe.sample(ode, x_T, **run)
    return sample_core(ode, x_T, solver, steps, grid, sigmas, **run, **solver_options)


def invert(
    ode: DiffusionODE,
    x0: torch.Tensor,
    solver: str | type | Solver | None = None,
    steps: int | None = None,
    grid: str | None = None,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    check_finite: bool | Literal["step"] = True,
    grid_options: dict[str, Any] | None = None,
    grad: bool = False,
    allow_out_of_range: bool = False,
    **solver_options: Any,
):
    """Encode: run the deterministic ODE upward from data (E42), on the reversed grid.

    The grid is the sampling grid reversed (or ``sigmas``, strictly increasing).
    The first step from sigma = 0 is one Euler (DDIM) step with eps evaluated on the
    clean input at the schedule's smallest level (docs/math.md section 5); the
    solver takes every later step. Stochastic solvers are refused.

    ``solver`` defaults to ``"ddim"``; ``allow_out_of_range`` is :func:`sample`'s.

    Given a :class:`~diffsolve.exact.ReversibleSample` (from
    :func:`diffsolve.sample_reversible`) instead of a tensor, the run that made it is undone
    exactly (:func:`diffsolve.invert_exact`); ``solver``, when given, must name the solver that
    made it.
    """
    refuse_generator(solver_options, "invert")
    if "recipe" in solver_options:  # it would be read as a solver option, or steps= asked for
        raise TypeError(
            "invert takes no recipe=: a recipe is tuned for sampling down its grid; invert with solver= and "
            "steps= / sigmas= (e.g. the recipe's sigmas reversed)"
        )
    if isinstance(x0, ReversibleSample):
        return _invert_state(
            ode,
            x0,
            solver,
            steps,
            grid,
            sigmas,
            solver_options,
            callback=callback,
            progress=progress,
            return_trajectory=return_trajectory,
            check_finite=check_finite,
            grid_options=grid_options,
            allow_out_of_range=allow_out_of_range,
        )
    _check_call(ode, x0, "x0", callback, progress, return_trajectory, grid_options, grad)
    sig = _resolve_sigmas(ode, steps, grid, sigmas, grid_options, increasing=True)
    s = make_solver("ddim" if solver is None else solver, **solver_options)
    _check_run(ode, x0, sig, None, allow_out_of_range)
    if s.stochastic or not s.invertible:
        raise ValueError(
            f"solver {s.name!r} cannot invert: it is {'stochastic' if s.stochastic else 'not invertible'}; "
            "invert with a deterministic solver (e.g. 'ddim' with eta=0)"
        )
    with torch.set_grad_enabled(_check_grad(grad)):
        return _run(ode, x0, sig, s, None, callback, progress, return_trajectory, check_finite, euler_first_step=True)
