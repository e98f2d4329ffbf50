"""Convergence order of the classical solvers (heun, lms, ipndm, plms, plms-hb, ghvb,
euler-ancestral with eta = 0, torchdiffeq-*): the slope of log(error) against log(steps).

Problem: a two-component isotropic Gaussian mixture in 2-D (means (1, 0.5), (-1, -0.3), std 1,
weights 0.3/0.7) with its exact eps (the formula of diffsolve.analytic, checked below), as a VE
model (SigmaSchedule, t = sigma). Its ODE is nonlinear, unlike a single Gaussian: for E38's
flow xbar - m ~ sqrt(s^2 + sigma^2) the explicit midpoint method happens to be third order, which
would hide an order defect. The reference is dopri8 at rtol = atol = 1e-13 in log-sigma, made to
land on the end point (torchdiffeq's dense output at the end alone is only ~1e-9 accurate);
it agrees with other references to ~1e-12, far below the errors measured (>= 1e-9).

Grid: sigma from 20 to 1, uniform in sigma (uniform in log sigma for variable="log-sigma").
Why this is the asymptotic regime:
* it ends at sigma = 1 > 0, so no final denoise step (E27, first order) enters the error;
* uniform steps: ipndm, plms, plms-hb, ghvb and explicit_adams use equal-step weights, whose order
  holds only for equal steps (lms, heun and the Runge-Kutta methods do not need it);
* the step counts are chosen per method so that h is small against the data scale (std 1): the
  local slopes are then steady to within about 0.1 (measured while writing this test);
* the multistep methods start with lower-order steps (Euler, AB2, AB3). Their O(h^2) local errors
  stay in the result, so asymptotically these methods are second order; at sigma = 20 eps is
  nearly constant, so over the step counts used here that term is far below the h^4 term (as in
  real sampling, where the warm-up runs at sigma ~ 80-160). The window is finite: starting at
  sigma = 10, or going to 3200 steps here, already shows the second-order tail. (plms and
  explicit_adams warm up with RK steps and have no such tail.)
"""

import math
import warnings

import pytest
import torch
from torchdiffeq import odeint

import diffsolve as ds
from diffsolve.analytic import GaussianMixture

MEANS = torch.tensor([[1.0, 0.5], [-1.0, -0.3]], dtype=torch.float64)
STD, WEIGHTS = 1.0, (0.3, 0.7)
SIGMA_MAX, SIGMA_END = 20.0, 1.0
Z = torch.tensor([[-1.2, 0.3], [0.4, -0.9], [1.5, 1.1], [0.1, 0.2]], dtype=torch.float64)


def mixture_eps(x, t):
    """Exact eps of the mixture at per-sample sigma t (no division by sigma)."""
    var = STD**2 + t[:, None] ** 2
    d0 = x - MEANS[0]
    logit = (
        math.log(WEIGHTS[1] / WEIGHTS[0])
        - 0.5 * (((x - MEANS[1]) ** 2).sum(-1, keepdim=True) - (d0**2).sum(-1, keepdim=True)) / var
    )
    return t[:, None] * (d0 + torch.sigmoid(logit) * (MEANS[0] - MEANS[1])) / var


def mixture_ode():
    return ds.wrap(mixture_eps, ds.SigmaSchedule(0.0, 100.0), prediction="eps", time="sigma", time_dtype=torch.float64)


@pytest.fixture(scope="module")
def reference():
    x_T = Z * SIGMA_MAX
    u = torch.tensor([math.log(SIGMA_MAX), math.log(SIGMA_END)], dtype=torch.float64)

    def f(u_, y):
        s = math.exp(float(u_))
        return s * mixture_eps(y, torch.full((y.shape[0],), s, dtype=torch.float64))

    return odeint(f, x_T, u, method="dopri8", rtol=1e-13, atol=1e-13, options={"step_t": u[1:]})[-1]


def test_the_lean_mixture_eps_is_the_library_formula():
    g = GaussianMixture(MEANS, STD, weights=list(WEIGHTS))
    x = 3 * torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for s in (0.0, 0.3, 1.0, 7.0, 20.0):
        t = torch.full((16,), s, dtype=torch.float64)
        torch.testing.assert_close(mixture_eps(x, t), g.eps(x, s), rtol=1e-13, atol=1e-14)


def _grid(steps: int, log: bool) -> torch.Tensor:
    k = torch.arange(steps + 1, dtype=torch.float64) / steps
    if log:
        return torch.exp(math.log(SIGMA_MAX) + (math.log(SIGMA_END) - math.log(SIGMA_MAX)) * k)
    return SIGMA_MAX + (SIGMA_END - SIGMA_MAX) * k


