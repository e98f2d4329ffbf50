"""``DiffsolveScheduler``: any registered diffsolve solver as a drop-in diffusers scheduler (docs/diffusers.md).

Each pipeline ``step`` feeds one model output to the open solver step, a generator (docs/plugins.md), so a k-call
step stays open across its k timesteps and nothing is replayed. ``emulate`` names the diffusers scheduler whose own
``set_timesteps`` gives the sigmas, whose keys choose the solver and whose space holds the sample; without it the
grid is ``grid`` or DDIM's timestep rule. The arithmetic is diffsolve's (docs/math.md E29-E30).
"""

from __future__ import annotations

import collections
import inspect
import itertools
import math
from collections.abc import Callable
from typing import ClassVar, NamedTuple

import diffusers
import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..grids import validate_sigmas
from ..sampling import make_grid, make_noise_sampler, make_solver, state_dtype_for
from ..schedules import DiscreteSchedule
from ..solvers._exponential import combine
from ..solvers.base import Solver, answer
from ..validation import check_count
from ..wrapper import DiffusionODE
from .diffusers import diffusers_grid, prediction_from_config, schedule_from_config, transform_from_config
from .diffusers_sigmas import classes_with_keys, scheduler_defaults

__all__ = ["FAMILIES", "DataDependentCallsError", "DiffsolveScheduler"]


class DataDependentCallsError(ValueError):
    """The solver decides where to call the model from the data: no fixed timestep list exists."""


class _Family(NamedTuple):
    """The sample's space; the family's own method, (solver, options, per-step order rule or None) or a function
    of the config giving them; the values it honours of some keys (key -> allowed values; other keys: any value);
    how its schedule is the solver's grid: "sigmas" (steps sigmas[k] -> sigmas[k + 1]), "previous" (DDIM/DDPM:
    each timestep to the family's previous one, memoryless) or "paired" (Heun: inner sigmas listed twice)."""

    name: str
    space: str
    method: Callable | tuple
    honoured: dict = {}  # a table, never mutated
    grid: str = "sigmas"


def _dpm_orders(cfg, n: int, start: int, final_zero: bool) -> list[int]:
    """DPMSolverMultistep / DEIS step orders: warm-up from the first step taken, ``lower_order_final`` on
    schedules of fewer than 15 steps, ``euler_at_final``, a first-order step into sigma = 0."""
    order, lof = int(cfg["solver_order"]), bool(cfg.get("lower_order_final", True)) and n < 15
    first_at_end = bool(cfg.get("euler_at_final", False)) or lof or final_zero
    caps = [1 if k == n - 1 and first_at_end else 2 if k == n - 2 and lof else order for k in range(start, n)]
    return [min(order, cap, warm + 1) for warm, cap in enumerate(caps)]


def _unipc_orders(cfg, n: int, start: int, final_zero: bool) -> list[int]:
    """UniPC step orders: ``lower_order_final`` caps the order at the steps left (no 15-step condition)."""
    order, lof = int(cfg["solver_order"]), cfg.get("lower_order_final", True)
    return [min(min(order, n - k) if lof else order, k - start + 1) for k in range(start, n)]


def _ddpm_method(fcfg):  # DDPM's posterior variance (E24) is DDIM at eta = 1; fixed_large is its beta_t variance
    return "ddim", {"eta": 1.0} if fcfg["variance_type"] == "fixed_small" else {"variance": "large"}, None


def _dpm_method(fcfg):
    order, algo, kind = int(fcfg["solver_order"]), fcfg["algorithm_type"], fcfg["solver_type"]
    kind = "taylor" if kind == "heun" else kind
    if algo == "sde-dpmsolver++":
        if order == 3:
            raise ValueError("algorithm_type='sde-dpmsolver++' has orders 1 and 2 (as in diffusers)")
        return "dpmpp-2m-sde", {"eta": 1.0, "solver_type": kind}, _dpm_orders
    base = "dpmpp" if algo == "dpmsolver++" else "dpm-solver"
    # diffusers' 3M halves the second divided difference's weight (docs/findings.md): its reference weights
    weights = {"weights": "reference"} if order == 3 and base == "dpmpp" else {}
    return f"{base}-{3 if order == 3 else 2}m", {"solver_type": kind, **weights}, _dpm_orders


def _unipc_method(fcfg):
    return "unipc", {"solver_order": min(int(fcfg["solver_order"]), 3), "variant": fcfg["solver_type"]}, _unipc_orders


def _deis_method(fcfg):  # diffusers' "logrho" DEIS is log-rho AB-DEIS: diffsolve's deis with variable="log-sigma"
    return "deis", {"solver_order": int(fcfg["solver_order"]), "variable": "log-sigma"}, _dpm_orders


