"""DDIM's step against the note's formulas: claims 3-8, 14, 16 (and 17 in test_solver_laws.py).

Single steps run the registered 'ddim' solver on an ODE whose model returns a fixed epshat, so a
step is exactly one application of its formula; whole runs use a random smooth network.
"""

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import diffsolve as ds
from diffsolve.plugins import get_registry
from diffsolve.testing import strategies as dst

from . import reference as ref


@st.composite
def level_pairs(draw, allow_up: bool = True, allow_equal: bool = False):
    """(sigma_t, sigma_s): two levels of a drawn discrete schedule; s = -1 stands for abar_0 = 1 (sigma 0).

    allow_up: s > t (encoding) is allowed; allow_equal: s = t is allowed.
    """
    sched = draw(dst.discrete_schedules())
    T = sched.num_steps
    t = draw(st.integers(0, T - 1))
    s = draw(st.integers(-1, T - 1 if allow_up else t))
    assume(allow_equal or s != t)
    sig = lambda i: 0.0 if i < 0 else float(sched.sigmas[i])
    return sig(t), sig(s)


def vp_states(n=3, bound=10.0):
    """n float64 tensors of one drawn shape, entries in [-bound, bound] (claim 3 bounds |x_t|, |epshat| by 10)."""
    return dst.shapes().flatmap(lambda shape: st.tuples(*[dst.states(shape, bound=bound)] * n))


def ddim_vp_step(sigma_t, sigma_s, x_t, eps, z=None, **options):
    """The registered 'ddim' solver's step, seen in VP space."""
    ode = ref.constant_eps_ode(eps)
    out, _, _ = ref.solver_step("ddim", ode, sigma_t, sigma_s, ode.to_xbar(x_t, sigma_t), z=z, **options)
    return ode.from_xbar(out, sigma_s)


# -- claim 3 -----------------------------------------------------------------------------------------
@given(level_pairs(), vp_states(2))
def test_claim03_ddim_step_is_sigma_euler_and_the_generalized_update_for_any_pair(pair, xs):
    sigma_t, sigma_s = pair
    x_t, eps = xs
    got = ddim_vp_step(sigma_t, sigma_s, x_t, eps)
    scale = max(1.0, sigma_t, sigma_s)
    # claim 3: 1e-12 * max(1, sigma_t, sigma_s); xbar = x/A_t is of size sigma_t |x| and rounds at 1e-16 of that
    euler = ref.A(sigma_s) * (x_t / ref.A(sigma_t) + (sigma_s - sigma_t) * eps)  # A_s xbar_s of E30
    torch.testing.assert_close(got, euler, rtol=0, atol=1e-12 * scale)
    torch.testing.assert_close(got, ref.ddim_step_vp(x_t, eps, sigma_t, sigma_s, eta=0.0), rtol=0, atol=1e-12 * scale)


@given(dst.smooth_networks(dim=st.integers(1, 6)), dst.sigma_grids(max_steps=25), dst.seeds)
def test_claim03_ddim_run_and_invert_equal_the_generalized_update_loop(net, sigmas, seed):
    sched = ds.SigmaSchedule(0.0, float(sigmas[0]), space="vp")
    ode = ds.wrap(net, sched, prediction="eps", time="sigma", time_dtype=torch.float64)
    x_T = torch.randn(2, net.dim, generator=torch.Generator().manual_seed(seed))
    sig = sigmas.tolist()

    def loop(x, grid):
        for s_t, s_s in zip(grid[:-1], grid[1:]):  # E18 with eta = 0, the raw network at (x, t = sigma)
            x = ref.ddim_step_vp(x, net(x, torch.full((x.shape[0],), s_t)), s_t, s_s)
        return x

    # a run is a chain of steps of size 1e-16 * sigma each; the smooth network is 1-Lipschitz-ish, so
    # the bound of claim 3 per step holds for the chain with scale = max(1, sigma_max)
    tol = 1e-12 * max(1.0, sig[0])
    torch.testing.assert_close(ds.sample(ode, x_T, "ddim", sigmas=sigmas), loop(x_T, sig), rtol=0, atol=tol)
    # encoding (E42): same formula upward, s > t with nu := 0, from sigma = 0 (the network at t = 0)
    x0 = x_T.clone()
    up = sig[::-1]
    torch.testing.assert_close(ds.invert(ode, x0, "ddim", sigmas=up), loop(x0, up), rtol=0, atol=tol)


