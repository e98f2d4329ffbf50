"""Linear multistep (LMS) in sigma: variable-step Adams-Bashforth on eps (k-diffusion's ``sample_lms``).

Let P be the polynomial of degree k - 1 in sigma through (sigma_{i-j}, eps_{i-j}), j < k. Then

    xbar_{i+1} = xbar_i + integral_{sigma_i}^{sigma_{i+1}} P(sigma) dsigma
               = xbar_i + h_i * sum_{j<k} w_{ij} eps_{i-j},     w_{ij} = (1/h_i) integral l_j,

with l_j the Lagrange basis polynomials of the nodes, integrated exactly in float64 in ``setup``
(:func:`._multistep.lagrange_weights`, no quadrature). k = min(i + 1, order): lower order while the
history builds, one model call per step. The weights follow the actual step sizes, so the order
holds on any smooth grid. As h -> 0 the warm-up's O(h^2) Euler error bounds the order by 2; where
the warm-up runs at large sigma (eps nearly constant), as in sampling, order 4 is what one sees
at practical step counts. k = 1 is DDIM (E30).
"""

from __future__ import annotations

from ._multistep import History, warmup_weights
from .base import Solver, check_int


class LMS(Solver):
    """LMS: Lagrange-polynomial multistep in sigma (k-diffusion), order up to 4, 1 call/step."""

    name = "lms"
    order = 4
    calls_per_step = 1
    renoise_ok = True
    #: weights from the actual step sizes (True) or the fixed equal-step table (iPNDM)
    variable_step = True

    def __init__(self, *, solver_order: int = 4):
        self.order = check_int("solver_order", solver_order, (1, 2, 3, 4))

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        state.coefs = warmup_weights(state.sigmas, self.order, variable_step=self.variable_step)
        state.history = History(self.order)
        return state

    def step(self, i, x, state):
        s_t = state.sigmas[i]
        denoised, eps = yield x, s_t, False
        x = state.ode.renoised(x, denoised, eps, s_t)
        state.history.push(eps)
        return state.history.combine(state.coefs[i], start=x), denoised
