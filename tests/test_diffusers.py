"""diffusers interop: from_diffusers and DiffsolveScheduler inside real diffusers pipelines.

The UNet is a tiny randomly initialised UNet2DModel (tests/tiny_models.py, no download). Pipelines return
images as (x/2 + 1/2).clamp(0, 1); with ``clip_sample=True`` the DDIM result is the clipped
x0-prediction, so nothing is lost to that clamp.
"""

import inspect

import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    KDPM2DiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from tiny_models import tiny_unet

import diffsolve as ds
from diffsolve.interop.diffusers_scheduler import (
    DataDependentCallsError,
    DiffsolveScheduler,
)
from diffsolve.plugins import get_registry

STEPS = 5


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(channels=3, dtype=torch.float32)


def _run(pipe, seed=1, **kwargs):
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    return pipe(batch_size=2, num_inference_steps=STEPS, generator=gen, output_type="pt", **kwargs).images


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# -- from_diffusers -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config",
    [
        {"beta_schedule": "linear"},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "squaredcos_cap_v2"},
        {"trained_betas": torch.linspace(1e-4, 0.03, 500).tolist(), "num_train_timesteps": 500},
    ],
)
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
    with pytest.raises(
        ValueError, match=r"prediction_type=.* is not supported; supported: epsilon, sample, v_prediction"
    ):
        ds.from_diffusers(unet, cfg)
    with pytest.raises(ValueError, match="is not supported"):
        DiffsolveScheduler.from_config(cfg)


@pytest.mark.parametrize("given", [{"prediction": "v"}, {"time": "sigma"}, {"prediction": "x0", "time": "t"}])
def test_from_diffusers_refuses_prediction_and_time_that_the_config_fixes(unet, given):
    # they used to reach DiffusionODE twice: "got multiple values for keyword argument 'prediction'"
    with pytest.raises(ValueError, match=r"from_diffusers takes .* from the scheduler config.*prediction_type"):
        ds.from_diffusers(unet, DDPMScheduler(), **given)


def test_an_unsupported_beta_schedule_is_a_clear_error(unet):
    with pytest.raises(ValueError, match="beta_schedule='sigmoid' is not supported"):
        ds.from_diffusers(unet, {"beta_schedule": "sigmoid"})


# -- the scheduler inside pipelines ----------------------------------------------------------------
def _explicit(config):
    # diffusers' from_config drops the keys a config lists in _use_default_values (the defaults of the
    # scheduler it came from, e.g. DDIM's clip_sample=True); keep them all, as a saved config file does
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _native(config, **kwargs):
    """DiffsolveScheduler on diffsolve's own grid (emulate=None) with the schedule keys of ``config``."""
    return DiffsolveScheduler.from_config(_explicit(config), emulate=None, **kwargs)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip", [False, True])
def test_ddim_in_a_ddim_pipeline_equals_diffusers_ddim_scheduler(unet, prediction_type, clip):
    ref_sched = DDIMScheduler(clip_sample=clip, prediction_type=prediction_type)
    pipe = DDIMPipeline(unet=unet, scheduler=ref_sched)
    ref = _run(pipe, eta=0.0, use_clipped_model_output=clip)
    pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler)
    assert pipe.scheduler.config.emulate == "DDIMScheduler"
    out = _run(pipe, eta=0.0, use_clipped_model_output=clip)
    assert _rel(out, ref) < 1e-5
    if prediction_type != "epsilon":  # a random eps-UNet is a poor denoiser: its images mostly saturate
        assert ((0 < ref) & (ref < 1)).float().mean() > 0.5  # the comparison sees real pixel values


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_set_alpha_to_one_false_ends_at_the_smallest_trained_level_as_diffusers_does(unet, spacing):
    pipe = DDIMPipeline(
        unet=unet,
        scheduler=DDIMScheduler(
            set_alpha_to_one=False, timestep_spacing=spacing, prediction_type="v_prediction", clip_sample=False
        ),
    )
    ref = _run(pipe)
    pipe.scheduler = DiffsolveScheduler.from_config(pipe.scheduler)
    assert _rel(_run(pipe), ref) < 1e-5
    # diffsolve's own grid drops the zero-length step to alpha_bar_0 that leading spacing makes
    native = _native(pipe.scheduler.config)
    native.set_timesteps(STEPS)
    assert len(native.timesteps) == STEPS - (spacing == "leading")


