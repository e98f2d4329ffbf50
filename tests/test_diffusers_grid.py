"""``ds.diffusers_grid`` against the installed diffusers schedulers' own ``set_timesteps``.

For every scheduler family x timestep_spacing x final_sigmas_type the family has, at 1, 2, 10 and 50 steps,
``ds.diffusers_grid(scheduler.config, n)`` is the grid diffusers steps on (its ``sigmas``; for the DDIM
family, which keeps none, the levels of its timesteps and its final alpha_bar), or a ValueError where
diffusers' rule repeats a level. The Karras / Lu / exponential / beta sigma options are refused.
The rules in diffsolve are written out independently (diffsolve/interop/diffusers_sigmas.py).
"""

from __future__ import annotations

import inspect
import math
import warnings

import pytest
import torch

import diffsolve as ds
from diffsolve.interop.diffusers_sigmas import FAMILY_RULES, family_of_keys

diffusers = pytest.importorskip("diffusers")

STEPS = (1, 2, 10, 50)
SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
#: diffusers forms sigma = sqrt((1 - alpha_bar)/alpha_bar) from float32 alpha_bar; near alpha_bar = 1
#: (sigma_min = 0.029, 1 - alpha_bar = 8.5e-4) one float32 ulp of alpha_bar (6e-8) is 7e-5 of 1 - alpha_bar,
#: i.e. 3.5e-5 of sigma; diffsolve keeps alpha_bar in float64
RTOL = 1e-4
#: the two-evaluation classes list each level twice in ``sigmas`` (KDPM2 also keeps midpoints apart)
TWICE = ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverSDEScheduler")


def _params(name):
    return set(inspect.signature(getattr(diffusers, name).__init__).parameters)


def _cases():
    for name in FAMILY_RULES:
        keys = _params(name)
        spacings = ("leading", "trailing", "linspace") if "timestep_spacing" in keys else (None,)
        finals = ("zero", "sigma_min") if "final_sigmas_type" in keys else (None,)
        for spacing in spacings:
            for final in finals:
                yield name, spacing, final


def _scheduler(name, spacing, final, **extra):
    kw = dict(SD, **extra)
    if spacing is not None:
        kw["timestep_spacing"] = spacing
    if final is not None:
        kw["final_sigmas_type"] = final
        if name == "DPMSolverSinglestepScheduler" and final == "zero":
            kw["algorithm_type"] = "dpmsolver++"  # the default pairing diffusers accepts
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(diffusers, name)(**kw)


def _diffusers_sigmas(sched, n):
    """diffusers' step grid as float64, or None where diffusers itself cannot set n steps."""
    name = type(sched).__name__
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sched.set_timesteps(n)
    except (ValueError, IndexError):  # PNDM's PRK rule needs 3+ steps
        return None
    if hasattr(sched, "sigmas") and FAMILY_RULES[name] != "ddim":
        sig = sched.sigmas.double()
        return torch.unique_consecutive(sig) if name in TWICE else sig
    # the DDIM family: the level of each distinct timestep, then the final level
    acp = sched.alphas_cumprod.double()
    # PNDM's Runge-Kutta warm-up also evaluates halfway between levels (stages, not grid points): its
    # step grid is its base timesteps
    base = sched._timesteps if name == "PNDMScheduler" else sched.timesteps.tolist()
    ts = sorted({int(t) for t in base}, reverse=True)
    final = float(getattr(sched, "final_alpha_cumprod", 1.0))
    levels = [math.sqrt((1 - float(acp[t])) / float(acp[t])) for t in ts] + [math.sqrt((1 - final) / final)]
    return torch.unique_consecutive(torch.tensor(levels, dtype=torch.float64))


@pytest.mark.parametrize("name, spacing, final", list(_cases()))
def test_diffusers_grid_equals_the_scheduler_sigmas_or_refuses(name, spacing, final):
    sched = _scheduler(name, spacing, final)
    for n in STEPS:
        expected = _diffusers_sigmas(sched, n)
        if expected is None:
            continue
        if not (expected[1:] < expected[:-1]).all():  # a zero-length step: no strictly decreasing grid holds it
            with pytest.raises(ValueError, match="repeats or reverses a level"):
                ds.diffusers_grid(sched.config, n)
            continue
        got = ds.diffusers_grid(sched.config, n)
        assert got.shape == expected.shape, (n, got.tolist(), expected.tolist())
        torch.testing.assert_close(got, expected, rtol=RTOL, atol=0, msg=f"{n} steps")


def test_the_dpm_solver_linspace_rule_has_n_plus_one_points():
    # the case of issue 23: [14.61, 7.84, 4.61, ...] (DDIM's n-point rule) instead of diffusers' [14.61, 8.30, 5.09]
    sched = _scheduler("DPMSolverMultistepScheduler", "linspace", "zero")
    got = ds.diffusers_grid(sched.config, 10)
    assert [round(float(s), 2) for s in got[:3]] == [14.61, 8.30, 5.09]


def test_lambda_min_clipped_cuts_the_top_of_the_dpm_range():
    sched = diffusers.DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", lambda_min_clipped=-5.1)
    for n in STEPS:
        sched.set_timesteps(n)
        torch.testing.assert_close(ds.diffusers_grid(sched.config, n), sched.sigmas.double(), rtol=RTOL, atol=0)


SIGMA_OPTIONS = ("use_karras_sigmas", "use_lu_lambdas", "use_exponential_sigmas", "use_beta_sigmas")


@pytest.mark.parametrize("name, option", [(n, o) for n in FAMILY_RULES for o in SIGMA_OPTIONS if o in _params(n)])
def test_sigma_spacing_options_are_refused_naming_the_option(name, option):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            sched = getattr(diffusers, name)(**{option: True})
        except ImportError:  # use_beta_sigmas needs scipy inside diffusers
            pytest.skip("diffusers needs scipy for this option")
    with pytest.raises(ValueError, match=option):
        ds.diffusers_grid(sched.config, 10)


def test_a_config_of_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="timestep rule"):
        ds.diffusers_grid({"num_train_timesteps": 1000, "solver_order": 2}, 10)
    with pytest.raises(ValueError, match="does not know the timestep rule of LCMScheduler"):
        ds.diffusers_grid({"_class_name": "LCMScheduler", "num_train_timesteps": 1000}, 10)


def test_the_family_of_a_scheduler_config_is_read_from_its_keys():
    # scheduler.config carries no _class_name: the keys name the class
    for name in ("DPMSolverMultistepScheduler", "EulerDiscreteScheduler", "DDIMScheduler"):
        assert family_of_keys(getattr(diffusers, name)().config) == name


def test_the_model_time_of_a_fractional_linspace_level_is_within_0_005_of_diffusers_timestep():
    # docs/diffusers.md: diffusers interpolates sigma linearly in the index, the wrapper maps sigma back to an
    # index log-linearly (DiscreteSchedule.t); on SD's schedule at 50 Euler linspace steps they differ by 0.003
    sched = _scheduler("EulerDiscreteScheduler", "linspace", "zero")
    sched.set_timesteps(50)
    sig = ds.diffusers_grid(sched.config, 50)
    t = ds.interop.diffusers.schedule_from_config(sched.config).t(sig[:-1])
    gap = float((t - sched.timesteps.double()).abs().max())
    assert 1e-4 < gap < 5e-3, gap
