"""The driver: one loop for every solver.

:func:`sample` and :func:`invert` own the grid, the noise, the callback, the
progress bar, NaN/inf detection, trajectories and the conversion between the
model's space and the sigma-form state xbar (E6). Solvers only step.

Precision: grid sigmas and step coefficients are Python floats (float64), applied
in the state's dtype. A float16/bfloat16 ``x_T`` is integrated in a float32 state
(|xbar| reaches sigma_max ~ 157 where float16's spacing is 0.125: ddim-math.md
pitfall 6); the model is still called in the input's dtype and the result is
returned in it.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Sequence

import torch

from .grids import validate_sigmas
from .plugins.registry import get_registry
from .solvers.base import Solver
from .wrapper import DiffusionODE, NonFiniteError

__all__ = ["sample", "invert", "grid", "list_solvers", "list_grids", "make_noise_sampler", "make_solver"]


# -- registry front door ---------------------------------------------------------------------
def list_solvers() -> list[str]:
    """Names of every registered solver (built-in and plugins)."""
    return get_registry().solver_names()


def list_grids() -> list[str]:
    """Names of every registered grid."""
    return get_registry().grid_names()


def grid(name: str, schedule, steps: int, **options) -> torch.Tensor:
    """The grid ``name`` for ``schedule`` with ``steps`` steps: a strictly decreasing float64 tensor ending at 0."""
    _check_steps(steps)
    fn = get_registry().grid(name)
    try:
        sig = fn(schedule, steps, **options)
    except TypeError as exc:
        if "argument" in str(exc):
            raise ValueError(f"grid {name!r}: bad option in {sorted(options)} ({exc}); "
                             f"its signature is {name}{inspect.signature(fn)}") from None
        raise
    sig = validate_sigmas(sig, name=f"grid {name!r}")
    if float(sig[-1]) != 0.0:
        raise ValueError(f"grid {name!r} must end at sigma = 0, ends at {float(sig[-1])}")
    return sig


def make_solver(solver: str | type | Solver, **options) -> Solver:
    """A fresh solver instance from a registry name, a Solver class or an instance."""
    if isinstance(solver, Solver):
        if options:
            raise ValueError(f"options {sorted(options)} given with a solver instance; set them on the instance")
        return solver
    cls = get_registry().solver(solver) if isinstance(solver, str) else solver
    if not (isinstance(cls, type) and issubclass(cls, Solver)):
        raise TypeError(f"solver must be a registered name, a Solver subclass or instance, got {solver!r}")
    try:
        return cls(**options)
    except TypeError as exc:
        params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ValueError(
            f"solver {cls.name!r}: {exc}; its options are: {', '.join(params) or 'none'}"
        ) from None


# -- noise -----------------------------------------------------------------------------------
def make_noise_sampler(generator=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``noise(like)``: standard normal noise shaped like ``like``.

    ``generator`` may be None (torch's global RNG), one ``torch.Generator`` or a
    list with one generator per sample: then sample k's noise comes from generator
    k only, so a sample does not change when the batch around it changes.
    """
    if generator is None or isinstance(generator, torch.Generator):
        def noise(like: torch.Tensor) -> torch.Tensor:
            gen_device = generator.device if generator is not None else like.device
            z = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=gen_device)
            return z.to(like.device)
        return noise
    gens = list(generator)
    if not all(isinstance(g, torch.Generator) for g in gens):
        raise TypeError("generator must be a torch.Generator or a list of them (one per sample)")

    def noise_per_sample(like: torch.Tensor) -> torch.Tensor:
        if like.shape[0] != len(gens):
            raise ValueError(f"got {len(gens)} generators for a batch of {like.shape[0]}: pass one per sample")
        zs = [torch.randn(like.shape[1:], generator=g, dtype=like.dtype, device=g.device) for g in gens]
        return torch.stack(zs).to(like.device)
    return noise_per_sample


