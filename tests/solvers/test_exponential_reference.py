"""Each exponential-integrator solver against a second float64 implementation written in the test
straight from the papers' update equations (agreement to 1e-10).

The references work in the papers' own VP variables, x = alpha x0 + s eps with
alpha = (1 + sigma^2)^(-1/2), s = sigma alpha, lambda = log(alpha / s) (docs/math.md E3-E7), call the
problem's exact eps directly, write each coefficient as printed in the papers (exp/expm1 forms;
moments by 48-point Gauss-Legendre quadrature where a paper leaves them as integrals) and share
no code with diffsolve.solvers. The grid is uniform in lambda from sigma = 80 to 0.02 and then 0,
on a SigmaSchedule(space="vp") (t = sigma, so no time interpolation enters). Every run ends with
the denoising step into sigma = 0 (E27); final_step="lower-order" is checked as well.
"""

import math

import numpy as np
import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import get_problem

SIGMAS = [float(s) for s in torch.exp(torch.linspace(math.log(80.0), math.log(0.02), 12, dtype=torch.float64))] + [0.0]
PROBLEM = get_problem("gmm2d")
GL_X, GL_W = np.polynomial.legendre.leggauss(48)


def vp(sigma):
    alpha = 1 / math.sqrt(1 + sigma * sigma)
    return alpha, sigma * alpha, -math.log(sigma)


def eps_vp(x, sigma):
    alpha = 1 / math.sqrt(1 + sigma * sigma)
    return PROBLEM.eps(x / alpha, sigma)


def x0_vp(x, sigma):
    alpha, s, _ = vp(sigma) if sigma > 0 else (1.0, 0.0, 0)
    return (x - s * eps_vp(x, sigma)) / alpha


def quad(f, a, b):
    t = (b - a) / 2 * GL_X + (a + b) / 2
    return float((b - a) / 2 * np.sum(GL_W * f(t)))


def orders_for(n, order, lower, multistep):
    out = []
    for i in range(n):
        p = min(order, i + 1) if multistep else order
        out.append(min(p, n - i) if lower else p)
    return out


# -- DPM-Solver (Lu et al. 2022a) and DPM-Solver++ (Lu et al. 2022b), singlestep -----------------
def singlestep_step(x, s_t, s_s, order, data):
    a_t, v_t, l_t = vp(s_t)
    a_s, v_s, l_s = vp(s_s)
    h = l_s - l_t
    m = x0_vp if data else eps_vp
    m0 = m(x, s_t)

    def at(r):
        return vp(math.exp(-(l_t + r * h)))

    if order == 1:
        return (v_s / v_t) * x - a_s * math.expm1(-h) * m0 if data else (a_s / a_t) * x - v_s * math.expm1(h) * m0
    if order == 2:  # Alg. 1 of both papers, r1 = 1/2
        r1 = 0.5
        a1, v1, _ = at(r1)
        s1 = v1 / a1
        if data:
            u = (v1 / v_t) * x - a1 * math.expm1(-r1 * h) * m0
            d = (1 - 1 / (2 * r1)) * m0 + 1 / (2 * r1) * m(u, s1)
            return (v_s / v_t) * x - a_s * math.expm1(-h) * d
        u = (a1 / a_t) * x - v1 * math.expm1(r1 * h) * m0
        return (a_s / a_t) * x - v_s * math.expm1(h) * m0 - v_s / (2 * r1) * math.expm1(h) * (m(u, s1) - m0)
    r1, r2 = 1 / 3, 2 / 3  # DPM-Solver-3 (2022a Alg. 2) and its data-prediction form
    a1, v1, _ = at(r1)
    a2, v2, _ = at(r2)
    if data:
        u1 = (v1 / v_t) * x - a1 * math.expm1(-r1 * h) * m0
        d1 = m(u1, v1 / a1) - m0
        u2 = (v2 / v_t) * x - a2 * math.expm1(-r2 * h) * m0 + (r2 / r1) * a2 * (math.expm1(-r2 * h) / (r2 * h) + 1) * d1
        d2 = m(u2, v2 / a2) - m0
        return (v_s / v_t) * x - a_s * math.expm1(-h) * m0 + (1 / r2) * a_s * (math.expm1(-h) / h + 1) * d2
    u1 = (a1 / a_t) * x - v1 * math.expm1(r1 * h) * m0
    d1 = m(u1, v1 / a1) - m0
    u2 = (a2 / a_t) * x - v2 * math.expm1(r2 * h) * m0 - v2 * (r2 / r1) * (math.expm1(r2 * h) / (r2 * h) - 1) * d1
    d2 = m(u2, v2 / a2) - m0
    return (a_s / a_t) * x - v_s * math.expm1(h) * m0 - (v_s / r2) * (math.expm1(h) / h - 1) * d2


