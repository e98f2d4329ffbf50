"""The public strategies (diffsolve.testing.strategies) produce what they promise."""

import math

import torch
from hypothesis import given

import diffsolve as ds
from diffsolve.analytic import Gaussian, GaussianMixture, PointMass
from diffsolve.testing import strategies as dst


@given(dst.alpha_bar_sequences())
def test_alpha_bar_sequences_are_strictly_decreasing_in_the_unit_interval(abar):
    assert abar.dtype == torch.float64 and abar.dim() == 1 and abar.numel() >= 2
    assert (abar > 0).all() and (abar < 1).all() and (abar[1:] < abar[:-1]).all()


@given(dst.schedules())
def test_schedules_are_valid_maps(sched):
    assert isinstance(sched, ds.Schedule) and 0 < sched.sigma_min < sched.sigma_max < math.inf
    if isinstance(sched, ds.DiscreteSchedule):
        assert (sched.sigmas[1:] > sched.sigmas[:-1]).all()


@given(dst.sigma_grids())
def test_sigma_grids_are_valid_sampling_grids(sig):
    assert torch.equal(ds.validate_sigmas(sig), sig) and sig[-1].item() == 0.0 and sig[-2].item() >= 1e-3


@given(dst.sigma_grids(final_zero=False, max_gap_ratio=10.0))
def test_sigma_grids_without_zero_keep_their_gap_ratio(sig):
    assert (sig > 0).all() and (sig[1:] < sig[:-1]).all()
    gaps = torch.log(sig[:-1] / sig[1:])
    if gaps.numel() > 1:
        ratio = torch.maximum(gaps[1:], gaps[:-1]) / torch.minimum(gaps[1:], gaps[:-1])
        assert (ratio <= 10.0 * (1 + 1e-6)).all()  # gaps > 1e-6 are built from exp/log: 1e-10 relative rounding


@given(dst.named_grids())
def test_named_grids_come_from_the_registry(drawn):
    sched, name, steps, sig = drawn
    assert name in ds.list_grids() and steps >= 1
    assert torch.equal(sig, ds.grid(name, sched, steps))


@given(dst.states())
def test_states_are_bounded_float64_tensors(x):
    assert x.dtype == torch.float64 and x.dim() >= 2 and x.abs().max() <= 10.0 and torch.isfinite(x).all()


@given(dst.gaussians(), dst.mixtures(), dst.point_masses())
def test_problems_have_their_types_and_finite_exact_eps(g, m, p):
    assert isinstance(g, Gaussian) and isinstance(m, GaussianMixture) and isinstance(p, PointMass)
    for problem in (g, m, p):
        x = torch.ones(2, problem.dim)
        assert torch.isfinite(problem.eps(x, 0.5)).all()


@given(dst.smooth_networks())
def test_smooth_networks_are_deterministic_bounded_eps_models(net):
    x = torch.randn(3, net.dim, generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), 5.0)
    out = net(x, t)
    assert out.shape == x.shape and torch.equal(out, net(x, t))
    bound = net.w2.abs().sum(1).max() + net.b2.abs().max()  # |tanh| <= 1
    assert out.abs().max() <= bound
    assert net(x.float(), t).dtype == torch.float32


@given(dst.discrete_schedules(), dst.alpha_bar_sequences())
def test_discrete_schedules_have_at_least_ten_levels_by_default(sched, abar):
    # issue 13: 2-level schedules (every grid on them has 1 or 2 steps) hid bugs from test writers
    assert sched.num_steps >= 10 and abar.numel() >= 10


@given(dst.discrete_schedules(named=False, min_steps=2, max_steps=3))
def test_short_schedules_are_still_drawn_when_asked(sched):
    assert 2 <= sched.num_steps <= 3
