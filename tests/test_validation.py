"""Issue 13: every run's arguments are checked before the first model call, and bad names get a
"did you mean". A wrong argument is a ValueError or TypeError naming it; the model is never called."""

import re
import warnings

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import GaussianMixture
from diffsolve.solvers._ancestral import EtaWarning


class CountingModel:
    """An eps model returning zeros, counting its calls (the checks must come before any)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x, t, **kwargs):
        self.calls += 1
        return torch.zeros_like(x)


@pytest.fixture
def counted():
    model = CountingModel()
    return model, ds.wrap(model, ds.DiscreteSchedule.linear())


def _refused(model, fn, exc, match):
    with pytest.raises(exc, match=match):
        fn()
    assert model.calls == 0, "the error must come before the first model call"


# -- x_T ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "x, exc, match",
    [
        ([[0.0, 1.0]], TypeError, "x_T must be a torch.Tensor of shape"),
        (torch.zeros(2, 3, dtype=torch.int64), TypeError, "x_T must be a floating-point tensor"),
        (torch.tensor(0.5), ValueError, "x_T must have a batch dimension"),
        (torch.zeros(0, 3), ValueError, r"x_T is empty \(shape \(0, 3\)\)"),
        (torch.zeros(2, 0), ValueError, r"x_T is empty"),
        (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), ValueError, "x_T has 1 non-finite entries"),
        (torch.tensor([[0.0, float("inf")]]), ValueError, "x_T has 1 non-finite entries"),
    ],
)
def test_sample_checks_x_T_before_calling_the_model(counted, x, exc, match):
    model, ode = counted
    _refused(model, lambda: ds.sample(ode, x, "ddim", steps=3), exc, match)


def test_nan_in_x0_is_named_by_invert_not_blamed_on_the_model(counted):
    model, ode = counted
    _refused(
        model,
        lambda: ds.invert(ode, torch.tensor([[float("nan"), 0.0]]), steps=3),
        ValueError,
        "x0 has 1 non-finite entries",
    )


# -- the model's range -------------------------------------------------------------------------------
def test_sigma_above_the_models_range_is_an_error_naming_the_range(counted):
    model, ode = counted
    hi = ode.schedule.sigma_max
    _refused(
        model,
        lambda: ds.sample(ode, torch.zeros(1, 2), "ddim", sigmas=[1e4, 1.0, 0.0]),
        ValueError,
        rf"sigma = 10000, above the model's range \[0.01\d*, {hi:.6g}\].*allow_out_of_range=True",
    )


def test_sigma_below_the_models_range_but_positive_is_an_error(counted):
    model, ode = counted
    _refused(
        model,
        lambda: ds.sample(ode, torch.zeros(1, 2), "ddim", sigmas=[10.0, 1e-4, 0.0]),
        ValueError,
        r"sigma = 0.0001, below the model's range",
    )


def test_allow_out_of_range_evaluates_the_model_at_the_end_of_its_range(counted):
    model, ode = counted
    seen = []
    ode2 = ds.wrap(lambda x, t: (seen.append(float(t[0])), torch.zeros_like(x))[1], ode.schedule)
    ds.sample(ode2, torch.zeros(1, 2), "ddim", sigmas=[1e4, 1.0, 0.0], allow_out_of_range=True)
    assert seen[0] == 999.0  # the last index: sigma_max, where eps is held
    with pytest.raises(TypeError, match="allow_out_of_range must be True or False"):
        ds.sample(ode, torch.zeros(1, 2), "ddim", sigmas=[1.0, 0.0], allow_out_of_range="yes")


def test_a_first_sigma_above_sigma_max_by_rounding_is_not_an_error(counted):
    model, ode = counted
    hi = ode.schedule.sigma_max
    # a grid computed in float32 (relative rounding ~6e-8) or as (sigma^(1/rho))^rho
    for top in (float(torch.tensor(hi, dtype=torch.float32)) * (1 + 1e-7), hi * (1 + 1e-9)):
        assert top > hi
        ds.sample(ode, torch.zeros(1, 2), "ddim", sigmas=[top, 1.0, 0.0])
    assert ds.grid("karras", ode.schedule, 10)[0] <= hi * (1 + 1e-12)


def test_invert_checks_the_range_of_its_increasing_grid(counted):
    model, ode = counted
    _refused(
        model, lambda: ds.invert(ode, torch.zeros(1, 2), sigmas=[0.0, 1.0, 1e4]), ValueError, "above the model's range"
    )
    ds.invert(ode, torch.zeros(1, 2), sigmas=[0.0, 1.0, 1e4], allow_out_of_range=True)


# -- generator -------------------------------------------------------------------------------------
@pytest.mark.parametrize("solver", ["ddim", "euler-ancestral"])  # deterministic and stochastic alike
@pytest.mark.parametrize(
    "generator, exc, match",
    [
        (0, TypeError, "generator must be None, a torch.Generator or a list of them.*got int"),
        ("seed", TypeError, "generator must be None, a torch.Generator"),
        ([torch.Generator()], ValueError, "generator: got a list of 1 generators for a batch of 2"),
        ([torch.Generator(), 3], TypeError, "generator must be a list of torch.Generator.*holding int"),
    ],
)
def test_generator_is_checked_before_the_first_call_for_every_solver(counted, solver, generator, exc, match):
    model, ode = counted
    _refused(model, lambda: ds.sample(ode, torch.zeros(2, 2), solver, steps=3, generator=generator), exc, match)


def test_generator_zero_no_longer_fails_inside_iteration():
    with pytest.raises(TypeError, match="generator must be None, a torch.Generator"):
        ds.make_noise_sampler(0)


# -- eta > 1 ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "solver, rule",
    [
        ("ddim", "sigma_down is clamped at 0 and sigma_up kept"),
        ("euler-ancestral", "sigma_up is capped at sigma_s"),
        ("dpmpp-sde", "sigma_up is capped at sigma_s"),
    ],
)
def test_eta_above_one_warns_saying_what_it_does(solver, rule):
    with pytest.warns(EtaWarning, match=rf"eta=1.5 > 1 adds more noise.*{rule}.*_ancestral.py"):
        ds.make_solver(solver, eta=1.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds.make_solver(solver, eta=1.0)  # DDPM's posterior: no warning


# -- guidance ----------------------------------------------------------------------------------------
def test_guidance_cond_with_another_batch_is_an_error_naming_it():
    model = CountingModel()
    ode = ds.wrap(
        lambda x, t, c=None: model(x, t),
        ds.DiscreteSchedule.linear(),
        guidance=3.0,
        cond={"c": torch.ones(1, 4)},
        uncond={"c": torch.zeros(1, 4)},
    )
    _refused(
        model,
        lambda: ds.sample(ode, torch.zeros(2, 2), "ddim", steps=3),
        ValueError,
        r"cond\['c'\] has batch 1, but x has batch 2",
    )
    ds.sample(ode, torch.zeros(1, 2), "ddim", steps=3)  # the matching batch runs
    assert model.calls == 3


@pytest.mark.parametrize("value, exc", [(float("nan"), ValueError), (float("inf"), ValueError), ("7", TypeError)])
def test_guidance_must_be_a_finite_number(value, exc):
    with pytest.raises(exc, match="guidance must be"):
        ds.wrap(CountingModel(), ds.DiscreteSchedule.linear(), guidance=value, cond={"c": 1}, uncond={"c": 1})


# -- diffusers grid with zero steps ------------------------------------------------------------------
@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_diffusers_grid_refuses_a_step_count_below_one(steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        ds.diffusers_grid({"num_train_timesteps": 1000}, steps)


# -- exact inversion with another solver ---------------------------------------------------------------
def test_exact_inversion_refuses_a_mismatched_solver_name():
    mix = GaussianMixture(torch.tensor([[1.0, -0.5], [-0.8, 0.4]]), [0.3, 0.5])
    ode = mix.ode(ds.DiscreteSchedule.linear())
    x_T = torch.randn(2, 2, generator=torch.Generator().manual_seed(0))
    state = ds.sample_reversible(ode, x_T, "bdia", steps=8)
    for wrong in ("ddim", "heun"):  # "ddim" used to pass silently: it was invert's default
        with pytest.raises(ValueError, match=f"made by 'bdia'; invert it with that solver.*not '{wrong}'"):
            ds.invert(ode, state, wrong)
    torch.testing.assert_close(ds.invert(ode, state), x_T, rtol=0, atol=1e-9)
    torch.testing.assert_close(ds.invert(ode, state, "bdia"), x_T, rtol=0, atol=1e-9)


# -- setup without super().setup() ---------------------------------------------------------------------
def test_a_setup_override_without_super_still_works():
    class NoSuper(ds.Solver):
        """Euler in sigma, with a setup that forgets super().setup()."""

        name = "no-super"

        def setup(self, ode, sigmas, noise):
            self.h = [b - a for a, b in zip(sigmas[:-1], sigmas[1:])]

        def step(self, i, x):
            denoised, eps = self.ode.predict(x, self.sigmas[i])
            return (denoised if self.sigmas[i + 1] == 0 else x + self.h[i] * eps), denoised

    mix = GaussianMixture(torch.tensor([[1.0, -0.5], [-0.8, 0.4]]), [0.3, 0.5])
    ode = mix.ode(ds.DiscreteSchedule.linear())
    x_T = torch.randn(2, 2, generator=torch.Generator().manual_seed(1))
    with pytest.warns(DeprecationWarning, match="first Solver contract"):  # the adapter's
        out = ds.sample(ode, x_T, NoSuper, steps=6)
    torch.testing.assert_close(out, ds.sample(ode, x_T, "ddim", steps=6), rtol=1e-12, atol=1e-12)


# -- did you mean ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ds.make_solver("dpmpp_2m"), "unknown solver 'dpmpp_2m' \\(did you mean 'dpmpp-2m'\\?\\)"),
        (lambda: ds.make_solver("DDIM"), "did you mean 'ddim'"),
        (lambda: ds.make_solver("eular-ancestral"), "did you mean 'euler-ancestral'"),
        (
            lambda: ds.grid("karas", ds.DiscreteSchedule.linear(), 5),
            "unknown grid 'karas' \\(did you mean 'karras'\\?\\)",
        ),
        (lambda: ds.wrap(CountingModel(), ds.VPLinearSchedule(), prediction="espilon"), "did you mean 'epsilon'"),
        (lambda: ds.wrap(CountingModel(), ds.VPLinearSchedule(), time="sigmas"), "did you mean 'sigma'"),
        (lambda: ds.make_solver("ddim", etta=0.5), "unknown option\\(s\\) \\['etta'\\] \\(did you mean 'eta'\\?\\)"),
        (
            lambda: ds.from_diffusers(CountingModel(), {"prediction_type": "v-prediction"}),
            "did you mean 'v_prediction'",
        ),
    ],
)
def test_unknown_names_suggest_the_closest_known_one(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "typed, meant",
    [("cfgpp", "cfg++"), ("CFG_PP", "cfg++"), ("cfg+", "cfg++"), ("dpmpp2m", "dpmpp-2m"), ("dpm++_2m", "dpmpp-2m")],
)
def test_did_you_mean_compares_names_with_punctuation_normalised(typed, meant):
    """ "cfgpp" once proposed "cfg" (difflib on the raw spellings prefers the shorter name); with case and
    punctuation normalised ("+" read as "p", as the field writes dpmpp for DPM-Solver++) it proposes "cfg++"."""
    from diffsolve.validation import closest

    names = ["cfg", "cfg++", "cfg-rescale", "apg", "ddim", "dpmpp-2m", "dpmpp-2s", "dpm-2", "dpm-solver-2m"]
    assert closest(typed, names) == meant
    with pytest.raises(ValueError, match=re.escape(f"did you mean {meant!r}")):
        ds.make_guidance(typed, scale=1.0) if meant.startswith("cfg") else ds.make_solver(typed)


def test_diffusers_prediction_spellings_are_aliases():
    sched = ds.VPLinearSchedule()
    for alias, canonical in [("epsilon", "eps"), ("v_prediction", "v"), ("sample", "x0")]:
        assert ds.wrap(CountingModel(), sched, prediction=alias).prediction == canonical


def test_unknown_option_of_a_solver_without_options_says_it_takes_none():
    class Plain(ds.Solver):
        """Takes no options."""

        name = "plain"

        def step(self, i, x, state):
            return x, None
            yield

    with pytest.raises(ValueError, match=r"solver 'plain': unknown option\(s\) \['eta'\]; it takes no options$"):
        ds.make_solver(Plain, eta=0.5)


# -- ddim-quad -------------------------------------------------------------------------------------
def test_ddim_quad_returns_exactly_steps_or_raises_naming_the_limit():
    sched = ds.DiscreteSchedule.linear()
    for steps in (2, 10, 29):
        assert len(ds.grid("ddim-quad", sched, steps)) == steps + 1
    for steps in (30, 50, 1000):
        with pytest.raises(ValueError, match=rf"steps={steps} on T=1000 .*only \d+ distinct levels.*steps <= 29"):
            ds.grid("ddim-quad", sched, steps)
    # the documented opt-in: the distinct official levels (49 for 50, 688 for 1000)
    assert len(ds.grid("ddim-quad", sched, 50, duplicates="drop")) == 49 + 1
    assert len(ds.grid("ddim-quad", sched, 1000, duplicates="drop")) == 688 + 1


def test_solvers_guidance_methods_and_restorers_are_resolved_with_one_wording():
    # make_solver, make_guidance and make_restorer share validation.resolve_plugin / check_options (issue 19)
    from diffsolve.guidance import make_guidance
    from diffsolve.inverse.restore import make_restorer

    for make, args, kind, base in (
        (ds.make_solver, ("ddim",), "solver", "Solver"),
        (make_guidance, ("cfg", 2.0), "guidance", "Guidance"),
        (make_restorer, ("dps",), "restorer", "Restorer"),
    ):
        with pytest.raises(
            ValueError, match=rf"^{kind} '{args[0]}': unknown option\(s\) \['etaa'\].*; its options are: "
        ):
            make(*args, etaa=1)
        with pytest.raises(
            ValueError, match=rf"^options \['etaa'\] given with a {kind} instance; set them on the instance"
        ):
            make(make(*args), etaa=1)
        with pytest.raises(TypeError, match=rf"^{kind} must be a registered name, a {base} subclass or an instance"):
            make(3)
