"""Stochastic DPM-Solver++: SDE-DPM-Solver++(2M) (Lu et al. 2022b) and the singlestep "DPM++ SDE".

The data-prediction SDE step with noise level eta (eta = 1: the paper's SDE; eta = 0: the ODE)
is (X2) of ``_exponential`` with the step h stretched to H = (1 + eta) h, plus fresh noise:

    xbar_s = exp(-H) xbar_t + int_0^H exp(v - H) D dv + sigma_s sqrt(1 - exp(-2 eta h)) z      (S1)

exp(-H) = (sigma_s/sigma_t) exp(-eta h). With D frozen, eta = 1 this is DDIM with eta = 1 (E26),
and the marginals of a point mass are exact for every eta.

* ``dpmpp-2m-sde``: D is the line through the current and the previous denoised output (nodes
  c = 0, -h_prev/h in units of h): ``solver_type="midpoint"`` (default) weights D_0 - D_1 with
  I_0(H)/(2r) as DPM-Solver++(2M) does, ``"taylor"`` with the exact I_1(H)/r (r = h_prev/h;
  k-diffusion calls this one "heun").
* ``dpmpp-sde``: DPM-Solver++(2S) with each stage an ancestral split of (S1) at eta (the DDIM
  sigma_up/sigma_down of E26): stage to sigma_m = sqrt(sigma_t sigma_s), then to sigma_s with the
  midpoint's denoised output. The two noises are Brownian increments in sigma, so the stage and
  step noises share the part of the path they have in common (two noise draws per step).

Deterministic order 2 (eta = 0 gives dpmpp-2m / dpmpp-2s exactly). The step into sigma = 0 is
the denoising step E27 (no noise there: sigma_s = 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ._ancestral import ancestral_split, check_eta
from ._exponential import ExponentialSolver, combine, moments, poly_weights
from .base import check_choice, check_real

SOLVER_TYPES = ("midpoint", "taylor")


class _Stochastic(ExponentialSolver):
    stochastic = True
    invertible = False
    #: whether eta enters through the ancestral split (E26), where eta > 1 warns (_ancestral.check_eta);
    #: (S1) is defined for every eta >= 0 (the step is stretched to H = (1 + eta) h)
    _ancestral_eta = False

    def __init__(self, *, eta: float = 1.0, final_step: str = "auto", step_orders: Sequence[int] | None = None):
        super().__init__(final_step=final_step, step_orders=step_orders)
        self.eta = check_eta(eta) if self._ancestral_eta else check_real("eta", eta, low=0.0)
        self.stochastic = self.eta > 0
        self.invertible = not self.stochastic


class _MultistepSDE(_Stochastic):
    """The multistep SDE loop of (S1), one call per step: D_0 and the previous ``order - 1`` denoised
    outputs through the per-step ``(a, w, noise std)`` of the subclass's ``_coefficients(i, p)``."""

    calls_per_step = 1

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        state.coef = [self._coefficients(state, i, p) if p else None for i, p in enumerate(state.orders)]
        state.history = []
        return state

    def step(self, i, x, state):
        s_t = state.sigmas[i]
        denoised, eps = yield x, s_t, True
        if state.coef[i] is None:
            return denoised, denoised  # E27: the step into sigma = 0
        x = state.ode.renoised(x, denoised, eps, s_t)
        state.history = [denoised] + state.history[: self.order - 1]
        a, w, z = state.coef[i]
        x_next = combine(a, x, zip(w, state.history))
        return (torch.add(x_next, state.noise(x), alpha=z) if z > 0 else x_next), denoised


class DPMSolverPP2MSDE(_MultistepSDE):
    """SDE-DPM-Solver++(2M): multistep data prediction with noise eta (Lu et al. 2022b), order 2 at eta = 0."""

    name = "dpmpp-2m-sde"
    order = 2
    calls_per_step = 1

    def __init__(
        self,
        *,
        eta: float = 1.0,
        solver_type: str = "midpoint",
        final_step: str = "auto",
        step_orders: Sequence[int] | None = None,
    ):
        super().__init__(eta=eta, final_step=final_step, step_orders=step_orders)
        self.solver_type = check_choice("solver_type", solver_type, SOLVER_TYPES)

    def _coefficients(self, state, i: int, p: int) -> tuple[float, list[float], float]:
        """(a, w, noise std) of (S1) for step i: the data-form weights of (X3) over the stretched step H."""
        h, H = state.h[i], (1 + self.eta) * state.h[i]
        mom = moments(H, p, "data")
        if p == 2 and self.solver_type == "midpoint":
            mom[1] = mom[0] / 2
        w = poly_weights([0.0, (state.lam[i - 1] - state.lam[i]) / h][:p], mom)
        return math.exp(-H), w, state.sigmas[i + 1] * math.sqrt(-math.expm1(-2 * self.eta * h))


class DPMSolverPPSDE(_Stochastic):
    """DPM++ SDE: DPM-Solver++(2S) with ancestral noise eta per stage, order 2 at eta = 0, two calls per step."""

    name = "dpmpp-sde"
    _ancestral_eta = True
    order = 2
    calls_per_step = 2
    multistep = False

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        state.plan = [self._plan(state, i, p) if p else None for i, p in enumerate(state.orders)]
        return state

    def _plan(self, state, i: int, p: int) -> list[tuple[float, float, float]]:
        """(sigma, a, sigma_up) per stage: the ancestral split of E26 as a DPM-Solver++(1) step to sigma_down."""
        s_t, s_s = state.sigmas[i], state.sigmas[i + 1]
        out = []
        for s in [s_s] if p == 1 else [math.sqrt(s_t * s_s), s_s]:
            down, up = ancestral_split(s_t, s, self.eta)
            out.append((s, down / s_t, up))
        return out

    def step(self, i, x, state):
        denoised, eps = yield x, state.sigmas[i], True
        if state.plan[i] is None:
            return denoised, denoised  # E27: the step into sigma = 0
        s_t = s_prev = state.sigmas[i]
        x = state.ode.renoised(x, denoised, eps, s_t)
        d, u, path = denoised, x, None
        for k, (s, a, up) in enumerate(state.plan[i]):
            if k:  # DPM-Solver++(2S) with r = 1/2: the midpoint's denoised output replaces D
                d, _ = yield u, s_prev, True
            u = combine(a, x, [(1 - a, d)])
            if up > 0:  # path = W(s) - W(sigma_t), a Brownian motion in sigma
                dw = state.noise(x) * math.sqrt(s_prev - s)
                path = dw if path is None else path + dw
                u = torch.add(u, path, alpha=up / math.sqrt(s_t - s))
            s_prev = s
        return u, denoised
