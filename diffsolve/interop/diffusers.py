"""diffusers models and scheduler configs as diffsolve objects (no diffusers import needed).

:func:`from_diffusers` reads a diffusers scheduler config (a scheduler object or its
``config`` dict) and a model (a diffusers ``UNet2DModel``/``UNet2DConditionModel`` or any
callable ``model(x, t, **kwargs)``), and returns the :class:`~diffsolve.DiffusionODE` diffsolve
samples. What is read from the config:

===================================== ==========================================================
config key                            diffsolve
===================================== ==========================================================
``num_train_timesteps``, ``beta_*``   :class:`~diffsolve.DiscreteSchedule` from the betas diffusers
``trained_betas``                     builds (float32, as diffusers does; alpha_bar in float64)
``rescale_betas_zero_snr``            Lin et al. 2024's rescale (terminal alpha_bar raised to 2^-24)
``prediction_type``                   epsilon -> ``eps``, sample -> ``x0``, v_prediction -> ``v``
``clip_sample``, ``clip_sample_range`` :func:`~diffsolve.Clipping` as ``denoised_transform``
``thresholding``, ...                 :func:`~diffsolve.DynamicThresholding` (ratio, max value)
``timestep_spacing``, ``steps_offset`` :func:`diffusers_grid`: the same timesteps as diffusers
===================================== ==========================================================

The model is fed diffusers' timestep (the DDPM index 0..T-1, fractional between levels) and the
VP state, as in diffusers pipelines.

Flow matching (``FlowMatchEulerDiscreteScheduler``, ``FlowMatchHeunDiscreteScheduler``: SD3, Flux):
the model predicts the velocity u = eps - x0 of x_t = (1 - t) x0 + t eps and is fed the timestep
``num_train_timesteps * t``. diffsolve wraps it as ``prediction="flow"`` on a
:class:`~diffsolve.FlowSchedule`, sigma = t / (1 - t) (E17). :func:`diffusers_grid` gives the sigmas of
diffusers' ``set_timesteps`` (``shift``; ``use_dynamic_shifting`` with the ``mu`` the pipeline passes;
``shift_terminal``); their first t is 1, i.e. sigma = inf, where :func:`diffsolve.sample` takes the
limit DDIM step from pure noise. DDIM on that grid is FlowMatchEuler (E30 is Euler in t for a flow
model). FlowMatchHeun is Heun in t: ``heun`` with ``variable="flow"``; Heun in sigma (the default)
is a different second-order method (docs/diffusers.md).

Every config key is checked: a key or value this module cannot represent (Karras/exponential/beta
sigma spacings inside the scheduler, learned variances, EDM or LCM parameterizations, inverted
sigmas, ...) is a ``ValueError`` naming it, never silently ignored. Keys that only choose the
scheduler's own sampling method (``solver_order``, ``algorithm_type``, ...) are ignored: diffsolve
takes the solver as an argument of :func:`diffsolve.sample`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..schedules import DiscreteSchedule, FlowSchedule
from ..thresholding import Clipping, DynamicThresholding
from ..validation import check_count
from ..wrapper import DiffusionODE
from .diffusers_sigmas import family_of_keys, family_sigmas

__all__ = [
    "from_diffusers",
    "schedule_from_config",
    "prediction_from_config",
    "transform_from_config",
    "diffusers_grid",
    "check_config",
    "is_flow_config",
    "PREDICTION_TYPES",
]

#: diffusers' prediction_type -> diffsolve's prediction
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def config_of(scheduler_or_config) -> Mapping[str, Any]:
    """The config dict of a diffusers scheduler (or the dict itself)."""
    cfg = getattr(scheduler_or_config, "config", scheduler_or_config)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"expected a diffusers scheduler or its config dict, got {type(scheduler_or_config).__name__}")
    return cfg


FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")
#: keys of a flow-matching config that set the model or the grid (read here)
FLOW_KEYS = {
    "num_train_timesteps",
    "shift",
    "use_dynamic_shifting",
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "shift_terminal",
    "time_shift_type",
}
#: keys of a DDPM-family config read here
DDPM_KEYS = {
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "rescale_betas_zero_snr",
    "prediction_type",
    "clip_sample",
    "clip_sample_range",
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
    "timestep_spacing",
    "steps_offset",
    "set_alpha_to_one",
}
#: keys that only choose a scheduler's own sampling method: diffsolve takes the solver separately
SOLVER_KEYS = {
    "solver_order",
    "algorithm_type",
    "solver_type",
    "lower_order_final",
    "euler_at_final",
    "disable_corrector",
    "predict_x0",
    "solver_p",
    "predictor_order",
    "corrector_order",
    "tau_func",
    "skip_prk_steps",
    "noise_sampler_seed",
    "lambda_min_clipped",
    "stochastic_sampling",
    # DiffsolveScheduler's own
    "solver",
    "solver_options",
    "grid",
    "grid_options",
}
#: keys accepted only at the value that leaves the model and the grid as read here: key -> (allowed, what to do)
FIXED_KEYS = {
    "use_karras_sigmas": ((False, None), "sample with grid='karras' (ds.grid) instead"),
    "use_exponential_sigmas": ((False, None), "sample with grid='logsnr' (ds.grid) instead"),
    "use_beta_sigmas": ((False, None), "pass your own sigmas= instead"),
    "use_lu_lambdas": ((False, None), "sample with grid='logsnr' (ds.grid) instead"),
    "use_flow_sigmas": ((False, None), "use a FlowMatchEulerDiscreteScheduler config for a flow model"),
    "flow_shift": ((1.0, None), "use a FlowMatchEulerDiscreteScheduler config with shift= for a flow model"),
    "final_sigmas_type": (("zero", "sigma_min", None), "allowed: 'zero', 'sigma_min'"),
    "variance_type": (
        (None, "fixed_small", "fixed_large"),
        "a learned variance doubles the model's output channels; wrap the eps half with ds.wrap",
    ),
    "timestep_type": (("discrete", None), "wrap a continuous-time model with ds.wrap(time=...)"),
    "interpolation_type": (("linear", None), "pass your own sigmas= instead"),
    "sigma_min": ((None,), "pass your own sigmas= instead"),
    "sigma_max": ((None,), "pass your own sigmas= instead"),
    "invert_sigmas": ((False, None), "invert with ds.invert instead"),
    # flow-sigma options of the DPM-Solver family (read by the flow-matching path itself)
    "use_dynamic_shifting": ((False, None), "use a FlowMatchEulerDiscreteScheduler config for a flow model"),
    "shift_terminal": ((None, 0, 0.0), "use a FlowMatchEulerDiscreteScheduler config for a flow model"),
}
#: keys with no effect while the keys above keep their allowed values
INERT_KEYS = {"time_shift_type"}


def _class_name(scheduler_or_config) -> str | None:
    if hasattr(scheduler_or_config, "config"):
        return type(scheduler_or_config).__name__
    return config_of(scheduler_or_config).get("_class_name")


def is_flow_config(config) -> bool:
    """Whether the config is a flow-matching scheduler's: by class name (a scheduler object or a
    saved config's ``_class_name``), else by its keys (``shift`` and no betas)."""
    name = _class_name(config)
    if name is not None:
        return name in FLOW_SCHEDULERS
    cfg = config_of(config)
    return "shift" in cfg and "beta_start" not in cfg and "trained_betas" not in cfg