# -- claim 4 -----------------------------------------------------------------------------------------
@given(dst.smooth_networks(dim=st.integers(1, 6)), dst.sigma_grids(max_steps=25), dst.seeds)
def test_claim04_all_first_order_forms_agree(net, sigmas, seed):
    sig = sigmas.tolist()
    x_T = torch.randn(2, net.dim, generator=torch.Generator().manual_seed(seed))
    eps_at = lambda x_vp, s: net(x_vp, torch.full((x_vp.shape[0],), s))  # VP input, t = sigma
    runs = {}
    for form in ("E22", "E31", "E33", "E34"):
        x = x_T.clone()  # VP state
        for s_t, s_s in zip(sig[:-1], sig[1:]):
            eps = eps_at(x, s_t)
            x0hat = (x - ref.B(s_t) * eps) / ref.A(s_t)
            if form == "E22":
                x = ref.e22(x, eps, s_t, s_s)
            elif form == "E31":
                xbar = x / ref.A(s_t)
                x = ref.A(s_s) * ref.e31(xbar, xbar - s_t * eps, s_t, s_s)
            elif form == "E33":  # at sigma_s = 0, h = inf: its limit B_s (e^h - 1) -> A_s (sigma_t - sigma_s) is E22
                x = ref.e33(x, eps, s_t, s_s) if s_s > 0 else ref.e22(x, eps, s_t, s_s)
            else:
                x = ref.e34(x, x0hat, s_t, s_s)
        runs[form] = x
    sched = ds.SigmaSchedule(0.0, sig[0], space="vp")
    runs["ddim"] = ds.sample(ds.wrap(net, sched, time="sigma", time_dtype=torch.float64), x_T, "ddim", sigmas=sigmas)
    for form, x in runs.items():
        # claim 4: 1e-12 * scale on one grid (scale = max(1, sigma_max); E33's exp(h) - 1 and E34's ratios
        # round at 1e-16 relative, times coefficients up to sigma_max)
        torch.testing.assert_close(x, runs["E22"], rtol=0, atol=1e-12 * max(1.0, sig[0]), msg=form)


# -- claim 5 -----------------------------------------------------------------------------------------
def _vp_coefficients(sigma_t, sigma_s, **options):
    """(a, b, c) with x_s = a x_t + b epshat + c z for the 'ddim' step (it is linear in x_t, epshat, z)."""
    one, zero = torch.ones(1, 1), torch.zeros(1, 1)
    a = ddim_vp_step(sigma_t, sigma_s, one, zero, zero, **options).item()
    b = ddim_vp_step(sigma_t, sigma_s, zero, one, zero, **options).item()
    c = ddim_vp_step(sigma_t, sigma_s, zero, zero, one, **options).item()
    return a, b, c


@given(level_pairs(allow_up=False))
def test_claim05_eta_one_is_the_ddpm_posterior(pair):
    sigma_t, sigma_s = pair
    a, b, c = _vp_coefficients(sigma_t, sigma_s, eta=1.0)
    one, zero = torch.ones(1, 1), torch.zeros(1, 1)
    # E23 on (x_t, epshat): x0hat = (x_t - B_t eps)/A_t
    mu_x = ref.ddpm_posterior(one, one / ref.A(sigma_t), sigma_t, sigma_s)[0].item()
    mu_eps, var = ref.ddpm_posterior(zero, -one * ref.B(sigma_t) / ref.A(sigma_t), sigma_t, sigma_s)
    # claim 5: rel 1e-12; abs 1e-15 where a coefficient is 0 (the last step's noise)
    assert a == pytest.approx(mu_x, rel=1e-12, abs=1e-15)
    assert b == pytest.approx(mu_eps.item(), rel=1e-12, abs=1e-15)
    assert c**2 == pytest.approx(var, rel=1e-12, abs=1e-15)  # E24
    # and E18's own coefficients at eta = 1
    nu = ref.ddim_nu(sigma_t, sigma_s, 1.0)
    assert c == pytest.approx(nu, rel=1e-12, abs=1e-15)
    assert a == pytest.approx(ref.ddim_step_vp(one, zero, sigma_t, sigma_s, 1.0, zero).item(), rel=1e-12)


# -- claim 6 -----------------------------------------------------------------------------------------
ANCESTRAL_ETA = st.one_of(st.sampled_from([0.0, 0.3, 1.0]), dst.etas)


