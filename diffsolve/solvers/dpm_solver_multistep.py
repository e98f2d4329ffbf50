"""Multistep DPM-Solver: DPM-Solver++(2M), (3M) (data prediction, Lu et al. 2022b) and the
noise-prediction DPM-Solver-2M, -3M (Lu et al. 2022a's exponential integrator, made multistep).

One model call per step; the polynomial of (X3) (see ``_exponential``) runs through the current
output m_0 and the previous ones m_1, m_2 at nodes c_j = (lambda_{t_j} - lambda_t)/h < 0:

    xbar_s = a xbar_t + sum_j w_j m_j,   a = exp(-h), m = D (data)   or   a = 1, m = eps (noise)

* 2M, ``solver_type="midpoint"`` (default; Lu et al. 2022b Alg. 2, with r = h_prev/h):
      xbar_s = a xbar_t + I_0 [(1 + 1/(2r)) m_0 - (1/(2r)) m_1]           (I_1 replaced by I_0/2)
* 2M ``"taylor"`` and every third-order step: w from the exact moments I_k of (X3), i.e. the
  Taylor expansion I_0 m + I_1 h m' + I_2 h^2 m''/2 of the exact solution (2022a eq. (3.4) and its
  data-prediction form in 2022b) with m', m'' taken from the interpolating polynomial.
  (The DPM-Solver reference code's 3M, also k-diffusion's and diffusers', weights the second
  divided difference, m'' h^2/2, by h phi_3 = I_2/2 instead of I_2; measured here, that variant
  converges with order 2 only. ``weights="reference"`` on dpmpp-3m / dpm-solver-3m reproduces
  it: the moment I_2 of (X3) is halved on third-order steps. docs/findings.md has the derivation
  and the measured slopes.)

The history starts empty: step k uses order min(order, k + 1). The step into sigma = 0 is the
denoising step E27; ``final_step="auto"`` (default) also lowers the order over the last steps on
grids of < 15 steps (measured in docs/benchmarks.md, "Measurements behind the defaults"). Orders 2 and 3 (measured: tests).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._exponential import ExponentialSolver, combine, moments, poly_weights
from .base import check_choice

SOLVER_TYPES = ("midpoint", "taylor")
WEIGHTS = ("exact", "reference")


class _Multistep(ExponentialSolver):
    calls_per_step = 1

    def __init__(
        self, *, solver_type: str = "midpoint", final_step: str = "auto", step_orders: Sequence[int] | None = None
    ):
        super().__init__(final_step=final_step, step_orders=step_orders)
        self.solver_type = check_choice("solver_type", solver_type, SOLVER_TYPES)
        self.weights = "exact"

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        state.coef = [self._coefficients(state, i, p) if p else None for i, p in enumerate(state.orders)]
        state.history = []
        return state

    def _coefficients(self, state, i: int, p: int) -> tuple[float, list[float]]:
        h, s_t, s_s = state.h[i], state.sigmas[i], state.sigmas[i + 1]
        nodes = [(state.lam[i - j] - state.lam[i]) / h for j in range(p)]
        mom = moments(h, p, self.form, s_s)
        if p == 2 and self.solver_type == "midpoint":
            mom[1] = mom[0] / 2
        if p == 3 and self.weights == "reference":
            mom[2] = mom[2] / 2  # the reference code's h phi_3 on the second difference
        return (s_s / s_t if self.form == "data" else 1.0), poly_weights(nodes, mom)

    def step(self, i, x, state):
        s_t = state.sigmas[i]
        denoised, eps = yield x, s_t, True
        if state.coef[i] is None:
            return denoised, denoised  # E27: the step into sigma = 0
        x = state.ode.renoised(x, denoised, eps, s_t)
        state.history.insert(0, self.output(denoised, eps))
        del state.history[self.order :]
        a, w = state.coef[i]
        return combine(a, x, zip(w, state.history)), denoised


class DPMSolverPP2M(_Multistep):
    """DPM-Solver++(2M): multistep data prediction, order 2, one call per step (Lu et al. 2022b, Alg. 2)."""

    name = "dpmpp-2m"
    order = 2


class _ThirdOrder(_Multistep):
    def __init__(
        self,
        *,
        solver_type: str = "midpoint",
        final_step: str = "auto",
        weights: str = "exact",
        step_orders: Sequence[int] | None = None,
    ):
        super().__init__(solver_type=solver_type, final_step=final_step, step_orders=step_orders)
        self.weights = check_choice("weights", weights, WEIGHTS)


class DPMSolverPP3M(_ThirdOrder):
    """DPM-Solver++(3M): multistep data prediction, order 3, one call per step (Lu et al. 2022b)."""

    name = "dpmpp-3m"
    order = 3


class DPMSolver2M(_Multistep):
    """DPM-Solver-2M: multistep noise prediction, order 2, one call per step (Lu et al. 2022a/b)."""

    name = "dpm-solver-2m"
    order = 2
    form = "noise"


class DPMSolver3M(_ThirdOrder):
    """DPM-Solver-3M: multistep noise prediction, order 3, one call per step (Lu et al. 2022a/b)."""

    name = "dpm-solver-3m"
    order = 3
    form = "noise"
