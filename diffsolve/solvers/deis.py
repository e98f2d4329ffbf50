"""DEIS (Zhang & Chen 2023): exponential integrator with polynomial extrapolation of eps.

On the sigma-form ODE the exponential integrator of DEIS (their "rho" is our sigma, E4) is exact
for the linear part and reads, with eps replaced by the Lagrange polynomial through the last p
outputs eps_j at v_j = v(sigma_{t_j}) (Zhang & Chen 2023, eqs. for AB-DEIS with C_ij):

    xbar_s = xbar_t + sum_j C_j eps_j,   C_j = int_{sigma_t}^{sigma_s} l_j(v(sigma)) d sigma
           = xbar_t - sum_j eps_j int_{lambda_t}^{lambda_s} exp(-lambda) l_j(v(exp(-lambda))) d lambda

``variable`` picks v: ``"t"`` (the schedule's own time: tAB-DEIS, the paper's recommendation),
``"log-sigma"`` (log-rho AB-DEIS: C_j in closed form, (X3) of ``_exponential``; identical to the
exact-Lagrange DPM-Solver-pM ``solver_type="taylor"``) or ``"sigma"`` (rho AB-DEIS: Adams-Bashforth
in sigma). For "t" and "sigma" C_j is a 16-point Gauss-Legendre sum in lambda, computed once in
float64 (exact to rounding for smooth t(sigma); a DiscreteSchedule's time is only piecewise smooth).

Order ``order`` (1-3; history builds up as min(order, step + 1)), one call per step. The step
into sigma = 0 is the denoising step E27; ``final_step`` as in ``_exponential`` (default "auto";
for DEIS about neutral).

Which variable: "t" is the default as the paper's method (and the one that differs from
dpm-solver-3m); "log-sigma" measured better on logsnr and karras grids (docs/benchmarks.md,
"Measurements behind the defaults"). Where the schedule's time is
sigma (EDM, SigmaSchedule) "t" is "sigma", whose extrapolation over sigma ratios exp(h) needs many
more steps to reach its asymptotic order on a log-SNR grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ._exponential import ExponentialSolver, combine, moments, poly_weights
from .base import check_choice, check_int

VARIABLES = ("t", "log-sigma", "sigma")
_GAUSS_POINTS = 16


class DEIS(ExponentialSolver):
    """DEIS: multistep exponential integrator, eps extrapolated in t / log-sigma / sigma (Zhang & Chen 2023)."""

    name = "deis"
    order = 3
    calls_per_step = 1
    form = "noise"

    def __init__(
        self,
        *,
        solver_order: int = 3,
        variable: str = "t",
        final_step: str = "auto",
        step_orders: Sequence[int] | None = None,
    ):
        super().__init__(final_step=final_step, step_orders=step_orders)
        self.order = check_int("solver_order", solver_order, (1, 2, 3))
        self.variable = check_choice("variable", variable, VARIABLES)

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        if self.variable != "log-sigma":  # v at the grid and at every step's quadrature points, in one call
            n = len(state.h)
            x, state.gauss_w = np.polynomial.legendre.leggauss(_GAUSS_POINTS)
            lam = np.array(
                [state.lam[i] + state.h[i] * (x + 1) / 2 if state.orders[i] else np.zeros_like(x) for i in range(n)]
            )
            state.gauss_sigma = np.exp(-lam)
            every = np.concatenate([np.asarray(state.sigmas), state.gauss_sigma.ravel()])
            if self.variable == "t":
                every = ode.schedule.t(torch.from_numpy(every)).numpy()
            state.v, state.gauss_v = every[: n + 1], every[n + 1 :].reshape(n, -1)
        state.coef = [self._coefficients(state, i, p) if p else None for i, p in enumerate(state.orders)]
        state.history = []
        return state

    def _coefficients(self, state, i: int, p: int) -> list[float]:
        h = state.h[i]
        if self.variable == "log-sigma":
            nodes = [(state.lam[i - j] - state.lam[i]) / h for j in range(p)]
            return poly_weights(nodes, moments(h, p, "noise", state.sigmas[i + 1]))
        v, nodes = state.gauss_v[i], [float(state.v[i - j]) for j in range(p)]
        out = []
        for j in range(p):
            basis = np.prod([(v - nodes[k]) / (nodes[j] - nodes[k]) for k in range(p) if k != j], axis=0)
            out.append(float(-(h / 2) * np.sum(state.gauss_w * state.gauss_sigma[i] * basis)))
        return out

    def step(self, i, x, state):
        s_t = state.sigmas[i]
        denoised, eps = yield x, s_t, True
        if state.coef[i] is None:
            return denoised, denoised  # E27: the step into sigma = 0
        x = state.ode.renoised(x, denoised, eps, s_t)
        state.history.insert(0, eps)
        del state.history[self.order :]
        return combine(1.0, x, zip(state.coef[i], state.history)), denoised
