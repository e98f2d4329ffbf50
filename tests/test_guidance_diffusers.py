"""Guided sampling of a diffusers conditional UNet with any guidance method (diffsolve.interop.diffusers_guidance).

The UNet is a tiny randomly initialised UNet2DConditionModel (tests/tiny_models.py, no download)."""

import math

import pytest
import torch
from diffusers import DDIMScheduler
from tiny_models import tiny_cond_unet

import diffsolve as ds
from diffsolve.interop.diffusers_guidance import guided_ode


@pytest.fixture(scope="module")
def unet():
    return tiny_cond_unet(dtype=torch.float64)


SCHED = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
G = torch.Generator().manual_seed(3)
C = torch.randn(2, 5, 8, generator=G, dtype=torch.float64)
U = torch.zeros(2, 5, 8, dtype=torch.float64)


def _pair(unet, ode, xbar, sigma, emb):
    """(D, eps) of the eps-UNet at (xbar, sigma) with the embeddings ``emb``: E6, E9 by hand."""
    a = 1 / math.sqrt(1 + sigma**2)
    t = torch.full((xbar.shape[0],), ode.model_time(sigma), dtype=torch.float32)
    with torch.no_grad():
        eps = unet(xbar * a, t, encoder_hidden_states=emb).sample
    return xbar - sigma * eps, eps


def test_cfg_plus_plus_on_a_diffusers_conditional_unet_is_the_papers_pair(unet):
    ode = guided_ode(
        unet, SCHED, prompt_embeds=C, negative_prompt_embeds=U, guidance=ds.make_guidance("cfg++", scale=0.6)
    )
    sigma = 2.0
    xbar = torch.randn(2, 4, 8, 8, generator=G, dtype=torch.float64) * math.sqrt(1 + sigma**2)
    with torch.no_grad():
        d, e = ode.predict(xbar, sigma)
    (dc, _), (du, eu) = _pair(unet, ode, xbar, sigma, C), _pair(unet, ode, xbar, sigma, U)
    # float64 UNet, one batched call vs two single calls: rounding of a few ops
    assert torch.allclose(d, du + 0.6 * (dc - du), atol=1e-10, rtol=0)
    assert torch.allclose(e, eu, atol=1e-10, rtol=0)


@pytest.mark.parametrize("method,solver", [("apg", "dpmpp-2m"), ("cfg++", "ddim")])
def test_any_method_samples_a_diffusers_conditional_unet(unet, method, solver):
    guidance = (
        method if isinstance(method, float) else ds.make_guidance(method, scale=0.8 if method == "cfg++" else 5.0)
    )
    ode = guided_ode(unet, SCHED, prompt_embeds=C, negative_prompt_embeds=U, guidance=guidance)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        out = ds.sample(ode, x_T, solver, sigmas=ds.diffusers_grid(SCHED.config, 4))
    assert out.shape == x_T.shape and torch.isfinite(out).all()
    assert ode.nfe == 4  # one batched call per step
