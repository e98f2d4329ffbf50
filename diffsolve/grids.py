"""Timestep grids: where the solver visits the ODE.

A grid is a function ``fn(schedule, steps, **options) -> Tensor`` returning a
strictly decreasing 1-D float64 tensor of sigmas that ends at 0. Grids are
registered by name through the plugin hook ``register_grids`` (the built-in
ones below go through the same door) and looked up with :func:`diffsolve.grid`.

Built-in grids (``steps`` = number of solver steps; the result has steps + 1 entries
unless stated):

``trailing`` / ``leading`` / ``linspace``
    diffusers' ``timestep_spacing`` over a :class:`DiscreteSchedule`'s own levels.
``ddim-uniform`` / ``ddim-quad``
    The official DDIM code's index rules (ddim-math.md E39, E40). Exactly the
    official index list: ``ddim-uniform`` has ceil(T/floor(T/S)) steps (16 for S = 15);
    ``ddim-quad`` drops the duplicate indices the official rule makes for S >= 50 (a
    duplicate step is a no-op that costs one NFE, claim 16), so it can have fewer.
``karras``
    Karras et al. 2022 eq. 5, ``rho`` (default 7), between the schedule's sigma_min and sigma_max.
``logsnr``
    Uniform in lambda = -log sigma (E7) between sigma_max and sigma_min.
``time-uniform`` / ``time-quadratic``
    Uniform / quadratic in the schedule's own time t (fractional index for discrete schedules);
    quadratic is linspace(sqrt(t_max), sqrt(t_min))^2 as in DPM-Solver.

Every grid accepts ``sigma_min=`` and ``sigma_max=`` where they make sense, and
all of them append the final sigma = 0.
"""

from __future__ import annotations

import math

import torch

from .schedules import DiscreteSchedule, Schedule

__all__ = [
    "validate_sigmas",
    "ddim_uniform_indices",
    "ddim_quad_indices",
    "BUILTIN_GRIDS",
]

_F64 = torch.float64


def validate_sigmas(sigmas, *, increasing: bool = False, name: str = "sigmas",
                    infinite_start: bool = False) -> torch.Tensor:
    """Check a user grid and return it as a float64 CPU tensor.

    Rules: 1-D, at least 2 entries, finite, non-negative, strictly decreasing
    (strictly increasing with ``increasing=True``, as :func:`diffsolve.invert` needs).
    With ``infinite_start=True`` (sampling) the first entry may be ``inf``: the pure-noise
    level of a flow or zero-terminal-SNR model (see :func:`diffsolve.sample`).
    """
    try:
        s = torch.as_tensor(sigmas, dtype=_F64).detach().cpu()
    except Exception as exc:  # pragma: no cover - torch's own message is kept
        raise TypeError(f"{name} must be a 1-D sequence of floats: {exc}") from None
    if s.dim() != 1 or s.numel() < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 entries, got shape {tuple(s.shape)}")
    finite = torch.isfinite(s)
    if infinite_start and not increasing and s.numel() > 1 and float(s[0]) == math.inf:
        finite[0] = True
    if not finite.all():
        raise ValueError(f"{name} must be finite (only sample's first entry may be +inf), got {s.tolist()}")
    if (s < 0).any():
        raise ValueError(f"{name} must be non-negative, got min {float(s.min())}")
    d = s[1:] - s[:-1]
    if increasing and not (d > 0).all():
        k = int((d <= 0).nonzero()[0, 0])
        raise ValueError(
            f"{name} must be strictly increasing for invert (sigma runs upward from 0); "
            f"entry {k + 1} ({float(s[k + 1])}) does not exceed entry {k} ({float(s[k])})"
        )
    if not increasing and not (d < 0).all():
        k = int((d >= 0).nonzero()[0, 0])
        raise ValueError(
            f"{name} must be strictly decreasing for sampling; entry {k + 1} ({float(s[k + 1])}) "
            f"is not below entry {k} ({float(s[k])})"
        )
    return s


def _need_discrete(schedule: Schedule, grid: str) -> DiscreteSchedule:
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(
            f"grid {grid!r} is defined over a DiscreteSchedule's levels, got {type(schedule).__name__}; "
            "for continuous schedules use 'karras', 'logsnr', 'time-uniform' or 'time-quadratic'"
        )
    return schedule


def _from_indices(schedule: DiscreteSchedule, indices) -> torch.Tensor:
    idx = torch.as_tensor(indices, dtype=torch.long)
    return torch.cat([schedule.sigmas[idx.flip(0)], torch.zeros(1, dtype=_F64)])


def _range(schedule: Schedule, sigma_min, sigma_max) -> tuple[float, float]:
    lo = schedule.sigma_min if sigma_min is None else float(sigma_min)
    hi = schedule.sigma_max if sigma_max is None else float(sigma_max)
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={lo}, sigma_max={hi}")
    return lo, hi


# -- discrete grids (diffusers' timestep_spacing) -----------------------------------------
def trailing(schedule: Schedule, steps: int) -> torch.Tensor:
    """Indices round(T - k T/S) - 1, k = 0..S-1: starts at the last level T-1."""
    sched = _need_discrete(schedule, "trailing")
    T = sched.num_steps
    _max_steps(steps, T, "trailing")
    idx = torch.round(torch.arange(T, 0, -T / steps, dtype=_F64)).long() - 1
    return _from_indices(sched, idx.flip(0))


