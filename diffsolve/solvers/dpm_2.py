"""DPM-Solver-2 in k-diffusion's form (``sample_dpm_2`` / ``sample_dpm_2_ancestral``): the explicit
midpoint method in sigma with the midpoint at the log-SNR middle of the step.

Lu et al. 2022a, Alg. 1 (DPM-Solver-2, r1 = 1/2) evaluates eps at lambda_t + h/2, i.e. at
sigma_mid = sqrt(sigma_t sigma_s) (lambda = -log sigma, E7). k-diffusion's variant, kept here
because it is what its users reproduce, replaces the exponential integrator by straight Euler
moves in sigma on the sigma-form ODE (E29, d xbar / d sigma = eps):

    sigma_mid = sqrt(sigma_hat sigma_s)
    u         = xbar + (sigma_mid - sigma_hat) eps(xbar, sigma_hat)                    (Euler to the midpoint)
    xbar_s    = xbar + (sigma_s - sigma_hat) eps(u, sigma_mid)                          (midpoint rule)

Order 2: a two-stage Runge-Kutta method with nodes 0, c = (sigma_mid - sigma_hat)/(sigma_s - sigma_hat)
and weights 0, 1 needs c = 1/2 for second order; here c = 1/2 + O(h) (sigma_s = sigma_hat (1 - d)
gives c = 1/2 + d/8 + ...), so the order condition fails by O(h) and the local error stays O(h^3)
(measured 2 by the order law). Two model calls per
step; the step into sigma = 0 is Euler, i.e. the denoised estimate (E27), one call.

* ``dpm-2``: ``s_churn`` etc. as in :mod:`heun` (Karras et al. 2022, Alg. 2): sigma_hat = (1 + gamma)
  sigma_t with noise sqrt(sigma_hat^2 - sigma_t^2) first. Deterministic by default.
* ``dpm-2-ancestral``: the step goes to sigma_down of the ancestral split (E26, ``_ancestral``)
  with noise eta, then adds ``s_noise * sigma_up * z``.
"""

from __future__ import annotations

import math

import torch

from ._ancestral import ancestral_split, set_noise_options
from .base import Solver
from .heun import Heun


def midpoint_step(x: torch.Tensor, s_from: float, s_to: float, eps: torch.Tensor):
    """The DPM-2 move from s_from to s_to > 0, given eps at (x, s_from): one model request."""
    s_mid = math.sqrt(s_from * s_to)
    u = torch.add(x, eps, alpha=s_mid - s_from)
    _, eps_mid = yield u, s_mid, False
    return torch.add(x, eps_mid, alpha=s_to - s_from)


class DPM2(Heun):
    """DPM-Solver-2 (k-diffusion's sample_dpm_2): midpoint in sigma at sqrt(sigma_t sigma_s), order 2, 2 calls/step."""

    name = "dpm-2"
    order = 2
    calls_per_step = 2

    def step(self, i, x, state):
        s_hat, s_next = state.sigma_hat[i], state.sigmas[i + 1]
        if state.c_noise[i] > 0:
            x = x + state.c_noise[i] * state.noise(x)
        denoised, eps = yield x, s_hat, True
        if s_next == 0:
            return denoised, denoised  # Euler on the last step: E27
        x = state.ode.renoised(x, denoised, eps, s_hat)
        return (yield from midpoint_step(x, s_hat, s_next, eps)), denoised


class DPM2Ancestral(Solver):
    """DPM-Solver-2 ancestral (k-diffusion's sample_dpm_2_ancestral): dpm-2 to sigma_down, then noise (E26)."""

    name = "dpm-2-ancestral"
    order = 2
    calls_per_step = 2
    stochastic = True
    invertible = False
    renoise_ok = True

    def __init__(self, *, eta: float = 1.0, s_noise: float = 1.0):
        set_noise_options(self, eta, s_noise)

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        state.split = [ancestral_split(a, b, self.eta) for a, b in zip(state.sigmas[:-1], state.sigmas[1:])]
        return state

    def step(self, i, x, state):
        s_t = state.sigmas[i]
        down, up = state.split[i]
        denoised, eps = yield x, s_t, True
        x = state.ode.renoised(x, denoised, eps, s_t)
        # Euler to sigma_down = 0 is the denoised estimate (E27); the noise then still restores
        # sigma_s (k-diffusion adds none there, which happens only for eta > 1 where sigma_up = sigma_s)
        x = (yield from midpoint_step(x, s_t, down, eps)) if down > 0 else denoised
        if up > 0 and self.s_noise > 0:
            x = torch.add(x, state.noise(x), alpha=self.s_noise * up)
        return x, denoised
