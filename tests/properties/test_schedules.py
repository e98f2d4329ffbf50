"""Claim 1: schedule values, monotonicity and lambda = -log sigma, on named and random schedules."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffsolve as ds
from diffsolve.testing import strategies as dst


def test_claim01_linear_schedule_reference_values():
    sched = ds.DiscreteSchedule.linear(1000, 1e-4, 0.02)
    # rel 1e-15: abar_1 = 1 - 1e-4 is one float64 operation away from exact
    assert sched.alphas_cumprod[0].item() == pytest.approx(0.9999, rel=1e-15)
    # rel 1e-9: the note quotes 11 significant digits
    assert sched.alphas_cumprod[-1].item() == pytest.approx(4.0358297654e-5, rel=1e-9)
    assert sched.sigmas[-1].item() == pytest.approx(157.40728081, rel=1e-9)
    for i, abar, sigma, lam in [
        (0, 0.9999, 0.0100005, 4.60512),
        (99, 0.8970181457, 0.3388284, 1.08226),
        (499, 7.8587242882e-2, 3.4241366, -1.23085),
        (800, 1.5075210598e-3, 25.735980, -3.24789),
        (900, 2.7024451956e-4, 60.822303, -4.10796),
        (999, 4.0358297654e-5, 157.407281, -5.05884),
    ]:
        assert sched.alphas_cumprod[i].item() == pytest.approx(abar, rel=1e-9)
        # the table's sigma and lambda columns are printed to 6-8 digits: compare at that precision
        assert sched.sigmas[i].item() == pytest.approx(sigma, rel=5e-7)
        assert -math.log(sched.sigmas[i].item()) == pytest.approx(lam, abs=6e-6)


@given(dst.discrete_schedules())
def test_claim01_alpha_bar_strictly_decreasing_and_lambda_is_minus_log_sigma(sched):
    abar, sigma = sched.alphas_cumprod, sched.sigmas
    assert (abar[1:] < abar[:-1]).all() and (sigma[1:] > sigma[:-1]).all()
    # lambda = log(A/B) = (log abar - log(1 - abar))/2 (E7), 1 - abar by exact subtraction (abar in (0, 1]);
    # 1e-12 * max(1, |lambda|): abar itself carries 1e-16 rounding, i.e. 1e-16/(1 - abar) <= 1e-12 relative in 1 - abar
    lam = 0.5 * (torch.log(abar) - torch.log1p(-abar))
    torch.testing.assert_close(lam, -torch.log(sigma), rtol=0, atol=1e-12 * max(1.0, lam.abs().max().item()))
    # sigma^2 = (1 - abar)/abar (E4), so abar = 1/(1 + sigma^2) (E5): relative rounding only
    torch.testing.assert_close(1.0 / (1.0 + sigma**2), abar, rtol=1e-12, atol=0)


@given(st.lists(st.floats(1e-6, 0.5), min_size=2, max_size=80))
def test_claim01_from_betas_is_the_cumulative_product(betas):
    # E2: abar_t = prod (1 - beta_k), checked against a math.fsum of log1p terms (independent of torch's cumsum)
    sched = ds.DiscreteSchedule.from_betas(torch.tensor(betas, dtype=torch.float64))
    for t in range(len(betas)):
        log_abar = math.fsum(math.log1p(-b) for b in betas[: t + 1])
        # rel 1e-13: about len(betas) roundings of size 1e-16 in the cumulative sum, times |log abar| <= 40
        assert sched.alphas_cumprod[t].item() == pytest.approx(math.exp(log_abar), rel=1e-13)
        # 1 - abar without cancellation (pitfall 5): sigma^2 = expm1(-log abar), to the same precision
        assert sched.sigmas[t].item() ** 2 == pytest.approx(math.expm1(-log_abar), rel=1e-12)


@given(dst.discrete_schedules())
def test_claim01_discrete_time_is_the_integer_index_at_own_levels(sched):
    idx = torch.arange(sched.num_steps, dtype=torch.float64)
    # 1e-9: searchsorted plus a log-linear weight rounds to ~1e-13 in index units; exact integers are not promised
    torch.testing.assert_close(sched.t(sched.sigmas), idx, rtol=0, atol=1e-9)
    torch.testing.assert_close(sched.sigma(idx), sched.sigmas, rtol=1e-12, atol=0)


@given(dst.continuous_schedules(), st.floats(0.0, 1.0))
def test_claim01_continuous_time_and_sigma_are_inverse_maps(sched, u):
    lo, hi = sched.sigma_min, sched.sigma_max
    sigma = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    t = sched.t(sigma)
    # rel 1e-9: t(sigma) goes through log1p/arccos/sqrt chains whose condition number is at most ~1e4 here
    assert sched.sigma(t).item() == pytest.approx(sigma, rel=1e-9)
    assert sched.alpha_bar(t).item() == pytest.approx(1.0 / (1.0 + sigma**2), rel=1e-9)
    # monotone: more time, more noise
    assert sched.t(sigma * 1.01).item() > t.item()
