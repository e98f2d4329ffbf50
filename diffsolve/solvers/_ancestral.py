"""The ancestral split of one step (docs/math.md E18-E20, E26), shared by every solver that adds
fresh noise on a step: ddim (eta), euler-ancestral and dpmpp-sde.

A step sigma_t -> sigma_s (sigma_s < sigma_t) with noise level eta is a deterministic step to
sigma_down followed by fresh noise of std sigma_up, with sigma_down^2 + sigma_up^2 = sigma_s^2:

    sigma_up   = eta * sigma_s * sqrt(sigma_t^2 - sigma_s^2) / sigma_t          (E20 / A_s)
    sigma_down = sqrt(sigma_s^2 - sigma_up^2)                                    (E26)

eta = 1 is DDPM's posterior (E24), eta = 0 the deterministic DDIM step. For eta <= 1,
sigma_up <= sigma_s always. For eta > 1 the radicand would go negative where
sigma_up > sigma_s: sigma_down is then 0, and sigma_up is either kept (``clamp_up=False``:
DDIM's E18 read literally, more noise than the marginal at sigma_s has) or capped at sigma_s
(``clamp_up=True``: k-diffusion's rule, the marginal variance kept). Upward (encoding) steps
add no noise: sigma_up = 0, sigma_down = sigma_s (docs/math.md pitfall 10).
"""

from __future__ import annotations

import math
import warnings


def ancestral_split(sigma_t: float, sigma_s: float, eta: float, *, clamp_up: bool = True) -> tuple[float, float]:
    """``(sigma_down, sigma_up)`` of the step ``sigma_t -> sigma_s`` at noise level ``eta`` (float64)."""
    if not sigma_s < sigma_t:
        return sigma_s, 0.0
    up = eta * sigma_s * math.sqrt(sigma_t * sigma_t - sigma_s * sigma_s) / sigma_t
    if clamp_up:
        up = min(up, sigma_s)
    return math.sqrt(max(sigma_s * sigma_s - up * up, 0.0)), up


class EtaWarning(UserWarning):
    """eta > 1: more noise per step than DDPM's posterior (see :func:`ancestral_split`)."""


def check_eta(value, *, clamp_up: bool = True) -> float:
    """The ``eta`` option: a finite number >= 0 (ValueError otherwise); eta > 1 is allowed but warns
    with :class:`EtaWarning`, saying what it does for this solver (module docstring above)."""
    from .base import check_real

    eta = check_real("eta", value, low=0.0)
    if eta > 1:
        what = (
            "sigma_up is capped at sigma_s: the step lands at sigma_down = 0 wherever the cap binds and the "
            "marginal variance is kept (k-diffusion's rule)"
            if clamp_up
            else "sigma_down is clamped at 0 and sigma_up kept, so the step adds more noise than the marginal "
            "at sigma_s has (DDIM's E18 read literally)"
        )
        warnings.warn(
            f"eta={eta:g} > 1 adds more noise per step than DDPM's posterior (eta = 1, E24): {what}. "
            "See diffsolve/solvers/_ancestral.py",
            EtaWarning,
            stacklevel=3,
        )
    return eta


def set_noise_options(solver, eta, s_noise) -> None:
    """The options of an ancestral solver: ``eta`` (:func:`check_eta`) and ``s_noise`` (a number >= 0),
    and the instance's ``stochastic`` / ``invertible`` flags that follow from them."""
    from .base import check_real

    solver.eta, solver.s_noise = check_eta(eta), check_real("s_noise", s_noise, low=0.0)
    solver.stochastic = solver.eta > 0 and solver.s_noise > 0
    solver.invertible = not solver.stochastic