def _deterministic_names():
    return [n for n in sorted(get_registry().solvers) if not ds.make_solver(n).stochastic]


@pytest.mark.parametrize("name", _deterministic_names())
def test_every_deterministic_solver_runs_in_a_pipeline_and_equals_ds_sample(unet, name):
    config = _explicit(DDIMScheduler(clip_sample=True).config)
    sched = _native(config, solver=name)
    cls = get_registry().solver(name)
    if getattr(cls, "adaptive", False):
        with pytest.raises(DataDependentCallsError, match="chooses where to call the model from the data"):
            sched.set_timesteps(STEPS)
        return
    if cls.step is ds.solvers.base.Solver.step:  # a run()-only solver cannot take one output at a time
        with pytest.raises(ValueError, match="has no per-step step"):
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
    sched = _native(config, solver="ddim", solver_options={"eta": 1.0})
    out = _run(DDPMPipeline(unet=unet, scheduler=sched), seed=3)
    gen = torch.Generator().manual_seed(3)
    x_T = torch.randn(
        2, 3, 8, 8, generator=gen, dtype=torch.float32
    )  # the pipeline draws x_T first, then the solver's noise
    with torch.no_grad():
        ref = ds.sample(
            ds.from_diffusers(unet, config),
            x_T,
            "ddim",
            sigmas=ds.diffusers_grid(config, STEPS),
            eta=1.0,
            generator=gen,
        )
    assert _rel(out, (ref / 2 + 0.5).clamp(0, 1)) < 1e-5
    assert _rel(out, _run(DDPMPipeline(unet=unet, scheduler=sched), seed=4)) > 1e-2


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
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 500, 999])
    for ours in (DiffsolveScheduler.from_config(ref), _native(ref.config)):
        torch.testing.assert_close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-6)


