"""The sigmas each diffusers scheduler family's ``set_timesteps(n)`` visits, written out without diffusers.

diffusers has three timestep rules for DDPM-trained models, and which one a config gets depends on its
scheduler class (the config's ``_class_name``), not only on ``timestep_spacing``:

``"ddim"`` (DDIMScheduler, DDPMScheduler, PNDMScheduler, and a config without a class name)
    n integer indices: leading k floor(T/n) + steps_offset, trailing round(T - k T/n) - 1, linspace
    round(linspace(0, T-1, n)); the last step goes to sigma = 0 (``set_alpha_to_one=False``: to the
    smallest level). These are :mod:`diffsolve.grids`' ``leading`` / ``trailing`` / ``linspace``.
``"dpm"`` (DPMSolverMultistep/Singlestep, UniPC, DEIS, SA-Solver)
    n + 1 points, the last one dropped: linspace round(linspace(0, T'-1, n + 1)) without its 0, leading
    k floor(T'/(n + 1)) + steps_offset for k = 1..n, trailing as above (from T'); T' = T less the levels
    whose log-SNR is below ``lambda_min_clipped``. The final sigma is ``final_sigmas_type``'s: 0 or the
    smallest level (DEIS and SA-Solver always end at the smallest level). DPMSolverSinglestep has no
    ``timestep_spacing``: always linspace.
``"k"`` (Euler, Euler ancestral, Heun, LMS, KDPM2, KDPM2 ancestral, DPMSolverSDE: k-diffusion's family)
    n points, leading and trailing as ``"ddim"``, linspace **fractional**: linspace(0, T-1, n) in float32,
    sigma linear in the index between levels (not log-linear, as :meth:`DiscreteSchedule.sigma` is).
    The final sigma is ``final_sigmas_type``'s where the class has the key (Euler), else 0. The
    two-evaluation classes (Heun, KDPM2, DPMSolverSDE) list every level twice in their ``sigmas``
    (and KDPM2 adds midpoints): the grid here is their step grid, each level once.

:func:`diffsolve.diffusers_grid` uses these rules; ``tests/test_diffusers_grid.py`` checks them against
the installed diffusers classes for every family x spacing x final sigma at 1, 2, 10 and 50 steps.
``DiffsolveScheduler(emulate=...)`` does not need them: it asks the emulated diffusers class itself.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from ..grids import leading, linspace, trailing, validate_sigmas
from ..schedules import DiscreteSchedule

__all__ = ["FAMILY_RULES", "classes_with_keys", "family_rule", "family_sigmas", "family_of_keys", "scheduler_defaults"]

#: scheduler class name -> its timestep rule (see the module docstring)
FAMILY_RULES = {
    "DDIMScheduler": "ddim",
    "DDPMScheduler": "ddim",
    "PNDMScheduler": "ddim",
    "DPMSolverMultistepScheduler": "dpm",
    "DPMSolverSinglestepScheduler": "dpm",
    "UniPCMultistepScheduler": "dpm",
    "DEISMultistepScheduler": "dpm",
    "SASolverScheduler": "dpm",
    "EulerDiscreteScheduler": "k",
    "EulerAncestralDiscreteScheduler": "k",
    "HeunDiscreteScheduler": "k",
    "LMSDiscreteScheduler": "k",
    "KDPM2DiscreteScheduler": "k",
    "KDPM2AncestralDiscreteScheduler": "k",
    "DPMSolverSDEScheduler": "k",
}
#: families that always end at the smallest level (they have no final_sigmas_type key)
_ENDS_AT_SIGMA_MIN = ("DEISMultistepScheduler", "SASolverScheduler")
#: families whose spacing is always linspace (they have no timestep_spacing key)
_ALWAYS_LINSPACE = ("DPMSolverSinglestepScheduler",)
SPACINGS = ("leading", "trailing", "linspace")


#: keys that only the "dpm" or "k" families have: a config holding one and no class name is not DDIM's
_NOT_DDIM_KEYS = ("final_sigmas_type", "lambda_min_clipped", "solver_order", "algorithm_type", "interpolation_type")


def scheduler_defaults(name: str) -> dict:
    """The ``__init__`` keys of diffusers' scheduler class ``name`` with their defaults ({}: no such class, or
    diffusers not installed)."""
    try:
        import diffusers
    except ImportError:  # a plain dict without diffusers: no class to match
        return {}
    cls = getattr(diffusers, name, None) if name.isidentifier() else None
    init = vars(cls).get("__init__") if isinstance(cls, type) else None
    params = inspect.signature(init).parameters.items() if init is not None else ()
    return {k: p.default for k, p in params if k not in ("self", "kwargs")}


def classes_with_keys(cfg, names) -> list[str]:
    """Those of the diffusers scheduler classes ``names`` whose ``__init__`` keys are exactly the config's
    (its keys not starting with "_"); none when diffusers is not installed."""
    keys = {k for k in cfg if not k.startswith("_")}
    return [name for name in names if keys and keys == scheduler_defaults(name).keys()]


def family_of_keys(cfg) -> str | None:
    """The scheduler class of a config without ``_class_name`` (``scheduler.config`` has none): the
    class in :data:`FAMILY_RULES` whose ``__init__`` keys are exactly the config's. None when no class
    matches (a hand-written dict) or diffusers is not installed; an error when the matching classes
    have different rules."""
    keys = {k for k in cfg if not k.startswith("_")}
    hits = classes_with_keys(cfg, FAMILY_RULES)
    rules = {FAMILY_RULES[h] for h in hits}
    if len(rules) > 1:
        raise ValueError(
            f"the config's keys are those of {' and '.join(hits)}, whose timestep rules differ: add "
            "'_class_name' to the config or pass the scheduler object itself"
        )
    if not hits:
        foreign = [k for k in _NOT_DDIM_KEYS if k in keys]
        if foreign:
            raise ValueError(
                f"the config has {', '.join(foreign)} but no '_class_name', and its keys are not those of one "
                f"known scheduler: its timestep rule is unknown. Add '_class_name' (one of {', '.join(FAMILY_RULES)}) "
                "or pass the scheduler object itself"
            )
        return None
    return hits[0]


def family_rule(class_name: str | None) -> str:
    """The timestep rule of a scheduler class (``"ddim"`` for a config without a class name)."""
    if class_name is None:
        return "ddim"
    if class_name not in FAMILY_RULES:
        raise ValueError(
            f"diffusers_grid does not know the timestep rule of {class_name}; known: {', '.join(FAMILY_RULES)}. "
            "Take the sigmas from the scheduler itself (scheduler.set_timesteps(n); pass sigmas= to ds.sample) "
            "or drop '_class_name' from the config to get DDIMScheduler's rule"
        )
    return FAMILY_RULES[class_name]


def family_sigmas(cfg, steps: int, schedule: DiscreteSchedule, class_name: str | None) -> torch.Tensor:
    """The float64 sigmas (strictly decreasing, with the final one) of ``class_name``'s
    ``set_timesteps(steps)`` for the config ``cfg`` on ``schedule`` (the config's own schedule)."""
    rule = family_rule(class_name)
    spacing = "linspace" if class_name in _ALWAYS_LINSPACE else cfg.get("timestep_spacing", "leading")
    if spacing not in SPACINGS:
        raise ValueError(f"timestep_spacing={spacing!r} is not supported; supported: {', '.join(SPACINGS)}")
    final_type = cfg.get("final_sigmas_type", "zero")
    if final_type not in ("zero", "sigma_min", None):
        raise ValueError(f"final_sigmas_type={final_type!r} is not known; allowed: 'zero', 'sigma_min'")
    offset = int(cfg.get("steps_offset", 0) or 0)
    if rule == "ddim":
        if final_type == "sigma_min":
            raise ValueError(
                f"final_sigmas_type='sigma_min' is not a key of {class_name or 'DDIMScheduler'} (its last step is "
                "set by set_alpha_to_one); remove it, or use set_alpha_to_one=False to end at the smallest level"
            )
        return _ddim_rule(cfg, steps, schedule, spacing, offset)
    T = schedule.num_steps
    if rule == "dpm":
        t = _dpm_timesteps(cfg, steps, schedule, spacing, offset)
        end_min = class_name in _ENDS_AT_SIGMA_MIN or final_type == "sigma_min"
    else:
        t = _k_timesteps(steps, T, spacing, offset)
        end_min = final_type == "sigma_min"
    # sigma at each (possibly fractional) index, linear in the index between levels, as diffusers interpolates
    sig = torch.as_tensor(np.interp(t, np.arange(T), schedule.sigmas.numpy()), dtype=torch.float64)
    last = schedule.sigma_min if end_min else 0.0
    sig = torch.cat([sig, torch.tensor([last], dtype=torch.float64)])
    return _strict(sig, class_name, steps)


def _ddim_rule(cfg, steps, schedule, spacing, offset) -> torch.Tensor:
    if spacing == "leading":
        sig = leading(schedule, steps, steps_offset=offset)
    else:
        sig = {"trailing": trailing, "linspace": linspace}[spacing](schedule, steps)
    if not cfg.get("set_alpha_to_one", True):
        # the last step goes to alpha_bar of index 0, i.e. to the smallest sigma; a grid that already
        # visits index 0 loses that step (in diffusers a model call that returns its input)
        last = torch.tensor([schedule.sigma_min], dtype=sig.dtype)
        sig = sig[:-1] if float(sig[-2]) <= schedule.sigma_min else torch.cat([sig[:-1], last])
        if len(sig) < 2:
            raise ValueError("set_alpha_to_one=False leaves no step on this grid; use more steps")
    return sig


def _dpm_timesteps(cfg, steps, schedule, spacing, offset) -> np.ndarray:
    """Integer indices of the DPM-Solver family: n + 1 points, the smallest dropped."""
    T = schedule.num_steps
    lambda_min = cfg.get("lambda_min_clipped", -math.inf)
    lambda_min = -math.inf if lambda_min is None else float(lambda_min)
    # levels with log-SNR lambda = -log sigma (E7) below lambda_min are cut from the top of the range
    clipped = int((-schedule.log_sigmas < lambda_min).sum())
    top = T - clipped
    if spacing == "linspace":
        t = np.linspace(0, top - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "leading":
        t = (np.arange(0, steps + 1) * (top // (steps + 1))).round()[::-1][:-1] + offset
    else:
        t = np.arange(top, 0, -T / steps).round() - 1
    return t.astype(np.int64)


def _k_timesteps(steps, T, spacing, offset) -> np.ndarray:
    """Indices of k-diffusion's family: n points; linspace fractional (float32, as diffusers forms them)."""
    if spacing == "linspace":
        return np.linspace(0, T - 1, steps).astype(np.float32)[::-1].astype(np.float64)
    if spacing == "leading":
        return (np.arange(0, steps) * (T // steps)).round()[::-1] + offset
    return np.arange(T, 0, -T / steps).round() - 1


def _strict(sig: torch.Tensor, class_name, steps) -> torch.Tensor:
    """The grid, or a clear error where the family's rule repeats a level (a step that goes nowhere)."""
    d = sig[1:] - sig[:-1]
    if not (d < 0).all():
        k = int((d >= 0).nonzero()[0, 0])
        raise ValueError(
            f"{class_name}'s timestep rule at {steps} steps repeats or reverses a level (sigma {float(sig[k])} "
            f"then {float(sig[k + 1])}): a zero-length step a diffsolve grid cannot hold; use another step count, "
            "timestep_spacing or final_sigmas_type"
        )
    return validate_sigmas(sig)
