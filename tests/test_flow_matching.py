"""Flow-matching models through from_diffusers: FlowMatchEuler/FlowMatchHeun configs, their grids,
DDIM = FlowMatchEuler, and configs that cannot be represented are errors (issue 14)."""

import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EDMEulerScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
)

import diffsolve as ds

torch.manual_seed(0)
_W = torch.randn(4, 4) * 0.5


def velocity_model(x, t):
    """A random smooth callable velocity model u(x, t) fed diffusers' timestep T t."""
    tt = t.view(-1, 1, 1, 1).to(x.dtype) / 1000
    return torch.tanh(torch.einsum("ij,bjhw->bihw", _W.to(x.dtype), x)) * (1 + tt) + x * tt - 0.3 * torch.sin(3 * tt)


def _diffusers_loop(scheduler, x):
    for t in scheduler.timesteps:
        x = scheduler.step(velocity_model(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


CONFIGS = [
    (dict(shift=1.0), None),
    (dict(shift=3.0), None),
    (dict(use_dynamic_shifting=True), 0.8),
    (dict(use_dynamic_shifting=True, time_shift_type="linear"), 1.5),
    (dict(shift=2.0, shift_terminal=0.05), None),
]


@pytest.mark.parametrize("config, mu", CONFIGS)
@pytest.mark.parametrize("steps", [4, 25])
def test_diffusers_grid_reproduces_flow_match_sigmas(config, mu, steps):
    ref = FlowMatchEulerDiscreteScheduler(**config)
    ref.set_timesteps(steps, mu=mu)
    sig = ds.diffusers_grid(ref.config, steps, mu=mu)
    assert sig[0] == math.inf and sig[-1] == 0 and len(sig) == steps + 1
    t = torch.where(torch.isinf(sig), torch.ones_like(sig), sig / (1 + sig))
    torch.testing.assert_close(t.float().double(), ref.sigmas.double(), rtol=0, atol=0)


@pytest.mark.parametrize("config, mu", CONFIGS)
def test_ddim_equals_flow_match_euler_in_float32(config, mu):
    ref = FlowMatchEulerDiscreteScheduler(**config)
    ref.set_timesteps(12, mu=mu)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    expected = _diffusers_loop(ref, x.clone())
    ode = ds.from_diffusers(velocity_model, ref)
    assert ode.prediction == "flow"
    out = ds.sample(ode, x, "ddim", sigmas=ds.diffusers_grid(ref.config, 12, mu=mu))
    assert out.dtype == torch.float32 and _rel(out, expected) < 1e-5


def test_the_model_is_fed_diffusers_timesteps():
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(6)
    seen = []

    def model(x, t):
        seen.append(float(t[0]))
        return velocity_model(x, t)

    ds.sample(
        ds.from_diffusers(model, ref),
        torch.randn(1, 4, 4, 4, dtype=torch.float32),
        "ddim",
        sigmas=ds.diffusers_grid(ref.config, 6),
    )
    torch.testing.assert_close(torch.tensor(seen, dtype=torch.float32), ref.timesteps, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("shift, steps", [(1.0, 6), (3.0, 6), (3.0, 28)])
def test_heun_in_flow_time_equals_flow_match_heun_in_float32(shift, steps):
    ref = FlowMatchHeunDiscreteScheduler(shift=shift)
    ref.set_timesteps(steps)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float32)
    expected = _diffusers_loop(ref, x.clone())
    ode = ds.from_diffusers(velocity_model, ref)
    out = ds.sample(ode, x, "heun", variable="flow", sigmas=ds.diffusers_grid(ref.config, steps))
    assert ode.nfe == 2 * steps - 1 and _rel(out, expected) < 1e-5  # measured 5e-7


def test_heun_in_sigma_and_flow_match_heun_solve_the_same_ode():
    # Heun in sigma (diffsolve) and Heun in t (FlowMatchHeun) are different second-order methods on
    # the same flow (their corrector weights on the second velocity differ by (1 - t_i)/(1 - t_{i+1}));
    # both converge to the ODE solution, so their gap closes at second order.
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    gaps = []
    for steps in (8, 32):
        ref = FlowMatchHeunDiscreteScheduler(shift=3.0)
        ref.set_timesteps(steps)
        ref.sigmas, ref.timesteps = ref.sigmas.double(), ref.timesteps.double()
        expected = _diffusers_loop(ref, x.clone())
        ode = ds.from_diffusers(velocity_model, ref, time_dtype=torch.float64)
        gaps.append(_rel(ds.sample(ode, x, "heun", sigmas=ds.diffusers_grid(ref.config, steps)), expected))
    assert gaps[0] > 1e-2 and gaps[1] < gaps[0] / 8  # measured 3.1e-2, 1.4e-3


def test_dynamic_shifting_without_mu_says_to_pass_it():
    cfg = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True).config
    with pytest.raises(ValueError, match="pass mu="):
        ds.diffusers_grid(cfg, 10)
    with pytest.raises(ValueError, match="only used with use_dynamic_shifting"):
        ds.diffusers_grid(FlowMatchEulerDiscreteScheduler().config, 10, mu=1.0)


@pytest.mark.parametrize(
    "scheduler, match",
    [
        (lambda: FlowMatchEulerDiscreteScheduler(invert_sigmas=True), "invert_sigmas=True"),
        (lambda: FlowMatchEulerDiscreteScheduler(use_karras_sigmas=True), "use_karras_sigmas=True"),
        (lambda: EulerDiscreteScheduler(use_karras_sigmas=True), "use_karras_sigmas=True"),
        (lambda: EulerDiscreteScheduler(timestep_type="continuous"), "timestep_type='continuous'"),
        (lambda: DPMSolverMultistepScheduler(use_flow_sigmas=True), "use_flow_sigmas=True"),
        (lambda: DPMSolverMultistepScheduler(use_lu_lambdas=True), "use_lu_lambdas=True"),
        (lambda: DDIMScheduler(), None),
    ],
)
def test_a_config_that_cannot_be_represented_is_an_error(scheduler, match):
    cfg = scheduler().config
    if match is None:  # the control: a plain DDIM config passes the check
        ds.from_diffusers(velocity_model, cfg) and ds.diffusers_grid(cfg, 5)
        return
    with pytest.raises(ValueError, match=match):
        ds.from_diffusers(velocity_model, cfg)
    with pytest.raises(ValueError, match=match):
        ds.diffusers_grid(cfg, 5)


def test_an_unknown_config_key_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="EDMEulerScheduler is not supported"):
        ds.from_diffusers(velocity_model, EDMEulerScheduler())
    with pytest.raises(ValueError, match="sigma_min=0.002 is not supported"):
        ds.from_diffusers(velocity_model, dict(EDMEulerScheduler().config))
    with pytest.raises(ValueError, match="'some_new_option'"):
        ds.from_diffusers(velocity_model, dict(DDIMScheduler().config, some_new_option=1))