# -- the diffusers scheduler contract (issue 15) --------------------------------------------------------
@pytest.fixture(autouse=True)
def float32_default():
    """diffusers' schedulers assume torch's default dtype float32 (the suite's conftest sets float64)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(before)


def _toy_model(x, t):
    """A smooth nonlinear stand-in for a UNet, whose output depends on x and t."""
    t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.tanh(0.7 * x) * 0.6 + 0.1 * torch.cos(t / 200.0) + 0.05 * x


def _loop(sched, steps=10, timesteps=None, edit=None, seed=0, x=None, **step_kwargs):
    """A pipeline's loop: scale, model, step (with the generator if step takes one); ``edit(i, x)``
    changes the latents between steps as inpainting pipelines do."""
    if timesteps is None:
        sched.set_timesteps(steps)
        timesteps = sched.timesteps
    if x is None:
        x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(123)) * sched.init_noise_sigma
    gen = torch.Generator().manual_seed(seed)
    if "generator" in inspect.signature(sched.step).parameters:
        step_kwargs = dict(step_kwargs, generator=gen)
    for i, t in enumerate(timesteps):
        x = sched.step(_toy_model(sched.scale_model_input(x, t), t), t, x, **step_kwargs).prev_sample
        if edit is not None:
            x = edit(i, x)
    return x


FULL_LOOPS = [
    (DDIMScheduler, {}),
    (DDIMScheduler, {"clip_sample": True, "prediction_type": "v_prediction"}),
    (DDIMScheduler, {"timestep_spacing": "linspace"}),
    (DDPMScheduler, {}),
    (DDPMScheduler, {"variance_type": "fixed_large", "clip_sample": False}),
    (DPMSolverMultistepScheduler, {}),
    (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
    (DPMSolverMultistepScheduler, {"solver_order": 3}),  # DPM-Solver++(3M): the reference weights
    (DPMSolverMultistepScheduler, {"final_sigmas_type": "sigma_min", "lower_order_final": False}),
    (DPMSolverMultistepScheduler, {"euler_at_final": True, "lower_order_final": False}),
    (DPMSolverMultistepScheduler, {"use_lu_lambdas": True, "solver_type": "heun"}),
    (
        DPMSolverMultistepScheduler,
        {"use_exponential_sigmas": True, "algorithm_type": "dpmsolver", "final_sigmas_type": "sigma_min"},
    ),
    (DPMSolverMultistepScheduler, {"use_beta_sigmas": True, "algorithm_type": "sde-dpmsolver++"}),
    (DPMSolverMultistepScheduler, {"thresholding": True, "prediction_type": "sample", "sample_max_value": 0.5}),
    (UniPCMultistepScheduler, {}),
    (UniPCMultistepScheduler, {"use_karras_sigmas": True, "solver_order": 3}),
    (UniPCMultistepScheduler, {"solver_type": "bh1", "final_sigmas_type": "sigma_min"}),
    (EulerDiscreteScheduler, {}),
    (EulerDiscreteScheduler, {"use_karras_sigmas": True, "prediction_type": "v_prediction"}),
    (EulerDiscreteScheduler, {"timestep_spacing": "trailing", "interpolation_type": "log_linear"}),
    (EulerAncestralDiscreteScheduler, {}),
    (HeunDiscreteScheduler, {}),
    (HeunDiscreteScheduler, {"use_karras_sigmas": True}),
    (LMSDiscreteScheduler, {}),
    (DEISMultistepScheduler, {}),
    (DEISMultistepScheduler, {"solver_order": 2}),
]


@pytest.mark.parametrize("cls, config", FULL_LOOPS, ids=[f"{c.__name__}-{i}" for i, (c, _) in enumerate(FULL_LOOPS)])
def test_from_config_reproduces_the_diffusers_scheduler_on_a_full_loop(cls, config):
    ref = cls(**config)
    ours = DiffsolveScheduler.from_config(ref)
    if cls is not LMSDiscreteScheduler:  # a fresh config has no _class_name, its keys name its class (not LMS's)
        assert DiffsolveScheduler.from_config(ref.config).config.emulate == cls.__name__
    assert ours.config.emulate == cls.__name__
    expected = _loop(ref)
    assert _rel(_loop(ours), expected) < 1e-5
    assert torch.equal(ours.timesteps, ref.timesteps) and ours.order == ref.order


@pytest.mark.parametrize("cls", [DPMSolverMultistepScheduler, HeunDiscreteScheduler])
def test_the_step_loop_is_linear_one_solver_step_per_call(monkeypatch, cls):
    ours = DiffsolveScheduler.from_config(cls())
    calls = []
    solver_cls = ours.solver_class
    original = solver_cls.step
    monkeypatch.setattr(solver_cls, "step", lambda self, i, x, state: calls.append(i) or original(self, i, x, state))
    _loop(ours, steps=40)
    assert calls == list(range(40))  # no replay: step i once, in order (heun: two pipeline calls per step)


@pytest.mark.parametrize(
    "cls",
    [
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
        DDIMScheduler,
    ],
)
@pytest.mark.parametrize("by", ["begin_index", "value"])
def test_img2img_starts_mid_schedule_as_diffusers_does(cls, by):
    x0 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(6))
    results = []
    for sched in (cls(), DiffsolveScheduler.from_config(cls())):
        sched.set_timesteps(10)
        t_start = 4 * sched.order
        if by == "begin_index" and hasattr(cls, "set_begin_index"):
            sched.set_begin_index(t_start)
        timesteps = sched.timesteps[t_start:]
        x = sched.add_noise(x0, noise, timesteps[:1])
        results.append(_loop(sched, timesteps=timesteps, x=x))
    assert _rel(results[1], results[0]) < 1e-5


@pytest.mark.parametrize(
    "cls",
    [
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
        EulerAncestralDiscreteScheduler,
        HeunDiscreteScheduler,
        LMSDiscreteScheduler,
        DDIMScheduler,
    ],
)
def test_latents_edited_between_steps_are_used_as_by_diffusers(cls):
    known = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(7))
    mask = (torch.arange(16).reshape(1, 1, 4, 4) % 3 == 0).float()  # 1: keep the known region
    results = []
    for sched in (cls(), DiffsolveScheduler.from_config(cls())):

        def edit(i, x, sched=sched):  # inpainting: the known region, noised to the next timestep
            if i + 1 >= len(sched.timesteps):
                return x * (1 - mask) + known * mask
            noised = sched.add_noise(known, torch.full_like(known, 0.3), sched.timesteps[i + 1 : i + 2])
            return x * (1 - mask) + noised * mask

        results.append(_loop(sched, edit=edit))
    assert _rel(results[1], results[0]) < 1e-5


def test_ddim_step_takes_ddims_arguments_and_positions():
    ref, ours = DDIMScheduler(clip_sample=True), DiffsolveScheduler.from_config(DDIMScheduler(clip_sample=True))
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    for sched in (ref, ours):
        sched.set_timesteps(10)
    t = ref.timesteps[3]
    out = _toy_model(x, t) * 3  # large: clipping acts
    z = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    for args, kwargs in [
        ((0.5, False, torch.Generator().manual_seed(3)), {}),  # eta is the 4th positional
        ((0.7,), {"use_clipped_model_output": True, "variance_noise": z}),
        ((0.0,), {"use_clipped_model_output": False}),
    ]:
        a = ref.step(out, t, x, *args, **kwargs)
        if "generator" not in kwargs and len(args) > 2:
            args = (args[0], args[1], torch.Generator().manual_seed(3))
        b = ours.step(out, t, x, *args, **kwargs)
        torch.testing.assert_close(b.prev_sample, a.prev_sample, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b.pred_original_sample, a.pred_original_sample, rtol=1e-5, atol=1e-6)
    _, x0 = ours.step(out, t, x, return_dict=False)
    torch.testing.assert_close(x0, ref.step(out, t, x).pred_original_sample, rtol=1e-5, atol=1e-6)


def test_pred_original_sample_is_the_families_estimate():
    for cls in (EulerDiscreteScheduler, HeunDiscreteScheduler, LMSDiscreteScheduler):
        ref, ours = (
            cls(prediction_type="v_prediction"),
            DiffsolveScheduler.from_config(cls(prediction_type="v_prediction")),
        )
        for sched in (ref, ours):
            sched.set_timesteps(8)
        x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * ref.init_noise_sigma
        t = ref.timesteps[0]
        a = ref.step(_toy_model(ref.scale_model_input(x, t), t), t, x)
        b = ours.step(_toy_model(ours.scale_model_input(x, t), t), t, x)
        torch.testing.assert_close(b.pred_original_sample, a.pred_original_sample, rtol=1e-5, atol=1e-6)


def test_the_attributes_pipelines_read_are_diffusers():
    for cls in (DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler):
        ref = cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
        ours = DiffsolveScheduler.from_config(ref)
        for name in ("betas", "alphas", "alphas_cumprod"):
            assert torch.equal(getattr(ours, name), getattr(ref, name))
        ref.set_timesteps(10), ours.set_timesteps(10)
        assert isinstance(ours.init_noise_sigma, torch.Tensor)
        assert float(ours.init_noise_sigma) == pytest.approx(float(ref.init_noise_sigma), rel=1e-6)
    assert float(
        DiffsolveScheduler.from_config(DDIMScheduler(set_alpha_to_one=False)).final_alpha_cumprod
    ) == pytest.approx(float(DDIMScheduler().alphas_cumprod[0]))
    compatible = {c.__name__ for c in DiffsolveScheduler().compatibles}
    assert {"DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler"} <= compatible
    # both ways: a diffusers scheduler from our config, and ours from its config
    ours = DiffsolveScheduler.from_config(UniPCMultistepScheduler(solver_order=3))
    back = DiffsolveScheduler.from_config(UniPCMultistepScheduler.from_config(ours.config).config)
    assert back.config.solver_order == 3 and back.config.emulate == "UniPCMultistepScheduler"


def test_set_timesteps_takes_timesteps_or_sigmas_where_the_family_does():
    ref = EulerDiscreteScheduler()
    ref.set_timesteps(7)
    custom_sigmas = ref.sigmas[:-1].tolist()
    results = []
    for sched in (EulerDiscreteScheduler(), DiffsolveScheduler.from_config(EulerDiscreteScheduler())):
        sched.set_timesteps(sigmas=custom_sigmas)
        results.append(_loop(sched, timesteps=sched.timesteps))
    assert _rel(results[1], results[0]) < 1e-5
    dpm = DPMSolverMultistepScheduler()
    dpm.set_timesteps(9)
    ours = DiffsolveScheduler.from_config(DPMSolverMultistepScheduler())
    ours.set_timesteps(timesteps=dpm.timesteps.tolist())
    assert _rel(_loop(ours, timesteps=ours.timesteps), _loop(dpm, timesteps=dpm.timesteps)) < 1e-5
    native = DiffsolveScheduler()
    native.set_timesteps(timesteps=[900, 500, 100])
    assert native.timesteps.tolist() == [900, 500, 100] and len(native.sigmas) == 4
    with pytest.raises(ValueError, match="does not take sigmas="):
        DiffsolveScheduler.from_config(DDIMScheduler()).set_timesteps(sigmas=[3.0, 1.0, 0.0])


def test_validation_is_no_stricter_than_diffusers():
    # thresholding with a cap below 1 and a zero ratio, betas above 1: diffusers accepts them all
    cfg = {"thresholding": True, "dynamic_thresholding_ratio": 0.0, "sample_max_value": 0.5}
    ref, ours = DPMSolverMultistepScheduler(**cfg), DiffsolveScheduler.from_config(DPMSolverMultistepScheduler(**cfg))
    assert _rel(_loop(ours), _loop(ref)) < 1e-5
    ref = DDIMScheduler(beta_start=0.1, beta_end=2.0)
    ours = DiffsolveScheduler.from_config(ref)
    for sched in (ref, ours):
        sched.set_timesteps(50)
    x = torch.rand(1, 3, 4, 4)
    torch.testing.assert_close(ours.step(0.1 * x, 0, x).prev_sample, ref.step(0.1 * x, 0, x).prev_sample)


@pytest.mark.parametrize(
    "source, match",
    [
        (
            lambda: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver", final_sigmas_type="sigma_min"),
            "algorithm_type='sde-dpmsolver'",
        ),
        (lambda: UniPCMultistepScheduler(disable_corrector=[0]), "disable_corrector"),
        (lambda: DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction"), "not supported"),
        (lambda: DPMSolverSinglestepScheduler(), "cannot reproduce DPMSolverSinglestepScheduler"),
    ],
)
def test_a_key_that_cannot_be_honoured_is_an_error(source, match):
    with pytest.raises(ValueError, match=match):
        DiffsolveScheduler.from_config(source())


def test_keys_that_conflict_are_errors_not_warnings():
    with pytest.raises(
        ValueError, match=r"key\(s\) \['grid'\] are not keys of DDIMScheduler.*emulate=None runs on grid="
    ):
        DiffsolveScheduler.from_config(DDIMScheduler(), grid="karras")  # the emulated scheduler sets the grid
    with pytest.raises(ValueError, match="need emulate="):
        DiffsolveScheduler(use_karras_sigmas=True)
    with pytest.raises(ValueError, match=r"cannot be honoured"):
        DiffsolveScheduler.from_config(DPMSolverMultistepScheduler(solver_order=3), solver="unipc")
    with pytest.raises(ValueError, match="pass the scheduler itself"):
        DiffsolveScheduler.from_config(dict(LMSDiscreteScheduler().config))  # LMS and KDPM2 share their keys
    assert DiffsolveScheduler.from_config(LMSDiscreteScheduler()).config.emulate == "LMSDiscreteScheduler"
    with pytest.raises(ValueError, match=r"cannot honour the key\(s\) \['foo'\]"):
        DiffsolveScheduler.from_config(dict(DDIMScheduler().config, foo=1))  # never dropped with a warning


def test_another_schedulers_config_with_a_solver_runs_on_its_training_schedule():
    from diffusers import PNDMScheduler  # Stable Diffusion 1.x ships this one

    pndm = PNDMScheduler(
        skip_prk_steps=True,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    with pytest.raises(ValueError, match="cannot reproduce PNDMScheduler"):
        DiffsolveScheduler.from_config(pndm)
    ours = DiffsolveScheduler.from_config(pndm, solver="dpmpp-2m")
    assert ours.config.emulate is None and ours.config.beta_schedule == "scaled_linear"
    torch.testing.assert_close(ours.alphas_cumprod, pndm.alphas_cumprod)
    ours.set_timesteps(5)
    assert ours.timesteps.tolist() == [801, 601, 401, 201, 1]  # steps_offset=1, leading spacing


def test_passing_it_to_a_pipeline_constructor_keeps_it(unet):
    sched = DiffsolveScheduler.from_config(DDPMScheduler())
    pipe = DDPMPipeline(unet=unet, scheduler=sched)
    assert pipe.scheduler is sched
    assert torch.isfinite(_run(pipe)).all()


def test_misuse_of_step_is_a_clear_error():
    sched = DiffsolveScheduler.from_config(DPMSolverMultistepScheduler())
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="call set_timesteps"):
        sched.step(x, 999, x)
    with pytest.raises(ValueError, match="num_inference_steps must be an integer >= 1, got 2.5"):
        sched.set_timesteps(2.5)
    sched.set_timesteps(3)
    sched.step(x, sched.timesteps[0], x)
    with pytest.raises(ValueError, match="step through scheduler.timesteps in order"):
        sched.step(x, sched.timesteps[0], x)
    with pytest.raises(ValueError, match="eta is DDIM's"):
        sched.step(x, sched.timesteps[1], x, eta=0.5)
    with pytest.raises(TypeError, match=r"step\(\) got \['order'\]: .*solver_options=\{'solver_order': n\}"):
        sched.step(x, sched.timesteps[1], x, order=3)  # LMS's keyword: a solver option here
    native = DiffsolveScheduler(solver="ddim")
    native.set_timesteps(3)
    with pytest.raises(ValueError, match=r"solver_options=\{'eta': 0.5\}"):  # one eta per run: an option
        native.step(x, native.timesteps[0], x, eta=0.5)
    heun = DiffsolveScheduler.from_config(HeunDiscreteScheduler())
    heun.set_timesteps(4)
    heun.set_begin_index(1)  # the second call of step 0
    with pytest.raises(ValueError, match="not the start of one"):
        heun.step(x, heun.timesteps[1], x)
    with pytest.raises(ds.UnknownNameError):
        DiffsolveScheduler(solver="nope")


# -- issue 23 ---------------------------------------------------------------------------------------
def test_a_flow_matching_scheduler_object_is_refused_not_run_on_a_ddpm_schedule():
    # issue 23.1: the object (not its .config) with solver= used to drop shift and every flow key and run
    # a DDPM schedule (timesteps 750, 500, 250, 0 instead of diffusers' 1000, 857.7, 602.2, 8.9)
    from diffusers import FlowMatchEulerDiscreteScheduler

    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    for kwargs in ({"solver": "ddim"}, {}):
        with pytest.raises(ValueError, match="not a DDPM beta schedule") as err:
            DiffsolveScheduler.from_config(flow, **kwargs)
        assert "solver=" not in str(err.value) and "ds.from_diffusers(model, scheduler.config)" in str(err.value)
    # the call the message names runs on the flow schedule diffusers itself uses
    flow.set_timesteps(4)
    sigmas = ds.diffusers_grid(flow.config, 4)
    s = sigmas[:-1]
    t = torch.where(s.isinf(), 1.0, s / (1 + s)) * 1000  # flow time t = sigma / (1 + sigma) (E17), diffusers' units
    torch.testing.assert_close(t.float(), flow.timesteps, rtol=1e-5, atol=1e-3)
    ode = ds.from_diffusers(lambda x, t: torch.zeros_like(x), flow.config)
    assert torch.isfinite(ds.sample(ode, torch.randn(1, 4), "ddim", sigmas=sigmas)).all()


def test_a_method_replaced_by_solver_keeps_no_grid_key_it_would_drop():
    with pytest.raises(ValueError, match=r"key\(s\) \['use_karras_sigmas'\] set the grid"):
        DiffsolveScheduler.from_config(KDPM2DiscreteScheduler(use_karras_sigmas=True), solver="heun")
    DiffsolveScheduler.from_config(PNDMScheduler(skip_prk_steps=True), solver="ddim")  # a method key: dropped


@pytest.mark.parametrize("solver", ["heun", "dpmpp-2s"])
def test_add_noise_takes_every_timestep_a_two_call_solver_hands_out(solver):
    # issue 23.8: on a DDIM schedule a two-call solver's timesteps fall between training levels (float);
    # add_noise (img2img) indexed alphas_cumprod with them and raised IndexError
    sched = DiffsolveScheduler.from_config(DDIMScheduler(), solver=solver)
    sched.set_timesteps(10)
    noise = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    acp = DDIMScheduler().alphas_cumprod.double()
    fractional = 0
    for t in sched.timesteps:
        std = float(sched.add_noise(torch.zeros_like(noise), noise, t.reshape(1)).norm() / noise.norm())
        lo, hi = int(torch.floor(t)), int(torch.ceil(t))
        bounds = sorted(float((1 - acp[k]).sqrt()) for k in (lo, hi))
        assert bounds[0] - 1e-6 <= std <= bounds[1] + 1e-6  # the noise level of that time, between its levels
        fractional += lo != hi
    assert sched.timesteps.is_floating_point()  # the case of the issue: float timesteps
    assert fractional > 0 or solver == "heun"  # heun evaluates on the levels themselves; the midpoint between
    # an img2img run from the middle of the schedule completes
    t_start = 4 * sched.order
    x = sched.add_noise(torch.zeros_like(noise), noise, sched.timesteps[t_start : t_start + 1])
    assert torch.isfinite(_loop(sched, timesteps=sched.timesteps[t_start:], x=x)).all()


@pytest.mark.parametrize("solver", ["unipc", "dpmpp-2m"])
def test_a_one_call_solver_on_heuns_schedule_gets_one_timestep_per_step(solver):
    # HeunDiscreteScheduler's schedule lists each inner sigma twice (two calls per step); a one-call solver
    # put on it used to be refused at construction ("makes 1000 model calls ... which has 1999 timesteps")
    ref = HeunDiscreteScheduler()
    ours = DiffsolveScheduler.from_config(ref, solver=solver)
    ours.set_timesteps(8)
    ref.set_timesteps(8)
    assert len(ours.timesteps) == 8 and ours._grid == [float(s) for s in ref.sigmas[::2]] + [0.0]
    # the timestep of each step is Heun's own at that sigma: ours interpolates log sigma in float64 from the
    # float32 levels, diffusers' in float32 (measured 4e-6 relative), hence 1e-5
    torch.testing.assert_close(ours.timesteps, ref.timesteps[::2].to(torch.float32), rtol=1e-5, atol=0)
    assert torch.isfinite(_loop(ours, 8)).all()


def test_native_add_noise_at_a_fractional_timestep_is_the_forward_process_at_that_calls_sigma():
    # on a named grid native timesteps fall between training levels (t = schedule.t(sigma)): add_noise there
    # reads alpha_bar at that sigma, 1 / (1 + sigma^2) (E5, E8), not a linear blend of the two levels' alpha_bar
    sched = DiffsolveScheduler(grid="karras")
    sched.set_timesteps(6)
    assert sched.timesteps.is_floating_point()
    noise = torch.ones(len(sched._calls), 1)
    std = sched.add_noise(torch.zeros_like(noise), noise, sched.timesteps).flatten().double()
    sigma = torch.tensor([s for _, _, s in sched._calls], dtype=torch.float64)
    torch.testing.assert_close(std, (sigma**2 / (1 + sigma**2)).sqrt(), rtol=1e-6, atol=0)  # float32 output


def test_use_clipped_model_output_false_is_refused_where_it_has_no_meaning():
    # DDPMScheduler's step has no such argument; with clipping on, dropping it silently would be a wrong answer
    sched = DiffsolveScheduler.from_config(DDPMScheduler(clip_sample=True))
    sched.set_timesteps(4)
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="use_clipped_model_output=False"):
        sched.step(x, sched.timesteps[0], x, use_clipped_model_output=False)
    assert torch.isfinite(sched.step(x, sched.timesteps[0], x).prev_sample).all()


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m"])
def test_native_timesteps_on_ddims_rule_are_ddims_own_integers(solver):
    # the call map records the sigma each model request is made at; it used to record the model time of a
    # placeholder schedule, clamped to that schedule's range, so the last timestep came out as 3.2e-08 (float)
    ours, ref = DiffsolveScheduler(solver=solver), DDIMScheduler()
    ours.set_timesteps(10)
    ref.set_timesteps(10)
    assert ours.timesteps.dtype == torch.int64 and torch.equal(ours.timesteps, ref.timesteps)


@pytest.mark.parametrize("solver", ["deis", "plms"])
def test_a_solver_that_reads_the_schedule_reads_the_training_one(solver):
    # deis integrates in the schedule's own time, plms takes midpoints in it: the step ODE used to carry a fixed
    # linear placeholder schedule, so on Stable Diffusion's scaled_linear one this loop differed from ds.sample
    # by 1.8e-4 (deis) and 3.5e-4 (plms) relative; float32 rounding is about 1e-7
    config = _explicit(
        DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False).config
    )
    sched = _native(config, solver=solver)
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    out = _loop(sched, steps=8, x=x_T.clone())
    ref = ds.sample(ds.from_diffusers(_toy_model, config), x_T, solver, sigmas=ds.diffusers_grid(config, 8))
    assert _rel(out, ref) < 1e-5