def reference_singlestep(x, order, data, lower):
    n = len(SIGMAS) - 1
    for i, p in enumerate(orders_for(n, order, lower, False)):
        s_t, s_s = SIGMAS[i], SIGMAS[i + 1]
        x = x0_vp(x, s_t) if s_s == 0 else singlestep_step(x, s_t, s_s, p, data)
    return x


# -- multistep: DPM-Solver++(2M) (2022b Alg. 2), its noise twin, and 3M from the Taylor expansion -----
def reference_multistep(x, order, data, lower, taylor2=False):
    n = len(SIGMAS) - 1
    hist = []
    for i, p in enumerate(orders_for(n, order, lower, True)):
        s_t, s_s = SIGMAS[i], SIGMAS[i + 1]
        m0 = x0_vp(x, s_t) if data else eps_vp(x, s_t)
        if s_s == 0:
            return x0_vp(x, s_t)
        hist = [(m0, -math.log(s_t))] + hist[:2]
        a_t, v_t, l_t = vp(s_t)
        a_s, v_s, l_s = vp(s_s)
        h = l_s - l_t
        lin = (v_s / v_t) * x if data else (a_s / a_t) * x
        c = a_s if data else -v_s  # x_s = lin + c * (phi terms)
        e = -math.expm1(-h) if data else math.expm1(h)  # h phi_1 of the form used
        if p == 1:
            x = lin + c * e * m0
            continue
        h0 = l_t - hist[1][1]
        r0 = h0 / h
        d1_0 = (m0 - hist[1][0]) / r0
        if p == 2 and not taylor2:
            x = lin + c * e * (m0 + d1_0 / 2)
            continue
        ph2 = (h - 1 + math.exp(-h)) / h if data else (math.exp(h) - 1 - h) / h  # h phi_2
        if p == 2:
            x = lin + c * (e * m0 + ph2 * d1_0)
            continue
        r1 = (hist[1][1] - hist[2][1]) / h
        d1_1 = (hist[1][0] - hist[2][0]) / r1
        d2 = (d1_0 - d1_1) / (r0 + r1)  # second divided difference: P''/2 in units of h
        d1 = d1_0 + r0 * d2  # P'(0)
        ph3 = (0.5 - (h - 1 + math.exp(-h)) / h**2) if data else (math.exp(h) - 1 - h - h * h / 2) / h**2
        x = lin + c * (e * m0 + ph2 * d1 + 2 * ph3 * d2)  # Taylor: phi_3 term times P''(0) = 2 d2
    return x


# -- UniPC (Zhao et al. 2023): UniP-p / UniC-p with the R_p a = phi/B system --------------------------
def psi(h, q):
    """int_0^h exp(u - h) (u/h)^q du (the data-form phi_{q+1} integral, by quadrature)."""
    return quad(lambda u: np.exp(u - h) * (u / h) ** q, 0.0, h)


def unipc_update(x_base, s_t, s_s, m_list, lam_list, p, corrector, variant, m_new=None):
    a_s, v_s, l_s = vp(s_s)
    _, v_t, l_t = vp(s_t)
    h = l_s - l_t
    m0 = m_list[0]
    rks = [(lam_list[k] - l_t) / h for k in range(1, p)] + ([1.0] if corrector else [])
    ds_ = [m_list[k] - m0 for k in range(1, p)] + ([m_new - m0] if corrector else [])
    big_b = h if variant == "bh1" else -math.expm1(-h)
    x = (v_s / v_t) * x_base + a_s * (-math.expm1(-h)) * m0
    if not rks:
        return x
    if len(rks) == 1:
        a = [0.5]
    else:
        R = np.array([[r ** (q - 1) for r in rks] for q in range(1, len(rks) + 1)])
        g = np.array([psi(h, q) / big_b for q in range(1, len(rks) + 1)])  # q! h phi_{q+1}(-h) / B(h)
        a = np.linalg.solve(R, g)
    return x + a_s * big_b * sum(ak * dk / rk for ak, dk, rk in zip(a, ds_, rks))


