"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes",
NeurIPS 2023, Algorithm 1).

The main process is Heun's method (Karras et al. 2022, Alg. 1; :mod:`heun`) on the sigma-form
ODE (E29) down the grid. Each restart interval [sigma_lo, sigma_hi] is attached to the grid point
sigma_i nearest to sigma_lo (below sigma_hi). On reaching it, ``K`` times:

    xbar <- xbar + sqrt(sigma_hi^2 - sigma_i^2) z                     (forward noise: the VE marginal at sigma_hi)
    xbar <- Heun from sigma_hi back to sigma_i on ``restart_steps`` steps of the Karras (rho = 7) grid

The added noise contracts the accumulated error of the earlier steps (the paper's Theorem 2);
each restart costs 2 restart_steps model calls (trapezoidal Heun steps, all ending above 0).
Defaults: one interval (0.1, 2.0), K = 2, restart_steps = 6 (in xbar units, i.e. EDM's sigma).
Fewer restart steps bias the result: on N(0.5, 0.5^2) (40 Karras steps, 4000 samples) 3 steps gave a
sample std of 0.56, 6 steps 0.51.
Order 2 without restarts (K = 0 or no interval reached: plain ``heun``); stochastic otherwise.
The step into sigma = 0 is Euler, i.e. the denoised estimate (E27).
"""

from __future__ import annotations

import math

import torch

from .base import Solver


def _karras(s_max: float, s_min: float, n: int, rho: float = 7.0) -> list[float]:
    a, b = s_max ** (1 / rho), s_min ** (1 / rho)
    return [(a + k / n * (b - a)) ** rho for k in range(n + 1)]


class Restart(Solver):
    """Restart sampling (Xu et al. 2023): Heun with K noise-and-resolve restarts per interval [sigma_lo, sigma_hi]."""

    name = "restart"
    order = 2
    calls_per_step = 2
    stochastic = True
    invertible = False
    renoise_ok = True

    def __init__(self, *, intervals=((0.1, 2.0),), K: int = 2, restart_steps: int = 6):
        try:
            pairs = [(float(lo), float(hi)) for lo, hi in intervals]
        except (TypeError, ValueError):
            raise ValueError(f"intervals must be a sequence of (sigma_lo, sigma_hi) pairs, got {intervals!r}") from None
        for lo, hi in pairs:
            if not (0 < lo < hi < math.inf):
                raise ValueError(
                    f"intervals: each (sigma_lo, sigma_hi) needs 0 < sigma_lo < sigma_hi < inf, got {(lo, hi)}"
                )
        if isinstance(K, bool) or not isinstance(K, int) or K < 0:
            raise ValueError(f"K must be an integer >= 0, got {K!r}")
        if isinstance(restart_steps, bool) or not isinstance(restart_steps, int) or restart_steps < 1:
            raise ValueError(f"restart_steps must be an integer >= 1, got {restart_steps!r}")
        self.intervals, self.K, self.restart_steps = pairs, K, restart_steps
        self.stochastic = K > 0 and bool(pairs)
        self.invertible = not self.stochastic

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        sig = state.sigmas
        #: grid index -> [(sigma_hi, sub-grid sigma_hi .. sigma_i)], the restarts after landing there
        state.restarts: dict[int, list] = {}
        if not self.stochastic or not all(b < a for a, b in zip(sig[:-1], sig[1:])):
            return state
        for lo, hi in self.intervals:
            cands = [j for j in range(1, len(sig)) if 0 < sig[j] < hi]
            if not cands:
                continue
            j = min(cands, key=lambda k: abs(sig[k] - lo))
            state.restarts.setdefault(j, []).append((hi, _karras(hi, sig[j], self.restart_steps)))
        return state

    def _heun(self, state, x, s, s_next, eps=None):
        if eps is None:
            denoised, eps = yield x, s, True
            x = state.ode.renoised(x, denoised, eps, s)
        h = s_next - s
        _, eps_next = yield torch.add(x, eps, alpha=h), s_next, False
        return x + (0.5 * h) * eps + (0.5 * h) * eps_next

    def step(self, i, x, state):
        s, s_next = state.sigmas[i], state.sigmas[i + 1]
        denoised, eps = yield x, s, True
        if s_next == 0:
            return denoised, denoised  # Euler into sigma = 0: E27
        x = state.ode.renoised(x, denoised, eps, s)
        x = yield from self._heun(state, x, s, s_next, eps)
        for hi, sub in state.restarts.get(i + 1, ()):
            for _ in range(self.K):
                x = torch.add(x, state.noise(x), alpha=math.sqrt(hi**2 - s_next**2))
                for a, b in zip(sub[:-1], sub[1:]):
                    x = yield from self._heun(state, x, a, b)
        return x, denoised