def check_config(config) -> Mapping[str, Any]:
    """Raise ``ValueError`` for any config key or value that :func:`from_diffusers` and
    :func:`diffusers_grid` cannot represent faithfully; return the config."""
    cfg = config_of(config)
    name = _class_name(config)
    flow = is_flow_config(config)
    if name is not None and not flow and name.startswith(("FlowMatch", "EDM")):
        raise ValueError(
            f"{name} is not supported: from_diffusers reads DDPM-family schedulers and "
            f"{', '.join(FLOW_SCHEDULERS)}; wrap other models with ds.wrap"
        )
    own = FLOW_KEYS if flow else DDPM_KEYS
    known = own | SOLVER_KEYS | set(FIXED_KEYS) | INERT_KEYS
    for key, value in cfg.items():
        if key.startswith("_"):
            continue
        if key not in known:
            what = "a flow-matching" if flow else "a DDPM-family"
            raise ValueError(
                f"scheduler config key {key!r} (= {value!r}) is not read by from_diffusers for "
                f"{what} scheduler, and guessing could give a wrong answer; remove it if it does "
                "not change the model or the timesteps, or wrap the model with ds.wrap"
            )
        if key in FIXED_KEYS and key not in own:
            allowed, advice = FIXED_KEYS[key]
            if value not in allowed:
                raise ValueError(
                    f"scheduler config {key}={value!r} is not supported by from_diffusers "
                    f"(allowed: {', '.join(map(repr, allowed))}): {advice}"
                )
    if flow and cfg.get("time_shift_type", "exponential") not in ("exponential", "linear"):
        raise ValueError(f"time_shift_type={cfg['time_shift_type']!r} is not known; allowed: 'exponential', 'linear'")
    return cfg


