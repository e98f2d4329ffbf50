"""SA-Solver (Xue et al. 2023, "SA-Solver: Stochastic Adams Solver for Fast Sampling of Diffusion
Models", NeurIPS 2023): the stochastic Adams predictor (SA-Predictor) and corrector (SA-Corrector)
in data prediction, with the noise level tau.

The data-prediction SDE with noise tau (their eq. for the variance-controlled SDE) has, over a step
lambda_s -> lambda_t (lambda = -log sigma, E7; h = lambda_t - lambda_s), the exact solution of (S1)
in :mod:`dpmpp_sde` with eta = tau^2: with H = (1 + tau^2) h,

    xbar_t = exp(-H) xbar_s + int_0^H exp(v - H) D(lambda_s + v h/H) dv + sigma_t sqrt(1 - exp(-2 tau^2 h)) z.

Both SA steps replace D by the Lagrange polynomial in lambda through model outputs and integrate it
exactly: the weights of (X3) (``_exponential``) over the stretched step H, nodes c_j = (lambda_j - lambda_s)/h.

* SA-Predictor, order p (Adams-Bashforth): the outputs at lambda_s, lambda_{s-1}, ... (p of them).
* SA-Corrector, order c (Adams-Moulton): the output at the predicted point lambda_t (node c = 1) and
  the c - 1 previous ones, redoing the step from the same xbar_s with the *same* noise z. The output
  at the predicted point is the next predictor's m_0, so the corrector costs no model call; the
  history keeps the outputs at the predicted points (as UniPC does).

``variant="diffusers"`` reproduces diffusers' SASolverScheduler, whose steps with two nodes replace
the moment I_1 = 1 - (1 - exp(-H))/H by its leading term H/2 (it keeps the order, but on the long
final log-SNR steps of a Karras or DDPM grid, H of 2 or more, it overshoots: 6 NFE on gmm2d, Karras
grid, RMSE 1.1 against 0.42 for the exact moments, p = c = 2, tau = 0). The default ``"exact"`` integrates the
polynomial exactly in every step. tau = 0 is deterministic (the predictor
alone is DPM-Solver++ multistep with exact moments; with the corrector it is UniPC-like). The
orders ramp up while the history builds (predictor min(p, k + 1), corrector min(c, k + 2) at step k),
and ``lower_order_final`` caps them by the steps left (diffusers' default). ``tau`` is a number or a
function of sigma (diffusers' default is 1 for timesteps 200..800, else 0: pass that as a function
of sigma). Noise is drawn on every step that ends above 0 when the solver is stochastic.

Defaults p = c = 2 (diffusers'). Order (tau = 0): min(c, p + 1), an Adams-Moulton corrector of c nodes
applied once after an Adams-Bashforth predictor of p nodes; declared 2 for the defaults. The step into
sigma = 0 is the denoising step E27 (the corrector of the last point is applied, its output is D).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ._exponential import check_choice, combine, log_snr, moments, poly_weights
from .base import Solver

VARIANTS = ("exact", "diffusers")


def _order(option: str, value, allowed=(1, 2, 3, 4)) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ValueError(f"{option} must be one of {', '.join(map(str, allowed))}, got {value!r}")
    return value


class SASolver(Solver):
    """SA-Solver (Xue et al. 2023): stochastic Adams predictor-corrector, data prediction, noise tau; 1 call/step."""

    name = "sa-solver"
    order = 2
    calls_per_step = 1
    stochastic = True
    invertible = False

    def __init__(
        self,
        *,
        predictor_order: int = 2,
        corrector_order: int = 2,
        tau: float | Callable[[float], float] = 1.0,
        lower_order_final: bool = True,
        variant: str = "exact",
    ):
        self.p = _order("predictor_order", predictor_order)
        self.c = _order("corrector_order", corrector_order)
        if callable(tau):
            self.tau_fn = tau
            self.stochastic = True
        else:
            t = float(tau)
            if not (math.isfinite(t) and t >= 0):
                raise ValueError(f"tau must be a finite number >= 0 or a function of sigma, got {tau!r}")
            self.tau_fn = lambda sigma, t=t: t
            self.stochastic = t > 0
        self.invertible = not self.stochastic
        self.lower_order_final = bool(lower_order_final)
        self.variant = check_choice("variant", variant, VARIANTS)

    def _tau(self, sigma: float) -> float:
        t = float(self.tau_fn(sigma))
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"tau({sigma}) = {t}: tau must be finite and >= 0")
        return t

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        sig, n = state.sigmas, len(state.sigmas) - 1
        if any(b >= a for a, b in zip(sig[:-1], sig[1:])):
            raise ValueError("sa-solver samples on a decreasing grid only (it is an SDE solver; use ds.sample)")
        lam = [log_snr(s) for s in sig]
        m = max(self.p, self.c - 1)
        state.pred, state.corr = [], []
        for k in range(n):
            done = min(k, m)  # diffusers' lower_order_nums at step k
            p = min(self.p, done + 1)
            c = min(self.c, done + 2)
            if self.lower_order_final:
                p, c = min(p, n - k), min(c, n - k + 1)
            if sig[k + 1] == 0:
                state.pred.append(None)
                state.corr.append(None)
                continue
            tau = self._tau(sig[k])
            h = lam[k + 1] - lam[k]
            H = (1 + tau**2) * h
            z = sig[k + 1] * math.sqrt(-math.expm1(-2 * tau**2 * h))
            state.pred.append((math.exp(-H), self._weights([(lam[k - j] - lam[k]) / h for j in range(p)], H), z))
            # the corrector of the point k + 1 (applied at step k + 1, from xbar_k with the same noise)
            nodes = [1.0] + [(lam[k - j] - lam[k]) / h for j in range(c - 1)]
            state.corr.append((math.exp(-H), self._weights(nodes, H), z))
        state.history: list[torch.Tensor] = []  # outputs at the predicted points, newest first
        state.last: tuple | None = None  # (xbar_k, noise, step k) of the last predictor
        return state

    def _weights(self, nodes, H):
        mom = moments(H, len(nodes), "data")
        if len(nodes) == 2 and self.variant == "diffusers":
            mom[1] = H / 2  # diffusers' second-order variant
        return poly_weights(nodes, mom)

    def step(self, i, x, state):
        denoised, _ = yield x, state.sigmas[i], True
        if state.last is not None:  # SA-Corrector of the point i, from xbar_{i-1}
            x_prev, z_prev, k = state.last
            a, w, z = state.corr[k]
            x = combine(a, x_prev, zip(w, [denoised] + state.history))
            if z_prev is not None:
                x = torch.add(x, z_prev, alpha=z)
        state.history = ([denoised] + state.history)[: max(self.p, self.c - 1)]
        if state.pred[i] is None:
            return denoised, denoised  # E27: the step into sigma = 0
        a, w, z = state.pred[i]
        draw = state.noise(x) if self.stochastic else None
        x_next = combine(a, x, zip(w, state.history))
        if draw is not None and z > 0:
            x_next = torch.add(x_next, draw, alpha=z)
        state.last = (x, draw, i)
        return x_next, denoised
