"""The model wrapper: every prediction type and time convention gives the same ODE (E9-E17)."""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import Gaussian, GaussianMixture

PREDICTIONS = ["eps", "x0", "v", "score", "flow"]


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture(torch.tensor([[1.0, -0.5, 0.2], [-0.8, 0.4, 0.9]]), [0.3, 0.6], [0.3, 0.7])


SCHEDULES = {
    "discrete-index": (ds.DiscreteSchedule.linear(), "index"),
    "vp-linear-t": (ds.VPLinearSchedule(), "t"),
    "edm-sigma": (ds.EDMSchedule(), "sigma"),
    "edm-cnoise": (ds.EDMSchedule(), "edm"),
    "flow-t": (ds.FlowSchedule(), "t"),
}


@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("key", list(SCHEDULES))
def test_every_prediction_and_time_convention_recovers_exact_eps_and_denoised(mixture, prediction, key):
    sched, time = SCHEDULES[key]
    ode = ds.wrap(
        mixture.model(sched, prediction, time), sched, prediction=prediction, time=time, time_dtype=torch.float64
    )
    xbar = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    lo, hi = sched.sigma_min, sched.sigma_max
    for sigma in [lo, math.sqrt(lo * hi), 0.5 * hi]:
        xb = xbar * (1 + sigma)
        denoised, eps = ode.predict(xb, sigma)
        # claim 2: conversions exact to ~1e-14 * max(sigma, 1/sigma) * |values|
        tol = 1e-13 * max(sigma, 1 / sigma) * max(1.0, xb.abs().max().item())
        torch.testing.assert_close(eps, mixture.eps(xb, sigma), rtol=0, atol=tol)
        torch.testing.assert_close(denoised, mixture.denoised(xb, sigma), rtol=0, atol=tol)


def test_each_predict_is_one_model_call():
    g = Gaussian([0.0, 0.0], 1.0)
    ode = g.ode(ds.EDMSchedule())
    x = torch.zeros(3, 2)
    ode.predict(x, 1.0), ode.eps(x, 2.0), ode.denoised(x, 3.0)
    assert ode.nfe == 3


def test_sigma_zero_returns_the_input_as_denoised_without_dividing():
    sched = ds.DiscreteSchedule.linear()
    calls = []

    def model(x, t):
        calls.append(t.clone())
        return torch.full_like(x, 0.25)

    ode = ds.wrap(model, sched, prediction="eps")
    x = torch.randn(2, 4)
    denoised, eps = ode.predict(x, 0.0)
    assert torch.equal(denoised, x) and torch.isfinite(eps).all()
    assert calls[0][0].item() == 0.0  # evaluated at the smallest level (index 0)


def test_discrete_index_time_is_the_integer_ddpm_index_at_grid_levels():
    sched = ds.DiscreteSchedule.linear()
    seen = []
    ode = ds.wrap(lambda x, t: (seen.append(t[0].item()), torch.zeros_like(x))[1], sched)
    for i in (0, 17, 999):
        ode.eps(torch.zeros(1, 2), float(sched.sigmas[i]))
    assert seen == [0.0, 17.0, 999.0]


def test_classifier_free_guidance_is_one_batched_call_combining_cond_and_uncond():
    sched = ds.EDMSchedule()
    batches = []

    def model(x, t, label):
        batches.append(x.shape[0])
        return x * 0 + label[:, None].to(x.dtype)

    ode = ds.wrap(
        model,
        sched,
        prediction="eps",
        guidance=3.0,
        cond={"label": torch.tensor([2.0, 2.0])},
        uncond={"label": torch.tensor([0.5, 0.5])},
    )
    eps = ode.eps(torch.zeros(2, 3), 1.0)
    # u + w (c - u) = 0.5 + 3 (2 - 0.5) = 5
    torch.testing.assert_close(eps, torch.full((2, 3), 5.0))
    assert batches == [4] and ode.nfe == 1


def test_guidance_rescale_matches_the_conditional_std():
    sched = ds.EDMSchedule()
    cond_out = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))

    def model(x, t, c):
        return torch.where(c[:, None] > 0, cond_out.repeat(2, 1), torch.zeros_like(x))

    ode = ds.wrap(
        model, sched, guidance=5.0, guidance_rescale=1.0, cond={"c": torch.ones(2)}, uncond={"c": torch.zeros(2)}
    )
    eps = ode.eps(torch.zeros(2, 16), 1.0)
    torch.testing.assert_close(eps.std(dim=1), cond_out.std(dim=1))