# (solver, options, declared order the instance must report, step counts)
CASES = [
    ("euler-ancestral", {"eta": 0.0}, 1, (40, 80, 160)),
    ("plms-hb", {"beta": 0.8}, 1, (160, 320, 640)),
    ("ghvb", {"solver_order": 1, "beta": 0.5}, 1, (160, 320, 640)),
    ("heun", {}, 2, (40, 80, 160)),
    ("lms", {"solver_order": 2}, 2, (80, 160, 320)),
    ("ghvb", {"solver_order": 2, "beta": 0.5}, 2, (320, 640, 1280)),
    ("lms", {"solver_order": 3}, 3, (160, 320, 640)),
    ("ghvb", {"solver_order": 3, "beta": 0.9}, 3, (160, 320, 640)),
    ("lms", {}, 4, (400, 800, 1600)),
    ("ipndm", {}, 4, (400, 800, 1600)),
    ("plms", {}, 4, (400, 800, 1600)),
    ("ghvb", {"beta": 0.8}, 4, (400, 800, 1600)),
    ("torchdiffeq-euler", {}, 1, (40, 80, 160)),
    ("torchdiffeq-midpoint", {}, 2, (160, 320, 640)),
    ("torchdiffeq-heun2", {}, 2, (40, 80, 160)),
    ("torchdiffeq-heun3", {}, 3, (20, 40, 80)),
    ("torchdiffeq-rk4", {}, 4, (20, 40, 80)),
    ("torchdiffeq-explicit_adams", {}, 4, (400, 800, 1600)),
    ("torchdiffeq-euler", {"variable": "log-sigma"}, 1, (20, 40, 80)),
    ("torchdiffeq-midpoint", {"variable": "log-sigma"}, 2, (20, 40, 80)),
    ("torchdiffeq-heun2", {"variable": "log-sigma"}, 2, (20, 40, 80)),
    ("torchdiffeq-heun3", {"variable": "log-sigma"}, 3, (20, 40, 80)),
    ("torchdiffeq-rk4", {"variable": "log-sigma"}, 4, (10, 20, 40)),
    ("torchdiffeq-explicit_adams", {"variable": "log-sigma"}, 4, (20, 40, 80)),
]


@pytest.mark.parametrize("name, options, order, steps", CASES, ids=[f"{c[0]}{c[1] or ''}" for c in CASES])
def test_observed_order_matches_the_declared_order(reference, name, options, order, steps):
    solver = ds.make_solver(name, **options)
    assert solver.order == order
    log = options.get("variable") == "log-sigma"
    errors = []
    for n in steps:
        out = ds.sample(mixture_ode(), Z * SIGMA_MAX, name, sigmas=_grid(n, log), **options)
        errors.append(float((out - reference).abs().max()))
    assert min(errors) > 1e-9, "errors must stay well above the reference's accuracy"
    log_n = torch.log(torch.tensor(steps, dtype=torch.float64))
    log_e = torch.log(torch.tensor(errors, dtype=torch.float64))
    slope = float(-((log_n - log_n.mean()) * (log_e - log_e.mean())).sum() / ((log_n - log_n.mean()) ** 2).sum())
    assert abs(slope - order) <= 0.25, f"{name} {options}: slope {slope:.3f} (errors {errors})"


def test_torchdiffeq_euler_in_sigma_is_ddim():
    """E30: Euler in sigma and DDIM are the same map, final step to sigma = 0 included (claim 3)."""
    g = GaussianMixture(MEANS, [0.3, 0.5])
    ode = g.ode()  # DDPM's linear schedule, VP space, integer-index time
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for grid, steps in (("trailing", 25), ("karras", 13), ("ddim-uniform", 10)):
        a = ds.sample(ode, x_T, "ddim", steps=steps, grid=grid)
        b = ds.sample(ode, x_T, "torchdiffeq-euler", steps=steps, grid=grid)
        scale = max(1.0, float(ode.schedule.sigma_max))
        assert float((a - b).abs().max()) <= 1e-12 * scale


def test_explicit_adams_is_not_silent_about_torchdiffeq_warnings():
    # the solvers pass only options torchdiffeq knows: no "Unexpected arguments" warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in ("torchdiffeq-explicit_adams", "torchdiffeq-rk4", "torchdiffeq-dopri5"):
            ds.sample(mixture_ode(), Z * SIGMA_MAX, name, sigmas=_grid(8, False))
