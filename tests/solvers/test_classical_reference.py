"""Each classical solver agrees (1e-10, float64) with a second implementation written here
straight from its paper's equations, in a different form where the paper has one (EDM in the
denoiser form, PNDM with its own VP ``transfer`` formula, LMS by Gauss-Legendre quadrature of
the Lagrange interpolant, GHVB from the paper's explicit coefficient table, Runge-Kutta methods
from their Butcher tableaus). Stochastic options draw the same noise from the same generator.

Problem: a two-component Gaussian mixture with exact eps (nonlinear ODE), VE model with
t = sigma, on a Karras-type grid (rho = 7, sigma 20 -> 0.02, then 0): non-uniform, and the final
step to sigma = 0 is included. The adaptive torchdiffeq methods are checked by tolerance instead
(test_classical_robustness.py).
"""

import math

import numpy as np
import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import GaussianMixture

F64 = torch.float64
MIX = GaussianMixture(torch.tensor([[1.0, 0.5], [-1.0, -0.3]], dtype=F64), [0.6, 0.9], weights=[0.3, 0.7])
STEPS, SIGMA_MAX, SIGMA_MIN = 12, 20.0, 0.02
GRID = [
    (SIGMA_MAX ** (1 / 7) + k / (STEPS - 1) * (SIGMA_MIN ** (1 / 7) - SIGMA_MAX ** (1 / 7))) ** 7 for k in range(STEPS)
] + [0.0]
X_T = SIGMA_MAX * torch.tensor([[-1.2, 0.3], [0.4, -0.9], [1.5, 1.1]], dtype=F64)
TOL = 1e-10


def eps(x, sigma):
    return MIX.eps(x, float(sigma))


def denoiser(x, sigma):
    return x - sigma * eps(x, sigma)


def library(name, grid=GRID, seed=None, ode=None, x=X_T, **options):
    ode = ode if ode is not None else MIX.ode(ds.SigmaSchedule(0.0, 100.0), time="sigma")
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    return ds.sample(ode, x, name, sigmas=grid, generator=gen, **options)


# -- Karras et al. 2022, Algorithm 2 (Algorithm 1 when S_churn = 0), denoiser form --------------------
def edm_heun(x, t, S_churn=0.0, S_tmin=0.0, S_tmax=math.inf, S_noise=1.0, seed=None):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    N = len(t) - 1
    for i in range(N):
        gamma = min(S_churn / N, math.sqrt(2) - 1) if S_tmin <= t[i] <= S_tmax else 0.0
        t_hat = t[i] + gamma * t[i]
        if gamma > 0:  # diffsolve draws noise only where it injects some
            x = x + math.sqrt(t_hat**2 - t[i] ** 2) * S_noise * torch.randn(x.shape, generator=gen, dtype=F64)
        d = (x - denoiser(x, t_hat)) / t_hat
        x_next = x + (t[i + 1] - t_hat) * d
        if t[i + 1] != 0:
            d_prime = (x_next - denoiser(x_next, t[i + 1])) / t[i + 1]
            x_next = x + (t[i + 1] - t_hat) * (0.5 * d + 0.5 * d_prime)
        x = x_next
    return x


