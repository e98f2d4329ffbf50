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

    def __init__(self, *, solver_order: int = 3, variable: str = "t", final_step: str = "auto"):
        super().__init__(final_step=final_step)
        self.order = check_int("solver_order", solver_order, (1, 2, 3))
        self.variable = check_choice("variable", variable, VARIABLES)

    def setup(self, ode, sigmas, noise):
        super().setup(ode, sigmas, noise)
        if self.variable != "log-sigma":  # v at the grid and at every step's quadrature points, in one call
            n = len(self.h)
            x, self.gauss_w = np.polynomial.legendre.leggauss(_GAUSS_POINTS)
            lam = np.array(
                [self.lam[i] + self.h[i] * (x + 1) / 2 if self.orders[i] else np.zeros_like(x) for i in range(n)]
            )
            self.gauss_sigma = np.exp(-lam)
            every = np.concatenate([np.asarray(self.sigmas), self.gauss_sigma.ravel()])
            if self.variable == "t":
                every = ode.schedule.t(torch.from_numpy(every)).numpy()
            self.v, self.gauss_v = every[: n + 1], every[n + 1 :].reshape(n, -1)
        self.coef = [self._coefficients(i, p) if p else None for i, p in enumerate(self.orders)]
        self.history = []

    def _coefficients(self, i: int, p: int) -> list[float]:
        h = self.h[i]
        if self.variable == "log-sigma":
            nodes = [(self.lam[i - j] - self.lam[i]) / h for j in range(p)]
            return poly_weights(nodes, moments(h, p, "noise", self.sigmas[i + 1]))
        v, nodes = self.gauss_v[i], [float(self.v[i - j]) for j in range(p)]
        out = []
        for j in range(p):
            basis = np.prod([(v - nodes[k]) / (nodes[j] - nodes[k]) for k in range(p) if k != j], axis=0)
            out.append(float(-(h / 2) * np.sum(self.gauss_w * self.gauss_sigma[i] * basis)))
        return out

    def step(self, i, x):
        denoised, eps = self.ode.predict(x, self.sigmas[i])
        if self.coef[i] is None:
            return denoised, denoised  # E27: the step into sigma = 0
        self.history.insert(0, eps)
        del self.history[self.order :]
        return combine(1.0, x, zip(self.coef[i], self.history)), denoised
