"""DDIM and its eta family against the numbers and identities of docs/math.md section 10."""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import Gaussian, PointMass
from diffsolve.solvers.base import advance

SIGMA_MAX = 157.40728081
X_T = torch.tensor([[-2.0, -0.5, 0.7, 1.9]])


def claim10_grid(S):
    k = torch.arange(S + 1, dtype=torch.float64)
    return (SIGMA_MAX ** (1 / 7) * (1 - k / S)) ** 7


@pytest.fixture(scope="module")
def gaussian():
    g = Gaussian(torch.full((4,), 0.3), 0.5)
    return g, g.ode(ds.SigmaSchedule(0.0, SIGMA_MAX, space="vp"))


# claims 10 and 12 (the reference errors and order of DDIM and of its round trip) are proved in
# tests/properties/test_exactness.py


def test_point_mass_is_recovered_from_any_start_in_one_step():
    # claim 9: eps* is constant along rays, so DDIM is exact at any S, S = 1 included
    c = torch.tensor([0.3, -1.2, 2.0])
    ode = PointMass(c).ode(ds.SigmaSchedule(0.0, SIGMA_MAX, space="vp"))
    x_T = torch.tensor([[5.0, -3.0, 0.1], [0.0, 1.0, 2.0]])
    for sig in [torch.tensor([SIGMA_MAX, 0.0]), ds.grid("karras", ode.schedule, 13, sigma_min=0.01)]:
        out = ds.sample(ode, x_T, "ddim", sigmas=sig)
        torch.testing.assert_close(out, c.expand_as(out), rtol=0, atol=1e-12 * SIGMA_MAX)


def _vp_ddim_step(x_t, eps, abar_t, abar_s, eta, z):
    """Independent float64 implementation of DDIM's generalized step (E18, E19), VP space."""
    nu = eta * math.sqrt((1 - abar_s) / (1 - abar_t)) * math.sqrt(1 - abar_t / abar_s)
    x0 = (x_t - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)
    return math.sqrt(abar_s) * x0 + math.sqrt(max(1 - abar_s - nu**2, 0.0)) * eps + nu * z


def _one_step(sigma_t, sigma_s, x_vp, eps, z, **options):
    sched = ds.SigmaSchedule(0.0, 1e4, space="vp")
    ode = ds.wrap(lambda x, t: eps.expand_as(x), sched, prediction="eps", time_dtype=torch.float64)
    solver = ds.make_solver("ddim", **options)
    state = solver.init(ode, [sigma_t, sigma_s], lambda like: z.expand_as(like))
    xbar = ode.to_xbar(x_vp, sigma_t)
    out, _ = advance(solver.step(0, xbar, state), ode)
    return ode.from_xbar(out, sigma_s)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_every_step_of_the_1000_step_grid_equals_the_generalized_ddim_update(eta):
    # claims 3 and 5: our xbar-form step equals E18 in VP space for every (t, t-1), incl. t -> 0
    sched = ds.DiscreteSchedule.linear()
    abar = torch.cat([sched.alphas_cumprod.flip(0), torch.ones(1)]).tolist()
    sig = torch.cat([sched.sigmas.flip(0), torch.zeros(1)]).tolist()
    x, eps, z = torch.tensor([[0.7, -1.1]]), torch.tensor([[0.4, 1.3]]), torch.tensor([[-0.2, 0.9]])
    for k in range(1000):
        got = _one_step(sig[k], sig[k + 1], x, eps, z, eta=eta)
        want = _vp_ddim_step(x, eps, abar[k], abar[k + 1], eta, z)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12 * max(1.0, sig[k]))


def test_eta_one_is_the_ddpm_posterior_mean_and_variance():
    # claim 5: E18 at eta = 1 has the coefficients of E23 and nu^2 of E24, on every step of T = 1000
    sched = ds.DiscreteSchedule.linear()
    abar = torch.cat([torch.ones(1), sched.alphas_cumprod]).tolist()  # abar_0 := 1
    x, eps = torch.tensor([[0.7, -1.1]]), torch.tensor([[0.4, 1.3]])
    zero, one = torch.zeros(1, 2), torch.ones(1, 2)
    sig = [0.0] + sched.sigmas.tolist()
    for t in range(1000, 0, -1):
        s = t - 1
        mean = _one_step(sig[t], sig[s], x, eps, zero, eta=1.0)
        std = _one_step(sig[t], sig[s], x, eps, one, eta=1.0) - mean
        beta = 1 - abar[t] / abar[s]
        x0 = (x - math.sqrt(1 - abar[t]) * eps) / math.sqrt(abar[t])
        mu = (math.sqrt(abar[s]) * beta / (1 - abar[t])) * x0 + (
            math.sqrt(abar[t] / abar[s]) * (1 - abar[s]) / (1 - abar[t])
        ) * x
        torch.testing.assert_close(mean, mu, rtol=1e-12, atol=1e-13)
        var = beta * (1 - abar[s]) / (1 - abar[t])
        torch.testing.assert_close(std, torch.full_like(std, math.sqrt(var)), rtol=1e-10, atol=1e-15)


def test_large_variance_ddpm_uses_sigma_hat_and_masks_the_last_step():
    # E25: noise std sqrt(1 - abar_t / abar_s) in VP space; the step to sigma = 0 adds none
    sched = ds.DiscreteSchedule.linear()
    st, ss = float(sched.sigmas[500]), float(sched.sigmas[400])
    at, as_ = float(sched.alphas_cumprod[500]), float(sched.alphas_cumprod[400])
    x, eps = torch.tensor([[0.2]]), torch.tensor([[0.5]])
    mean = _one_step(st, ss, x, eps, torch.zeros(1, 1), variance="large")
    std = _one_step(st, ss, x, eps, torch.ones(1, 1), variance="large") - mean
    assert std.item() == pytest.approx(math.sqrt(1 - at / as_), rel=1e-12)
    torch.testing.assert_close(mean, _one_step(st, ss, x, eps, torch.zeros(1, 1), eta=1.0), rtol=1e-13, atol=0)
    last = _one_step(st, 0.0, x, eps, torch.ones(1, 1), variance="large")
    torch.testing.assert_close(last, (x - math.sqrt(1 - at) * eps) / math.sqrt(at), rtol=1e-13, atol=0)


@pytest.mark.parametrize("eta", [0.5, 0.25])
def test_large_variance_refuses_an_eta_it_would_ignore(eta):
    # sigma-hat DDPM always takes eta = 1's mean: variance="large" with eta=0.5 ran exactly as without it
    with pytest.raises(ValueError, match=rf"variance='large' .* takes no eta, so eta={eta} would be ignored"):
        ds.make_solver("ddim", variance="large", eta=eta)
    assert ds.make_solver("ddim", variance="large", eta=1.0).stochastic  # eta = 1 is its own mean: accepted


def test_deterministic_ddim_ignores_the_rng():
    # claim 17
    ode = Gaussian([0.1, 0.2], 0.7).ode()
    x_T = torch.randn(3, 2)
    torch.manual_seed(0)
    a = ds.sample(ode, x_T, "ddim", steps=8)
    torch.manual_seed(1)
    b = ds.sample(ode, x_T, "ddim", steps=8)
    assert torch.equal(a, b)
