"""Timestep grids: where the solver visits the ODE.

A grid is a function ``fn(schedule, steps, **options) -> Tensor`` returning a
strictly decreasing 1-D float64 tensor of sigmas that ends at 0. Grids are
registered by name through the plugin hook ``register_grids`` (the built-in
ones below go through the same door) and looked up with :func:`diffsolve.grid`.

Built-in grids (``steps`` = number of solver steps; the result has steps + 1 entries
unless stated):

``trailing`` / ``leading`` / ``linspace``
    diffusers' ``timestep_spacing`` over a :class:`DiscreteSchedule`'s own levels, as DDIMScheduler
    applies it (n levels). diffusers' DPM-Solver family (n + 1 points, the last dropped) and Euler
    family (fractional linspace) apply the same names differently: :func:`diffsolve.diffusers_grid`
    follows the scheduler class (:mod:`diffsolve.interop.diffusers_sigmas`).
``ddim-uniform`` / ``ddim-quad``
    The official DDIM code's index rules (docs/math.md E39, E40). Exactly the
    official index list: ``ddim-uniform`` has ceil(T/floor(T/S)) steps (16 for S = 15).
    ``ddim-quad`` has exactly ``steps`` steps or raises: its rule int(linspace(0, sqrt(0.8 T), S)^2)
    repeats indices near 0 once S exceeds :func:`ddim_quad_max_steps` (29 for T = 1000: S = 50
    gives 49 distinct indices, S = 1000 gives 688), and a repeated index is a step that goes
    nowhere at the cost of one model call (claim 16). Rather than silently returning fewer steps
    than asked, it raises a ValueError saying how many distinct levels there are; pass
    ``duplicates="drop"`` (``grid_options={"duplicates": "drop"}``) to accept the distinct levels,
    or use ``time-quadratic`` (the same quadratic-in-time idea, continuous, exactly S steps).
``karras``
    Karras et al. 2022 eq. 5, ``rho`` (default 7), between the schedule's sigma_min and sigma_max.
``logsnr``
    Uniform in lambda = -log sigma (E7) between sigma_max and sigma_min.
``time-uniform`` / ``time-quadratic``
    Uniform / quadratic in the schedule's own time t (fractional index for discrete schedules);
    quadratic is linspace(sqrt(t_max), sqrt(t_min))^2 as in DPM-Solver.

``kl-optimal``
    Align Your Steps (Sabour et al., ICML 2024), Theorem 3.1: the schedule that minimizes the KL
    bound of Euler (DDIM) steps when the data are N(0, c^2 I), sigma_k = c tan((1 - u_k) atan(sigma_max / c)
    + u_k atan(sigma_min / c)), u_k = k / (S - 1); ``c`` (default 1, as ComfyUI's ``kl_optimal``).
``ays-sd15`` / ``ays-sdxl`` / ``ays-svd``
    The published 10-step Align Your Steps sigmas (paper Table 3; diffusers' ``AysSchedules``) for
    Stable Diffusion 1.5, SDXL and Stable Video Diffusion, log-linearly interpolated in log sigma to
    other step counts as the paper's code does, last entry set to 0. Model-specific: the schedule's
    sigma_max must be the table's first value (14.615 for SD's scaled_linear, 700 for SVD's EDM).
``gits-sd15``
    GITS (Chen et al., ICML 2024) 10-step SD1.5 table (coefficient 1.20, as ComfyUI ships it), 10 steps only.

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
    "ddim_quad_max_steps",
    "BUILTIN_GRIDS",
]

_F64 = torch.float64


def validate_sigmas(
    sigmas, *, increasing: bool = False, name: str = "sigmas", infinite_start: bool = False
) -> torch.Tensor:
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
    """The official DDIM 'uniform' levels (E39): every floor(T/S)-th index from 0, ceil(T/floor(T/S)) steps."""
    sched = _need_discrete(schedule, "ddim-uniform")
    return _from_indices(sched, ddim_uniform_indices(sched.num_steps, steps))


def ddim_quad_max_steps(T: int) -> int:
    """The largest S for which the official 'quad' rule (E40) gives S distinct indices out of T
    (and every S' <= S does too): 29 for T = 1000."""
    S = 2
    while S < T and len(set(ddim_quad_indices(T, S + 1))) == S + 1:
        S += 1
    return S


def ddim_quad(schedule: Schedule, steps: int, duplicates: str = "raise") -> torch.Tensor:
    """The official DDIM 'quad' levels (E40): exactly ``steps`` steps, or a ValueError when the rule
    repeats indices (``duplicates="drop"``: keep the distinct ones, fewer steps)."""
    sched = _need_discrete(schedule, "ddim-quad")
    if duplicates not in ("raise", "drop"):
        raise ValueError(f"duplicates={duplicates!r} is not allowed; allowed: 'raise', 'drop'")
    if steps < 2:
        raise ValueError(f"ddim-quad needs steps >= 2 (its rule divides by steps - 1), got {steps}")
    T = sched.num_steps
    distinct = sorted(set(ddim_quad_indices(T, steps)))
    if len(distinct) != steps and duplicates == "raise":
        raise ValueError(
            f"grid 'ddim-quad' with steps={steps} on T={T} levels: the official rule int(linspace(0, sqrt(0.8 T), "
            f"S)^2) repeats indices near 0 and gives only {len(distinct)} distinct levels (a repeated level is a "
            f"step that goes nowhere but costs a model call). Use steps <= {ddim_quad_max_steps(T)}, pass "
            "grid_options={'duplicates': 'drop'} to run the distinct levels, or use the grid 'time-quadratic'"
        )
    return _from_indices(sched, distinct)


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


# -- published and closed-form low-NFE schedules ----------------------------------------------
def kl_optimal(schedule: Schedule, steps: int, c: float = 1.0, sigma_min=None, sigma_max=None) -> torch.Tensor:
    """Align Your Steps Theorem 3.1: sigma_k = c tan((1-u) atan(sigma_max/c) + u atan(sigma_min/c)), then 0."""
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"c (the data std of the theorem's Gaussian) must be a finite number > 0, got {c!r}")
    lo, hi = _range(schedule, sigma_min, sigma_max)
    if steps == 1:
        return torch.tensor([hi, 0.0], dtype=_F64)
    u = torch.linspace(0, 1, steps, dtype=_F64)
    s = c * torch.tan((1 - u) * math.atan(hi / c) + u * math.atan(lo / c))
    s[0], s[-1] = hi, lo
    return torch.cat([s, torch.zeros(1, dtype=_F64)])


