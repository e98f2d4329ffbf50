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
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ..grids import leading, linspace, trailing
from ..schedules import DiscreteSchedule
from ..thresholding import Clipping, DynamicThresholding
from ..wrapper import DiffusionODE

__all__ = [
    "from_diffusers",
    "schedule_from_config",
    "prediction_from_config",
    "transform_from_config",
    "diffusers_grid",
    "PREDICTION_TYPES",
]

#: diffusers' prediction_type -> diffsolve's prediction
PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = {"leading": leading, "trailing": trailing, "linspace": linspace}


def config_of(scheduler_or_config) -> Mapping[str, Any]:
    """The config dict of a diffusers scheduler (or the dict itself)."""
    cfg = getattr(scheduler_or_config, "config", scheduler_or_config)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"expected a diffusers scheduler or its config dict, got {type(scheduler_or_config).__name__}")
    return cfg


def schedule_from_config(config) -> DiscreteSchedule:
    """The :class:`~diffsolve.DiscreteSchedule` of a diffusers scheduler config."""
    cfg = config_of(config)
    T = int(cfg.get("num_train_timesteps", 1000))
    start, end = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    kind = cfg.get("beta_schedule", "linear")
    zero_snr = bool(cfg.get("rescale_betas_zero_snr", False))
    if cfg.get("trained_betas") is not None:
        betas = torch.as_tensor(cfg["trained_betas"], dtype=torch.float32)
    elif kind == "linear":
        betas = torch.linspace(start, end, T, dtype=torch.float32)
    elif kind == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, T, dtype=torch.float32) ** 2
    elif kind == "squaredcos_cap_v2":
        return DiscreteSchedule.squaredcos_cap_v2(T, rescale_zero_terminal_snr=zero_snr)
    else:
        raise ValueError(f"beta_schedule={kind!r} is not supported; supported: {', '.join(BETA_SCHEDULES)} "
                         "(or pass trained_betas)")
    return DiscreteSchedule.from_betas(betas.to(torch.float64), rescale_zero_terminal_snr=zero_snr)


def prediction_from_config(config) -> str:
    """diffsolve's prediction for the config's ``prediction_type`` (a clear error for others)."""
    p = config_of(config).get("prediction_type", "epsilon")
    if p not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={p!r} is not supported; supported: {', '.join(PREDICTION_TYPES)}")
    return PREDICTION_TYPES[p]


def transform_from_config(config) -> Callable | None:
    """The x0 correction the config asks for: dynamic thresholding, clipping, or None."""
    cfg = config_of(config)
    if cfg.get("thresholding", False):
        return DynamicThresholding(float(cfg.get("dynamic_thresholding_ratio", 0.995)),
                                    max_value=float(cfg.get("sample_max_value", 1.0)))
    if cfg.get("clip_sample", False):
        r = float(cfg.get("clip_sample_range", 1.0))
        return Clipping(-r, r)
    return None


def diffusers_grid(config, steps: int, schedule: DiscreteSchedule | None = None) -> torch.Tensor:
    """The sigmas of diffusers' ``set_timesteps(steps)`` for this config (``timestep_spacing``,
    ``steps_offset``), ending at sigma = 0 as DDIM with ``set_alpha_to_one=True`` does.

    With ``set_alpha_to_one=False`` DDIM's last step goes to alpha_bar of index 0, i.e. to the
    schedule's smallest sigma: the grid ends there instead (and a grid that already visits index 0
    loses that step, which in diffusers is a model call that returns its input).
    """
    cfg = config_of(config)
    schedule = schedule if schedule is not None else schedule_from_config(cfg)
    spacing = cfg.get("timestep_spacing", "leading")
    if spacing not in SPACINGS:
        raise ValueError(f"timestep_spacing={spacing!r} is not supported; supported: {', '.join(SPACINGS)}")
    if spacing == "leading":
        sig = leading(schedule, steps, steps_offset=int(cfg.get("steps_offset", 0)))
    else:
        sig = SPACINGS[spacing](schedule, steps)
    if not cfg.get("set_alpha_to_one", True):
        last = torch.tensor([schedule.sigma_min], dtype=sig.dtype)
        sig = sig[:-1] if float(sig[-2]) <= schedule.sigma_min else torch.cat([sig[:-1], last])
        if len(sig) < 2:
            raise ValueError("set_alpha_to_one=False leaves no step on this grid; use more steps")
    return sig


def model_callable(model) -> Callable[..., torch.Tensor]:
    """``model(x, t, **kwargs) -> tensor`` from a diffusers model (its output's ``.sample``) or a callable."""
    if not callable(model):
        raise TypeError(f"model must be a diffusers model or a callable model(x, t, **kwargs), got {type(model).__name__}")

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
    cfg = config_of(scheduler_or_config)
    schedule = schedule_from_config(cfg)
    prediction = prediction_from_config(cfg)
    if follow_clipping and "denoised_transform" not in wrap_options:
        wrap_options["denoised_transform"] = transform_from_config(cfg)
    return DiffusionODE(model_callable(model), schedule, prediction=prediction, time="index", **wrap_options)
