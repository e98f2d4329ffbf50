"""PLMS / F-PNDM (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion Models on Manifolds").

PNDM's transfer phi(x, e, t -> s) is the DDIM step; in the sigma form it is the Euler step
xbar + (sigma_s - sigma_t) e (E30). With that, F-PNDM reads:

* the first 3 steps are pseudo Runge-Kutta (PRK; 4 model calls each), with sigma_m the midpoint:
      e1 = eps(xbar, sigma_t)
      e2 = eps(xbar + (sigma_m - sigma_t) e1, sigma_m)
      e3 = eps(xbar + (sigma_m - sigma_t) e2, sigma_m)
      e4 = eps(xbar + (sigma_s - sigma_t) e3, sigma_s)
      xbar_s = xbar + (sigma_s - sigma_t) (e1 + 2 e2 + 2 e3 + e4) / 6
  and only e1 joins the history;
* every later step is the pseudo linear multistep (PLMS; 1 model call):
      xbar_s = xbar + (sigma_s - sigma_t) (55 e_i - 59 e_{i-1} + 37 e_{i-2} - 9 e_{i-3}) / 24.

NFE = steps + 9 for steps >= 3 (4 * steps below that). PNDM takes the midpoint in the model's
time (``midpoint="time"``, the default: sigma_m = sigma((t(sigma_t) + t(sigma_s)) / 2) from the
schedule); ``midpoint="sigma"`` takes (sigma_t + sigma_s) / 2, which makes PRK the classical RK4
in sigma; a step to or from sigma = 0, or outside the schedule's range, uses the sigma midpoint.
Order 4 on a grid uniform in sigma (the PLMS weights assume equal steps; on smooth non-uniform
grids the order drops to 2). With the sigma midpoint the warm-up is RK4 and keeps order 4 as
h -> 0; a time midpoint off the sigma midpoint by O(h^2) makes the PRK steps locally O(h^3).
"""

from __future__ import annotations

import torch

from ._multistep import History, adams_bashforth
from .base import Solver, check_choice

MIDPOINTS = ("time", "sigma")
PRK_STEPS = 3


class PLMS(Solver):
    """PLMS / F-PNDM (Liu et al. 2022): 3 pseudo-RK warm-up steps (4 calls), then AB4 on eps (1 call)."""

    name = "plms"
    order = 4
    calls_per_step = 1
    renoise_ok = True

    def __init__(self, *, midpoint: str = "time"):
        check_choice("midpoint", midpoint, MIDPOINTS)
        self.midpoint = midpoint

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        sig = state.sigmas
        state.sigma_mid = [self._midpoint(ode.schedule, s, s_next) for s, s_next in zip(sig[:PRK_STEPS], sig[1:])]
        ab4 = adams_bashforth(4)
        state.coefs = [[(s_next - s) * w for w in ab4] for s, s_next in zip(sig[:-1], sig[1:])]
        state.history = History(4)
        return state

    def _midpoint(self, sched, s: float, s_next: float) -> float:
        mid = 0.5 * (s + s_next)
        if self.midpoint == "sigma" or s_next == 0 or s == 0:
            return mid
        t_mid = 0.5 * (float(sched.t(s)) + float(sched.t(s_next)))
        sigma_mid = float(sched.sigma(torch.tensor(t_mid, dtype=torch.float64)))
        # outside the schedule's range t(sigma) is clamped; then keep the sigma midpoint
        return sigma_mid if min(s, s_next) < sigma_mid < max(s, s_next) else mid

    def step(self, i, x, state):
        s, s_next = state.sigmas[i], state.sigmas[i + 1]
        h = s_next - s
        denoised, e1 = yield x, s, True
        x = state.ode.renoised(x, denoised, e1, s)
        state.history.push(e1)
        if i >= PRK_STEPS:
            return state.history.combine(state.coefs[i], start=x), denoised
        s_mid = state.sigma_mid[i]
        h_mid = s_mid - s
        _, e2 = yield x + h_mid * e1, s_mid, False
        _, e3 = yield x + h_mid * e2, s_mid, False
        _, e4 = yield x + h * e3, s_next, False
        return x + (h / 6) * (e1 + 2 * e2 + 2 * e3 + e4), denoised