def flow_schedule_from_config(config) -> FlowSchedule:
    """The :class:`~diffsolve.FlowSchedule` of a flow-matching config. Its t range [1e-6, 1 - 1e-7]
    only bounds where the model may be evaluated: it holds every t below 1 that diffusers' float32
    levels take (t = 1 itself is the grid's sigma = inf)."""
    config_of(config)
    return FlowSchedule(t_eps=1e-6, t_end=1.0 - 1e-7)


def schedule_from_config(config) -> DiscreteSchedule:
    """The :class:`~diffsolve.DiscreteSchedule` of a diffusers scheduler config (a
    :class:`~diffsolve.FlowSchedule` for a flow-matching one)."""
    cfg = config_of(config)
    if is_flow_config(config):
        return flow_schedule_from_config(cfg)
    T = cfg.get("num_train_timesteps", 1000)
    if isinstance(T, bool) or not isinstance(T, numbers.Integral) or T < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {T!r}")
    T = int(T)
    start, end = (_config_number(cfg, "beta_start", 1e-4), _config_number(cfg, "beta_end", 0.02))
    kind = cfg.get("beta_schedule", "linear")
    zero_snr = bool(cfg.get("rescale_betas_zero_snr", False))
    trained = cfg.get("trained_betas")
    if trained is not None:
        trained = torch.as_tensor(trained, dtype=torch.float32)
    # built once per training schedule (the float64 products and checks cost more than a short run's
    # steps): from_diffusers and diffusers_grid are called per sampling call with the same config
    key = (T, start, end, repr(kind), zero_snr, None if trained is None else trained.cpu().numpy().tobytes())
    hit = _SCHEDULES.get(key)
    if hit is None:
        hit = _build_schedule(T, start, end, kind, zero_snr, trained)
        if len(_SCHEDULES) >= 32:
            _SCHEDULES.clear()
        _SCHEDULES[key] = hit
    return hit


#: the schedules made by schedule_from_config, by training schedule (schedules are immutable)
_SCHEDULES: dict[tuple, DiscreteSchedule] = {}


def _build_schedule(T: int, start: float, end: float, kind, zero_snr: bool, trained) -> DiscreteSchedule:
    if trained is not None:
        betas = trained
    elif kind == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float32)
    elif kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, T, dtype=torch.float32) ** 2
    elif kind == "squaredcos_cap_v2":
        return DiscreteSchedule.squaredcos_cap_v2(T, rescale_zero_terminal_snr=zero_snr)
    else:
        raise ValueError(
            f"beta_schedule={kind!r} is not supported; supported: {', '.join(BETA_SCHEDULES)} (or pass trained_betas)"
        )
    return DiscreteSchedule.from_betas(betas.to(torch.float64), rescale_zero_terminal_snr=zero_snr)


def _config_number(cfg, key: str, default: float) -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"config {key}={value!r} must be a number")
    return float(value)


