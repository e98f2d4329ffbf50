"""SDE-DPM-Solver++(3M): DPM-Solver++(3M) (Lu et al. 2022b) on the data-prediction SDE with noise eta
(k-diffusion's ``sample_dpmpp_3m_sde``).

The step sigma_t -> sigma_s is (S1) of :mod:`dpmpp_sde` (the exact variation-of-constants solution
of the SDE, stretched step H = (1 + eta) h with h = lambda_s - lambda_t, lambda = -log sigma, E7):

    xbar_s = exp(-H) xbar_t + sum_j w_j D_j + s_noise sigma_s sqrt(1 - exp(-2 eta h)) z

with the weights w of (X3) (``_exponential``) over the stretched step: the polynomial through the
current and the two previous denoised outputs, at nodes c_j = (lambda_{t_j} - lambda_t)/h, is
integrated exactly against exp(v - H) over [0, H] (moments I_k = k! H phi_{k+1}(-H)). The order
ramps 1, 2, 3 while the history builds (the second step uses the exact I_1: k-diffusion's too).

``weights="reference"`` halves I_2 on third-order steps: the weighting of the DPM-Solver reference
code, k-diffusion and diffusers (h phi_3 on the second divided difference; order 2 only, see
docs/findings.md). eta = 0 is dpmpp-3m with ``solver_type="taylor"`` (deterministic, order 3 with
exact weights). The step into sigma = 0 is the denoising step E27 (no noise: sigma_s = 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ._exponential import moments, poly_weights
from .base import check_choice, check_real
from .dpm_solver_multistep import WEIGHTS
from .dpmpp_sde import _MultistepSDE


class DPMSolverPP3MSDE(_MultistepSDE):
    """SDE-DPM-Solver++(3M): multistep data prediction with noise eta (k-diffusion's dpmpp_3m_sde), order 3 at eta = 0."""

    name = "dpmpp-3m-sde"
    order = 3
    calls_per_step = 1

    def __init__(
        self,
        *,
        eta: float = 1.0,
        s_noise: float = 1.0,
        weights: str = "exact",
        final_step: str = "auto",
        step_orders: Sequence[int] | None = None,
    ):
        super().__init__(eta=eta, final_step=final_step, step_orders=step_orders)
        self.s_noise = check_real("s_noise", s_noise, low=0.0)
        self.weights = check_choice("weights", weights, WEIGHTS)
        self.stochastic = self.eta > 0 and self.s_noise > 0
        self.invertible = not self.stochastic

    def _coefficients(self, state, i: int, p: int) -> tuple[float, list[float], float]:
        """(a, w, noise std) of (S1) for step i with a polynomial of order p."""
        h, H = state.h[i], (1 + self.eta) * state.h[i]
        mom = moments(H, p, "data")
        if p == 3 and self.weights == "reference":
            mom[2] = mom[2] / 2
        nodes = [(state.lam[i - j] - state.lam[i]) / h for j in range(p)]
        z = self.s_noise * state.sigmas[i + 1] * math.sqrt(-math.expm1(-2 * self.eta * h))
        return math.exp(-H), poly_weights(nodes, mom), z