_OFF = (False, None, [])  # a switch left off
_NO_FLOW = {"use_flow_sigmas": _OFF, "use_dynamic_shifting": _OFF}  # the flow-matching sigmas: refused
_DPM_KEYS = dict(
    algorithm_type=("dpmsolver++", "dpmsolver", "sde-dpmsolver++"),
    solver_type=("midpoint", "heun"),
    solver_order=(1, 2, 3),
    variance_type=(None, "learned_range", "learned"),
)
_UNIPC_KEYS = dict(solver_type=("bh1", "bh2"), predict_x0=(True,), disable_corrector=_OFF, solver_p=(None,))
_DEIS_KEYS = {"solver_type": ("logrho",), "algorithm_type": ("deis",)}
FAMILIES: dict[str, _Family] = {
    f.name: f
    for f in [
        _Family("DDIMScheduler", "vp", ("ddim", {}, None), grid="previous"),
        _Family("DDPMScheduler", "vp", _ddpm_method, {"variance_type": ("fixed_small", "fixed_large")}, "previous"),
        _Family("DPMSolverMultistepScheduler", "vp", _dpm_method, {**_DPM_KEYS, **_NO_FLOW}),
        _Family("UniPCMultistepScheduler", "vp", _unipc_method, {**_UNIPC_KEYS, **_NO_FLOW, "shift_terminal": (None,)}),
        _Family("DEISMultistepScheduler", "vp", _deis_method, {**_DEIS_KEYS, **_NO_FLOW}),
        _Family("EulerDiscreteScheduler", "ve", ("ddim", {}, None)),
        _Family("EulerAncestralDiscreteScheduler", "ve", ("euler-ancestral", {}, None)),
        _Family("HeunDiscreteScheduler", "ve", ("heun", {}, None), grid="paired"),
        _Family("LMSDiscreteScheduler", "ve", ("lms", {"solver_order": 4}, None)),
    ]
}

#: keys of DiffsolveScheduler's own (not a diffusers scheduler's)
_OWN_KEYS = ("solver", "solver_options", "grid", "grid_options", "emulate")
#: every key of the supported diffusers schedulers (DiffsolveScheduler's own excepted), once
_FAMILY_KEYS = [k for k in dict.fromkeys(k for f in FAMILIES for k in scheduler_defaults(f)) if k not in _OWN_KEYS]
#: __init__'s keywords (every family key: None is the emulated scheduler's default), for register_to_config
_SIGNATURE = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    + [inspect.Parameter(k, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for k in (*_OWN_KEYS, *_FAMILY_KEYS)]
)
#: the keys that choose the integrator (honoured with the family's own solver only)
_INTEGRATOR_KEYS = (
    "solver_order algorithm_type solver_type lower_order_final euler_at_final predict_x0 disable_corrector solver_p"
).split()
#: native mode (no ``emulate``): the keys it reads, DDIMScheduler's, with their defaults (no clipping)
_NATIVE_DEFAULTS = dict(scheduler_defaults("DDIMScheduler"), clip_sample=False)
#: keys of a diffusers scheduler that shape its sigma grid (a method replaced by solver= cannot drop them)
_GRID_KEYS = "use_karras_sigmas use_exponential_sigmas use_beta_sigmas use_lu_lambdas shift use_flow_sigmas".split()


class _StepODE(DiffusionODE):
    """The sigma-form ODE (E29) whose model is the output the pipeline handed to ``step``: the grid's sigma as
    it is (not clamped to a training range), with the VP scale a(sigma) = 1/sqrt(1 + sigma^2) (E6)."""

    def _level(self, sigma: float) -> tuple[float, float, torch.Tensor]:
        a = 1.0 / math.sqrt(1.0 + sigma * sigma)
        return sigma, a, torch.tensor(a, dtype=torch.float64)


#: the step ODE's schedule where none is read (a family's own method): the ODE's type check only
_PLACEHOLDER_SCHEDULE = DiscreteSchedule.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))


class DiffsolveScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs the registered diffsolve solver ``solver``:
    ``pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler[, solver="unipc"])``. Config (``_SIGNATURE``):
    ``solver``, ``solver_options``, ``emulate`` (the diffusers scheduler reproduced; ``from_config`` takes the
    config's ``_class_name``), ``grid`` / ``grid_options`` (native mode only) and every key of the emulated
    scheduler (None: its default). A key that cannot be honoured is an error, never dropped."""

    _compatibles: ClassVar[list[str]] = list(FAMILIES)
    order = 1
    _get_variance = DDIMScheduler._get_variance  # DDPM's posterior variance (E24), as DDIMScheduler exposes it

    def __init__(self, *args, **kwargs):
        _SIGNATURE.bind(self, *args, **kwargs)  # an unknown key is a TypeError, as in any __init__
        self.begin_index = self.step_index = self._run = self._grid = self.num_inference_steps = self.sigmas = None
        self._memoryless, self.init_noise_sigma, cfg = False, torch.tensor(1.0), dict(self.config)
        emulate, user, opts = cfg.get("emulate"), cfg.get("solver"), dict(cfg.get("solver_options") or {})
        fam = self.family = FAMILIES.get(emulate)
        if emulate is not None and fam is None:
            raise ValueError(
                f"emulate={emulate!r} is not supported; supported: {', '.join(FAMILIES)} (or None: diffsolve's "
                "own grid and DDIM's timestep rule)"
            )
        defaults = _NATIVE_DEFAULTS if fam is None else scheduler_defaults(emulate)
        given = {k: cfg[k] for k in _FAMILY_KEYS if cfg.get(k) is not None}
        foreign = sorted(set(given) - set(defaults)) + (["grid"] if fam and cfg.get("grid") is not None else [])
        if foreign:
            raise ValueError(
                f"key(s) {foreign} are not keys of {emulate}, which cannot honour them (it sets the grid itself; "
                "emulate=None runs on grid=/grid_options=)"
                if fam
                else f"key(s) {foreign} need emulate=<a diffusers scheduler class> (they belong to one; supported: "
                f"{', '.join(FAMILIES)}); without it the grid is grid=/grid_options="
            )
        self.fcfg = fcfg = dict(defaults, **given)
        self._ref = None if fam is None else getattr(diffusers, emulate).from_config(fcfg)
        self.space = "vp" if fam is None else fam.space
        if fam is not None:
            # the family's own normalisations (DPMSolverMultistep reads solver_type "bh2" as "midpoint", UniPC
            # reads "midpoint" as "bh2"), recorded as that scheduler records them
            plain = {k for k in defaults if isinstance(fcfg[k], (str, int, float, bool))}
            changed = {k: v for k, v in self._ref.config.items() if k in plain and v != fcfg[k]}
            fcfg.update(changed)
            self.register_to_config(**{k: v for k, v in changed.items() if self.config[k] is not None})
            for k, allowed in fam.honoured.items():
                if k in fcfg and fcfg[k] not in allowed:
                    raise ValueError(
                        f"{emulate}: {k}={fcfg[k]!r} is not supported by DiffsolveScheduler; supported: "
                        f"{', '.join(map(repr, allowed))}"
                    )
            clash = sorted(k for k in _INTEGRATOR_KEYS if k in defaults and fcfg[k] != defaults[k])
            if user is not None and clash:
                raise ValueError(
                    f"solver={user!r} replaces {emulate}'s own method, so its key(s) {clash} (set to non-default "
                    "values) cannot be honoured; drop them or drop solver="
                )
            if user is None and opts:
                raise ValueError(f"solver_options={opts} without solver=: name the solver they are for")
        self.prediction, self.transform = prediction_from_config(fcfg), transform_from_config(fcfg)
        method = (user or "ddim", opts, None) if user is not None or fam is None else fam.method
        self.solver_name, self.solver_opts, self.orders_rule = method(fcfg) if callable(method) else method
        self.solver_class = type(make_solver(self.solver_name, **self.solver_opts))  # validates name and options
        self.order = self.solver_class.calls_per_step
        # the training schedule, for native mode and a solver replacing the family's method (deis and plms read it)
        self.schedule = schedule_from_config(fcfg) if fam is None or user is not None else None
        src = self._ref if fam is not None else DDIMScheduler.from_config(fcfg)  # native: DDIM's betas, final level
        self.betas, self.alphas, self.alphas_cumprod = src.betas, src.alphas, src.alphas_cumprod
        self.final_alpha_cumprod = getattr(src, "final_alpha_cumprod", torch.tensor(1.0))  # 1: no set_alpha_to_one
        self.timesteps = torch.arange(int(fcfg["num_train_timesteps"]) - 1, -1, -1, dtype=torch.int64)
        if fam is not None and len(getattr(self._ref, "sigmas", ())) == len(self._ref.timesteps) + 1:
            self._adopt_family_schedule(None)  # like the emulated scheduler, usable before set_timesteps

    __init__.__signature__ = _SIGNATURE
    __init__ = register_to_config(__init__)

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start the next run at ``timesteps[begin_index]`` (pipelines call it before img2img)."""
        self.begin_index = int(begin_index)

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The model's input: the sample in VP space; in the k-diffusion space of Euler/Heun/LMS the family's
        sample / sqrt(sigma^2 + 1) (E6)."""
        if self.space == "vp":
            return sample
        self._ref._begin_index, self._ref._step_index = self.begin_index, self.step_index  # its position
        out = self._ref.scale_model_input(sample, timestep)
        self.step_index = self._ref.step_index if self.step_index is None else self.step_index
        return out

    def set_timesteps(self, num_inference_steps=None, device=None, timesteps=None, sigmas=None, **kwargs):
        """The timesteps of a run of ``num_inference_steps`` steps (or the given ``timesteps`` / ``sigmas``,
        where the emulated scheduler accepts them)."""
        self.step_index = self._run = None
        given = {k: v for k, v in (("timesteps", timesteps), ("sigmas", sigmas)) if v is not None}
        if num_inference_steps is None and not given:
            raise ValueError("pass num_inference_steps (or timesteps= / sigmas=)")
        n = num_inference_steps if given else check_count(num_inference_steps, "num_inference_steps")
        if self._ref is not None:
            for key in given.keys() - inspect.signature(self._ref.set_timesteps).parameters.keys():
                raise ValueError(f"{self.family.name} does not take {key}= in set_timesteps; pass num_inference_steps")
            if n is not None:
                given["num_inference_steps"] = n
            self._ref.set_timesteps(device=device, **given, **kwargs)
            return self._adopt_family_schedule(device)
        if kwargs:
            raise TypeError(f"set_timesteps got unexpected argument(s) {sorted(kwargs)}")
        if len(given) == 2:
            raise ValueError("pass timesteps= or sigmas=, not both")
        if timesteps is not None:
            sig = self.schedule.sigma(torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1))
            sig = validate_sigmas(torch.cat([sig, sig.new_zeros(1)]), name="the sigmas of timesteps")
        elif sigmas is not None:
            sig = validate_sigmas(sigmas)
        elif self.config.grid is not None:
            sig = make_grid(self.config.grid, self.schedule, n, **(self.config.grid_options or {}))
        else:
            sig = diffusers_grid(self.fcfg, n, self.schedule)
        self._grid, self._memoryless = sig.tolist(), False
        self._calls = self._call_map(self._grid)  # (step, call within the step, sigma) of every model call
        self._per_step = collections.Counter(i for i, _, _ in self._calls)
        self.sigmas, self.num_inference_steps = torch.as_tensor(self._grid, dtype=torch.float32), len(self._grid) - 1
        t = self.schedule.t(torch.tensor([s for _, _, s in self._calls], dtype=torch.float64))
        self.timesteps = (t.round().to(torch.int64) if torch.equal(t, t.round()) else t.to(torch.float32)).to(device)

    def _adopt_family_schedule(self, device):
        ref, kind, name = self._ref, self.family.grid, self.solver_name
        self.timesteps, self.num_inference_steps = ref.timesteps, ref.num_inference_steps
        if self.space == "ve":  # the start noise's standard deviation in the sample's space (1 in VP space)
            self.init_noise_sigma = torch.as_tensor(float(ref.init_noise_sigma))
        if kind == "previous":  # one step per timestep, to the family's previous timestep (or the final level)
            ts = [int(t) for t in ref.timesteps.tolist()]
            g = [self._sigma_of(t) for t in ts] + [self._sigma_of(ts[-1], previous=True)]
            self._first_index = {t: k for k, t in reversed(list(enumerate(ts)))}
            self.sigmas = torch.as_tensor(g, dtype=torch.float32)
        else:
            self.sigmas, g = ref.sigmas, ref.sigmas.to(torch.float64).tolist()
            # Heun's [s0, s1, s1, ..., 0] is the solver's [s0, s1, ..., 0]; log-linear Euler's has a sigma too many
            g = [g[0]] + g[1:-1:2] + [g[-1]] if kind == "paired" else g[: len(ref.timesteps) + 1]
        self._grid, self._memoryless = g, kind == "previous" and name == "ddim"
        self._calls = self._call_map(g)
        self._per_step = collections.Counter(i for i, _, _ in self._calls)
        if (name == "heun") if kind == "paired" else (self.solver_class.calls_per_step == 1):
            if len(self._calls) != len(self.timesteps):
                raise ValueError(
                    f"solver {name!r} makes {len(self._calls)} model calls on {self.family.name}'s schedule, which "
                    f"has {len(self.timesteps)} timesteps"
                )
        else:  # another solver on the family's grid: one timestep per call, at diffusers' sigma -> t (log-linear)
            log_sigmas = torch.log(((1 - self.alphas_cumprod) / self.alphas_cumprod).double().sqrt())
            ls = torch.tensor([s for _, _, s in self._calls], dtype=torch.float64).clamp(min=1e-30).log()
            idx = torch.searchsorted(log_sigmas, ls).clamp(1, len(log_sigmas) - 1)
            lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
            self.timesteps = (idx - 1 + ((ls - lo) / (hi - lo)).clamp(0.0, 1.0)).to(torch.float32).to(device)

    def _sigma_of(self, t: int, previous: bool = False) -> float:
        """sigma at training timestep ``t``, or at the family's previous one (DDPM's previous_timestep, DDIM's
        t - T // N; below 0 the final level). Zero terminal SNR: 2^-24, as the ODE cannot start at sigma = inf."""
        if previous and hasattr(self._ref, "previous_timestep"):  # DDPM
            t = int(self._ref.previous_timestep(t))
        elif previous:  # DDIM
            t -= len(self) // self._ref.num_inference_steps
        a = float(self.alphas_cumprod[t]) if t >= 0 else float(self.final_alpha_cumprod)
        a = a if a > 0 else 2.0**-24
        return math.sqrt(max(1.0 - a, 0.0) / a)

    def step(
        self,
        model_output: torch.Tensor,
        timestep,
        sample: torch.Tensor,
        eta: float | None = None,
        use_clipped_model_output: bool | None = None,
        generator=None,
        variance_noise: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs,
    ):
        """One model output in; the next sample and the solver's denoised estimate out. DDIMScheduler's arguments in
        its positions (``eta``: DDIM's; ``generator`` / ``variance_noise``: the noise); other keywords are refused."""
        if self.timesteps is None or self._grid is None:
            raise ValueError("call set_timesteps(num_inference_steps) before step()")
        if not isinstance(model_output, torch.Tensor) or not isinstance(sample, torch.Tensor):
            raise TypeError("model_output and sample must be torch tensors")
        if self.fcfg.get("variance_type") in ("learned", "learned_range") and model_output.shape[1] > sample.shape[1]:
            model_output = model_output[:, : sample.shape[1]]  # the variance channels are not used
        if kwargs:  # EulerDiscrete's s_churn / s_tmin / s_tmax / s_noise, LMS's order: solver options here
            raise TypeError(
                f"step() got {sorted(kwargs)}: set a solver's options once, as solver_options (LMS's order: "
                "solver_options={'solver_order': n}; churn: solver='heun' with solver_options={'s_churn': ...})"
            )
        eta, ddim = float(eta or 0.0), self._memoryless and self.family.name == "DDIMScheduler"
        if eta and not ddim:
            raise ValueError(
                f"eta={eta} given to step(): eta is DDIM's (emulate='DDIMScheduler'); set a solver's eta once, as "
                f"solver_options={{'eta': {eta}}} (solver='ddim'); DDPMScheduler's variance is its variance_type"
            )
        # DDIMScheduler's default (None) is use_clipped_model_output=False; elsewhere an explicit False only
        unclipped = self.transform is not None and (
            not use_clipped_model_output if ddim else use_clipped_model_output is False
        )
        if unclipped and not ddim:
            raise ValueError(
                "use_clipped_model_output=False with clip_sample/thresholding: diffsolve keeps the clipped x0 and "
                "its eps consistent; pass True (or leave it unset)"
            )
        self._draw = make_noise_sampler(generator) if variance_noise is None else lambda like: variance_noise.to(like)
        if self._memoryless:  # DDIM/DDPM: a run of one step from t to the family's previous timestep, any t
            t = int(timestep)
            k, i, j, sigma = self._first_index.get(t), 0, 0, self._sigma_of(t)
            grid = [sigma, self._sigma_of(t, previous=True)]
        else:
            k, grid = self._next_call(timestep)
            i, j, sigma = self._calls[k]
        if grid is not None:  # a new run, fed this call's output first
            self._run = self._begin_run(i, grid, sample, eta, unclipped)
            next(self._run)
        prev, denoised = self._run.send((model_output, sample, sigma, i, j))
        self.step_index = None if k is None else k + 1
        return DDIMSchedulerOutput(prev_sample=prev, pred_original_sample=denoised) if return_dict else (prev, denoised)

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The forward process at ``timesteps`` in the sample's space (E8; x0 + sigma noise for Euler/Heun/LMS)."""
        t = torch.as_tensor(timesteps, device="cpu").reshape(-1).to(torch.float64)
        if self._ref is not None and (self.space == "ve" or torch.equal(t, t.round())):
            self._ref._begin_index, self._ref._step_index = self.begin_index, self.step_index  # its position
            if self.family.grid == "previous" and isinstance(timesteps, torch.Tensor):
                timesteps = timesteps.round().long()  # they index alphas_cumprod (integral here)
            return self._ref.add_noise(original_samples, noise, timesteps)
        # native mode, or a multi-call solver's timesteps between a DDIM/DDPM schedule's training levels (which
        # that scheduler's add_noise cannot index): alpha_bar at the sigma of t, log-linear between levels
        a = (self.schedule if self.schedule is not None else schedule_from_config(self.fcfg)).alpha_bar(t)
        x0, shape = original_samples, (-1, *([1] * (original_samples.dim() - 1)))
        sa, sb = (v.to(x0.device, x0.dtype).reshape(shape) for v in (a.sqrt(), (1 - a).sqrt()))
        return sa * x0 + sb * noise

    def __len__(self) -> int:
        return int(self.fcfg["num_train_timesteps"])

    def _xbar(self, x: torch.Tensor, sigma: float, back: bool = False) -> torch.Tensor:
        """The state xbar = x sqrt(1 + sigma^2) of the VP sample x (E6), or back; in the k-diffusion space, x."""
        if self.space != "vp":
            return x
        return x / math.sqrt(1.0 + sigma * sigma) if back else x * math.sqrt(1.0 + sigma * sigma)

    def _ode(self, model, raw: bool = False) -> _StepODE:
        """The step ODE on ``model``; ``raw``: its output read as eps, without the config's clipping."""
        return _StepODE(
            model,
            self.schedule if self.schedule is not None else _PLACEHOLDER_SCHEDULE,
            prediction="eps" if raw else self.prediction,
            time=lambda s: s,
            time_dtype=torch.float64,
            denoised_transform=None if raw else self.transform,
        )

    def _new_solver(self, start: int = 0, steps: int | None = None, **override) -> Solver:
        """The run's solver, with the emulated family's order rule over the whole schedule as ``step_orders``."""
        opts = dict(self.solver_opts, **override)
        if self.orders_rule is not None:
            rule = self.orders_rule(self.fcfg, len(self._grid) - 1, start, self._grid[-1] == 0.0)
            opts["step_orders"] = tuple(rule[:steps] if steps is not None else rule)
        return self.solver_class(**opts)

    def _call_map(self, grid: list[float]) -> list[tuple[int, int, float]]:
        """(step, call within the step, sigma) of every model call on ``grid``: for a solver other than the
        family's own, from two probe runs that must agree (a fixed-step solver's calls ignore the data)."""
        n, cls, name = len(grid) - 1, self.solver_class, repr(self.solver_name)
        if self.family is not None and self.config.solver is None:  # the family's own method
            if cls.calls_per_step == 1:
                return [(i, 0, grid[i]) for i in range(n)]
            if self.family.grid == "paired":  # two calls per step, one on the step into 0
                return [c for i in range(n) for c in [(i, 0, grid[i])] + ([(i, 1, grid[i + 1])] if grid[i + 1] else [])]
        if cls.legacy:
            raise ValueError(
                f"solver {name} uses the first Solver contract (step(i, x) calls the model), which a pipeline "
                "cannot feed: port it to the generator step(i, x, state) (docs/plugins.md, 'Porting a solver')"
            )
        elsewhere = "; use it through diffsolve.sample(diffsolve.from_diffusers(...))"
        if cls.adaptive:
            raise DataDependentCallsError(
                f"solver {name} chooses where to call the model from the data (adaptive step control), but a "
                f"pipeline needs its timesteps before the first call{elsewhere}"
            )
        if cls.step is Solver.step or cls.run is not Solver.run:
            raise ValueError(f"solver {name} integrates the whole grid in run() and has no per-step step(){elsewhere}")
        if any(b >= a for a, b in itertools.pairwise(grid)):
            raise ValueError("the schedule's sigmas must be strictly decreasing for a multi-call solver")
        patterns = []
        for fn in (torch.zeros_like, lambda x: 0.5 * torch.tanh(3 * x) + 0.1):
            view = self._ode(lambda x, t, fn=fn, **_: fn(x), raw=True).start_run(wants_denoised=False)
            solver, x, seen = self._new_solver(), torch.linspace(-1.5, 1.5, 4, dtype=torch.float64)[None], []
            state = solver.init(view, grid, torch.zeros_like)
            for i in range(n):  # each step's model requests, at the sigmas the solver asks for
                gen, reply = solver.step(i, x, state), None
                try:
                    for j in itertools.count():
                        request = gen.send(reply)
                        seen.append((i, j, request[1]))
                        reply = answer(view, *request)
                except StopIteration as stop:
                    x = stop.value[0]
            patterns.append(seen)
        if patterns[0] != patterns[1]:
            raise DataDependentCallsError(
                f"solver {name} chooses where to call the model from the data (an iterated corrector), but a "
                "diffusers pipeline needs its timesteps before the first call"
            )
        return patterns[0]

    def _next_call(self, timestep) -> tuple[int, list[float] | None]:
        """The index in ``timesteps`` of this call and, for a new run's first call, its grid: ``begin_index``, else the
        index of ``timestep`` (diffusers' rule: the second match; DPM-Solver/UniPC/DEIS: the last when none)."""
        ts, ref, k = self.timesteps, self._ref, self.step_index
        if k is not None and self._run is not None:
            tv = float(timestep)
            if k >= len(self._calls) or abs(float(ts[k]) - tv) > 1e-4 * max(1.0, abs(tv)):
                expected = f"at timesteps[{k}] = {float(ts[k])}" if k < len(self._calls) else "none (run over)"
                raise ValueError(
                    f"step() got timestep {tv} but the next call is {expected}: step through scheduler.timesteps "
                    "in order, or call set_timesteps() / set_begin_index() to start a new run"
                )
            return k, None
        k = self.begin_index if k is None else k
        if k is None and ref is not None and ts is ref.timesteps and hasattr(ref, "index_for_timestep"):
            k = int(ref.index_for_timestep(timestep.to(ts.device) if isinstance(timestep, torch.Tensor) else timestep))
        elif k is None:
            tv = torch.as_tensor(timestep, dtype=torch.float64).cpu()
            hits = torch.isclose(ts.double().cpu(), tv, rtol=1e-6, atol=1e-6).nonzero().flatten().tolist()
            if not hits:
                raise ValueError(
                    f"timestep {float(tv)} is not in this schedule's timesteps ({ts.tolist()[:4]}...); step "
                    "through scheduler.timesteps"
                )
            k = hits[min(1, len(hits) - 1)]
        if not 0 <= k < len(self._calls):
            raise ValueError(f"begin_index={k} is outside the {len(self._calls)} timesteps of this schedule")
        i, j, _ = self._calls[k]
        if j != 0:
            raise ValueError(
                f"timesteps[{k}] is the call {j + 1} of a solver step, not the start of one: start runs at a "
                "step's first call (set_begin_index(t_start * scheduler.order))"
            )
        return k, self._grid[i:]

    def _begin_run(self, i0: int, grid: list[float], sample, eta: float, unclipped: bool = False):
        """A run from step ``i0`` over ``grid``: a generator sent ``(model output, sample, sigma, i, j)`` per pipeline
        call (call ``j`` of step ``i``), answering ``(prev_sample, pred_original_sample)``. Zero-length steps at the end
        (karras sigmas, final_sigmas_type="sigma_min") are diffusers' h = 0; a level repeated earlier is an error."""
        cut = next((m for m in range(len(grid) - 1) if not grid[m + 1] < grid[m]), len(grid) - 1)
        later = next((g for g in grid[cut + 1 :] if g != grid[cut]), None)
        dtype, out, last = state_dtype_for(sample.dtype), None, None
        view = self._ode(lambda x, t, **_: out, unclipped).start_run(input_dtype=sample.dtype, wants_denoised=True)
        solver = self._new_solver(i0, cut, **({"eta": eta} if eta else {}))
        state = solver.init(view, grid[: cut + 1], lambda like: self._draw(like))
        output, x_in, sigma, i, j = yield
        for step in range(cut):
            in_dtype, out = x_in.dtype, output.to(dtype)
            # from the sample the pipeline holds (maybe edited); our own prev_sample, untouched, with no round trip
            x = last[2] if last and x_in is last[0] and x_in._version == last[1] else self._xbar(x_in.to(dtype), sigma)
            if unclipped:  # DDIM's use_clipped_model_output=False: the DDIM step (E30) from D_clipped + sigma eps_raw
                # (on whose ray D_clipped lies) with eps_raw as the output there, as diffusers combines the two
                conv = self._ode(lambda *a, **k: None)
                d_raw, out = conv._convert(out, x, sigma, 1.0 / math.sqrt(1 + sigma * sigma))
                x = torch.add(self.transform(d_raw, sigma), out, alpha=sigma)
            gen = solver.step(step, x, state)
            request = gen.send(None)
            while True:
                reply = view.predict(*request[:2])  # this call's output, at the point the solver asked for
                try:
                    request, done = gen.send(reply), None
                except StopIteration as stop:
                    done = stop.value
                if (done is not None) != (j + 1 == self._per_step[i]):
                    raise DataDependentCallsError(
                        f"solver {self.solver_name!r} made {'more than ' if done is None else ''}{j + 1} model calls "
                        f"in step {i}, not {self._per_step[i]}: its calls depend on the data"
                    )
                if done is not None:
                    break
                x_mid = self._xbar(request[0], request[1], back=True).to(in_dtype)
                output, x_in, sigma, i, j = yield x_mid, reply[0].to(in_dtype)
                in_dtype, out = x_in.dtype, output.to(dtype)
            x_next, denoised = done
            prev = self._xbar(x_next, state.sigmas[step + 1], back=True).to(in_dtype)
            last = (prev, prev._version, x_next)
            output, x_in, sigma, i, j = yield prev, (None if denoised is None else denoised.to(in_dtype))
        if later is not None:
            raise ValueError(
                f"the schedule's sigmas repeat or increase ({grid[cut]} then {later}): with this many steps some "
                f"visit a level twice; use fewer than {len(self._grid) - 1} steps"
            )
        # from sigma to sigma at the end the sample stays, except that UniPC's corrector (UniC, Zhao et al. 2023)
        # corrects the last step once more with the new output, as diffusers' UniPC does there
        corr = getattr(state, "corr", None) if getattr(solver, "corrector", False) else None
        corr = corr[cut - 1] if corr else None
        while True:
            x, out = self._xbar(x_in.to(dtype), sigma), output.to(dtype)
            denoised, _ = view.predict(x, sigma)
            if corr is not None:
                x, corr = combine(corr[0], state.x_base, zip(corr[1], [denoised] + state.history)), None
            x = self._xbar(x, sigma, back=True).to(x_in.dtype)
            output, x_in, sigma, i, j = yield x, denoised.to(x_in.dtype)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """From any scheduler or its config: its ``_class_name`` (a supported diffusers scheduler) becomes
        ``emulate``, with every key of that class, defaults included. Keyword arguments override config keys."""
        if hasattr(config, "config") and not isinstance(config, dict):  # a scheduler object: its class
            config = dict(config.config, _class_name=type(config).__name__)
        cfg = dict(config or {})
        # a scheduler built in this process has no _class_name in its config: its keys name its class
        hits = [] if "_class_name" in cfg else classes_with_keys(cfg, [*FAMILIES, *DDIMScheduler._compatibles])
        if len(set(hits)) > 1:
            raise ValueError(
                f"the config's keys are those of {' and of '.join(dict.fromkeys(hits))}: pass the scheduler itself "
                "(DiffsolveScheduler.from_config(scheduler)) or emulate=<its class name>"
            )
        name = cfg.get("_class_name") or (hits[0] if hits else None)
        chosen = "emulate" in cfg or "emulate" in kwargs
        if not chosen and name in FAMILIES:
            cfg["emulate"] = name
            cfg.pop("_use_default_values", None)  # the source's own defaults are the values to reproduce
            cfg.update({k: cfg.get(k, v) for k, v in scheduler_defaults(name).items()})
        elif not chosen and name not in (None, cls.__name__):
            defaults = scheduler_defaults(name)
            beta = bool(defaults.keys() & {"beta_schedule", "trained_betas"})  # a DDPM training schedule
            spacing = sorted(k for k in _GRID_KEYS if k in cfg and cfg[k] != defaults.get(k))
            why = "its schedule is not a DDPM beta schedule" if not beta else f"its key(s) {spacing} set the grid"
            if not beta or spacing:
                raise ValueError(
                    f"DiffsolveScheduler cannot reproduce {name} ({why}); supported: {', '.join(FAMILIES)}. Sample "
                    "that model with diffsolve itself, which reads the whole config: ds.sample(ds.from_diffusers("
                    "model, scheduler.config), x_T, solver, sigmas=ds.diffusers_grid(scheduler.config, steps))"
                )
            if kwargs.get("solver", cfg.get("solver")) is None:
                raise ValueError(
                    f"DiffsolveScheduler cannot reproduce {name}; supported: {', '.join(FAMILIES)}. Name a diffsolve "
                    "solver (solver=...) to run it on this config's training schedule, or pass emulate="
                )
            # solver= replaces the source's method: native mode on its training schedule, its method keys dropped
            cfg = dict({k: v for k, v in cfg.items() if k in _NATIVE_DEFAULTS or k not in defaults}, emulate=None)
        # keyword overrides too, unless the caller collects the unused ones (from_pretrained's path)
        keys = list(cfg) + ([] if return_unused_kwargs else list(kwargs))
        unknown = sorted(k for k in keys if not k.startswith("_") and k not in _SIGNATURE.parameters)
        if unknown:
            raise ValueError(
                f"DiffsolveScheduler cannot honour the key(s) {unknown}; it reads the keys of {', '.join(FAMILIES)} "
                f"and its own ({', '.join(_OWN_KEYS)})"
            )
        return super().from_config(cfg, return_unused_kwargs=return_unused_kwargs, **kwargs)
