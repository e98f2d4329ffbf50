"""ds.k_sampler: every solver as a k-diffusion sampler, driven by a k-diffusion-convention denoiser."""

import inspect

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import GaussianMixture
from diffsolve.plugins import get_registry

MIX = GaussianMixture(torch.tensor([[1.0, -0.5, 0.0], [-0.8, 0.4, 0.3]]), [0.3, 0.5], shape=(3,))
VE = ds.SigmaSchedule(0.002, 80.0, space="ve")


def denoiser(x, sigma, **_):
    """k-diffusion convention: x = x0 + sigma * noise, sigma one value per sample, returns D."""
    assert sigma.shape == (x.shape[0],) and sigma.dtype == x.dtype
    return MIX.denoised(x, sigma)


def _setup(steps=8, seed=0):
    sigmas = ds.grid("karras", VE, steps)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    return x, sigmas


def test_ddim_sampler_is_k_diffusions_euler():
    # k-diffusion's sample_euler with s_churn = 0 is E31: x <- x + (sigma_next - sigma) (x - D)/sigma
    x, sigmas = _setup()
    out = ds.k_sampler("ddim")(denoiser, x, sigmas)
    ref = x.clone()
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        d = (ref - denoiser(ref, s * torch.ones(4))) / s
        ref = ref + (s_next - s) * d
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def _options(name):
    # an x0 (denoiser) model is evaluated at sigma_min below it, so eps = (x - D)/sigma is stiff near
    # sigma = 0: adaptive torchdiffeq steppers integrate in log-sigma there (ds.sample fails the same way)
    cls = get_registry().solver(name)
    takes_variable = "variable" in inspect.signature(cls.__init__).parameters
    return {"variable": "log-sigma"} if getattr(cls, "adaptive", False) and takes_variable else {}


@pytest.mark.parametrize("name", sorted(get_registry().solvers))
def test_every_solver_as_a_k_sampler_equals_ds_sample_on_the_same_grid(name):
    x, sigmas = _setup(steps=6, seed=1)
    opts = _options(name)
    out = ds.k_sampler(name, **opts)(denoiser, x, sigmas, generator=torch.Generator().manual_seed(5))
    ref = ds.sample(
        MIX.ode(VE, prediction="x0"), x, name, sigmas=sigmas, generator=torch.Generator().manual_seed(5), **opts
    )
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_options_extra_args_and_callback_follow_k_diffusion():
    x, sigmas = _setup(steps=5)
    seen_kwargs, infos = [], []

    def model(x_in, sigma, cond=None):
        seen_kwargs.append(cond)
        return denoiser(x_in, sigma)

    sampler = ds.k_sampler("ddim", eta=1.0)
    assert sampler.__name__ == "sample_ddim"
    out = sampler(
        model,
        x,
        sigmas,
        extra_args={"cond": "c"},
        callback=infos.append,
        disable=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(out).all() and set(seen_kwargs) == {"c"}
    assert [i["i"] for i in infos] == list(range(5))
    assert set(infos[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert float(infos[2]["sigma"]) == float(sigmas[2])


def test_unknown_solver_or_option_fails_when_the_sampler_is_made():
    with pytest.raises(ds.UnknownNameError, match="unknown solver 'nope'"):
        ds.k_sampler("nope")
    with pytest.raises(ValueError, match="eta must be"):
        ds.k_sampler("ddim", eta=-1.0)


@pytest.mark.parametrize(
    "name, k_name, opts",
    [("ddim", "sample_euler", {}), ("heun", "sample_heun", {}), ("dpmpp-2m", "sample_dpmpp_2m", {})],
)
def test_callback_passes_the_state_before_the_step_as_k_diffusion_does(name, k_name, opts):
    # issue 13: x in the callback of step i is the state at sigmas[i] (before the step), and denoised is
    # the model's output there: the very values k-diffusion's own sampler passes
    from diffsolve.bench.peers import kdiffusion

    x, sigmas = _setup(steps=6, seed=2)
    ours, theirs = [], []
    ds.k_sampler(name, **opts)(denoiser, x, sigmas, callback=ours.append, disable=True)
    getattr(kdiffusion().sampling, k_name)(denoiser, x.clone(), sigmas, callback=theirs.append, disable=True)
    assert [c["i"] for c in ours] == [c["i"] for c in theirs] == list(range(6))
    assert torch.equal(ours[0]["x"], x)  # the input itself at step 0
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a["x"], b["x"], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(a["denoised"], b["denoised"], rtol=1e-10, atol=1e-10)
        assert float(a["sigma"]) == float(b["sigma"])


@pytest.mark.parametrize(
    "call, exc, match",
    [
        (
            lambda s: s(denoiser, torch.zeros(4, 3, dtype=torch.int64), ds.grid("karras", VE, 3)),
            TypeError,
            "x must be a floating-point tensor",
        ),
        (
            lambda s: s(denoiser, torch.full((4, 3), float("nan")), ds.grid("karras", VE, 3)),
            ValueError,
            "x has 12 non-finite entries",
        ),
        (lambda s: s(denoiser, torch.zeros(4, 3), [[1.0, 0.0]]), ValueError, "sigmas must be 1-D"),
        (lambda s: s(denoiser, torch.zeros(4, 3), [0.0, 1.0]), ValueError, "sigmas must be strictly decreasing"),
        (
            lambda s: s(denoiser, torch.zeros(4, 3), ds.grid("karras", VE, 3), extra_args=[1]),
            TypeError,
            "extra_args must be a dict",
        ),
        (
            lambda s: s(denoiser, torch.zeros(4, 3), ds.grid("karras", VE, 3), callback=3),
            TypeError,
            "callback must be callable",
        ),
        (lambda s: s("model", torch.zeros(4, 3), ds.grid("karras", VE, 3)), TypeError, "model must be a denoiser"),
    ],
)
def test_k_sampler_checks_its_arguments_before_the_first_call(call, exc, match):
    with pytest.raises(exc, match=match):
        call(ds.k_sampler("ddim"))
