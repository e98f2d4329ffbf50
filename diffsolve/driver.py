"""The driver: the one loop every run goes through, and the registry's front door.

:class:`Driver` owns a run's bookkeeping: the per-run view of the ODE (the model's input dtype,
the NaN record, the step being taken), the noise, the callback, the progress bar, NaN/inf
detection, trajectories and the conversion between the model's space and the sigma-form state
xbar (docs/math.md E6). :func:`diffsolve.sample`, :func:`diffsolve.invert` and exact inversion
use it; solvers only step.

Precision: grid sigmas and step coefficients are Python floats (float64), applied
in the state's dtype. A float16/bfloat16 ``x_T`` is integrated in a float32 state
(|xbar| reaches sigma_max ~ 157 where float16's spacing is 0.125: docs/math.md
pitfall 6); the model is still called in the input's dtype and the result is
returned in it.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable

import torch

from .grids import validate_sigmas
from .plugins.registry import get_registry
from .schedules import Schedule
from .solvers.base import RunState, Solver, advance, as_protocol
from .validation import (
    check_count,
    check_flag,
    check_generator,
    check_guidance_batch,
    check_options,
    check_sigma_range,
    check_state,
    resolve_plugin,
)
from .wrapper import DiffusionODE, NonFiniteError, Run, schedule_memo

__all__ = [
    "make_grid",
    "grid",
    "list_solvers",
    "list_grids",
    "make_noise_sampler",
    "make_solver",
    "state_dtype_for",
    "solver_options",
]


# -- registry front door ---------------------------------------------------------------------
def list_solvers() -> list[str]:
    """Names of every registered solver (built-in and plugins)."""
    return get_registry().solver_names()


def list_grids() -> list[str]:
    """Names of every registered grid."""
    return get_registry().grid_names()


def make_grid(name: str, schedule, steps: int, **options) -> torch.Tensor:
    """The grid ``name`` for ``schedule`` with ``steps`` steps: a strictly decreasing float64 tensor ending at 0.

    Also reachable as ``grid`` (its first name, kept for existing code); ``make_grid`` does not read
    like the ``grid=`` keyword of :func:`diffsolve.sample`, which takes a grid's *name*."""
    if not isinstance(name, str):
        raise TypeError(f"grid name must be a string (one of ds.list_grids()), got {name!r}")
    if not isinstance(schedule, Schedule):
        raise TypeError(
            f"schedule must be a diffsolve Schedule (e.g. ds.DiscreteSchedule.linear()), got {type(schedule).__name__}"
        )
    check_count(steps, "steps")
    fn = get_registry().grid(name)
    # a grid depends only on (function, schedule, steps, options): computed once per schedule
    try:
        key = (fn, steps, tuple(sorted(options.items())))
        hash(key)
    except TypeError:  # unhashable options: not memoized
        key = None
    memo = schedule_memo(schedule, "grids")
    sig = memo.get(key) if key is not None else None
    if sig is None:
        try:
            sig = fn(schedule, steps, **options)
        except TypeError as exc:
            if "argument" in str(exc):
                raise ValueError(
                    f"grid {name!r}: bad option in {sorted(options)} ({exc}); "
                    f"its signature is {name}{inspect.signature(fn)}"
                ) from None
            raise
        sig = validate_sigmas(sig, name=f"grid {name!r}")
        if float(sig[-1]) != 0.0:
            raise ValueError(f"grid {name!r} must end at sigma = 0, ends at {float(sig[-1])}")
        if key is not None:
            memo[key] = sig
    return sig.clone()  # the caller may change its copy


grid = make_grid


def make_solver(solver: str | type | Solver, **options) -> Solver:
    """A fresh solver instance from a registry name, a Solver class or an instance."""
    instance, cls = resolve_plugin(solver, Solver, get_registry().solver, "solver", options)
    if instance is not None:
        return instance
    if cls.step is Solver.step and cls.run is Solver.run:
        raise TypeError(
            f"solver class {cls.__qualname__} implements neither step() nor run(): "
            "subclass diffsolve.Solver and implement step(i, x)"
        )
    params = solver_options(cls)
    if not _takes_any_option(cls):
        check_options("solver", cls.name, options, params)
    try:
        return cls(**options)
    except TypeError as exc:
        raise ValueError(
            f"solver {cls.name!r}: {exc}; "
            + (f"its options are: {', '.join(params)}" if params else "it takes no options")
        ) from None


