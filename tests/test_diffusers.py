"""diffusers interop: from_diffusers and DiffsolveScheduler inside real diffusers pipelines.

The UNet is a tiny randomly initialised UNet2DModel built here (no download). Pipelines return
images as (x/2 + 1/2).clamp(0, 1); with ``clip_sample=True`` the DDIM result is the clipped
x0-prediction, so nothing is lost to that clamp.
"""

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

import diffsolve as ds
from diffsolve.interop.diffusers_scheduler import DataDependentCallsError, DiffsolveScheduler
from diffsolve.plugins import get_registry

STEPS = 5


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(4, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    ).to(torch.float32).eval()


def _run(pipe, seed=1, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    return pipe(batch_size=2, num_inference_steps=STEPS, generator=gen, output_type="pt", **kwargs).images


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# -- from_diffusers -------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [
    {"beta_schedule": "linear"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"trained_betas": torch.linspace(1e-4, 0.03, 500).tolist(), "num_train_timesteps": 500},
])
def test_schedule_from_a_config_matches_diffusers_alphas_cumprod(config):
    ref = DDIMScheduler(**config)
    sched = ds.interop.diffusers.schedule_from_config(ref.config)
    torch.testing.assert_close(sched.alphas_cumprod, ref.alphas_cumprod.double(), rtol=2e-6, atol=1e-12)