def prediction_from_config(config) -> str:
    """diffsolve's prediction for the config's ``prediction_type`` (a clear error for others);
    ``"flow"`` (the velocity eps - x0) for a flow-matching config."""
    if is_flow_config(config):
        return "flow"
    p = config_of(config).get("prediction_type", "epsilon")
    if p not in PREDICTION_TYPES:
        from ..validation import suggest

        raise ValueError(
            f"prediction_type={p!r} is not supported; supported: {', '.join(PREDICTION_TYPES)}"
            f"{suggest(p, PREDICTION_TYPES)}"
        )
    return PREDICTION_TYPES[p]


def transform_from_config(config) -> Callable | None:
    """The x0 correction the config asks for: dynamic thresholding, clipping, or None."""
    cfg = config_of(config)
    if cfg.get("thresholding", False):
        return DynamicThresholding(
            float(cfg.get("dynamic_thresholding_ratio", 0.995)), max_value=float(cfg.get("sample_max_value", 1.0))
        )
    if cfg.get("clip_sample", False):
        r = float(cfg.get("clip_sample_range", 1.0))
        return Clipping(-r, r)
    return None


def flow_times(config, steps: int, mu: float | None = None) -> torch.Tensor:
    """The t values (diffusers' "sigmas", float32 as diffusers forms them) of a flow-matching
    scheduler's ``set_timesteps(steps, mu=mu)``, without the final 0."""
    cfg = check_config(config)
    T = int(cfg.get("num_train_timesteps", 1000))
    shift = float(cfg.get("shift", 1.0))
    dynamic = bool(cfg.get("use_dynamic_shifting", False))
    if dynamic and mu is None:
        raise ValueError(
            "use_dynamic_shifting=True: pass mu= (the resolution-dependent shift the pipeline "
            "computes, e.g. from base_shift/max_shift and the image's token count) to diffusers_grid"
        )
    if not dynamic and mu is not None:
        raise ValueError("mu= is only used with use_dynamic_shifting=True; this config shifts by shift=")
    steps = check_count(steps, "steps")
    # the training levels, as diffusers' __init__ forms them (float32), then its set_timesteps
    train = torch.linspace(1, T, T, dtype=torch.float32).flip(0) / T
    if not dynamic:
        train = shift * train / (1 + (shift - 1) * train)
    t_max, t_min = float(train[0]), float(train[-1])
    import numpy as np  # diffusers forms the inference levels with numpy, in float64 then float32

    t = np.linspace(t_max * T, t_min * T, steps) / T
    if dynamic:
        if cfg.get("time_shift_type", "exponential") == "exponential":
            t = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
        else:
            t = mu / (mu + (1 / t - 1))
    else:
        t = shift * t / (1 + (shift - 1) * t)
    if cfg.get("shift_terminal"):
        one_minus = 1 - t
        t = 1 - one_minus / (one_minus[-1] / (1 - float(cfg["shift_terminal"])))
    return torch.from_numpy(np.asarray(t)).to(torch.float32)


def diffusers_grid(
    config, steps: int, schedule: DiscreteSchedule | None = None, *, mu: float | None = None
) -> torch.Tensor:
    """The sigmas of diffusers' ``set_timesteps(steps)`` for this config (``timestep_spacing``,
    ``steps_offset``, ``final_sigmas_type``, ``lambda_min_clipped``), by the rule of the config's
    scheduler class (:mod:`diffsolve.interop.diffusers_sigmas`: DDIM's n levels, the DPM-Solver
    family's n + 1 points, k-diffusion's fractional linspace). The class is the scheduler object's,
    the config's ``_class_name``, or the one whose keys the config has; a hand-written dict gets
    DDIM's rule, ending at sigma = 0 as DDIM with ``set_alpha_to_one=True`` does.

    With ``set_alpha_to_one=False`` DDIM's last step goes to alpha_bar of index 0, i.e. to the
    schedule's smallest sigma: the grid ends there instead (and a grid that already visits index 0
    loses that step, which in diffusers is a model call that returns its input).

    For a flow-matching config: sigma = t/(1 - t) (E17) of diffusers' t levels (``shift``;
    ``use_dynamic_shifting`` needs the pipeline's ``mu=``; ``shift_terminal``), computed in float64
    from diffusers' float32 t. Its first t is 1: the grid starts at sigma = inf (pure noise), which
    :func:`diffsolve.sample` starts from with the limit DDIM step (FlowMatchEuler's first step).
    """
    cfg = check_config(config)
    steps = check_count(steps, "steps")  # diffusers' num_inference_steps
    if is_flow_config(config):
        t = flow_times(cfg, steps, mu).double()
        sig = torch.where(t >= 1, torch.full_like(t, math.inf), t / (1 - t))
        return torch.cat([sig, sig.new_zeros(1)])
    if mu is not None:
        raise ValueError("mu= is only for flow-matching configs with use_dynamic_shifting=True")
    schedule = schedule if schedule is not None else schedule_from_config(cfg)
    name = _class_name(config)
    return family_sigmas(cfg, steps, schedule, name if name is not None else family_of_keys(cfg))


