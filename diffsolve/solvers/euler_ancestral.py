"""Euler ancestral (k-diffusion's ``sample_euler_ancestral``): DDIM's eta family in VE form.

docs/math.md 2.3, E26: with nubar = eta * sigma_s * sqrt(sigma_t^2 - sigma_s^2) / sigma_t,

    sigma_up   = min(nubar, sigma_s),     sigma_down = sqrt(sigma_s^2 - sigma_up^2)
    xbar_s     = xbar_t + (sigma_down - sigma_t) * eps(xbar_t, sigma_t) + s_noise * sigma_up * z

an Euler move to sigma_down followed by fresh noise of std sigma_up. For eta <= 1 this is DDIM's
step (E18 divided by A_s; claim 6); the cap at sigma_s binds only for
eta > sigma_t / sqrt(sigma_t^2 - sigma_s^2) > 1, where DDIM's radicand would be negative. On the
step to sigma = 0, sigma_up = sigma_down = 0 and the output is the denoised estimate (E27).
One model call per step; stochastic when eta > 0 and s_noise > 0 (the default eta = 1 is DDPM's
posterior variance, E24). eta = 0 is deterministic Euler (= DDIM, order 1) and may invert.
"""

from __future__ import annotations

from ._ancestral import ancestral_split, set_noise_options
from .base import Solver
from .ddim import DDIM


class EulerAncestral(DDIM):
    """Euler ancestral (k-diffusion; DDIM eta in VE form, E26): 1 call/step, stochastic for eta > 0."""

    name = "euler-ancestral"
    order = 1
    calls_per_step = 1

    def __init__(self, *, eta: float = 1.0, s_noise: float = 1.0):
        set_noise_options(self, eta, s_noise)

    def init(self, ode, sigmas, noise):
        state = Solver.init(self, ode, sigmas, noise)
        state.c_eps, state.c_noise = [], []
        for s_t, s_s in zip(state.sigmas[:-1], state.sigmas[1:]):
            down, up = ancestral_split(s_t, s_s, self.eta)  # no noise on upward steps: pitfall 10
            state.c_eps.append(down - s_t)
            state.c_noise.append(self.s_noise * up)
        return state

    # step: DDIM's (x + c_eps eps + c_noise z; the denoised estimate on the step to 0)