# -- the loop --------------------------------------------------------------------------------
def state_dtype_for(dtype: torch.dtype) -> torch.dtype:
    """The dtype the sigma-form state is integrated in: float32 for float16/bfloat16 input
    (|xbar| reaches sigma_max, pitfall 6), else the input's own."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _resolve_sigmas(ode, steps, grid_name, sigmas, grid_options, increasing: bool) -> torch.Tensor:
    if sigmas is not None:
        if steps is not None or grid_name is not None:
            raise ValueError("pass either sigmas= or steps=/grid=, not both")
        return validate_sigmas(sigmas, increasing=increasing, infinite_start=not increasing)
    if steps is None:
        raise ValueError("pass steps= (with an optional grid=) or an explicit sigmas= grid")
    name = grid_name if grid_name is not None else ode.schedule.default_grid
    sig = grid(name, ode.schedule, steps, **(grid_options or {}))
    return sig.flip(0) if increasing else sig


def _run(
    ode: DiffusionODE,
    x_start: torch.Tensor,
    sig: torch.Tensor,
    solver: Solver,
    generator,
    callback,
    progress: bool,
    return_trajectory: bool,
    check_finite: bool,
    euler_first_step: bool = False,
):
    if not isinstance(ode, DiffusionODE):
        raise TypeError(f"expected the ODE from diffsolve.wrap(...), got {type(ode).__name__}")
    if not isinstance(x_start, torch.Tensor) or not x_start.is_floating_point():
        raise TypeError("the start state must be a floating-point torch.Tensor")
    sig_list = sig.tolist()  # Python floats (float64); tolist, not a per-element tensor loop
    n = len(sig_list) - 1
    in_dtype = x_start.dtype
    state_dtype = state_dtype_for(in_dtype)
    ode.input_dtype = in_dtype
    ode._start_run()
    ode._recording = bool(check_finite)
    # a grid may start at sigma = inf (pure noise: t = 1 of a flow model); the state is then
    # infinite in xbar and the first step is taken in model space below
    x = ode.to_xbar(x_start.to(state_dtype), sig_list[0]) if sig_list[0] != math.inf else x_start.to(state_dtype)

    per_step = check_finite == "step"
    sums: list[torch.Tensor] = []
    traj: list[torch.Tensor] = [x_start] if return_trajectory else []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=f"diffsolve {solver.name}", unit="step")

    def after_step(i: int, x_new: torch.Tensor, denoised: torch.Tensor) -> None:
        if per_step:
            sums.append(x_new.detach().sum(dtype=torch.float32))
        if callback is not None or return_trajectory:
            x_model = ode.from_xbar(x_new, sig_list[i + 1])
            if return_trajectory:
                traj.append(x_model.to(in_dtype))
            if callback is not None:
                callback({"i": i, "sigma": sig_list[i], "sigma_next": sig_list[i + 1],
                          "x": x_model, "xbar": x_new, "denoised": denoised, "nfe": ode.nfe})
        if bar is not None:
            bar.update(1)

    try:
        start = 0
        if euler_first_step and sig_list[0] == 0.0:
            # invert: the first step leaves sigma = 0 with one Euler (DDIM) step, the model
            # evaluated on the clean input (at the schedule's smallest level): ddim-math.md 5.
            ode.step_index = 0
            denoised, eps = ode.predict(x, 0.0)
            x = x + sig_list[1] * eps
            after_step(0, x, denoised)
            start = 1
        elif sig_list[0] == math.inf:
            # the first step leaves sigma = inf: the limit of DDIM (E30) as sigma_t -> inf,
            # xbar_1 = D + sigma_1 eps, with eps = x (the state is pure noise) and D from one
            # model call at the pure-noise level (FlowMatchEuler's first step from t = 1)
            ode.step_index = 0
            denoised, eps = ode.predict_at_infinity(x)
            # a solver may take this step its own way (heun with variable="flow": Heun from t = 1)
            hook = getattr(solver, "step_from_infinity", None)
            first = hook(ode, x, denoised, eps, sig_list[1]) if hook is not None else None
            if first is None:
                first = torch.add(denoised, eps, alpha=sig_list[1]) if sig_list[1] > 0 else denoised
            x = first
            after_step(0, x, denoised)
            start = 1
        # solvers may skip forming `denoised` when nobody reads it (no callback), and update
        # the state in place when nobody else holds it (no callback, no trajectory, not x_T)
        solver.report_denoised = callback is not None
        solver.owns_state = callback is None and not return_trajectory and not _shares_memory(x, x_start)
        solver.setup(ode, sig_list[start:], make_noise_sampler(generator))
        if start:
            ode.step_offset = start  # the solver counts its steps from 0
            _shift_after = after_step

            def after_step(i, x_new, denoised):  # noqa: F811 - offset the step index
                _shift_after(i + 1, x_new, denoised)
        x = solver.run(x, after_step) if n > start else x
    finally:
        if bar is not None:
            bar.close()
        ode.step_index, ode.step_offset, ode._recording = -1, 0, False
        solver.owns_state = False
    if check_finite:
        if not sums:  # default: the model's outputs were recorded per call; the state once, here
            sums = [x.detach().sum(dtype=torch.float32)]
        _raise_if_nonfinite(ode, sums, sig_list, per_step)
    out = ode.from_xbar(x, sig_list[-1]).to(in_dtype)
    if return_trajectory:
        return out, traj
    return out


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` may alias ``b`` (True when it cannot be told)."""
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without a plain storage
        return True


