"""Claim 18: slerp (E43) hits its end points, keeps the norm when |z0| = |z1|, and is E43."""

import math

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from diffsolve.interpolation import slerp
from diffsolve.testing import strategies as dst

from . import reference as ref


def _pair(seed, shape):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@given(dst.seeds, dst.shapes(max_batch=3, max_side=6))
def test_claim18_slerp_hits_both_end_points(seed, shape):
    z0, z1 = _pair(seed, shape)
    # claim 18: rel 1e-15 (sin((1 - a) theta)/sin(theta) is 1 up to one rounding at a = 0, ...)
    torch.testing.assert_close(slerp(z0, z1, 0.0), z0, rtol=1e-15, atol=0)
    torch.testing.assert_close(slerp(z0, z1, 1.0), z1, rtol=1e-15, atol=1e-15 * z1.abs().max().item())


@given(dst.seeds, dst.shapes(max_batch=3, max_side=6), st.floats(0.0, 1.0))
def test_claim18_slerp_keeps_the_norm_on_a_sphere(seed, shape, a):
    z0, z1 = _pair(seed, shape)
    z1 = z1 * (z0.norm() / z1.norm())  # |z0| = |z1|
    theta = math.acos(max(-1.0, min(1.0, float((z0 * z1).sum() / (z0.norm() * z1.norm())))))
    assume(math.sin(theta) > 1e-3)  # nearly parallel pairs take the documented lerp fallback
    z = slerp(z0, z1, a)
    # claim 18: rel 1e-12 (the weights are ratios of sines, each rounded once)
    assert float(z.norm()) == pytest.approx(float(z0.norm()), rel=1e-12)
    torch.testing.assert_close(z, ref.slerp(z0, z1, a), rtol=1e-12, atol=1e-12 * float(z0.abs().max()))


@given(dst.seeds, st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5))
def test_claim18_slerp_of_many_alphas_stacks_the_single_results(seed, alphas):
    z0, z1 = _pair(seed, (2, 3))
    many = slerp(z0, z1, torch.tensor(alphas, dtype=torch.float64))
    for k, a in enumerate(alphas):
        torch.testing.assert_close(many[k], slerp(z0, z1, a), rtol=1e-14, atol=1e-15)


def test_claim18_parallel_inputs_fall_back_to_the_straight_line():
    z0 = torch.tensor([[1.0, 2.0, -1.0]])
    z1 = 3.0 * z0
    torch.testing.assert_close(slerp(z0, z1, 0.25), 0.75 * z0 + 0.25 * z1)
    assert torch.isfinite(slerp(z0, z0, 0.5)).all()