def test_a_grid_from_infinity_needs_a_model_with_an_x0_at_pure_noise():
    ode = ds.wrap(lambda x, t: x, ds.DiscreteSchedule.linear(), prediction="eps")
    with pytest.raises(ValueError, match="sigma = inf"):
        ds.sample(ode, torch.randn(1, 2), "ddim", sigmas=[math.inf, 1.0, 0.0])
    with pytest.raises(ValueError, match="finite"):
        ds.sample(ode, torch.randn(1, 2), "ddim", sigmas=[5.0, math.inf, 0.0])


@pytest.mark.parametrize(
    "name",
    [
        "DDIMScheduler",
        "DDPMScheduler",
        "PNDMScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "HeunDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "DPMSolverSDEScheduler",
        "KDPM2DiscreteScheduler",
        "LMSDiscreteScheduler",
        "UniPCMultistepScheduler",
        "DEISMultistepScheduler",
        "SASolverScheduler",
        "FlowMatchEulerDiscreteScheduler",
        "FlowMatchHeunDiscreteScheduler",
    ],
)
def test_every_default_ddpm_family_and_flow_config_is_accepted(name):
    import diffusers

    ds.interop.diffusers.check_config(getattr(diffusers, name)())


@pytest.mark.parametrize(
    "name", ["LCMScheduler", "TCDScheduler", "EDMEulerScheduler", "CosineDPMSolverMultistepScheduler"]
)
def test_other_parameterizations_are_rejected(name):
    import diffusers

    with pytest.raises(ValueError, match="not supported|not read"):
        ds.from_diffusers(velocity_model, getattr(diffusers, name)())


def test_a_guided_flow_model_is_fed_t_equal_1_at_the_pure_noise_level():
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    seen = []

    def model(x, t, c):
        seen.append(t.tolist())
        return velocity_model(x, t) * c

    ode = ds.from_diffusers(model, ref, guidance=2.0, cond={"c": 1.0}, uncond={"c": 1.0})
    ds.sample(ode, torch.randn(2, 4, 4, 4, dtype=torch.float32), "ddim", sigmas=ds.diffusers_grid(ref.config, 3))
    assert seen[0] == [1000.0] * 4 and len(seen) == 3
    with pytest.raises(ValueError, match="VP or flow schedule"):
        ve = ds.wrap(lambda x, t: x, ds.EDMSchedule(), prediction="x0")
        ds.sample(ve, torch.randn(1, 2), "ddim", sigmas=[math.inf, 1.0, 0.0])
