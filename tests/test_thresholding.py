"""x0 corrections (clipping, dynamic thresholding) and guidance rescale, against their formulas."""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import GaussianMixture


@pytest.fixture
def wide_mixture():
    # data well outside [-1, 1], so every correction acts
    return GaussianMixture(torch.tensor([[2.5, -1.8, 0.3], [-2.2, 1.5, -0.4]]), [0.4, 0.6], shape=(3,))


def test_clipping_clamps_to_its_range():
    x = torch.tensor([[-3.0, -0.5, 0.2, 4.0]])
    assert torch.equal(ds.Clipping()(x, 1.0), torch.tensor([[-1.0, -0.5, 0.2, 1.0]]))
    assert torch.equal(ds.Clipping(-0.25, 0.5)(x, 1.0), torch.tensor([[-0.25, -0.25, 0.2, 0.5]]))
    with pytest.raises(ValueError, match="lo < hi"):
        ds.Clipping(1.0, -1.0)


def test_dynamic_thresholding_is_imagens_rule_per_sample():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 8, 8, generator=g) * torch.tensor([0.3, 2.0, 5.0]).reshape(3, 1, 1, 1)
    out = ds.DynamicThresholding(0.9)(x0, 1.0)
    for k in range(3):
        s = max(1.0, torch.quantile(x0[k].abs().flatten(), 0.9).item())  # s = max(1, quantile(|x0|, p))
        torch.testing.assert_close(out[k], x0[k].clamp(-s, s) / s, rtol=1e-14, atol=1e-14)
    assert torch.equal(out[0], x0[0].clamp(-1, 1))  # s = 1: plain clipping
    assert out.abs().max() <= 1.0
    capped = ds.DynamicThresholding(0.9, max_value=1.5)(x0, 1.0)
    torch.testing.assert_close(capped[2], x0[2].clamp(-1.5, 1.5) / 1.5)
    below_one = ds.DynamicThresholding(0.9, max_value=0.5)(x0, 1.0)  # diffusers' rule: the cap wins, s = 0.5
    torch.testing.assert_close(below_one, x0.clamp(-0.5, 0.5) / 0.5)
    with pytest.raises(ValueError, match=r"percentile p must be in \[0, 1\]"):
        ds.DynamicThresholding(1.5)
    with pytest.raises(ValueError, match="max_value must be > 0"):
        ds.DynamicThresholding(0.9, max_value=0.0)


@pytest.mark.parametrize("transform", [ds.Clipping(), ds.DynamicThresholding(0.995)])
def test_a_transform_keeps_denoised_and_eps_on_one_ray(wide_mixture, transform):
    ode = wide_mixture.ode(ds.DiscreteSchedule.linear(), prediction="v")
    ode_t = wide_mixture.ode(ds.DiscreteSchedule.linear(), prediction="v")
    ode_t.denoised_transform = transform
    xbar = torch.randn(5, 3, generator=torch.Generator().manual_seed(1)) * 3
    d_raw, _ = ode.predict(xbar, 2.0)
    d, eps = ode_t.predict(xbar, 2.0)
    torch.testing.assert_close(d, transform(d_raw, 2.0))
    torch.testing.assert_close(xbar - 2.0 * eps, d, rtol=0, atol=1e-14)  # E9 holds for the corrected pair


def test_eta_one_ddim_with_clipping_is_the_clipped_ddpm_posterior(wide_mixture):
    # docs/math.md pitfall 1 / E23-E24: with (x0hat, epshat) kept consistent, one DDIM step at
    # eta = 1 equals mu(x_t, clip(x0hat)) + nu(1) z, the clipped DDPM posterior form
    sched = ds.DiscreteSchedule.linear()
    ode = ds.wrap(wide_mixture.model(sched), sched, denoised_transform=ds.Clipping(), time_dtype=torch.float64)
    t, s = 300, 200
    abar_t, abar_s = float(sched.alphas_cumprod[t]), float(sched.alphas_cumprod[s])
    sig_t, sig_s = float(sched.sigmas[t]), float(sched.sigmas[s])
    gen = torch.Generator().manual_seed(2)
    x_t = math.sqrt(abar_t) * wide_mixture.sample(6, gen) + math.sqrt(1 - abar_t) * torch.randn(6, 3, generator=gen)
    out = ds.sample(ode, x_t, "ddim", sigmas=[sig_t, sig_s], eta=1.0, generator=torch.Generator().manual_seed(9))

    eps = wide_mixture.eps(x_t / math.sqrt(abar_t), sig_t)
    x0hat = ((x_t - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)).clamp(-1, 1)
    beta_ts = 1 - abar_t / abar_s
    mean = (math.sqrt(abar_s) * beta_ts / (1 - abar_t)) * x0hat + (
        math.sqrt(abar_t / abar_s) * (1 - abar_s) / (1 - abar_t)
    ) * x_t  # E23
    nu = math.sqrt(beta_ts * (1 - abar_s) / (1 - abar_t))  # E24
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(out, mean + nu * z, rtol=0, atol=1e-12)
    assert (x0hat.abs() == 1.0).sum() >= 6  # the clip was active


def test_clipped_ddim_differs_from_the_unclipped_ode(wide_mixture):
    sched = ds.DiscreteSchedule.linear()
    x_T = torch.randn(4, 3, generator=torch.Generator().manual_seed(3))
    plain = ds.sample(wide_mixture.ode(sched), x_T, "ddim", steps=20)
    ode = wide_mixture.ode(sched)
    ode.denoised_transform = ds.DynamicThresholding(0.995)
    thresholded = ds.sample(ode, x_T, "ddim", steps=20)
    assert plain.abs().max() > 1.5 and thresholded.abs().max() <= 1.0  # the last step returns the corrected D


def _guided_ode(phi):
    # a model whose conditional branch shifts and scales its input: cond=1 vs uncond=0
    def model(x, t, c):
        c = c.reshape(-1, *([1] * (x.dim() - 1)))
        return 0.3 * x + c * (0.8 * x + 0.5)

    sched = ds.DiscreteSchedule.linear()
    one, zero = torch.ones(4), torch.zeros(4)
    return ds.wrap(
        model, sched, guidance=5.0, cond={"c": one}, uncond={"c": zero}, guidance_rescale=phi, time_dtype=torch.float64
    ), model


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_guidance_rescale_follows_lin_et_al_eqs_15_16(phi):
    ode, model = _guided_ode(phi)
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(4))
    a = ode.schedule.scale(3.0)
    out = ode._call(x * a, 3.0)
    pos = model(x * a, None, torch.ones(4))
    neg = model(x * a, None, torch.zeros(4))
    cfg = neg + 5.0 * (pos - neg)

    def std(v):  # per-sample std over the sample's entries
        return v.std(dim=(1, 2), keepdim=True)

    rescaled = cfg * std(pos) / std(cfg)  # eq. 15
    torch.testing.assert_close(out, phi * rescaled + (1 - phi) * cfg)  # eq. 16
    if phi == 1.0:
        torch.testing.assert_close(std(out), std(pos))  # the guided output has the conditional std
    assert ode.nfe == 1  # one batched call for both branches


def test_guidance_rescale_outside_0_1_is_refused():
    with pytest.raises(ValueError, match=r"guidance_rescale must be in \[0, 1\]"):
        _guided_ode(1.5)