def test_zero_snr_rescale_matches_diffusers_up_to_the_finite_last_level():
    ref = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True)
    sched = ds.interop.diffusers.schedule_from_config(ref.config)
    assert float(ref.alphas_cumprod[-1]) == 0.0 and 0 < float(sched.alphas_cumprod[-1]) <= 2.0**-24
    torch.testing.assert_close(sched.alphas_cumprod[:-1], ref.alphas_cumprod[:-1].double(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("spacing, offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_diffusers_grid_visits_diffusers_timesteps(spacing, offset):
    ref = DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    ref.set_timesteps(10)
    sig = ds.diffusers_grid(ref.config, 10)
    sched = ds.interop.diffusers.schedule_from_config(ref.config)
    assert sig[-1] == 0 and sched.t(sig[:-1]).round().long().tolist() == ref.timesteps.tolist()


@pytest.mark.parametrize("prediction_type, expected", [("epsilon", "eps"), ("sample", "x0"), ("v_prediction", "v")])
def test_prediction_types_map_to_the_wrapper(unet, prediction_type, expected):
    ode = ds.from_diffusers(unet, DDIMScheduler(prediction_type=prediction_type, clip_sample=False))
    assert ode.prediction == expected and ode.time == "index" and ode.denoised_transform is None


def test_config_clipping_and_thresholding_become_the_denoised_transform(unet):
    clip = ds.from_diffusers(unet, DDPMScheduler(clip_sample=True, clip_sample_range=2.0)).denoised_transform
    assert isinstance(clip, ds.Clipping) and (clip.lo, clip.hi) == (-2.0, 2.0)
    thr = ds.from_diffusers(unet, DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.9)).denoised_transform
    assert isinstance(thr, ds.DynamicThresholding) and thr.p == 0.9
    assert ds.from_diffusers(unet, DDPMScheduler(clip_sample=True), follow_clipping=False).denoised_transform is None


@pytest.mark.parametrize("bad", [{"prediction_type": "flow_prediction"}, {"prediction_type": "x0"}])
def test_an_unsupported_prediction_type_is_a_clear_error(unet, bad):
    cfg = dict(_explicit(DDIMScheduler().config), **bad)
    with pytest.raises(ValueError, match=r"prediction_type=.* is not supported; supported: epsilon, sample, v_prediction"):
        ds.from_diffusers(unet, cfg)
    with pytest.raises(ValueError, match="is not supported"):
        DiffsolveScheduler.from_config(cfg)


def test_an_unsupported_beta_schedule_is_a_clear_error(unet):
    with pytest.raises(ValueError, match="beta_schedule='sigmoid' is not supported"):
        ds.from_diffusers(unet, {"beta_schedule": "sigmoid"})


# -- the scheduler inside pipelines ----------------------------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_in_a_ddim_pipeline_equals_diffusers_ddim_scheduler(unet, prediction_type, clip):
    ref_sched = DDIMScheduler(clip_sample=clip, prediction_type=prediction_type)
    pipe = DDIMPipeline(unet=unet, scheduler=ref_sched)
    # use_clipped_model_output=True: diffusers then keeps (x0, eps) consistent, as diffsolve always does
    ref = _run(pipe, eta=0.0, use_clipped_model_output=True)
    pipe.scheduler = DiffsolveScheduler.from_config(_explicit(pipe.scheduler.config), solver="ddim")
    out = _run(pipe, eta=0.0, use_clipped_model_output=True)
    assert _rel(out, ref) < 1e-5
    if prediction_type != "epsilon":  # a random eps-UNet is a poor denoiser: its images mostly saturate
        assert ((0 < ref) & (ref < 1)).float().mean() > 0.5  # the comparison sees real pixel values


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_set_alpha_to_one_false_ends_at_the_smallest_trained_level_as_diffusers_does(unet, spacing):
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(set_alpha_to_one=False, timestep_spacing=spacing,
                                                          prediction_type="v_prediction", clip_sample=False))
    ref = _run(pipe)
    pipe.scheduler = DiffsolveScheduler.from_config(_explicit(pipe.scheduler.config))
    out = _run(pipe)
    assert _rel(out, ref) < 1e-5
    # leading visits index 0, whose step to alpha_bar_0 is a no-op call in diffusers: one call fewer here
    assert len(pipe.scheduler.timesteps) == STEPS - (spacing == "leading")


def _explicit(config):
    # diffusers' from_config drops the keys a config lists in _use_default_values (the defaults of the
    # scheduler it came from, e.g. DDIM's clip_sample=True); keep them all, as a saved config file does
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _deterministic_names():
    return [n for n in sorted(get_registry().solvers) if not ds.make_solver(n).stochastic]


@pytest.mark.parametrize("name", _deterministic_names())
def test_every_deterministic_solver_runs_in_a_pipeline_and_equals_ds_sample(unet, name):
    config = _explicit(DDIMScheduler(clip_sample=True).config)
    sched = DiffsolveScheduler.from_config(config, solver=name)
    if getattr(get_registry().solver(name), "adaptive", False):
        with pytest.raises(DataDependentCallsError, match="chooses where to call the model from the data"):
            sched.set_timesteps(STEPS)
        return
    out = _run(DDPMPipeline(unet=unet, scheduler=sched))
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    ode = ds.from_diffusers(unet, config)
    with torch.no_grad():
        ref = ds.sample(ode, x_T, name, sigmas=ds.diffusers_grid(config, STEPS))
    assert len(sched.timesteps) == ode.nfe >= STEPS  # one timestep per model call
    assert _rel(out, (ref / 2 + 0.5).clamp(0, 1)) < 1e-5


def test_a_stochastic_solver_draws_its_noise_from_the_pipeline_generator(unet):
    config = _explicit(DDIMScheduler(clip_sample=True).config)
    sched = DiffsolveScheduler.from_config(config, solver="ddim", solver_options={"eta": 1.0})
    out = _run(DDPMPipeline(unet=unet, scheduler=sched), seed=3)
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(2, 3, 8, 8, generator=gen, dtype=torch.float32)  # the pipeline draws x_T first, then the solver's noise
    with torch.no_grad():
        ref = ds.sample(ds.from_diffusers(unet, config), x_T, "ddim", sigmas=ds.diffusers_grid(config, STEPS),
                        eta=1.0, generator=gen)
    assert _rel(out, (ref / 2 + 0.5).clamp(0, 1)) < 1e-5
    assert _rel(out, _run(DDPMPipeline(unet=unet, scheduler=sched), seed=4)) > 1e-2


def test_v_prediction_on_trailing_timesteps_equals_diffusers(unet):
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing"))
    ref = _run(pipe, use_clipped_model_output=True)
    pipe.scheduler = DiffsolveScheduler.from_config(_explicit(pipe.scheduler.config))
    assert _rel(_run(pipe, use_clipped_model_output=True), ref) < 1e-5


def test_a_named_grid_gives_fractional_timesteps_and_a_config_round_trip(unet, tmp_path):
    sched = DiffsolveScheduler(solver="heun", grid="karras", grid_options={"rho": 5.0})
    sched.set_timesteps(4)
    assert sched.timesteps.dtype == torch.float32 and len(sched.timesteps) == 7  # heun: 2 calls/step, 1 at the end
    assert torch.isfinite(_run(DDPMPipeline(unet=unet, scheduler=sched))).all()
    sched.save_config(tmp_path)
    again = DiffsolveScheduler.from_pretrained(tmp_path)
    assert again.config.solver == "heun" and again.config.grid_options == {"rho": 5.0}


def test_add_noise_matches_diffusers():
    ref = DDIMScheduler()
    ours = DiffsolveScheduler.from_config(ref.config)
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-6)


def test_misuse_of_step_is_a_clear_error():
    sched = DiffsolveScheduler()
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="call set_timesteps"):
        sched.step(x, 999, x)
    sched.set_timesteps(3)
    with pytest.raises(ValueError, match="step through scheduler.timesteps in order"):
        sched.step(x, sched.timesteps[1], x)
    with pytest.raises(ValueError, match="set it as a solver option"):
        sched.step(x, sched.timesteps[0], x, eta=0.5)
    out = sched.step(x, sched.timesteps[0], x).prev_sample
    with pytest.raises(ValueError, match="cannot follow latents changed between steps"):
        sched.step(x, sched.timesteps[1], out + 1)
    with pytest.raises(ds.UnknownNameError):
        DiffsolveScheduler(solver="nope")