# -- k-diffusion's Euler ancestral (DDIM eta in VE form, docs/math.md E26) -----------------------------
def euler_ancestral(x, sigmas, eta=1.0, s_noise=1.0, seed=None):
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        sigma_up = min(s_next, eta * math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
        sigma_down = math.sqrt(s_next**2 - sigma_up**2)
        d = (x - denoiser(x, s)) / s
        x = x + d * (sigma_down - s)
        if s_next > 0 and sigma_up > 0:
            x = x + torch.randn(x.shape, generator=gen, dtype=F64) * s_noise * sigma_up
    return x


# -- LMS: integral of the Lagrange interpolant of eps, by Gauss-Legendre quadrature ------------------
def lms(x, sigmas, order=4):
    nodes, values = [], []
    gl_x, gl_w = np.polynomial.legendre.leggauss(6)  # exact for polynomials of degree <= 11
    for i, (a, b) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        nodes.insert(0, a)
        values.insert(0, eps(x, a))
        k = min(i + 1, order)
        total = torch.zeros_like(x)
        for gx, gw in zip(gl_x, gl_w):
            s = 0.5 * (a + b) + 0.5 * (b - a) * gx
            for j in range(k):
                basis = np.prod([(s - nodes[m]) / (nodes[j] - nodes[m]) for m in range(k) if m != j])
                total = total + 0.5 * (b - a) * gw * basis * values[j]
        x = x + total
    return x


# -- Adams-Bashforth tables (iPNDM, Zhang & Chen; PLMS with HB, Wizadwongsa et al. Alg. 1) -------------
def ab_combination(e):  # e: newest first
    k = len(e)
    if k == 1:
        return e[0]
    if k == 2:
        return (3 * e[0] - e[1]) / 2
    if k == 3:
        return (23 * e[0] - 16 * e[1] + 5 * e[2]) / 12
    return (55 * e[0] - 59 * e[1] + 37 * e[2] - 9 * e[3]) / 24


def ipndm(x, sigmas, order=4):
    e = []
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        e = [eps(x, s)] + e[: order - 1]
        x = x + (s_next - s) * ab_combination(e)
    return x


def plms_heavy_ball(x, sigmas, order=4, beta=0.8):
    e, v = [], None
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        e = [eps(x, s)] + e[: order - 1]
        e_hat = ab_combination(e)
        v = e_hat if v is None else (1 - beta) * v + beta * e_hat
        x = x + (s_next - s) * v
    return x


# -- GHVB, Wizadwongsa et al. Algorithm 2 (its order-3 line reads v_{n-1} for the last term) ----------
def ghvb(x, sigmas, order=4, beta=0.8):
    b, vs = beta, []
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        e = eps(x, s)
        vs = [e if not vs else (1 - b) * vs[0] + b * e] + vs[: order - 1]
        c = min(order, len(vs))
        v = vs
        if c == 1:
            e_hat = v[0]
        elif c == 2:
            e_hat = ((2 + b) * v[0] - (2 - b) * v[1]) / (2 * b)
        elif c == 3:
            e_hat = ((18 + 5 * b) * v[0] - (24 - 8 * b) * v[1] + (6 - b) * v[2]) / (12 * b)
        else:
            e_hat = ((46 + 9 * b) * v[0] - (78 - 19 * b) * v[1] + (42 - 5 * b) * v[2] - (10 - b) * v[3]) / (24 * b)
        x = x + (s_next - s) * e_hat
    return x


# -- F-PNDM (Liu et al. 2022) with PNDM's own VP transfer (their code's ``transfer``) ---------------------
def pndm_transfer(x_vp, s, s_next, e):
    a, a_next = 1 / (1 + s**2), 1 / (1 + s_next**2)  # alpha_bar
    return x_vp + (a_next - a) * (
        x_vp / (math.sqrt(a) * (math.sqrt(a) + math.sqrt(a_next)))
        - e / (math.sqrt(a) * (math.sqrt((1 - a_next) * a) + math.sqrt((1 - a) * a_next)))
    )


def f_pndm(xbar, sigmas, mid):
    to_vp = lambda xb, s: xb / math.sqrt(1 + s**2)
    to_bar = lambda xv, s: xv * math.sqrt(1 + s**2)
    x, ets = to_vp(xbar, sigmas[0]), []
    for _i, (s, s_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        e_of = lambda x_vp, sig: eps(to_bar(x_vp, sig), sig)
        if len(ets) > 2:
            ets.append(e_of(x, s))
            e = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        else:
            s_mid = mid(s, s_next)
            e1 = e_of(x, s)
            ets.append(e1)
            e2 = e_of(pndm_transfer(x, s, s_mid, e1), s_mid)
            e3 = e_of(pndm_transfer(x, s, s_mid, e2), s_mid)
            e4 = e_of(pndm_transfer(x, s, s_next, e3), s_next)
            e = (e1 + 2 * e2 + 2 * e3 + e4) / 6
        x = pndm_transfer(x, s, s_next, e)
    return to_bar(x, sigmas[-1])


# -- Runge-Kutta methods from their Butcher tableaus; explicit Adams as torchdiffeq defines it --------------
TABLEAUS = {  # (c, A, b)
    "euler": ([0], [[]], [1]),
    "midpoint": ([0, 1 / 2], [[], [1 / 2]], [0, 1]),
    "heun2": ([0, 1], [[], [1]], [1 / 2, 1 / 2]),
    "heun3": ([0, 1 / 3, 2 / 3], [[], [1 / 3], [0, 2 / 3]], [1 / 4, 0, 3 / 4]),
    "rk4": ([0, 1 / 3, 2 / 3, 1], [[], [1 / 3], [-1 / 3, 1], [1, -1, 1]], [1 / 8, 3 / 8, 3 / 8, 1 / 8]),
}


def rk_step(f, t, y, h, tableau):
    c, A, b = tableau
    k = []
    for ci, row in zip(c, A):
        k.append(f(t + ci * h, y + h * sum((a * kj for a, kj in zip(row, k)), torch.zeros_like(y))))
    return y + h * sum(bi * ki for bi, ki in zip(b, k))


def torchdiffeq_method(x, sigmas, method, variable="sigma"):
    log = variable == "log-sigma"
    if log:
        f = lambda u, y: math.exp(u) * eps(y, math.exp(u))
        times, last = [math.log(s) for s in sigmas if s > 0], sigmas[-1] == 0
    else:
        f, times, last = (lambda s, y: eps(y, s)), list(sigmas), False
    history = []
    for _i, (t, t_next) in enumerate(zip(times[:-1], times[1:])):
        h = t_next - t
        if method != "explicit_adams":
            x = rk_step(f, t, x, h, TABLEAUS[method])
            continue
        history = [f(t, x)] + history[:3]  # torchdiffeq: RK4 while fewer than 3 values are stored
        x = rk_step(f, t, x, h, TABLEAUS["rk4"]) if len(history) < 3 else x + h * ab_combination(history)
    return denoiser(x, sigmas[-2]) if last else x  # log-sigma: the step to 0 is the denoised estimate


CASES = [
    ("heun", {}, lambda: edm_heun(X_T, GRID)),
    (
        "heun",
        {"s_churn": 4.0, "s_tmin": 0.05, "s_tmax": 10.0, "s_noise": 1.003, "seed": 7},
        lambda: edm_heun(X_T, GRID, S_churn=4.0, S_tmin=0.05, S_tmax=10.0, S_noise=1.003, seed=7),
    ),
    ("euler-ancestral", {"seed": 5}, lambda: euler_ancestral(X_T, GRID, seed=5)),
    ("euler-ancestral", {"eta": 0.4, "s_noise": 0.9, "seed": 5}, lambda: euler_ancestral(X_T, GRID, 0.4, 0.9, seed=5)),
    ("euler-ancestral", {"eta": 1.7, "seed": 5}, lambda: euler_ancestral(X_T, GRID, 1.7, seed=5)),
    ("lms", {}, lambda: lms(X_T, GRID)),
    ("lms", {"solver_order": 2}, lambda: lms(X_T, GRID, order=2)),
    ("lms", {"solver_order": 3}, lambda: lms(X_T, GRID, order=3)),
    ("ipndm", {}, lambda: ipndm(X_T, GRID)),
    ("ipndm", {"solver_order": 3}, lambda: ipndm(X_T, GRID, order=3)),
    ("plms-hb", {}, lambda: plms_heavy_ball(X_T, GRID)),
    ("plms-hb", {"solver_order": 2, "beta": 0.3}, lambda: plms_heavy_ball(X_T, GRID, 2, 0.3)),
    ("ghvb", {}, lambda: ghvb(X_T, GRID)),
    ("ghvb", {"solver_order": 2, "beta": 0.5}, lambda: ghvb(X_T, GRID, 2, 0.5)),
    ("ghvb", {"solver_order": 3, "beta": 0.9}, lambda: ghvb(X_T, GRID, 3, 0.9)),
    ("plms", {"midpoint": "sigma"}, lambda: f_pndm(X_T, GRID, lambda s, s_next: 0.5 * (s + s_next))),
] + [
    (f"torchdiffeq-{m}", {"variable": v}, (lambda m=m, v=v: torchdiffeq_method(X_T, GRID, m, v)))
    for m in ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams")
    for v in ("sigma", "log-sigma")
]


@pytest.mark.parametrize("name, options, independent", CASES, ids=[f"{c[0]}{c[1] or ''}" for c in CASES])
def test_solver_matches_an_independent_implementation(name, options, independent):
    options = dict(options)
    out = library(name, seed=options.pop("seed", None), **options)
    expected = independent()
    assert float((out - expected).abs().max()) <= TOL


def test_plms_time_midpoint_follows_the_schedule():
    """PNDM's PRK midpoint is in the model's time: sigma_m = sigma((t(sigma_t) + t(sigma_s))/2)."""
    schedule = ds.VPLinearSchedule()
    ode = MIX.ode(schedule, time="t")
    grid = [s for s in GRID if s > schedule.sigma_min] + [0.0]  # within the model's range; PRK steps away from 0
    x = X_T / math.sqrt(1 + grid[0] ** 2)  # VP model space
    out = library("plms", grid=grid, ode=ode, x=x)

    def mid(s, s_next):
        return float(schedule.sigma(0.5 * (schedule.t(s) + schedule.t(s_next))))

    expected = f_pndm(X_T, grid, mid) / math.sqrt(1 + grid[-1] ** 2)
    assert float((out - expected).abs().max()) <= TOL
    assert abs(mid(grid[0], grid[1]) - 0.5 * (grid[0] + grid[1])) > 1e-3  # the two rules differ here


# -- identities between the solvers (same maps, so equal up to rounding) ---------------------------------
def test_momentum_solvers_reduce_to_adams_bashforth_and_to_each_other():
    ab = library("ipndm")
    assert float((library("plms-hb", beta=1.0) - ab).abs().max()) <= 1e-12  # HB with beta = 1 is PLMS
    assert float((library("ghvb", beta=1.0) - ab).abs().max()) <= 1e-12  # GHVB with beta = 1 is AB
    # first-order GHVB is Euler with heavy ball (the paper, after eq. 19)
    assert (
        float((library("ghvb", solver_order=1, beta=0.6) - library("plms-hb", solver_order=1, beta=0.6)).abs().max())
        <= 1e-12
    )
    assert float((library("lms", solver_order=1) - library("ddim")).abs().max()) <= 1e-12


def test_lms_equals_ipndm_on_equal_steps():
    grid = [20.0 - k * 19.0 / 16 for k in range(17)]
    assert float((library("lms", grid=grid) - library("ipndm", grid=grid)).abs().max()) <= 1e-12


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_euler_ancestral_is_ddim_with_eta(eta):
    """Claim 6 of docs/math.md: the VE ancestral step equals DDIM's (E18 / E26) with a shared z."""
    a = library("euler-ancestral", eta=eta, seed=11)
    b = library("ddim", eta=eta, seed=11)
    assert float((a - b).abs().max()) <= 1e-12 * SIGMA_MAX