@given(level_pairs(allow_up=False), vp_states(3), ANCESTRAL_ETA)
def test_claim06_ddim_eta_step_is_kdiffusion_euler_ancestral(pair, xs, eta):
    sigma_t, sigma_s = pair
    x_t, eps, z = xs
    got = ddim_vp_step(sigma_t, sigma_s, x_t, eps, z, eta=eta)
    xbar = x_t / ref.A(sigma_t)
    kd = ref.A(sigma_s) * ref.kdiffusion_ancestral_step(xbar, xbar - sigma_t * eps, sigma_t, sigma_s, eta, z)
    # claim 6: 1e-12 * scale (scale = max(1, sigma_t); xbar and D are of size sigma_t |x|)
    tol = 1e-12 * max(1.0, sigma_t)
    torch.testing.assert_close(got, kd, rtol=0, atol=tol)
    torch.testing.assert_close(got, ref.ddim_step_vp(x_t, eps, sigma_t, sigma_s, eta, z), rtol=0, atol=tol)
    # registered solvers that implement E26 directly take the same step with the same z
    for name, options in ANCESTRAL_EQUIVALENTS.items():
        if name in get_registry().solvers:
            ode = ref.constant_eps_ode(eps)
            out, _, _ = ref.solver_step(name, ode, sigma_t, sigma_s, ode.to_xbar(x_t, sigma_t), z=z, **options(eta))
            torch.testing.assert_close(ode.from_xbar(out, sigma_s), kd, rtol=0, atol=tol, msg=name)


#: registered solvers that are E26 (k-diffusion's Euler ancestral), with their options at a given eta
ANCESTRAL_EQUIVALENTS = {"euler-ancestral": lambda eta: {"eta": eta}}


# -- claim 7 -----------------------------------------------------------------------------------------
@given(
    st.floats(math.log(1e-3), math.log(1e3)).map(math.exp), vp_states(3), dst.etas, st.sampled_from(["eta", "large"])
)
def test_claim07_last_step_returns_x0hat_for_every_eta(sigma_t, xs, eta, variance):
    x_t, eps, z = xs
    if variance == "large":
        eta = 1.0  # sigma-hat DDPM is eta = 1's mean and takes no other eta (refused: tests/test_ddim.py)
    got = ddim_vp_step(sigma_t, 0.0, x_t, eps, z, eta=eta, variance=variance)
    again = ddim_vp_step(sigma_t, 0.0, x_t, eps, -z, eta=eta, variance=variance)
    assert torch.equal(got, again), "the last step must inject no noise (nu = 0 for every eta)"
    assert ref.ddim_nu(sigma_t, 0.0, eta) == 0.0
    x0hat = (x_t - ref.B(sigma_t) * eps) / ref.A(sigma_t)
    # claim 7: 1e-14 * scale: x0hat = xbar - sigma eps, one rounding of size 1e-16 * sigma_t |eps| per term
    torch.testing.assert_close(got, x0hat, rtol=0, atol=1e-14 * max(1.0, sigma_t) * max(1.0, eps.abs().max().item()))


# -- claim 8 -----------------------------------------------------------------------------------------
@given(level_pairs(allow_up=False), dst.etas)
def test_claim08_radicand_is_nonnegative_for_eta_in_unit_interval(pair, eta):
    sigma_t, sigma_s = pair
    abar_t, om_t = ref.abar_pair(sigma_t)
    abar_s, om_s = ref.abar_pair(sigma_s)
    _, _, nu = _vp_coefficients(sigma_t, sigma_s, eta=eta)  # the solver's injected std, VP units
    # claim 8: 1 - abar_s - nu^2 >= -1e-15 (rounding of squares of numbers <= 1)
    assert om_s - nu**2 >= -1e-15
    # at eta = 1 it has the closed form (1 - abar_s)^2 abar_t / (abar_s (1 - abar_t)) (section 2.1)
    _, _, nu1 = _vp_coefficients(sigma_t, sigma_s, eta=1.0)
    assert om_s - nu1**2 == pytest.approx(om_s**2 * abar_t / (abar_s * om_t), rel=1e-9, abs=1e-15)