def reference_unipc(x, order, variant, corrector, lower):
    n = len(SIGMAS) - 1
    orders = orders_for(n, order, lower, True)
    ms, lams, prev = [], [], None
    for i, p in enumerate(orders):
        s_t, s_s = SIGMAS[i], SIGMAS[i + 1]
        m_new = x0_vp(x, s_t)
        if s_s == 0:
            return m_new
        if corrector and prev is not None:
            base, s_b, m_b, l_b, p_b = prev
            x = unipc_update(base, s_b, s_t, m_b, l_b, p_b, True, variant, m_new)
        ms, lams = [m_new] + ms[:2], [-math.log(s_t)] + lams[:2]
        prev = (x, s_t, list(ms), list(lams), p)
        x = unipc_update(x, s_t, s_s, ms, lams, p, False, variant)
    return x


# -- DEIS (Zhang & Chen 2023): x_s = (alpha_s/alpha_t) x + alpha_s sum_j C_j eps_j, C_j = int l_j(v) d sigma ----
def reference_deis(x, order, variable, t_of, lower):
    n = len(SIGMAS) - 1
    hist = []
    for i, p in enumerate(orders_for(n, order, lower, True)):
        s_t, s_s = SIGMAS[i], SIGMAS[i + 1]
        e = eps_vp(x, s_t)
        if s_s == 0:
            return x0_vp(x, s_t)
        v = {"sigma": lambda s: s, "log-sigma": np.log, "t": t_of}[variable]
        hist = [(e, v(s_t))] + hist[:2]
        nodes = [hist[j][1] for j in range(p)]

        def basis(j, s):
            out = np.ones_like(s)
            for k in range(p):
                if k != j:
                    out = out * (v(s) - nodes[k]) / (nodes[j] - nodes[k])
            return out

        coef = [quad(lambda s, j=j: basis(j, s), s_t, s_s) for j in range(p)]
        a_t, a_s = vp(s_t)[0], vp(s_s)[0]
        x = (a_s / a_t) * x + a_s * sum(c * hist[j][0] for j, c in enumerate(coef))
    return x


# -- SDE-DPM-Solver++(2M) (2022b) with eta = 1, midpoint form --------------------------------------------
def reference_2m_sde(x, gen):
    n = len(SIGMAS) - 1
    prev = None
    for i in range(n):
        s_t, s_s = SIGMAS[i], SIGMAS[i + 1]
        d = x0_vp(x, s_t)
        if s_s == 0:
            return d
        _, v_t, l_t = vp(s_t)
        a_s, v_s, l_s = vp(s_s)
        h = l_s - l_t
        dd = d if prev is None else d + (d - prev[0]) / (2 * (l_t - prev[1]) / h)
        z = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        x = (v_s / v_t) * math.exp(-h) * x + a_s * (-math.expm1(-2 * h)) * dd + v_s * math.sqrt(-math.expm1(-2 * h)) * z
        prev = (d, l_t)
    return x


# -- DPM++ SDE: DPM-Solver++(2S), each stage an ancestral (eta = 1) step, Brownian noise in sigma ----------
def reference_dpmpp_sde(x, gen):
    n = len(SIGMAS) - 1
    for i in range(n):
        s_t, s_s = SIGMAS[i], SIGMAS[i + 1]
        d = x0_vp(x, s_t)
        if s_s == 0:
            return d
        s_m = math.exp(-(-math.log(s_t) + (-math.log(s_s) + math.log(s_t)) / 2))
        xbar = x * math.sqrt(1 + s_t**2)
        w1 = torch.randn(x.shape, generator=gen, dtype=torch.float64) * math.sqrt(s_t - s_m)

        def ancestral(xbar, den, s_to, w, span):
            up = min(s_to, s_to * math.sqrt(s_t**2 - s_to**2) / s_t)
            down = math.sqrt(s_to**2 - up**2)
            return den + (down / s_t) * (xbar - den) + up * w / math.sqrt(span)

        u = ancestral(xbar, d, s_m, w1, s_t - s_m)
        d_m = x0_vp(u / math.sqrt(1 + s_m**2), s_m)
        w2 = w1 + torch.randn(x.shape, generator=gen, dtype=torch.float64) * math.sqrt(s_m - s_s)
        x = ancestral(xbar, d_m, s_s, w2, s_t - s_s) / math.sqrt(1 + s_s**2)
    return x