def solver_options(cls: type) -> list[str]:
    """The option names of a Solver class: the named parameters of its ``__init__`` (not
    ``self``, ``*args`` or ``**kwargs``)."""
    return list(_solver_options(cls))


@functools.lru_cache(maxsize=256)
def _solver_options(cls: type) -> tuple[str, ...]:
    sig = inspect.signature(cls.__init__)
    return tuple(
        p.name
        for p in sig.parameters.values()
        if p.name != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    )


def _takes_any_option(cls: type) -> bool:
    # a subclass whose own __init__ forwards **kwargs decides itself (the base Solver's does not)
    init = cls.__init__
    if init is Solver.__init__:
        return False
    return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values())


# -- noise -----------------------------------------------------------------------------------
def make_noise_sampler(generator=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``noise(like)``: standard normal noise shaped like ``like``.

    ``generator`` may be None (torch's global RNG), one ``torch.Generator`` or a
    list with one generator per sample: then sample k's noise comes from generator
    k only, so a sample does not change when the batch around it changes.
    """
    if not (generator is None or isinstance(generator, (torch.Generator, list, tuple))):
        raise TypeError(
            f"generator must be None, a torch.Generator or a list of them (one per sample), "
            f"got {type(generator).__name__}"
        )
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
    sig = make_grid(name, ode.schedule, steps, **(grid_options or {}))
    return sig.flip(0) if increasing else sig


class Driver:
    """One run's bookkeeping, shared by every loop (sample, invert, exact inversion, the
    diffusers scheduler): the run view of the ODE, dtypes, callback, trajectory, progress and
    the finite check. Solvers only step; nothing of the run is left on the user's ODE."""

    def __init__(
        self,
        ode: DiffusionODE,
        x_start: torch.Tensor,
        sig_list: list[float],
        *,
        callback=None,
        progress: bool = False,
        return_trajectory: bool = False,
        check_finite=True,
        desc: str = "",
    ):
        if not isinstance(ode, DiffusionODE):
            raise TypeError(f"expected the ODE from diffsolve.wrap(...), got {type(ode).__name__}")
        if not isinstance(x_start, torch.Tensor) or not x_start.is_floating_point():
            raise TypeError("the start state must be a floating-point torch.Tensor")
        if check_finite not in (True, False, "step"):
            raise ValueError(f"check_finite must be True, False or 'step', got {check_finite!r}")
        self.sig = sig_list
        self.in_dtype = x_start.dtype
        self.callback = callback
        self.per_step = check_finite == "step"
        self.check_finite = bool(check_finite)
        self.ode = ode.start_run(
            input_dtype=self.in_dtype, record=self.check_finite, wants_denoised=callback is not None, sigmas=sig_list
        )
        self.run = self.ode.run
        self.sums: list[torch.Tensor] = []
        self.traj: list[torch.Tensor] | None = [x_start] if return_trajectory else None
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(sig_list) - 1, desc=desc, unit="step")

    def start_state(self, x_start: torch.Tensor) -> torch.Tensor:
        x = x_start.to(state_dtype_for(self.in_dtype))
        # a grid may start at sigma = inf (pure noise: t = 1 of a flow model); the state is then
        # infinite in xbar, and the first step (_run) is taken from the model-space state
        return x if self.sig[0] == math.inf else self.ode.to_xbar(x, self.sig[0])

    def after_step(self, i: int, x_new: torch.Tensor, denoised, sigma: float, sigma_next: float) -> None:
        """Step ``i`` (``sigma -> sigma_next``) is done; the next model calls belong to step i + 1."""
        self.run.step = i + 1
        if self.per_step:
            self.sums.append(x_new.detach().sum(dtype=torch.float32))
        if self.callback is not None or self.traj is not None:
            x_model = self.ode.from_xbar(x_new, sigma_next)
            if self.traj is not None:
                self.traj.append(x_model.to(self.in_dtype))
            if self.callback is not None:
                self.callback(
                    {
                        "i": i,
                        "sigma": sigma,
                        "sigma_next": sigma_next,
                        "x": x_model,
                        "xbar": x_new,
                        "denoised": denoised,
                        "nfe": self.ode.nfe,
                    }
                )
        if self.bar is not None:
            self.bar.update(1)

    def solve(self, solver: Solver, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Run ``solver`` over ``sig[start:]`` (its own step i is the driver's step start + i).

        The run's state is the solver's :meth:`~Solver.init` result, held here for the length of
        the run: one solver instance serves any number of runs at once."""
        sig = self.sig
        self.run.step = start
        proto = as_protocol(solver)
        check_renoise(self.ode, proto)
        state = proto.init(self.ode, sig[start:], self.noise)
        n = len(sig) - 1 - start
        if n <= 0:
            return x
        if type(proto).run is not Solver.run:  # a whole-run method (adaptive, torchdiffeq, legacy)

            def after_step(i, x_new, denoised):
                self.after_step(start + i, x_new, denoised, sig[start + i], sig[start + i + 1])

            return proto.run(x, after_step, state)
        ode, step = self.ode, proto.step
        for i in range(n):
            x, denoised = advance(step(i, x, state), ode)
            self.after_step(start + i, x, denoised, sig[start + i], sig[start + i + 1])
        return x

    def finish(self, x: torch.Tensor, sigma_last: float) -> torch.Tensor:
        """The final state in the model's space and dtype, after the finite check."""
        if self.check_finite:
            sums = self.sums or [x.detach().sum(dtype=torch.float32)]
            _raise_if_nonfinite(self.run, sums, self.sig, self.per_step)
        return self.ode.from_xbar(x, sigma_last).to(self.in_dtype)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _run(
    ode,
    x_start,
    sig,
    solver,
    generator,
    callback,
    progress,
    return_trajectory,
    check_finite,
    euler_first_step: bool = False,
):
    """sample / invert: the driver around one solver."""
    sig_list = sig.tolist()  # Python floats (float64); tolist, not a per-element tensor loop
    d = Driver(
        ode,
        x_start,
        sig_list,
        callback=callback,
        progress=progress,
        return_trajectory=return_trajectory,
        check_finite=check_finite,
        desc=f"diffsolve {solver.name}",
    )
    d.noise = make_noise_sampler(generator)
    solver = as_protocol(solver)
    try:
        check_renoise(d.ode, solver)  # before the first model call
        x = d.start_state(x_start)
        start = 0
        if euler_first_step and sig_list[0] == 0.0:
            # invert: the first step leaves sigma = 0 with one Euler (DDIM) step, the model
            # evaluated on the clean input (at the schedule's smallest level): docs/math.md section 5.
            denoised, eps = d.ode.predict(x, 0.0)
            x = x + sig_list[1] * eps
            d.after_step(0, x, denoised, sig_list[0], sig_list[1])
            start = 1
        elif sig_list[0] == math.inf:
            # the first step leaves sigma = inf: the limit of DDIM (E30) as sigma_t -> inf,
            # xbar_1 = D + sigma_1 eps, with eps = x (the state is pure noise) and D from one model
            # call at the pure-noise level (FlowMatchEuler's first step from t = 1). A solver may
            # take it its own way (Solver.step_from_infinity: heun with variable="flow")
            denoised, eps = d.ode.predict_at_infinity(x)
            first = solver.step_from_infinity(x, denoised, eps, sig_list[1], RunState(d.ode, sig_list, d.noise))
            if inspect.isgenerator(first):
                first = advance(first, d.ode)
            if first is None:
                first = torch.add(denoised, eps, alpha=sig_list[1]) if sig_list[1] > 0 else denoised
            x = first
            d.after_step(0, x, denoised, sig_list[0], sig_list[1])
            start = 1
        x = d.solve(solver, x, start)
        out = d.finish(x, sig_list[-1])
    finally:
        d.close()
    return (out, d.traj) if return_trajectory else out


def check_renoise(ode: DiffusionODE, solver) -> None:
    """Refuse a run whose predictions are renoising (``ode.renoise``: CFG++, DDNM) with a solver that
    does not continue from the renoised state (``renoise_ok`` False)."""
    if ode.renoise and not getattr(solver, "renoise_ok", False):
        raise ValueError(renoise_refusal(solver))


def renoise_refusal(solver) -> str:
    """Why ``solver`` (``renoise_ok`` False) cannot run renoising predictions, and the solvers that can."""
    able = []
    for name in list_solvers():
        try:
            if make_solver(name).renoise_ok:
                able.append(name)
        except Exception:  # noqa: BLE001 - a plugin that cannot build with defaults is left out of the hint
            continue
    return (
        f"solver {solver.name!r} cannot run this ODE: its predictions are renoising (CFG++, DDNM: the "
        "(denoised, eps) pair is off the state's ray, x != denoised + sigma * eps), and this solver's update "
        "cannot take a prediction off the state's ray (it does not continue from ode.renoised(...); "
        "docs/math.md, 'Renoising predictions'). Solvers that can: " + ", ".join(able)
    )


def _raise_if_nonfinite(run: Run, sums, sig_list, per_step: bool) -> None:
    """One host sync per run: the state sums (per step, or the final state) and the model's
    per-call output sums tell whether and where NaN/inf appeared."""
    # fast path: the total of every recorded sum is finite when each is (if a huge finite total
    # overflows, the per-entry check below finds nothing and nothing is raised)
    if math.isfinite(float(torch.stack(run.sums + sums).sum())):
        return
    bad = ~torch.isfinite(torch.stack(sums))
    where = run.first_nonfinite()
    if where is None and not bool(bad.any()):
        return
    n = len(sig_list) - 1
    if where is not None and per_step and bool(bad.any()) and int(bad.nonzero()[0, 0]) < where[0]:
        where = None  # the state was non-finite before the model returned NaN/inf (on that state)
    if where is not None:
        step, sigma = where
        i = step if step >= 0 else 0
        msg = (
            f"non-finite values (NaN or inf) first appeared at step {i} of {n} "
            f"(sigma {sig_list[i]:.6g} -> {sig_list[i + 1]:.6g}); "
            f"the model returned non-finite values at step {step} (sigma={sigma:.6g})"
        )
        if not per_step and step > 0:
            msg += (
                "; if the model was handed a non-finite state there, an earlier step made it: "
                "check_finite='step' names the first step whose state is not finite"
            )
    elif per_step:
        i = int(bad.nonzero()[0, 0])
        msg = (
            f"non-finite values (NaN or inf) first appeared at step {i} of {n} "
            f"(sigma {sig_list[i]:.6g} -> {sig_list[i + 1]:.6g}); the model's outputs up to there were finite, "
            "so the step's own arithmetic made them (the solver, a guidance rule or a denoised_transform; "
            "an overflow: try a wider dtype)"
        )
    else:
        msg = (
            "the final state is not finite although every model output was: the solver's arithmetic "
            "overflowed (try a wider dtype); rerun with check_finite='step' to name the step"
        )
    raise NonFiniteError(msg)


def sample_core(
    ode,
    x_T,
    solver="ddim",
    steps=None,
    grid=None,
    sigmas=None,
    *,
    generator=None,
    callback=None,
    progress=False,
    return_trajectory=False,
    check_finite=True,
    grid_options=None,
    grad=False,
    allow_out_of_range=False,
    **solver_options,
):
    """:func:`diffsolve.sample` without its ``recipe=`` door (recipes run through here)."""
    _check_call(ode, x_T, "x_T", callback, progress, return_trajectory, grid_options, grad)
    sig = _resolve_sigmas(ode, steps, grid, sigmas, grid_options, increasing=False)
    s = make_solver(solver, **solver_options)
    _check_run(ode, x_T, sig, generator, allow_out_of_range)
    with torch.set_grad_enabled(_check_grad(grad)):
        return _run(ode, x_T, sig, s, generator, callback, progress, return_trajectory, check_finite)


def _check_call(ode, x, x_name, callback, progress, return_trajectory, grid_options, grad) -> None:
    """The arguments of sample / invert that need no grid: checked before anything runs."""
    if not isinstance(ode, DiffusionODE):
        raise TypeError(
            f"ode must be the DiffusionODE from diffsolve.wrap(...) (or from_diffusers), got {type(ode).__name__}"
        )
    check_state(x, x_name)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a callable taking one dict, got {type(callback).__name__}")
    check_flag(progress, "progress")
    check_flag(return_trajectory, "return_trajectory")
    _check_grad(grad)
    if grid_options is not None and not isinstance(grid_options, dict):
        raise TypeError(f"grid_options must be a dict of the grid's options, got {type(grid_options).__name__}")


def _check_run(ode, x, sig: torch.Tensor, generator, allow_out_of_range) -> None:
    """What depends on the grid and the batch: the model's range, the generator, guidance."""
    check_sigma_range(ode, sig.tolist(), allow_out_of_range=allow_out_of_range)
    batch = x.shape[0]
    check_generator(generator, batch)
    check_guidance_batch(ode, batch)


def _check_grad(grad) -> bool:
    if not isinstance(grad, bool):
        raise TypeError(f"grad must be True or False, got {grad!r}")
    return grad