@given(level_pairs(allow_up=False), st.floats(1.0, 10.0), vp_states(2))
def test_claim08_radicand_beyond_its_bound_is_clamped_not_nan(pair, factor, xs):
    sigma_t, sigma_s = pair
    assume(sigma_s > 0)
    x_t, eps = xs
    eta_max = sigma_t / math.sqrt(sigma_t**2 - sigma_s**2)  # radicand < 0 for eta > eta_max (> 1)
    eta = eta_max * factor * (1 + 1e-9)
    a, b, c = _vp_coefficients(sigma_t, sigma_s, eta=eta)
    assert all(math.isfinite(v) for v in (a, b, c))
    # the clamped radicand leaves x_s = A_s x0hat + nu z: b = -A_s sigma_t, a = A_s / A_t
    assert b == pytest.approx(-ref.A(sigma_s) * sigma_t, rel=1e-12)
    assert a == pytest.approx(ref.A(sigma_s) / ref.A(sigma_t), rel=1e-12)
    x0hat = (x_t - ref.B(sigma_t) * eps) / ref.A(sigma_t)
    z = torch.ones_like(x_t)
    out = ddim_vp_step(sigma_t, sigma_s, x_t, eps, z, eta=eta)
    assert torch.isfinite(out).all()
    # 1e-12 scale, as claim 3 (x0hat is of size sigma_t |eps|)
    torch.testing.assert_close(out, ref.A(sigma_s) * x0hat + c * z, rtol=0, atol=1e-12 * max(1.0, sigma_t))


# -- claim 14 ----------------------------------------------------------------------------------------
@given(st.floats(math.log(1e-3), math.log(1e3)).map(math.exp), st.floats(0.0, 0.999), vp_states(2))
def test_claim14_eq15_is_not_ddim(sigma_t, frac, xs):
    # frac <= 0.999: the increments sigma_s - sigma_t and sigma_s^2 - sigma_t^2 cancel digits as
    # frac -> 1 (relative rounding 1e-16 / (1 - frac)); a step of at least 0.1% of sigma_t keeps
    # that below 1e-13, inside the claim's 1e-12
    sigma_s = frac * sigma_t
    xbar, eps = xs
    # |eps| >= 1e-3 in every entry (the ratio below divides by each increment): moved away from 0
    # rather than filtered, so no draw is wasted
    eps = eps + torch.where(eps >= 0, 1e-3, -1e-3)
    ode = ref.constant_eps_ode(eps)
    ddim, _, _ = ref.solver_step("ddim", ode, sigma_t, sigma_s, xbar)
    eq15 = ref.e37(xbar, eps, sigma_t, sigma_s)
    ratio = (eq15 - xbar) / (ddim - xbar)
    # claim 14: rel 1e-12 (two increments of size |sigma_s - sigma_t| |eps|, each rounded once, plus the
    # subtraction of xbar, hence the |xbar| / increment amplification allowed for)
    inc = (sigma_t - sigma_s) * eps.abs().min().item()
    rel = 1e-12 * max(1.0, xbar.abs().max().item() / inc)
    torch.testing.assert_close(ratio, torch.full_like(ratio, (sigma_s + sigma_t) / (2 * sigma_t)), rtol=rel, atol=0)
    if sigma_s == 0.0:  # a final (E37) step ends half-way to x0hat
        torch.testing.assert_close(eq15, xbar - sigma_t * eps / 2, rtol=0, atol=1e-14 * sigma_t * 10)


def test_claim14_final_step_of_eq15_stops_half_way():
    xbar, eps = torch.tensor([[2.0, -1.0]]), torch.tensor([[0.5, 0.25]])
    ode = ref.constant_eps_ode(eps)
    ddim, _, _ = ref.solver_step("ddim", ode, 4.0, 0.0, xbar)
    torch.testing.assert_close(ddim, xbar - 4.0 * eps, rtol=0, atol=1e-15)  # DDIM reaches x0hat (E27)
    eq15 = ref.e37(xbar, eps, 4.0, 0.0)
    torch.testing.assert_close(eq15, xbar - 2.0 * eps, rtol=0, atol=1e-15)  # Eq. 15 stops half-way
    assert (ddim - eq15).abs().min() > 0.4


