"""Schedules: docs/math.md claim 1 and the sigma <-> t maps of every schedule."""

import math

import pytest
import torch

import diffsolve as ds


@pytest.fixture(scope="module")
def linear():
    return ds.DiscreteSchedule.linear(1000, 1e-4, 0.02)


def test_linear_schedule_matches_reference_values(linear):
    # claim 1: abar_1 = 0.9999 (rel 1e-15); abar_1000, sigma_1000 (rel 1e-9)
    assert linear.alphas_cumprod[0].item() == pytest.approx(0.9999, rel=1e-15)
    assert linear.alphas_cumprod[-1].item() == pytest.approx(4.0358297654e-5, rel=1e-9)
    assert linear.sigmas[-1].item() == pytest.approx(157.40728081, rel=1e-9)
    # table of docs/math.md 1.2 (code indices)
    for i, abar, sigma in [
        (99, 0.8970181457, 0.3388284),
        (499, 7.8587242882e-2, 3.4241366),
        (800, 1.5075210598e-3, 25.735980),
        (900, 2.7024451956e-4, 60.822303),
    ]:
        assert linear.alphas_cumprod[i].item() == pytest.approx(abar, rel=1e-9)
        assert linear.sigmas[i].item() == pytest.approx(sigma, rel=1e-6)


def test_alpha_bar_strictly_decreasing_and_lambda_is_minus_log_sigma(linear):
    abar = linear.alphas_cumprod
    assert (abar[1:] < abar[:-1]).all()
    lam = 0.5 * torch.log(abar / (1 - abar))  # lambda = log(A/B) (E7)
    torch.testing.assert_close(lam, -torch.log(linear.sigmas), rtol=1e-12, atol=0)


def test_one_minus_alpha_bar_has_no_cancellation():
    # pitfall 5: in float64, 1 - abar_1 for beta_1 = 1e-12 must keep its digits
    s = ds.DiscreteSchedule.from_betas(torch.tensor([1e-12, 1e-3, 2e-3]))
    assert s.sigmas[0].item() == pytest.approx(1e-6, rel=1e-9)


def test_discrete_time_is_exact_at_own_sigmas_and_log_linear_between(linear):
    idx = torch.arange(1000, dtype=torch.float64)
    torch.testing.assert_close(linear.t(linear.sigmas), idx, rtol=0, atol=1e-9)
    mid = torch.exp(0.5 * (linear.log_sigmas[10] + linear.log_sigmas[11]))
    assert linear.t(mid).item() == pytest.approx(10.5, abs=1e-12)
    assert linear.sigma(torch.tensor(10.5)).item() == pytest.approx(mid.item(), rel=1e-12)


def test_from_betas_equals_from_alphas_cumprod(linear):
    other = ds.DiscreteSchedule.from_alphas_cumprod(linear.alphas_cumprod)
    torch.testing.assert_close(other.sigmas, linear.sigmas, rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "factory",
    [
        ds.DiscreteSchedule.scaled_linear,
        ds.DiscreteSchedule.squaredcos_cap_v2,
    ],
)
def test_named_discrete_schedules_are_valid(factory):
    s = factory(1000)
    assert s.num_steps == 1000 and (s.sigmas[1:] > s.sigmas[:-1]).all()


def test_zero_terminal_snr_rescale_ends_at_the_floor_and_keeps_the_first_level():
    base = ds.DiscreteSchedule.scaled_linear(1000)
    z = ds.DiscreteSchedule.scaled_linear(1000, rescale_zero_terminal_snr=True)
    assert z.alphas_cumprod[0].item() == pytest.approx(base.alphas_cumprod[0].item(), rel=1e-12)
    assert z.alphas_cumprod[-1].item() <= 2.0**-24
    assert math.isfinite(z.sigma_max) and z.sigma_max > 4000


@pytest.mark.parametrize(
    "sched",
    [
        ds.VPLinearSchedule(),
        ds.VPCosineSchedule(),
        ds.EDMSchedule(),
        ds.FlowSchedule(),
        ds.SigmaSchedule(0.0, 157.4, space="vp"),
    ],
    ids=lambda s: type(s).__name__,
)
def test_t_inverts_sigma(sched):
    t = torch.linspace(sched.t_min, sched.t_max, 57, dtype=torch.float64)
    torch.testing.assert_close(sched.t(sched.sigma(t)), t, rtol=1e-10, atol=1e-12)


