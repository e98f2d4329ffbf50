"""The ancestral split of a step (ddim-math.md E26), written once for the solvers of issue 14.

A step sigma_t -> sigma_s with noise level eta is taken as a deterministic move to sigma_down
followed by fresh noise of std sigma_up:

    nubar      = eta * sigma_s * sqrt(sigma_t^2 - sigma_s^2) / sigma_t        (E20 / A_s)
    sigma_up   = min(nubar, sigma_s),     sigma_down = sqrt(sigma_s^2 - sigma_up^2)

so that sigma_down^2 + sigma_up^2 = sigma_s^2 (the marginal of a point mass is kept). eta = 1 is
DDPM's posterior variance (E24). On an upward (encoding) step no noise is added (pitfall 10).
"""

from __future__ import annotations

import math


def ancestral_split(sigma_t: float, sigma_s: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of the step sigma_t -> sigma_s at noise level eta (E26)."""
    if eta == 0 or not sigma_s < sigma_t:
        return sigma_s, 0.0
    up = min(sigma_s, eta * sigma_s * math.sqrt(sigma_t**2 - sigma_s**2) / sigma_t)
    return math.sqrt(max(sigma_s**2 - up**2, 0.0)), up


def check_nonnegative(option: str, value) -> float:
    """A finite float >= 0 (ValueError naming the option otherwise)."""
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{option} must be a finite number >= 0, got {value}")
    return value