# -- claim 16 ----------------------------------------------------------------------------------------
@given(st.floats(math.log(1e-3), math.log(1e3)).map(math.exp), vp_states(3), dst.etas)
def test_claim16_duplicate_step_is_a_no_op(sigma, xs, eta):
    xbar, eps, z = xs
    ode = ref.constant_eps_ode(eps)
    out, _, _ = ref.solver_step("ddim", ode, sigma, sigma, xbar, z=z, eta=eta)
    # claim 16: within 1e-13 * scale (the step adds (sigma_s - sigma_t) eps = 0)
    torch.testing.assert_close(out, xbar, rtol=0, atol=1e-13 * max(1.0, sigma))
    assert ode.nfe == 1  # a duplicate still costs its model call


@given(st.integers(1, 120), st.sampled_from(["ddim-uniform", "ddim-quad"]))
def test_claim16_official_grid_run_makes_one_call_per_index(steps, name):
    from diffsolve.grids import ddim_quad_indices, ddim_uniform_indices

    assume(name == "ddim-uniform" or steps >= 2)
    sched = ds.DiscreteSchedule.linear()
    calls = []
    ode = ds.wrap(lambda x, t: (calls.append(t[0].item()), torch.zeros_like(x))[1], sched)
    ds.sample(
        ode,
        torch.zeros(1, 1),
        "ddim",
        steps=steps,
        grid=name,
        grid_options={"duplicates": "drop"} if name == "ddim-quad" else None,
    )
    if name == "ddim-uniform":
        seq = ref.official_uniform(1000, steps)
        assert ode.nfe == len(seq) == len(ddim_uniform_indices(1000, steps))
    else:
        # 'ddim-quad' with duplicates="drop" runs the distinct indices (each duplicate would be a no-op call, claim 16):
        # one call per distinct index of the official sequence
        seq = sorted(set(ref.official_quad(1000, steps)))
        assert ode.nfe == len(seq) == len(set(ddim_quad_indices(1000, steps)))
    # the model sees exactly the official code indices, from the top down (E41)
    assert calls == [float(i) for i in reversed(seq)]


def test_claim16_nfe_for_the_non_divisor_step_counts():
    sched = ds.DiscreteSchedule.linear()
    for steps, nfe in [(15, 16), (30, 31), (300, 334), (400, 500)]:
        ode = ds.wrap(lambda x, t: torch.zeros_like(x), sched)
        ds.sample(ode, torch.zeros(1, 1), "ddim", steps=steps, grid="ddim-uniform")
        assert ode.nfe == nfe


# -- first-order equivalents in the registry (claim 4, issue 3) ----------------------------------------
#: registered solvers (with options) that are DDIM in another form
FIRST_ORDER_EQUIVALENTS = {
    "ddim": {},
    "torchdiffeq-euler": {},
    "dpm-solver-1": {},
    "dpmpp-1": {},
    "unipc": {"solver_order": 1, "corrector": False},
    "deis": {"solver_order": 1},
    "ipndm": {"solver_order": 1},
    "lms": {"solver_order": 1},
    "euler-ancestral": {"eta": 0.0},
    "ghvb": {"solver_order": 1, "beta": 1.0},
    "plms-hb": {"solver_order": 1, "beta": 1.0},
    "bdia": {"gamma": 0.0},
}


def first_order_cases():
    reg = get_registry()
    cases = []
    for name, opts in FIRST_ORDER_EQUIVALENTS.items():
        assert name in reg.solvers, f"{name} is listed as DDIM's equivalent but is not registered"
        ds.make_solver(name, **opts)  # an option the solver lacks is an error here, not a skipped case
        cases.append(pytest.param(name, opts, id=f"{name}{opts or ''}"))
    return cases


@pytest.mark.parametrize("name, opts", first_order_cases())
@given(dst.mixtures(), dst.sigma_grids(max_steps=20, sigma_min=1e-2), dst.seeds)
def test_claim04_registered_first_order_solvers_equal_ddim(name, opts, mixture, sigmas, seed):
    ode = mixture.ode(ds.SigmaSchedule(0.0, float(sigmas[0]), space="vp"))
    x_T = torch.randn(2, mixture.dim, generator=torch.Generator().manual_seed(seed))
    # the independent E22 loop with the mixture's exact eps at (xbar = x/A, sigma)
    sig, x = sigmas.tolist(), x_T.clone()
    for s_t, s_s in zip(sig[:-1], sig[1:]):
        x = ref.e22(x, mixture.eps(x / ref.A(s_t), s_t), s_t, s_s)
    got = ds.sample(ode, x_T, name, sigmas=sigmas, **opts)
    torch.testing.assert_close(got, x, rtol=0, atol=1e-12 * max(1.0, sig[0]))