def test_vp_linear_alpha_bar_matches_score_sde_integral():
    s = ds.VPLinearSchedule(0.1, 20.0)
    t = torch.tensor(0.37, dtype=torch.float64)
    expected = math.exp(-(0.1 * 0.37 + 0.5 * 19.9 * 0.37**2))
    assert s.alpha_bar(t).item() == pytest.approx(expected, rel=1e-12)


def test_flow_schedule_sigma_is_ratio_t_over_one_minus_t():
    s = ds.FlowSchedule()
    assert s.sigma(torch.tensor(0.25)).item() == pytest.approx(1 / 3, rel=1e-15)
    assert s.scale(1 / 3) == pytest.approx(0.75, rel=1e-15)  # x = (1 - t) xbar  (E17)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda: ds.DiscreteSchedule.from_alphas_cumprod([0.9, 0.95]), "strictly decreasing"),
        (lambda: ds.DiscreteSchedule([0.9, float("nan")]), r"finite and in \(0, 1\]"),
        (lambda: ds.DiscreteSchedule([1.5, 0.5]), r"finite and in \(0, 1\]"),
        (lambda: ds.DiscreteSchedule([0.9, 0.5], one_minus_alphas_cumprod=[0.6, 0.1]), "sigmas that are not strictly"),
        (lambda: ds.DiscreteSchedule.from_betas([0.1, 1.5]), r"betas must lie in \(0, 1\]"),
        (lambda: ds.DiscreteSchedule.linear(1), "num_steps"),
        (lambda: ds.SigmaSchedule(1.0, 0.5), "sigma_min < sigma_max"),
        (lambda: ds.SigmaSchedule(space="xx"), "space must be"),
    ],
)
def test_bad_schedule_arguments_are_named(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


def test_equal_discrete_schedules_made_apart_share_their_memos_and_others_do_not():
    """A schedule made anew per call from the same alphas_cumprod (what from_diffusers does) starts with
    the model times and scales of the previous ones; a different schedule or a subclass keeps its own."""
    from diffsolve.wrapper import schedule_memo

    abar = ds.DiscreteSchedule.linear(1000).alphas_cumprod.to(torch.float32)
    first = ds.DiscreteSchedule(abar)
    ds.sample(ds.wrap(lambda x, t: torch.zeros_like(x), first, prediction="eps"), torch.ones(1, 2), "ddim", steps=5)
    again = ds.DiscreteSchedule(abar.clone())
    assert schedule_memo(again, "t") is schedule_memo(first, "t") and len(schedule_memo(again, "t")) >= 5
    assert schedule_memo(again, "level") and schedule_memo(again, "level") is schedule_memo(first, "level")
    # the tensors a run is handed stay with their schedule object (peak memory is measured per run)
    assert schedule_memo(again, "time-tensors") is not schedule_memo(first, "time-tensors")
    other = ds.DiscreteSchedule(abar.double() * 0.999)
    assert schedule_memo(other, "t") is not schedule_memo(first, "t")

    class Shifted(ds.DiscreteSchedule):
        pass

    assert schedule_memo(Shifted(abar), "t") is not schedule_memo(first, "t")


def test_schedule_from_config_builds_each_training_schedule_once():
    from diffsolve.interop.diffusers import schedule_from_config

    config = {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    first = schedule_from_config(config)
    assert schedule_from_config(dict(config)) is first
    assert schedule_from_config(dict(config, beta_end=0.02)) is not first
    trained = {"trained_betas": torch.linspace(1e-4, 0.02, 10).tolist(), "num_train_timesteps": 10}
    assert schedule_from_config(trained) is schedule_from_config(dict(trained))
    # diffusers holds trained_betas in float32: the schedule is built from those values
    expected = ds.DiscreteSchedule.from_betas(torch.tensor(trained["trained_betas"], dtype=torch.float32).double())
    assert torch.equal(schedule_from_config(trained).sigmas, expected.sigmas)