# -- the comparison -----------------------------------------------------------------------------------
def run(name, options, seed=None, schedule=None):
    schedule = schedule or ds.SigmaSchedule(0.01, 80.0, space="vp")
    ode = PROBLEM.ode(schedule)
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return x_T, ds.sample(ode, x_T, name, sigmas=SIGMAS, generator=gen, **options)


CASES = []
for lower in (False, True):
    fs = {"final_step": "lower-order" if lower else "denoise"}
    for order, (noise_name, data_name) in {
        1: ("dpm-solver-1", "dpmpp-1"),
        2: ("dpm-solver-2s", "dpmpp-2s"),
        3: ("dpm-solver-3s", "dpmpp-3s"),
    }.items():
        CASES.append((noise_name, fs, lambda x, o=order, lo=lower: reference_singlestep(x, o, False, lo)))
        CASES.append((data_name, fs, lambda x, o=order, lo=lower: reference_singlestep(x, o, True, lo)))
    for name, order, data in [
        ("dpmpp-2m", 2, True),
        ("dpmpp-3m", 3, True),
        ("dpm-solver-2m", 2, False),
        ("dpm-solver-3m", 3, False),
    ]:
        CASES.append((name, fs, lambda x, o=order, d=data, lo=lower: reference_multistep(x, o, d, lo)))
        CASES.append(
            (
                name,
                dict(fs, solver_type="taylor"),
                lambda x, o=order, d=data, lo=lower: reference_multistep(x, o, d, lo, taylor2=True),
            )
        )
    for order in (1, 2, 3):
        for variant in ("bh1", "bh2"):
            for corrector in (True, False):
                CASES.append(
                    (
                        "unipc",
                        dict(fs, solver_order=order, variant=variant, corrector=corrector),
                        lambda x, o=order, v=variant, c=corrector, lo=lower: reference_unipc(x, o, v, c, lo),
                    )
                )
    for order in (1, 2, 3):
        for variable in ("sigma", "log-sigma"):
            CASES.append(
                (
                    "deis",
                    dict(fs, solver_order=order, variable=variable),
                    lambda x, o=order, v=variable, lo=lower: reference_deis(x, o, v, None, lo),
                )
            )


@pytest.mark.parametrize("name, options, reference", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_solver_matches_an_independent_implementation_of_the_paper(name, options, reference):
    x_T, out = run(name, options)
    expected = reference(x_T)
    assert float((out - expected).abs().max()) <= 1e-10


def test_deis_in_time_matches_an_independent_quadrature_on_a_vp_linear_schedule():
    schedule = ds.VPLinearSchedule(t_eps=1e-4)  # sigma_min 3.2e-3 < 0.02: the grid stays inside its range
    x_T, out = run("deis", {"variable": "t"}, schedule=schedule)
    t_of = lambda s: schedule.t(torch.from_numpy(np.asarray(s, dtype=np.float64))).numpy()  # noqa: E731
    expected = reference_deis(x_T, 3, "t", t_of, True)
    assert float((out - expected).abs().max()) <= 1e-10


@pytest.mark.parametrize("name, reference", [("dpmpp-2m-sde", reference_2m_sde), ("dpmpp-sde", reference_dpmpp_sde)])
def test_sde_solver_matches_an_independent_implementation_with_the_same_noise(name, reference):
    x_T, out = run(name, {"eta": 1.0, "final_step": "denoise"}, seed=11)
    expected = reference(x_T, torch.Generator().manual_seed(11))
    assert float((out - expected).abs().max()) <= 1e-10
