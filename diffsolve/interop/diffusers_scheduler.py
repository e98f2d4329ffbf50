"""``DiffsolveScheduler``: any registered diffsolve solver inside unmodified diffusers pipelines.

A diffusers pipeline owns the loop: ``set_timesteps(n)``, then for every ``t`` in
``scheduler.timesteps`` it calls the model and ``scheduler.step(model_output, t, sample)``. A
diffsolve solver owns its loop too and calls the model itself, possibly several times per step.
The scheduler reconciles the two:

* ``set_timesteps`` runs the solver once on two cheap probe models to record the sigma of every
  model call; ``timesteps`` is that list in diffusers' units (the DDPM index, fractional off the
  schedule's levels), so a solver with k calls per step exposes k timesteps per step. Solvers
  whose call pattern depends on the data (adaptive step control, iterated correctors) are
  refused there with a clear error: a pipeline needs its timesteps before the first call.
* ``step`` stores the model output and *replays* the solver from the first ``sample`` with the
  outputs received so far, stopping at the next model call: its input is the ``prev_sample``
  handed back. After the last call the replay finishes and returns the solver's result. Noise
  for stochastic solvers is drawn once (from ``step``'s ``generator``) and reused by replays.
  The replay costs solver arithmetic only, no model calls.

The state is the VP model-space sample, so ``init_noise_sigma = 1`` and ``scale_model_input`` is
the identity. The x0 correction keeps (x0hat, epshat) consistent (docs/math.md pitfall 1): with
``clip_sample=True`` it equals diffusers' DDIM with ``use_clipped_model_output=True``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin, SchedulerOutput

from ..grids import validate_sigmas
from ..sampling import grid as named_grid
from ..sampling import make_noise_sampler, make_solver, state_dtype_for
from ..wrapper import DiffusionODE
from .diffusers import diffusers_grid, prediction_from_config, schedule_from_config, transform_from_config

__all__ = ["DiffsolveScheduler", "DataDependentCallsError"]


class DataDependentCallsError(ValueError):
    """The solver decides where to call the model from the data: no fixed timestep list exists."""


class _NeedModel(Exception):
    def __init__(self, x: torch.Tensor, sigma: float):
        self.x, self.sigma = x, sigma


class DiffsolveScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs the diffsolve solver ``solver`` (any registered name).

    Swap it into a pipeline the usual way::

        pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler.config, solver="dpmpp-2m")

    Config: ``solver``, ``solver_options`` (dict), ``grid`` (a registered grid name; default:
    diffusers' ``timestep_spacing``/``steps_offset``), ``grid_options``, and diffusers' own
    schedule keys (``num_train_timesteps``, ``beta_*``, ``trained_betas``, ``prediction_type``,
    ``rescale_betas_zero_snr``, ``clip_sample``, ``thresholding``, ``set_alpha_to_one``, ...). The
    grid ends at sigma = 0, or at the smallest trained sigma with ``set_alpha_to_one=False``
    (:func:`~diffsolve.diffusers_grid`).
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        solver: str = "ddim",
        solver_options: dict | None = None,
        grid: str | None = None,
        grid_options: dict | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        clip_sample: bool = False,
        clip_sample_range: float = 1.0,
        thresholding: bool = False,
        dynamic_thresholding_ratio: float = 0.995,
        sample_max_value: float = 1.0,
        set_alpha_to_one: bool = True,
    ):
        self.schedule = schedule_from_config(self.config)
        self.prediction = prediction_from_config(self.config)
        self.denoised_transform = transform_from_config(self.config)
        self._new_solver()  # validates the name and options now
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1, dtype=torch.int64)
        self.sigmas: torch.Tensor | None = None
        self._call_sigmas: list[float] = []
        self._reset()

    # -- diffusers API -----------------------------------------------------------------------
    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The identity: the state is the VP sample the model was trained on."""
        return sample

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas=None, **kwargs):
        """Choose the grid and expose one timestep per model call of the solver on it."""
        if sigmas is not None:
            sig = validate_sigmas(sigmas)
        elif num_inference_steps is None:
            raise ValueError("pass num_inference_steps (or a decreasing sigmas grid)")
        elif self.config.grid is not None:
            sig = named_grid(self.config.grid, self.schedule, int(num_inference_steps), **(self.config.grid_options or {}))
        else:
            sig = diffusers_grid(self.config, int(num_inference_steps), self.schedule)
        self.sigmas = sig
        self.num_inference_steps = len(sig) - 1
        self._call_sigmas = self._probe_calls(torch.as_tensor(sig, dtype=torch.float64).tolist())
        t = torch.as_tensor([float(self.schedule.t(s)) for s in self._call_sigmas], dtype=torch.float64)
        integral = bool(torch.equal(t, t.round()))
        self.timesteps = (t.round().to(torch.int64) if integral else t.to(torch.float32)).to(device)
        self._reset()

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
             return_dict: bool = True, eta: float = 0.0, use_clipped_model_output: bool | None = None, **kwargs):
        """Take the model output for the current timestep; return the next model input
        (or, after the last timestep, the solver's result) as ``prev_sample``."""
        if self.sigmas is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if eta:
            raise ValueError(f"eta={eta} given to step(): set it as a solver option instead, e.g. "
                             "DiffsolveScheduler.from_config(config, solver='ddim', solver_options={'eta': 1.0})")
        k = len(self._outputs)
        if k >= len(self.timesteps):
            raise ValueError(f"step() called {k + 1} times but the run has {len(self.timesteps)} timesteps; "
                             "call set_timesteps() to start a new run")
        if float(timestep) != float(self.timesteps[k]):
            raise ValueError(f"step() got timestep {float(timestep)} but the next model call is at "
                             f"timesteps[{k}] = {float(self.timesteps[k])}: step through scheduler.timesteps in order")
        if k == 0:
            self._x_start = sample
            self._draw = make_noise_sampler(generator)
        elif not torch.equal(sample, self._returned):
            raise ValueError("the sample given to step() is not the prev_sample it returned last: this scheduler "
                             "replays its solver and cannot follow latents changed between steps")
        self._outputs.append(model_output)
        prev = self._replay()
        self._returned = prev
        return SchedulerOutput(prev_sample=prev) if return_dict else (prev,)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """Forward process at diffusers timesteps: sqrt(abar) x0 + sqrt(1 - abar) noise (E8)."""
        t = torch.as_tensor(timesteps).reshape(-1).cpu()
        sigma = self.schedule.sigma(t.to(torch.float64))
        a = (1.0 / torch.sqrt(1 + sigma**2)).to(original_samples.device, original_samples.dtype)
        b = (sigma / torch.sqrt(1 + sigma**2)).to(original_samples.device, original_samples.dtype)
        view = (-1, *([1] * (original_samples.dim() - 1)))
        return a.reshape(view) * original_samples + b.reshape(view) * noise

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # -- the replay ------------------------------------------------------------------------------
    def _new_solver(self):
        return make_solver(self.config.solver, **(self.config.solver_options or {}))

    def _reset(self) -> None:
        self._outputs: list[torch.Tensor] = []
        self._noise: list[torch.Tensor] = []
        self._x_start = self._returned = self._draw = None

    def _drive(self, ode: DiffusionODE, x_model: torch.Tensor, noise) -> torch.Tensor:
        """One run of a fresh solver on ``self.sigmas`` from ``x_model`` (model space)."""
        sig = torch.as_tensor(self.sigmas, dtype=torch.float64).tolist()
        in_dtype = x_model.dtype
        state_dtype = state_dtype_for(in_dtype)
        ode = ode.start_run(input_dtype=in_dtype, wants_denoised=False)
        solver = self._new_solver()
        solver.setup(ode, sig, noise)
        x = solver.run(ode.to_xbar(x_model.to(state_dtype), sig[0]), lambda i, x, d: None)
        return ode.from_xbar(x, sig[-1]).to(in_dtype)

    def _ode(self, model, prediction: str | None = None, transform=None) -> DiffusionODE:
        # time = sigma itself in float64: the recorded calls are compared exactly
        return DiffusionODE(model, self.schedule, prediction=prediction or self.prediction,
                            time=lambda s: s, time_dtype=torch.float64, denoised_transform=transform)

    def _probe_calls(self, sig: list[float]) -> list[float]:
        """The sigma of every model call the solver makes on ``sig``, checked to be data-independent."""
        patterns = []
        for fn in (torch.zeros_like, lambda x: 0.5 * torch.tanh(3 * x) + 0.1):
            seen: list[float] = []

            def model(x, t, fn=fn, seen=seen, **_):
                seen.append(float(t[0]))
                return fn(x)

            x = torch.linspace(-1.5, 1.5, 4, dtype=torch.float64).reshape(1, 4)
            self._drive(self._ode(model, prediction="eps"), x, lambda like: torch.zeros_like(like))
            patterns.append(seen)
        if patterns[0] != patterns[1]:
            raise DataDependentCallsError(
                f"solver {self.config.solver!r} chooses where to call the model from the data (adaptive step "
                "control or an iterated corrector), but a diffusers pipeline needs its timesteps before the first "
                "call; use a fixed-step solver in pipelines, or diffsolve.sample with diffsolve.from_diffusers")
        return patterns[0]

    def _cached_noise(self, like: torch.Tensor) -> torch.Tensor:
        j = self._noise_used
        self._noise_used += 1
        if j == len(self._noise):
            self._noise.append(self._draw(like))
        return self._noise[j]

    def _replay(self) -> torch.Tensor:
        outputs, expected = self._outputs, self._call_sigmas
        count = [0]

        def model(x, t, **_):
            j, sigma = count[0], float(t[0])
            # a solver may carry its times in the state's dtype (torchdiffeq): compare to float32 rounding
            if j >= len(expected) or abs(sigma - expected[j]) > 1e-5 * max(1.0, expected[j]):
                raise DataDependentCallsError(
                    f"solver {self.config.solver!r} called the model at sigma={sigma:.6g} (call {j}), not where "
                    "set_timesteps predicted: its call pattern depends on the data")
            if j == len(outputs):
                raise _NeedModel(x, sigma)
            count[0] += 1
            return outputs[j]

        self._noise_used = 0
        ode = self._ode(model, transform=self.denoised_transform)
        try:
            out = self._drive(ode, self._x_start, self._cached_noise)
        except _NeedModel as need:
            return need.x
        if count[0] != len(expected):
            raise DataDependentCallsError(f"solver {self.config.solver!r} finished after {count[0]} model calls, "
                                          f"not the {len(expected)} set_timesteps predicted")
        return out
