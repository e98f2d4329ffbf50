"""slerp (E43, claim 18), its lerp fallback, and decoding an interpolation path."""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import get_problem


def _pair(shape=(3, 4, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def test_slerp_ends_at_its_endpoints():
    z0, z1 = _pair()
    torch.testing.assert_close(ds.slerp(z0, z1, 0.0), z0, rtol=1e-15, atol=0)
    torch.testing.assert_close(ds.slerp(z0, z1, 1.0), z1, rtol=1e-14, atol=1e-15)


def test_slerp_keeps_the_norm_when_the_endpoints_share_it():
    z0, z1 = _pair()
    z1 = z1 * (z0.norm() / z1.norm())
    path = ds.slerp(z0, z1, torch.linspace(0, 1, 11))
    assert path.shape == (11, 3, 4, 4)
    norms = path.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.full((11,), z0.norm().item()), rtol=1e-12, atol=0)


def test_slerp_is_the_great_circle_formula_over_the_whole_sample():
    z0, z1 = _pair()
    theta = math.acos((z0 * z1).sum().item() / (z0.norm() * z1.norm()).item())
    a = 0.3
    expected = math.sin((1 - a) * theta) / math.sin(theta) * z0 + math.sin(a * theta) / math.sin(theta) * z1
    torch.testing.assert_close(ds.slerp(z0, z1, a), expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("factor", [2.0, 1.0, -1.0])
def test_parallel_and_antiparallel_vectors_fall_back_to_lerp(factor):
    z0, _ = _pair()
    z1 = factor * z0
    out = ds.slerp(z0, z1, 0.25)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ds.lerp(z0, z1, 0.25), rtol=1e-12, atol=1e-12)


def test_a_zero_endpoint_has_no_angle_and_falls_back_to_lerp_not_nan():
    # |z0| = 0 made cos = 0/0 and the whole path NaN; batched, one zero pair spoiled only its own rows
    _, z1 = _pair()
    zero = torch.zeros_like(z1)
    torch.testing.assert_close(ds.slerp(zero, z1, [0.0, 0.3, 1.0]), ds.lerp(zero, z1, [0.0, 0.3, 1.0]), rtol=0, atol=0)
    z0, z1 = _pair(shape=(3, 6))
    z0[1] = 0.0
    out = ds.slerp(z0, z1, 0.3, batched=True)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], ds.lerp(z0[1], z1[1], 0.3), rtol=0, atol=0)
    torch.testing.assert_close(out[0], ds.slerp(z0[0], z1[0], 0.3))


def test_batched_slerp_gives_each_pair_its_own_angle():
    z0, z1 = _pair(shape=(4, 6))
    out = ds.slerp(z0, z1, [0.2, 0.7], batched=True)
    assert out.shape == (2, 4, 6)
    for k in range(4):
        torch.testing.assert_close(out[:, k], ds.slerp(z0[k], z1[k], [0.2, 0.7]))


def test_slerp_checks_its_input():
    z0, z1 = _pair()
    with pytest.raises(ValueError, match="same shape"):
        ds.slerp(z0, z1[:2], 0.5)
    with pytest.raises(ValueError, match="finite"):
        ds.slerp(z0, z1, float("nan"))


@pytest.mark.parametrize("path", [ds.slerp, ds.lerp])
def test_integer_endpoints_are_refused_not_truncated(path):
    # the path is returned in z0's dtype: integer endpoints gave a path rounded to integers
    z0, z1 = _pair()
    with pytest.raises(TypeError, match="z0 must be a floating-point tensor, got torch.int64"):
        path(z0.long(), z1, 0.5)
    with pytest.raises(TypeError, match="z1 must be a floating-point tensor"):
        path(z0, z1.long(), 0.5)


def test_interpolate_decodes_the_path_in_one_batched_run():
    prob = get_problem("gmm64")
    ode = prob.ode()
    z0, z1 = _pair(shape=(64,), seed=1)
    out, path = ds.interpolate(ode, z0, z1, alphas=5, steps=20, return_latents=True)
    assert out.shape == (5, 64) and ode.nfe == 20
    torch.testing.assert_close(path, ds.slerp(z0, z1, torch.linspace(0, 1, 5)))
    torch.testing.assert_close(out[0], ds.sample(ode, z0[None], "ddim", steps=20)[0])
    torch.testing.assert_close(out[-1], ds.sample(ode, z1[None], "ddim", steps=20)[0])
    lerped = ds.interpolate(ode, z0, z1, alphas=[0.5], steps=20, method="lerp", solver="heun")
    assert lerped.shape == (1, 64)
    with pytest.raises(ValueError, match="method='cubic' is not known"):
        ds.interpolate(ode, z0, z1, method="cubic")


def test_the_same_x_T_gives_the_same_high_level_sample_at_any_step_count():
    # the DDIM paper's consistency observation (Sec. 5.2), on the analytic mixture: the mixture
    # component a sample lands in is its "high-level feature"; it agrees across step counts
    prob = get_problem("gmm64")
    ode = prob.ode()
    x_T = torch.randn(64, 64, generator=torch.Generator().manual_seed(2))
    labels = {S: torch.cdist(ds.sample(ode, x_T, "ddim", steps=S), prob.means).argmin(dim=1) for S in (10, 20, 50, 100)}
    for S in (10, 20, 50):
        agree = (labels[S] == labels[100]).double().mean().item()
        assert agree >= 0.9, (S, agree)
