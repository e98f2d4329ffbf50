"""DPM-Solver++(2S) ancestral (k-diffusion's ``sample_dpmpp_2s_ancestral``).

Each step splits sigma_t -> sigma_s into a deterministic move to sigma_down and fresh noise of
std sigma_up (E26, ``_ancestral``). The move is one DPM-Solver++(2S) step (Lu et al. 2022b, Alg. 1)
with r = 1/2, in the data form (X2) of ``_exponential`` with h = lambda_down - lambda_t (lambda = -log
sigma, E7):

    sigma_m = sqrt(sigma_t sigma_down)                                   (lambda_t + h/2)
    u       = (sigma_m / sigma_t) xbar - expm1(-h/2) D(xbar, sigma_t)    (DPM-Solver++(1) = DDIM, E34)
    xbar'   = (sigma_down / sigma_t) xbar - expm1(-h) D(u, sigma_m)      (the midpoint's D; 1 - 1/(2r) = 0)
    xbar_s  = xbar' + s_noise sigma_up z

Order 2 at eta = 0 (then it is ``dpmpp-2s``), two model calls per step; the step into sigma = 0
is the denoising step E27 (one call).
"""

from __future__ import annotations

import math

import torch

from ._ancestral import ancestral_split, set_noise_options
from ._exponential import combine
from .base import Solver


class DPMSolverPP2SAncestral(Solver):
    """DPM-Solver++(2S) ancestral (k-diffusion): 2S data-prediction step to sigma_down, then noise (E26); 2 calls/step."""

    name = "dpmpp-2s-ancestral"
    order = 2
    calls_per_step = 2
    stochastic = True
    invertible = False
    renoise_ok = True

    def __init__(self, *, eta: float = 1.0, s_noise: float = 1.0):
        set_noise_options(self, eta, s_noise)

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        state.plan = []
        for s_t, s_s in zip(state.sigmas[:-1], state.sigmas[1:]):
            down, up = ancestral_split(s_t, s_s, self.eta)
            if down == 0:
                state.plan.append((0.0, None, None, up))
                continue
            h = math.log(s_t / down)
            s_m = math.sqrt(s_t * down)
            # (sigma_m, (a, w) to the midpoint, (a, w) to sigma_down, sigma_up); w = -expm1(-c h)
            state.plan.append((s_m, (s_m / s_t, -math.expm1(-h / 2)), (down / s_t, -math.expm1(-h)), up))
        return state

    def step(self, i, x, state):
        s_m, to_mid, to_down, up = state.plan[i]
        s_t = state.sigmas[i]
        denoised, eps = yield x, s_t, True
        x = state.ode.renoised(x, denoised, eps, s_t)
        if to_mid is None:
            x_next = denoised  # sigma_down = 0: the denoising step E27
        else:
            u = combine(to_mid[0], x, [(to_mid[1], denoised)])
            d_mid, _ = yield u, s_m, True
            x_next = combine(to_down[0], x, [(to_down[1], d_mid)])
        if up > 0 and self.s_noise > 0:
            x_next = torch.add(x_next, state.noise(x), alpha=self.s_noise * up)
        return x_next, denoised
