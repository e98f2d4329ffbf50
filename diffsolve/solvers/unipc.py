"""UniPC (Zhao et al. 2023): the UniP-p predictor with the UniC-p corrector, data prediction.

In the notation of ``_exponential`` (X2, X3), with D_k = m_k - m_0 (m = denoised, m_0 at the
current point, m_k at nodes c_k = (lambda_{t_k} - lambda_t)/h) and B(h) = h ("bh1") or
1 - exp(-h) ("bh2"), Zhao et al. 2023 eqs. for UniP-p and UniC-p read

    UniP-p:  xbar_s   = exp(-h) xbar_t^c + I_0 m_0 + B(h) sum_{k<p}  a_k D_k / c_k,   R_{p-1} a = g / B(h)
    UniC-p:  xbar_s^c = exp(-h) xbar_t^c + I_0 m_0 + B(h) sum_{k<=p} a_k D_k / c_k,   R_p a = g / B(h)

with R_p[q, k] = c_k^(q-1), g_q = I_q (the moments of X3), q = 1..p. The corrector adds the node
c_p = 1 whose output m(xbar_s) the next step needs anyway, so it costs no model call; the
output at the *uncorrected* xbar_s is the one kept in the history. A square system solved
exactly makes B(h) cancel (the weights are those of the interpolating polynomial); a 1 x 1
system uses the paper's a_1 = 1/2, where bh1 and bh2 differ (UniP-2 with bh2 is DPM-Solver++(2M)).

Order: ``order`` (p, 1-3) for UniP alone, p + 1 with the corrector (default p = 2: order 3).
The history builds up with p = min(order, step + 1). Final steps: the step into sigma = 0 is the
denoising step E27 (its corrector would be wasted: exp(-inf) = 0, so it is skipped); with
``final_step="lower-order"`` (or ``"auto"`` on grids of < 15 steps) p <= steps left, as in UniPC's
``lower_order_final``. The popular bh1 code divides by B(h) = h = inf there; nothing here does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._exponential import ExponentialSolver, combine, moments, poly_weights
from .base import check_choice, check_int

VARIANTS = ("bh1", "bh2")


class UniPC(ExponentialSolver):
    """UniPC: UniP-p predictor + UniC-p corrector (Zhao et al. 2023), data prediction, order p + 1."""

    name = "unipc"
    order = 3
    calls_per_step = 1

    def __init__(
        self,
        *,
        solver_order: int = 2,
        variant: str = "bh2",
        corrector: bool = True,
        final_step: str = "auto",
        step_orders: Sequence[int] | None = None,
    ):
        super().__init__(final_step=final_step, step_orders=step_orders)
        self.p = check_int("solver_order", solver_order, (1, 2, 3))
        self.corrector = check_choice("corrector", corrector, (True, False))
        self.variant = check_choice("variant", variant, VARIANTS)
        self.order = self.p + 1 if corrector else self.p
        # UniC recomputes xbar_i from the previous base: a renoised state would be discarded
        self.renoise_ok = not corrector

    @property
    def max_order(self) -> int:
        return self.p

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        orders = state.orders
        state.pred = [self._weights(state, i, p, False) if p else None for i, p in enumerate(orders)]
        state.corr = [self._weights(state, i, p, True) if p and self.corrector else None for i, p in enumerate(orders)]
        state.history, state.x_base = [], None
        return state

    def _weights(self, state, i: int, p: int, corrector: bool) -> tuple[float, list[float]]:
        """(a, w): w over [m_new (corrector only), m_0, m_1, ..., m_{p-1}]."""
        h, lam = state.h[i], state.lam
        nodes = [0.0] + [(lam[i - k] - lam[i]) / h for k in range(1, p)] + ([1.0] if corrector else [])
        mom = moments(h, len(nodes), "data")
        if len(nodes) == 2:  # a 1 x 1 system: a_1 = 1/2, so B(h) a_1 / c_1 weights D_1
            mom[1] = (h if self.variant == "bh1" else -math.expm1(-h)) / 2
        w = poly_weights(nodes, mom)
        return state.sigmas[i + 1] / state.sigmas[i], (w[-1:] + w[:-1] if corrector else w)

    def step(self, i, x, state):
        s_t = state.sigmas[i]
        denoised, eps = yield x, s_t, True
        if state.pred[i] is None:
            return denoised, denoised  # E27: the step into sigma = 0 (UniC there would be void)
        x = state.ode.renoised(x, denoised, eps, s_t)
        state.history.insert(0, denoised)
        if self.corrector and i > 0:
            a, w = state.corr[i - 1]  # UniC for xbar_i, from the previous base and the new output
            x = combine(a, state.x_base, zip(w, state.history))
        del state.history[self.p :]
        state.x_base = x
        a, w = state.pred[i]
        return combine(a, x, zip(w, state.history)), denoised