def leading(schedule: Schedule, steps: int, steps_offset: int = 0) -> torch.Tensor:
    """Indices k floor(T/S) + steps_offset, k = 0..S-1 (Stable Diffusion's default)."""
    sched = _need_discrete(schedule, "leading")
    T = sched.num_steps
    _max_steps(steps, T, "leading")
    idx = torch.arange(steps, dtype=torch.long) * (T // steps) + int(steps_offset)
    if idx[-1] >= T:
        raise ValueError(f"steps_offset={steps_offset} pushes the grid past the last index {T - 1}")
    return _from_indices(sched, idx)


def linspace(schedule: Schedule, steps: int) -> torch.Tensor:
    """Indices round(linspace(0, T-1, S))."""
    sched = _need_discrete(schedule, "linspace")
    T = sched.num_steps
    _max_steps(steps, T, "linspace")
    idx = torch.linspace(0, T - 1, steps, dtype=_F64).round().long()
    return _from_indices(sched, idx)


def ddim_uniform_indices(T: int, steps: int) -> list[int]:
    """The official DDIM 'uniform' rule (E39): k = T // S, seq = range(0, T, k)."""
    if T // steps < 1:
        raise ValueError(f"ddim-uniform needs steps <= {T}, got {steps}")
    return list(range(0, T, T // steps))


def ddim_quad_indices(T: int, steps: int) -> list[int]:
    """The official DDIM 'quad' rule (E40): int((linspace(0, sqrt(0.8 T), S))^2), duplicates kept."""
    import numpy as np

    return [int(s) for s in list(np.linspace(0, np.sqrt(T * 0.8), steps) ** 2)]


def ddim_uniform(schedule: Schedule, steps: int) -> torch.Tensor:
    sched = _need_discrete(schedule, "ddim-uniform")
    return _from_indices(sched, ddim_uniform_indices(sched.num_steps, steps))


def ddim_quad(schedule: Schedule, steps: int) -> torch.Tensor:
    sched = _need_discrete(schedule, "ddim-quad")
    if steps < 2:
        raise ValueError(f"ddim-quad needs steps >= 2 (its rule divides by steps - 1), got {steps}")
    return _from_indices(sched, sorted(set(ddim_quad_indices(sched.num_steps, steps))))


# -- sigma-space grids ------------------------------------------------------------------
def karras(schedule: Schedule, steps: int, rho: float = 7.0, sigma_min=None, sigma_max=None) -> torch.Tensor:
    """sigma_k = (sigma_max^(1/rho) + k/(S-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, then 0."""
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    lo, hi = _range(schedule, sigma_min, sigma_max)
    if steps == 1:
        return torch.tensor([hi, 0.0], dtype=_F64)
    ramp = torch.linspace(0, 1, steps, dtype=_F64)
    s = (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
    return torch.cat([s, torch.zeros(1, dtype=_F64)])


def logsnr(schedule: Schedule, steps: int, sigma_min=None, sigma_max=None) -> torch.Tensor:
    """Uniform in lambda = -log sigma (DPM-Solver's 'logSNR'), then 0."""
    lo, hi = _range(schedule, sigma_min, sigma_max)
    if steps == 1:
        return torch.tensor([hi, 0.0], dtype=_F64)
    s = torch.exp(torch.linspace(math.log(hi), math.log(lo), steps, dtype=_F64))
    return torch.cat([s, torch.zeros(1, dtype=_F64)])


def _time_grid(schedule: Schedule, steps: int, power: float, sigma_min, sigma_max) -> torch.Tensor:
    lo, hi = _range(schedule, sigma_min, sigma_max)
    t_lo, t_hi = float(schedule.t(lo)), float(schedule.t(hi))
    if steps == 1:
        return torch.tensor([hi, 0.0], dtype=_F64)
    u = torch.linspace(t_hi ** (1 / power), t_lo ** (1 / power), steps, dtype=_F64) ** power
    s = schedule.sigma(u)
    s[0], s[-1] = hi, lo
    return torch.cat([s, torch.zeros(1, dtype=_F64)])


def time_uniform(schedule: Schedule, steps: int, sigma_min=None, sigma_max=None) -> torch.Tensor:
    """Uniform in the schedule's time t (k-diffusion's get_sigmas for a discrete model)."""
    return _time_grid(schedule, steps, 1.0, sigma_min, sigma_max)


def time_quadratic(schedule: Schedule, steps: int, sigma_min=None, sigma_max=None) -> torch.Tensor:
    """Quadratic in t: t_k = linspace(sqrt(t_max), sqrt(t_min), S)^2 (DPM-Solver's 'time_quadratic')."""
    return _time_grid(schedule, steps, 2.0, sigma_min, sigma_max)


def _max_steps(steps: int, T: int, name: str) -> None:
    if steps > T:
        raise ValueError(f"grid {name!r} has at most {T} steps on this schedule, got steps={steps}")


BUILTIN_GRIDS = {
    "trailing": trailing,
    "leading": leading,
    "linspace": linspace,
    "ddim-uniform": ddim_uniform,
    "ddim-quad": ddim_quad,
    "karras": karras,
    "logsnr": logsnr,
    "time-uniform": time_uniform,
    "time-quadratic": time_quadratic,
}