#: published 10-step sigmas (11 values: the 10 step starts and the final sigma_min)
AYS_TABLES = {
    # Align Your Steps (Sabour et al., ICML 2024), Table 3; diffusers' AysSchedules
    "ays-sd15": [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029],
    "ays-sdxl": [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029],
    "ays-svd": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}
#: GITS (Chen et al., ICML 2024) SD1.5 table, coefficient 1.20, 10 steps (ComfyUI's GITSScheduler)
GITS_SD15_10 = [
    14.61464119,
    5.85520077,
    2.84484982,
    1.67050016,
    1.08895338,
    0.74807048,
    0.50118381,
    0.32104823,
    0.19894916,
    0.09824532,
    0.02916753,
]


def _check_table_schedule(schedule: Schedule, name: str, first: float) -> None:
    hi = float(schedule.sigma_max)
    if abs(hi - first) > 1e-3 * first:
        raise ValueError(
            f"grid {name!r} is the published table of one model family (it starts at sigma {first}); this "
            f"schedule's sigma_max is {hi:.6g}. Use it with that model's schedule, or use 'kl-optimal', "
            "'logsnr' or a recipe from diffsolve.tune for this one"
        )


def loglinear_interp(table, n: int) -> list[float]:
    """``n`` points interpolating a decreasing ``table`` linearly in log sigma over uniform positions
    (the Align Your Steps code's rule for other step counts)."""
    import numpy as np

    t = np.asarray(table, dtype=np.float64)
    xs = np.linspace(0.0, 1.0, len(t))
    ys = np.log(t[::-1])
    return np.exp(np.interp(np.linspace(0.0, 1.0, n), xs, ys))[::-1].tolist()


def _ays(name: str):
    table = AYS_TABLES[name]

    def fn(schedule: Schedule, steps: int) -> torch.Tensor:
        _check_table_schedule(schedule, name, table[0])
        s = list(table) if steps + 1 == len(table) else loglinear_interp(table, steps + 1)
        s[-1] = 0.0
        return torch.tensor(s, dtype=_F64)

    fn.__name__ = name.replace("-", "_")
    fn.__doc__ = (
        f"Align Your Steps' published 10-step {name[4:].upper()} sigmas (Sabour et al. 2024, Table 3), "
        "log-linear interpolation to other step counts, last entry 0."
    )
    return fn


def gits_sd15(schedule: Schedule, steps: int) -> torch.Tensor:
    """GITS' SD1.5 table (Chen et al. 2024, coefficient 1.20), 10 steps, last entry 0."""
    _check_table_schedule(schedule, "gits-sd15", GITS_SD15_10[0])
    if steps != 10:
        raise ValueError(
            f"grid 'gits-sd15' is published for 10 steps only, got steps={steps}; "
            "use 'ays-sd15' (any step count) or diffsolve.tune"
        )
    return torch.tensor(GITS_SD15_10[:-1] + [0.0], dtype=_F64)


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
    "kl-optimal": kl_optimal,
    "ays-sd15": _ays("ays-sd15"),
    "ays-sdxl": _ays("ays-sdxl"),
    "ays-svd": _ays("ays-svd"),
    "gits-sd15": gits_sd15,
}
