"""DDIM (Song, Meng & Ermon 2021) as the Euler method in sigma, with the eta family.

Deterministic step (eta = 0), docs/math.md E30, identical to DDIM's E22:

    xbar_s = xbar_t + (sigma_s - sigma_t) * eps(xbar_t, sigma_t)

Stochastic step (eta > 0), E26 (the generalized DDIM step E18 divided by A_s):

    nubar   = eta * sigma_s * sqrt(sigma_t^2 - sigma_s^2) / sigma_t          (E20 / A_s)
    xbar_s  = xbar_t + (sqrt(sigma_s^2 - nubar^2) - sigma_t) * eps + nubar * z

eta = 1 is DDPM's posterior variance (E24). ``variance="large"`` is the paper's
sigma-hat DDPM (E25): same mean as eta = 1, noise std sqrt(1 - abar_t/abar_s) in
VP space, i.e. sqrt((sigma_t^2 - sigma_s^2)(1 + sigma_s^2)/(1 + sigma_t^2)) in xbar,
masked on the step to sigma = 0 (docs/math.md 2.4).

The step to sigma_s = 0 returns the denoised estimate itself (E27). On an
increasing grid (encoding, E42) the step is the deterministic one with nu := 0.
Order 1, one model call per step.
"""

from __future__ import annotations

import math

import torch

from ._ancestral import ancestral_split, check_eta
from .base import Solver, check_choice

VARIANCES = ("eta", "large")


class DDIM(Solver):
    """DDIM: Euler in sigma (E30); eta > 0 adds DDIM's stochastic family (E18-E26)."""

    name = "ddim"
    order = 1
    calls_per_step = 1
    renoise_ok = True

    def __init__(self, *, eta: float = 0.0, variance: str = "eta"):
        self.eta = eta = check_eta(eta, clamp_up=False)
        self.variance = check_choice("variance", variance, VARIANCES)
        if variance == "large" and eta not in (0.0, 1.0):  # E25 is eta = 1's mean with its own noise: eta unused
            raise ValueError(
                f"variance='large' is DDPM's sigma-hat step (eta = 1's mean, the larger noise of E25): it takes no "
                f"eta, so eta={eta} would be ignored; drop eta, or use variance='eta' with eta={eta}"
            )
        # an instance is stochastic when it draws noise
        self.stochastic = eta > 0 or variance == "large"
        self.invertible = not self.stochastic

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        # float64 coefficients per step: x_next = x + c_eps * eps + c_noise * z
        state.c_eps, state.c_noise = [], []
        for s_t, s_s in zip(state.sigmas[:-1], state.sigmas[1:]):
            # nu := 0 on upward (encoding) steps (pitfall 10); for eta > 1 the radicand
            # sigma_s^2 - nubar^2 is clamped at 0 and nubar kept (E18 read literally)
            eta = 1.0 if self.variance == "large" else self.eta
            sigma_down, nubar = ancestral_split(s_t, s_s, eta, clamp_up=False)
            if self.variance == "large" and s_s < s_t:  # sigma-hat (E25): eta = 1's mean, larger noise
                nubar = math.sqrt((s_t**2 - s_s**2) * (1 + s_s**2) / (1 + s_t**2)) if s_s > 0 else 0.0
            state.c_eps.append(sigma_down - s_t)
            state.c_noise.append(nubar)
        return state

    def step(self, i, x, state):
        s_t, s_s = state.sigmas[i], state.sigmas[i + 1]
        denoised, eps = yield x, s_t, s_s == 0
        if s_s == 0:
            return denoised, denoised  # E27: the last step is the x0-prediction
        # renoising predictions (CFG++, DDNM): continue from D + sigma_t eps, so that
        # x_next = D + sigma_down eps (docs/math.md, "Renoising predictions")
        x = state.ode.renoised(x, denoised, eps, s_t)
        x_next = torch.add(x, eps, alpha=state.c_eps[i])  # one fused kernel: x + c * eps
        if state.c_noise[i] > 0:
            x_next = torch.add(x_next, state.noise(x), alpha=state.c_noise[i])
        return x_next, denoised