def test_model_kwargs_pass_through():
    got = {}
    ode = ds.wrap(
        lambda x, t, **kw: (got.update(kw), torch.zeros_like(x))[1], ds.EDMSchedule(), model_kwargs={"context": "hello"}
    )
    ode.eps(torch.zeros(1, 2), 1.0)
    assert got == {"context": "hello"}


def test_denoised_transform_keeps_eps_consistent():
    g = Gaussian([3.0, -3.0], 0.1)
    ode = g.ode(ds.EDMSchedule())
    ode.denoised_transform = lambda d, s: d.clamp(-1, 1)
    x = torch.tensor([[3.0, -3.0]]) + 0.0
    denoised, eps = ode.predict(x, 2.0)
    assert denoised.abs().max() <= 1
    torch.testing.assert_close(x - 2.0 * eps, denoised)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"prediction": "noise"}, ValueError, "prediction='noise' is not known; allowed: eps, x0"),
        ({"time": "minutes"}, ValueError, "time='minutes' is not known"),
        ({"guidance": 2.0}, ValueError, "guidance needs both cond= and uncond="),
        ({"guidance_rescale": 2.0}, ValueError, "guidance_rescale must be in"),
    ],
)
def test_bad_wrapper_arguments_name_the_argument(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ds.wrap(lambda x, t: x, ds.DiscreteSchedule.linear(), **kwargs)


def test_index_time_needs_a_discrete_schedule():
    with pytest.raises(ValueError, match="time='index' needs a DiscreteSchedule"):
        ds.wrap(lambda x, t: x, ds.EDMSchedule(), time="index")


def test_model_returning_wrong_shape_is_reported():
    ode = ds.wrap(lambda x, t: x[:, :1], ds.EDMSchedule())
    with pytest.raises(ValueError, match=r"model returned shape \(2, 1\); expected the input's shape \(2, 3\)"):
        ode.eps(torch.zeros(2, 3), 1.0)


def test_guidance_rescale_without_guidance_is_refused_not_ignored():
    # guidance_rescale acts on the CFG combination; without guidance= there is none, and the value
    # used to be accepted and dropped
    with pytest.raises(ValueError, match=r"guidance_rescale=0.7 rescales classifier-free guidance.*would be ignored"):
        ds.wrap(lambda x, t: x, ds.DiscreteSchedule.linear(), guidance_rescale=0.7)


def test_model_returning_an_integer_tensor_is_refused_not_cast():
    # an integer output (a truncated prediction) used to be cast to the state's dtype and used
    ode = ds.wrap(lambda x, t: (0.5 * x).long(), ds.EDMSchedule())
    with pytest.raises(TypeError, match="must return a floating-point tensor, got torch.int64"):
        ode.eps(torch.ones(2, 3), 1.0)


def test_model_returning_a_diffusers_output_object_names_from_diffusers():
    class UNetOutput:  # what a diffusers model returns: the prediction is its .sample
        def __init__(self, sample):
            self.sample = sample

    ode = ds.wrap(lambda x, t: UNetOutput(x), ds.EDMSchedule())
    with pytest.raises(TypeError, match=r"got UNetOutput with a \.sample tensor.*ds\.from_diffusers"):
        ode.eps(torch.ones(2, 3), 1.0)


def test_an_integer_time_dtype_refuses_a_fractional_model_time_rather_than_truncating_it():
    # time_dtype=torch.long fed 998 at sigma_max on a karras grid (998.9999 truncated) and 775 for 775.13
    seen = []
    sched = ds.DiscreteSchedule.linear()
    ode = ds.wrap(lambda x, t: seen.append(t.clone()) or 0.5 * x, sched, time_dtype=torch.long)
    ds.sample(ode, torch.ones(2, 3), "ddim", steps=4, grid="trailing")  # the schedule's own levels: integers
    assert [int(t[0]) for t in seen] == [999, 749, 499, 249] and seen[0].dtype == torch.long
    with pytest.raises(ValueError, match=r"time at sigma = .* is 775\.13.*not an integer.*would truncate"):
        ds.sample(ode, torch.ones(2, 3), "ddim", steps=4, grid="karras")