def model_callable(model) -> Callable[..., torch.Tensor]:
    """``model(x, t, **kwargs) -> tensor`` from a diffusers model (its output's ``.sample``) or a callable."""
    if not callable(model):
        raise TypeError(
            f"model must be a diffusers model or a callable model(x, t, **kwargs), got {type(model).__name__}"
        )

    def call(x, t, **kwargs):
        out = model(x, t, **kwargs)
        if isinstance(out, torch.Tensor):
            return out
        if hasattr(out, "sample"):
            return out.sample
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            return out[0]
        raise TypeError(f"the model returned {type(out).__name__}; expected a tensor or an output with .sample")

    return call


def from_diffusers(model, scheduler_or_config, *, follow_clipping: bool = True, **wrap_options: Any) -> DiffusionODE:
    """A diffusers model and scheduler (or its config) as the sigma-form ODE.

    Args:
        model: a diffusers model (``UNet2DModel``, ``UNet2DConditionModel``, ...) or a callable
            ``model(x, t, **kwargs)`` returning the prediction the config names.
        scheduler_or_config: any diffusers scheduler (DDIM, DDPM, Euler, ...) or its ``config``.
        follow_clipping: apply the config's ``clip_sample`` / ``thresholding`` as a
            ``denoised_transform`` (as diffusers' DDIM/DDPM schedulers do). Set False for the
            plain probability-flow ODE (needed for convergence order and faithful inversion).
        wrap_options: passed to :func:`diffsolve.wrap` (``guidance=``, ``cond=``, ``uncond=``,
            ``model_kwargs=``, ``guidance_rescale=``, ``denoised_transform=``, ...).

    Sample on diffusers' own timesteps with ``sigmas=diffusers_grid(config, steps)``.
    """
    cfg = check_config(scheduler_or_config)
    fixed = ["prediction"] + ([] if is_flow_config(scheduler_or_config) else ["time"])
    given = [k for k in fixed if k in wrap_options]
    if given:
        raise ValueError(
            f"from_diffusers takes {' and '.join(given)} from the scheduler config (prediction from its "
            f"prediction_type, the model fed diffusers' timestep): drop {', '.join(k + '=' for k in given)}, set "
            "the config's prediction_type, or use ds.wrap(model, schedule, prediction=..., time=...)"
        )
    if is_flow_config(scheduler_or_config):
        T = int(cfg.get("num_train_timesteps", 1000))
        wrap_options.setdefault("time", lambda sigma: T * (1.0 if math.isinf(sigma) else sigma / (1.0 + sigma)))
        return DiffusionODE(model_callable(model), flow_schedule_from_config(cfg), prediction="flow", **wrap_options)
    schedule = schedule_from_config(cfg)
    prediction = prediction_from_config(cfg)
    if follow_clipping and "denoised_transform" not in wrap_options:
        wrap_options["denoised_transform"] = transform_from_config(cfg)
    return DiffusionODE(model_callable(model), schedule, prediction=prediction, time="index", **wrap_options)
