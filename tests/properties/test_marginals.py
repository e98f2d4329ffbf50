"""Claim 13 (Lemma 1): from the exact marginal q(x_t | c) of a point mass, one stochastic step with the
true eps lands on the exact marginal q(x_s | c) = N(A_s c, B_s^2 I), for every eta; and so does one
step of every registered stochastic configuration (sigma-hat DDPM lands on its own, larger variance).

Statistical test. N = 10^6 draws per check, seeds drawn by hypothesis (fixed under the default
derandomized 'quick' profile). Each check is a 5-sigma bound: the mean error against
5 B_s/sqrt(N), the relative variance error against 5 sqrt(2/N) (the sample variance of a Gaussian
has relative standard error sqrt(2/N)); a correct sampler fails one check with probability
P(|Z| > 5) = 5.7e-7, so about 4.6e-6 per example of the eta test (8 checks: mean and variance at
four etas) and, under the 'thorough' profile (50 random examples of it), about 2.5e-4 per run. A wrong step fails by far more: e.g. the paper's
seed pseudo-code or a radicand off by nu^2 moves the variance by O(1).
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diffsolve as ds
from diffsolve.solvers.base import advance

from . import reference as ref
from .solver_cases import STOCHASTIC_CASES, case_id, params

N = 1_000_000
LINEAR = ds.DiscreteSchedule.linear()
FIVE_SIGMA = 5.0


def point_mass_eps_model(c):
    """The exact eps of a point mass at c as a VP model fed t = sigma: eps = (x/A - c)/sigma (E10),
    the formula of PointMass written out (cheap for 10^6 samples)."""

    def model(x, t):
        sigma = t.reshape(-1, 1)
        return (x * torch.sqrt(1 + sigma**2) - c) / sigma

    return model


def _one_step_from_the_marginal(solver, opts, c, sigma_t, sigma_s, seed):
    """x_t ~ N(A_t c, B_t^2) (VP), one solver step with the exact eps, returned in VP space."""
    ode = ds.wrap(
        point_mass_eps_model(c), ds.SigmaSchedule(0.0, 1e4, space="vp"), time="sigma", time_dtype=torch.float64
    )
    g = torch.Generator().manual_seed(seed)
    x_t = ref.A(sigma_t) * c + ref.B(sigma_t) * torch.randn(N, c.numel(), generator=g)
    s = ds.make_solver(solver, **opts)
    state = s.init(ode, [sigma_t, sigma_s], ds.make_noise_sampler(torch.Generator().manual_seed(seed + 1)))
    xbar_s, _ = advance(s.step(0, ode.to_xbar(x_t, sigma_t), state), ode)
    return ode.from_xbar(xbar_s, sigma_s)


def _assert_marginal(x_s, c, sigma_s, what, variance=None):
    A_s, B_s = ref.A(sigma_s), ref.B(sigma_s)
    variance = B_s**2 if variance is None else variance
    mean, var = x_s.mean(0), x_s.var(0)
    assert (mean - A_s * c).abs().max() < FIVE_SIGMA * math.sqrt(variance / N), f"{what}: mean {mean} vs {A_s * c}"
    rel = (var / variance - 1).abs().max()
    assert rel < FIVE_SIGMA * math.sqrt(2 / N), f"{what}: variance off by {float(rel):.3g} relative"


@st.composite
def linear_levels(draw):
    """(sigma_t, sigma_s), s < t, two levels of DDPM's linear schedule (s > 0: B_s > 0)."""
    t = draw(st.integers(1, 999))
    s = draw(st.integers(0, t - 1))
    return float(LINEAR.sigmas[t]), float(LINEAR.sigmas[s])


@settings(max_examples=max(3, settings.default.max_examples // 5))
@given(
    linear_levels(),
    st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=1),
    st.integers(0, 2**31 - 1),
    st.floats(0.0, 1.0),
)
def test_claim13_one_ddim_step_keeps_the_marginal_for_every_eta(levels, c, seed, eta_any):
    sigma_t, sigma_s = levels
    c = torch.tensor(c, dtype=torch.float64)
    for eta in (0.0, 0.5, 1.0, eta_any):
        x_s = _one_step_from_the_marginal("ddim", {"eta": eta}, c, sigma_t, sigma_s, seed)
        _assert_marginal(x_s, c, sigma_s, f"ddim eta={eta}")


def test_claim13_the_marginal_check_rejects_a_wrong_variance():
    # the test has power: DDIM's step with the radicand of the seed pseudo-code (section 9), i.e.
    # variance large by nu^2, fails it at eta = 1 on a mid-schedule pair
    sigma_t, sigma_s = float(LINEAR.sigmas[500]), float(LINEAR.sigmas[400])
    c = torch.tensor([0.3, -0.7])
    x_s = _one_step_from_the_marginal("ddim", {"eta": 1.0}, c, sigma_t, sigma_s, 0)
    nu = ref.ddim_nu(sigma_t, sigma_s, 1.0)
    wrong = x_s + nu * torch.randn(x_s.shape, generator=torch.Generator().manual_seed(7))
    with pytest.raises(AssertionError, match="variance"):
        _assert_marginal(wrong, c, sigma_s, "wrong")


@pytest.mark.parametrize("name, opts", params(STOCHASTIC_CASES))
def test_one_step_of_every_stochastic_solver_keeps_the_point_mass_marginal(name, opts):
    # E26 / (S1): with D = c exact, every stochastic step here maps N(c, sigma_t^2) in xbar onto
    # N(c, sigma_s^2); one fixed mid-schedule pair, seed 0 (same false-failure rate as above)
    sigma_t, sigma_s = float(LINEAR.sigmas[600]), float(LINEAR.sigmas[450])
    c = torch.tensor([0.3, -0.7])
    variance = None
    if opts.get("variance") == "large":
        # sigma-hat DDPM is outside Lemma 1's family on purpose: eta = 1's mean with the larger noise
        # std sigmahat = sqrt(1 - abar_t/abar_s) (E25), so its variance is B_s^2 - nu(1)^2 + sigmahat^2
        sigmahat2 = (sigma_t**2 - sigma_s**2) / (1 + sigma_t**2)
        variance = ref.B(sigma_s) ** 2 - ref.ddim_nu(sigma_t, sigma_s, 1.0) ** 2 + sigmahat2
    x_s = _one_step_from_the_marginal(name, opts, c, sigma_t, sigma_s, 0)
    _assert_marginal(x_s, c, sigma_s, case_id(name, opts), variance)