def _raise_if_nonfinite(ode: DiffusionODE, sums, sig_list, per_step: bool) -> None:
    """One host sync per run: the state sums (per step, or the final state) and the model's
    per-call output sums tell whether and where NaN/inf appeared."""
    # fast path: the total of every recorded sum is finite when each is (if a huge finite total
    # overflows, the per-entry check below finds nothing and nothing is raised)
    if math.isfinite(float(torch.stack(ode._out_sums + sums).sum())):
        return
    bad = ~torch.isfinite(torch.stack(sums))
    where = ode._first_nonfinite_output()
    if where is None and not bool(bad.any()):
        return
    n = len(sig_list) - 1
    if where is not None:
        step, sigma = where
        i = step if step >= 0 else 0
        msg = (f"non-finite values (NaN or inf) first appeared at step {i} of {n} "
               f"(sigma {sig_list[i]:.6g} -> {sig_list[i + 1]:.6g}); "
               f"the model returned non-finite values at step {step} (sigma={sigma:.6g})")
    elif per_step:
        i = int(bad.nonzero()[0, 0])
        msg = (f"non-finite values (NaN or inf) first appeared at step {i} of {n} "
               f"(sigma {sig_list[i]:.6g} -> {sig_list[i + 1]:.6g}); the model's outputs were finite, "
               "so the solver's arithmetic overflowed (try a wider dtype)")
    else:
        msg = ("the final state is not finite although every model output was: the solver's arithmetic "
               "overflowed (try a wider dtype); rerun with check_finite='step' to name the step")
    raise NonFiniteError(msg)


def sample(
    ode: DiffusionODE,
    x_T: torch.Tensor,
    solver: str | type | Solver = "ddim",
    steps: int | None = None,
    grid: str | None = None,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    check_finite: bool = True,
    grid_options: dict[str, Any] | None = None,
    grad: bool = False,
    **solver_options: Any,
):
    """Sample: integrate the ODE (or SDE) from ``x_T`` down the grid.

    Args:
        ode: from :func:`diffsolve.wrap`.
        x_T: the start state in the model's own space at the grid's first sigma
            (standard normal for a VP model).
        solver: a registered name (:func:`solvers`), a Solver class or instance.
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
        solver_options: passed to the solver (``eta=`` for DDIM, ...).

    Returns:
        The final state in the model's space (and the trajectory if asked).
    """
    sig = _resolve_sigmas(ode, steps, grid, sigmas, grid_options, increasing=False)
    s = make_solver(solver, **solver_options)
    with torch.set_grad_enabled(_check_grad(grad)):
        return _run(ode, x_T, sig, s, generator, callback, progress, return_trajectory, check_finite)


def invert(
    ode: DiffusionODE,
    x0: torch.Tensor,
    solver: str | type | Solver = "ddim",
    steps: int | None = None,
    grid: str | None = None,
    sigmas: Sequence[float] | torch.Tensor | None = None,
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    check_finite: bool = True,
    grid_options: dict[str, Any] | None = None,
    grad: bool = False,
    **solver_options: Any,
):
    """Encode: run the deterministic ODE upward from data (E42), on the reversed grid.

    The grid is the sampling grid reversed (or ``sigmas``, strictly increasing).
    The first step from sigma = 0 is one Euler (DDIM) step with eps evaluated on the
    clean input at the schedule's smallest level (ddim-math.md section 5); the
    solver takes every later step. Stochastic solvers are refused.

    Given a :class:`~diffsolve.inversion.ReversibleSample` (from
    :func:`diffsolve.sample_reversible`) instead of a tensor, the run that made it is undone
    exactly (:func:`diffsolve.invert_exact`).
    """
    from .inversion import ReversibleSample, _invert_state

    if isinstance(x0, ReversibleSample):
        return _invert_state(ode, x0, solver, steps, grid, sigmas, solver_options, callback=callback,
                             progress=progress, return_trajectory=return_trajectory,
                             check_finite=check_finite, grid_options=grid_options)
    sig = _resolve_sigmas(ode, steps, grid, sigmas, grid_options, increasing=True)
    s = make_solver(solver, **solver_options)
    if s.stochastic or not s.invertible:
        raise ValueError(
            f"solver {s.name!r} cannot invert: it is {'stochastic' if s.stochastic else 'not invertible'}; "
            "invert with a deterministic solver (e.g. 'ddim' with eta=0)"
        )
    with torch.set_grad_enabled(_check_grad(grad)):
        return _run(ode, x0, sig, s, None, callback, progress, return_trajectory, check_finite,
                    euler_first_step=True)


def _check_grad(grad) -> bool:
    if not isinstance(grad, bool):
        raise TypeError(f"grad must be True or False, got {grad!r}")
    return grad


def _check_steps(steps) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
