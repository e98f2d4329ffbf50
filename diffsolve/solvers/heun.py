"""Heun's method of Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based
Generative Models", EDM), Algorithm 1 (deterministic) with Algorithm 2's churn (stochastic).

In the sigma form the EDM ODE is d xbar / d sigma = eps = (xbar - D)/sigma (E29, E15). Step i:

    gamma_i   = min(S_churn / N, sqrt(2) - 1) if S_tmin <= sigma_i <= S_tmax else 0
    sigma_hat = (1 + gamma_i) sigma_i
    xhat      = xbar_i + sqrt(sigma_hat^2 - sigma_i^2) * S_noise * z              (only if gamma_i > 0)
    d         = eps(xhat, sigma_hat)
    xbar_{i+1} = xhat + (sigma_{i+1} - sigma_hat) d                                (Euler)
    if sigma_{i+1} != 0:
        d'         = eps(xbar_{i+1}, sigma_{i+1})
        xbar_{i+1} = xhat + (sigma_{i+1} - sigma_hat) (d + d') / 2                 (trapezoidal correction)

N is the number of grid steps. Options keep k-diffusion's / diffusers' lowercase names
(``s_churn``, ``s_tmin``, ``s_tmax``, ``s_noise``).

``variable="flow"`` takes the same trapezoidal steps in rectified-flow time t = sigma/(1 + sigma) on
the state x = xbar/(1 + sigma) (E17), whose velocity is dx/dt = eps - D for any model (differentiate
x along E29). For a flow-matching model that is diffusers' FlowMatchHeunDiscreteScheduler; Heun in
sigma is a different second-order method (docs/findings.md). On a grid from sigma = inf (a flow
config's :func:`~diffsolve.diffusers_grid`) its first step is Heun from t = 1 as well
(:meth:`step_from_infinity`); it takes no churn. In sigma, deterministic (Algorithm 1) when s_churn = 0,
the default: order 2, two model calls per step, and the step to sigma = 0 is Euler, i.e. it
returns the denoised estimate (E27), one call. With s_churn > 0 the solver is stochastic.
"""

from __future__ import annotations

import math

import torch

from .base import Solver, check_choice, check_real

VARIABLES = ("sigma", "flow")


class Heun(Solver):
    """Heun (Karras et al. 2022, Alg. 1; Alg. 2 churn with s_churn > 0): order 2, 2 calls/step."""

    name = "heun"
    order = 2
    calls_per_step = 2
    renoise_ok = True

    def __init__(
        self,
        *,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = math.inf,
        s_noise: float = 1.0,
        variable: str = "sigma",
    ):
        s_churn = check_real("s_churn", s_churn, low=0.0)
        s_tmin = check_real("s_tmin", s_tmin, low=0.0)
        s_tmax = check_real("s_tmax", s_tmax, low=s_tmin, allow_inf=True)
        s_noise = check_real("s_noise", s_noise, low=0.0)
        self.variable = check_choice("variable", variable, VARIABLES)
        if variable == "flow" and s_churn > 0:
            raise ValueError("s_churn > 0 needs variable='sigma' (the flow-time Heun is deterministic)")
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = s_churn, s_tmin, s_tmax, s_noise
        self.stochastic = s_churn > 0
        self.invertible = not self.stochastic

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        n = len(state.sigmas) - 1
        state.sigma_hat, state.c_noise, state.h = [], [], []
        for s, s_next in zip(state.sigmas[:-1], state.sigmas[1:]):
            churn = self.s_churn > 0 and s_next < s and self.s_tmin <= s <= self.s_tmax
            gamma = min(self.s_churn / n, math.sqrt(2) - 1) if churn else 0.0
            s_hat = s * (1 + gamma)
            state.sigma_hat.append(s_hat)
            state.c_noise.append(math.sqrt(s_hat**2 - s**2) * self.s_noise)
            state.h.append(s_next - s_hat)
        return state

    def step(self, i, x, state):
        if self.variable == "flow":
            return (yield from self._flow_step(x, state.sigmas[i], state.sigmas[i + 1], state))
        s_hat, s_next, h = state.sigma_hat[i], state.sigmas[i + 1], state.h[i]
        if state.c_noise[i] > 0:
            x = x + state.c_noise[i] * state.noise(x)
        denoised, eps = yield x, s_hat, True
        if s_next == 0:
            return denoised, denoised  # Euler on the last step: xhat - sigma_hat eps = D (E27)
        x = state.ode.renoised(x, denoised, eps, s_hat)
        _, eps_next = yield x + h * eps, s_next, False
        return x + (0.5 * h) * eps + (0.5 * h) * eps_next, denoised

    # -- Heun in flow time t = sigma / (1 + sigma), state x = xbar / (1 + sigma) (E17) -------------------
    def _flow_step(self, xbar, s, s_next, state):
        denoised, eps = yield xbar, s, True
        if s_next == 0:
            return denoised, denoised  # Euler to t = 0: x - t (eps - D) = D (E27)
        xbar = state.ode.renoised(xbar, denoised, eps, s)
        return (yield from self._flow_heun(xbar / (1 + s), s / (1 + s), s_next, eps - denoised)), denoised

    def _flow_heun(self, x, t, s_next, v):
        """x at t -> xbar at s_next: Euler predictor, trapezoidal corrector on dx/dt = eps - D."""
        t_next = s_next / (1 + s_next)
        dt = t_next - t
        x_pred = torch.add(x, v, alpha=dt)
        d_next, eps_next = yield x_pred * (1 + s_next), s_next, True
        x_next = x + (0.5 * dt) * v + (0.5 * dt) * (eps_next - d_next)
        return x_next * (1 + s_next)

    def step_from_infinity(self, x, denoised, eps, sigma_next, state):
        """The first step from sigma = inf (t = 1; ``x`` is the pure noise, ``(denoised, eps)`` the
        model there): Heun in t for ``variable="flow"``; None (the driver's DDIM limit) otherwise."""
        if self.variable != "flow" or sigma_next == 0:
            return None
        return self._flow_heun(x, 1.0, sigma_next, eps - denoised)
