"""The front door of inverse problems: :func:`restore` and :func:`list_restorers`."""

from __future__ import annotations

import math
from typing import Any

import torch

from ..driver import renoise_refusal
from ..plugins.registry import get_registry
from ..sampling import make_grid, make_noise_sampler, make_solver, sample
from ..validation import (
    check_finite_number,
    check_flag,
    check_guidance_batch,
    check_options,
    check_state,
    resolve_plugin,
)
from ..wrapper import DiffusionODE
from .base import Restorer, Task
from .operators import Operator

__all__ = ["restore", "list_restorers", "make_restorer"]


def list_restorers() -> list[str]:
    """Names of every registered restoration method (built-in and plugins)."""
    return get_registry().restorer_names()


def make_restorer(method: str | type | Restorer, **options: Any) -> Restorer:
    """A restorer instance from a registry name, a :class:`Restorer` class or an instance; unknown
    options are a ValueError listing the method's options."""
    instance, cls = resolve_plugin(method, Restorer, get_registry().restorer, "restorer", options)
    if instance is not None:
        return instance
    check_options("restorer", cls.name, options, cls.options())
    return cls(**options)


def restore(
    ode: DiffusionODE,
    y: torch.Tensor,
    operator: Operator,
    method: str | type | Restorer = "ddnm",
    steps: int = 50,
    solver: Any = None,
    grid: str | None = None,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
    **options: Any,
) -> torch.Tensor:
    """Restore x0 from a measurement ``y = A(x0) + noise`` with the model as the prior.

    Args:
        ode: the model's ODE (:func:`diffsolve.wrap`, :func:`diffsolve.from_diffusers`).
        y: the measurement, a batch ``(B, *A's output shape)`` in the model's space.
        operator: A, a :class:`diffsolve.inverse.Operator` (``Inpaint``, ``Downsample``, ``Blur``,
            ``Identity``, or a nonlinear one such as ``Saturate``).
        method: a registered name (:func:`list_restorers`: ``ddnm``, ``ddrm``, ``dps``, ``pigdm``,
            ``red-diff``, ``daps``) or a Restorer.
        steps, grid: the number of levels on a registered grid (default: the schedule's own grid).
        solver: for methods whose unconditional steps or inner ODE solves run a solver (ddnm, dps,
            pigdm, daps): a registered name, class or instance (``ds.make_solver("ddim", eta=0.85)``);
            None: the method's default. DDNM and DPS make renoising predictions and need a solver
            with ``renoise_ok``; ddrm and red-diff are their own samplers and refuse ``solver=``.
        noise_std: the measurement noise's standard deviation sigma_y (model space), >= 0.
        generator: the random source of the start noise and of every stochastic step.
        progress: show a progress bar.
        options: the method's options (e.g. ``zeta=`` for dps, ``eta=`` for ddrm).

    Every argument is checked before the first model call. Returns x0 in the model's space.
    """
    if not isinstance(ode, DiffusionODE):
        raise TypeError(f"ode must be a DiffusionODE (diffsolve.wrap / from_diffusers), got {type(ode).__name__}")
    restorer = make_restorer(method, **options)
    name = restorer.name
    if not isinstance(operator, Operator):
        raise TypeError(f"operator must be a diffsolve.inverse.Operator (Inpaint, Downsample, ...), got {operator!r}")
    check_state(y, "y")
    noise_std = check_finite_number(noise_std, "noise_std")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0 (the measurement noise's standard deviation), got {noise_std}")
    check_flag(progress, "progress")
    if restorer.linear_only and not operator.linear:
        able = [n for n in list_restorers() if not get_registry().restorer(n).linear_only]
        raise ValueError(
            f"method {name!r} needs a linear operator (it uses A's SVD or pseudo-inverse); "
            f"{type(operator).__name__} is nonlinear. Methods that take a nonlinear operator: {', '.join(able)}"
        )
    y_shape = tuple(y.shape[1:])
    x_shape = operator.input_shape(y_shape)
    expected = operator.output_shape(x_shape)
    if expected != y_shape:
        raise ValueError(f"y has per-sample shape {y_shape}, but {operator!r} measures samples as {expected}")
    mask = getattr(operator, "mask", None)
    if mask is not None and mask.dim() == 4 and mask.shape[0] not in (1, y.shape[0]):
        raise ValueError(f"the operator has one mask per sample for {mask.shape[0]} samples; y has {y.shape[0]}")
    check_guidance_batch(ode, y.shape[0])  # also for methods that call the model outside ds.sample (ddrm, red-diff)
    if restorer.uses_solver:
        if solver is None:
            solver, solver_options = restorer.default_solver[0], dict(restorer.default_solver[1])
        else:
            solver_options = {}
        probe = make_solver(solver, **solver_options) if not isinstance(solver, type) else solver
        if restorer.renoising and not getattr(probe, "renoise_ok", False):
            raise ValueError(f"method {name!r} makes renoising predictions: " + renoise_refusal(probe))
    elif solver is not None:
        raise ValueError(
            f"method {name!r} is its own sampler: it takes no solver= (its steps are its rule); "
            "choose the levels with steps= and grid="
        )
    else:
        solver_options = {}
    grid_name = grid if grid is not None else ode.schedule.default_grid
    sigmas = make_grid(grid_name, ode.schedule, steps).tolist()
    if not math.isfinite(sigmas[0]):
        raise ValueError(f"grid {grid_name!r} starts at sigma = inf; restoration needs a finite first level")
    noise_of = make_noise_sampler(generator)
    s0 = sigmas[0]
    x_scale = 1.0 if ode.schedule.space == "vp" else ode.schedule.scale(s0) * math.sqrt(1 + s0 * s0)
    x_T = noise_of(torch.empty(y.shape[0], *x_shape, dtype=y.dtype, device=y.device)) * x_scale
    task = Task(
        ode=ode,
        y=y,
        operator=operator,
        noise_std=noise_std,
        sigmas=sigmas,
        x_T=x_T,
        x_shape=x_shape,
        solver=solver,
        solver_options=solver_options,
        generator=generator,
        noise=noise_of,
        progress=progress,
        sampler=sample,
    )
    with torch.no_grad():
        return restorer.restore(task)
