"""Fuzzing the public API with wrong arguments (issue 13).

Hypothesis draws one public call (sample, invert, grid, wrap, the schedules, from_diffusers,
k_sampler) and one argument of it, replaces that argument by a wrong value, and checks that the
call fails with a ValueError or TypeError whose message names the argument, raised by diffsolve
itself (the innermost frame of the traceback is diffsolve's, not torch's or a model's), and that
the model was never called. Runs in the quick hypothesis profile (tests/conftest.py)."""

import traceback
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diffsolve as ds

PACKAGE = str(Path(ds.__file__).resolve().parent)
NAN, INF = float("nan"), float("inf")


class Model:
    """An eps model that counts its calls: a wrong argument must be refused before the first one."""

    calls = 0

    def __call__(self, x, t, **kwargs):
        Model.calls += 1
        return torch.zeros_like(x)


def denoiser(x, sigma, **kwargs):
    Model.calls += 1
    return torch.zeros_like(x)


SCHED = ds.DiscreteSchedule.linear()
ODE = ds.wrap(Model(), SCHED)
X = torch.zeros(2, 3)
KSIG = ds.grid("karras", ds.EDMSchedule(), 4)


def _sample(**kw):
    args = {"ode": ODE, "x_T": X, "solver": "ddim", "steps": 4}
    args.update(kw)
    return ds.sample(**args)


def _invert(**kw):
    args = {"ode": ODE, "x0": X, "solver": "ddim", "steps": 4}
    args.update(kw)
    return ds.invert(**args)


def _grid(**kw):
    args = {"name": "karras", "schedule": SCHED, "steps": 4}
    args.update(kw)
    return ds.grid(**args)


def _wrap(**kw):
    args = {"model": Model(), "schedule": SCHED}
    args.update(kw)
    return ds.wrap(**args)


def _k_sampler(name="ddim", options=None, **kw):
    args = {"model": denoiser, "x": X, "sigmas": KSIG}
    args.update(kw)
    return ds.k_sampler(name, **(options or {}))(**args)


def _from_diffusers(model=None, config=None):
    return ds.from_diffusers(Model() if model is None else model, {} if config is None else config)


# (call, wrong keyword arguments, words of which the message must contain one)
CASES = [
    # sample
    *[(_sample, {"ode": v}, ["ode"]) for v in (3, "ode", None, Model(), SCHED)],
    *[
        (_sample, {"x_T": v}, ["x_T"])
        for v in (
            [[0.0, 1.0]],
            3.0,
            "x",
            None,
            torch.zeros(2, 3, dtype=torch.int64),
            torch.zeros(2, 3, dtype=torch.bool),
            torch.tensor(1.0),
            torch.zeros(0, 3),
            torch.zeros(2, 0),
            torch.full((2, 3), NAN),
            torch.full((2, 3), -INF),
        )
    ],
    *[(_sample, {"solver": v}, ["solver"]) for v in (3, None, "nope", "dpmpp_2m", object(), int, ds.Solver)],
    *[(_sample, {"steps": v}, ["steps"]) for v in (0, -1, 2.5, "10", True, NAN, [4])],
    *[(_sample, {"grid": v}, ["grid"]) for v in ("nope", "karas", 3, ["karras"])],
    *[
        (_sample, {"steps": None, "sigmas": v}, ["sigmas"])
        for v in (
            [1.0],
            [[1.0, 0.0]],
            [1.0, 2.0, 0.0],
            [NAN, 0.0],
            [1.0, -1.0],
            [INF, 0.0],
            "abc",
            [1e4, 1.0, 0.0],
            [10.0, 1e-5, 0.0],
            torch.zeros(0),
        )
    ],
    (_sample, {"sigmas": [1.0, 0.0]}, ["sigmas"]),  # both steps= and sigmas=
    (_sample, {"steps": None}, ["steps"]),
    *[
        (_sample, {"generator": v}, ["generator"])
        for v in (0, "seed", 1.5, [torch.Generator()], [torch.Generator(), None], object())
    ],
    *[(_sample, {"callback": v}, ["callback"]) for v in (3, "print", [print])],
    *[(_sample, {"progress": v}, ["progress"]) for v in ("yes", 2, None)],
    *[(_sample, {"return_trajectory": v}, ["return_trajectory"]) for v in ("no", 1)],
    *[(_sample, {"check_finite": v}, ["check_finite"]) for v in ("maybe", 2, None)],
    *[(_sample, {"grad": v}, ["grad"]) for v in ("yes", 1, None)],
    *[(_sample, {"allow_out_of_range": v}, ["allow_out_of_range"]) for v in ("yes", 1)],
    *[(_sample, {"grid_options": v}, ["grid_options"]) for v in (3, "rho=7", [("rho", 7)])],
    (_sample, {"grid_options": {"rho": -1.0}}, ["rho"]),
    (_sample, {"grid_options": {"nope": 1}}, ["option", "nope"]),
    *[(_sample, {"eta": v}, ["eta"]) for v in (-0.1, NAN, INF, "a", None, [0.5])],
    (_sample, {"variance": "huge"}, ["variance"]),
    (_sample, {"etaa": 0.5}, ["etaa"]),
    *[(_sample, {"solver": "dpmpp-2m", "solver_order": v}, ["solver_order"]) for v in (0, 7, 2.0, "2")],
    # invert
    *[(_invert, {"x0": v}, ["x0"]) for v in (None, torch.full((2, 3), NAN), torch.zeros(0, 3), [1.0])],
    (_invert, {"solver": "euler-ancestral"}, ["solver"]),
    (_invert, {"eta": 0.5}, ["solver", "eta"]),
    (_invert, {"steps": None, "sigmas": [1.0, 0.5, 0.0]}, ["sigmas"]),
    (_invert, {"steps": None, "sigmas": [0.0, 1.0, 1e4]}, ["sigmas"]),
    (_invert, {"ode": "ode"}, ["ode"]),
    (_invert, {"steps": -2}, ["steps"]),
    # grid
    *[(_grid, {"name": v}, ["grid"]) for v in ("nope", 3, None)],
    *[(_grid, {"schedule": v}, ["schedule"]) for v in (3, "linear", None)],
    *[(_grid, {"steps": v}, ["steps"]) for v in (0, -5, 1.5, "4", None)],
    (_grid, {"name": "trailing", "steps": 2000}, ["steps"]),
    (_grid, {"name": "trailing", "schedule": ds.EDMSchedule()}, ["DiscreteSchedule", "schedule"]),
    (_grid, {"name": "ddim-quad", "steps": 50}, ["steps"]),
    (_grid, {"rho": 0.0}, ["rho"]),
    (_grid, {"sigma_min": 100.0, "sigma_max": 1.0}, ["sigma_min"]),
    # wrap
    *[(_wrap, {"model": v}, ["model"]) for v in (3, "unet", None)],
    *[(_wrap, {"schedule": v}, ["schedule"]) for v in (3, "linear", None, ds.EDMSchedule)],
    *[(_wrap, {"prediction": v}, ["prediction"]) for v in ("epsilonn", 3, None, "EPS")],
    *[(_wrap, {"time": v}, ["time"]) for v in ("tt", 3)],
    (_wrap, {"schedule": ds.EDMSchedule(), "time": "index"}, ["time"]),
    *[(_wrap, {"guidance": v, "cond": {"c": 1}, "uncond": {"c": 1}}, ["guidance"]) for v in (NAN, INF, "7")],
    (_wrap, {"guidance": 7.0}, ["cond"]),
    (_wrap, {"guidance": 7.0, "cond": {"a": 1}, "uncond": {"b": 1}}, ["cond"]),
    (_wrap, {"guidance": 7.0, "cond": 3, "uncond": {"b": 1}}, ["cond"]),
    (_wrap, {"cond": {"a": 1}}, ["cond", "guidance"]),
    *[(_wrap, {"guidance_rescale": v}, ["guidance_rescale"]) for v in (2.0, -0.5, NAN, "x")],
    *[(_wrap, {"time_dtype": v}, ["time_dtype"]) for v in ("float32", 3)],
    (_wrap, {"model_kwargs": 3}, ["model_kwargs"]),
    (_wrap, {"denoised_transform": 3}, ["denoised_transform"]),
    # schedules
    (lambda: ds.DiscreteSchedule([0.5, 0.9]), ["alphas_cumprod"]),
    (lambda: ds.DiscreteSchedule([0.9, NAN]), ["alphas_cumprod"]),
    (lambda: ds.DiscreteSchedule([1.5, 0.5]), ["alphas_cumprod"]),
    (lambda: ds.DiscreteSchedule([0.9]), ["alphas_cumprod"]),
    (lambda: ds.DiscreteSchedule(None), ["alphas_cumprod"]),
    (lambda: ds.DiscreteSchedule("abc"), ["alphas_cumprod"]),
    (lambda: ds.DiscreteSchedule.from_betas([0.1, 1.5]), ["betas"]),
    (lambda: ds.DiscreteSchedule.from_betas([0.1, -0.1]), ["betas"]),
    *[(lambda v=v: ds.DiscreteSchedule.linear(v), ["num_steps"]) for v in (0, 1, 2.5, "1000")],
    (lambda: ds.DiscreteSchedule.linear(1000, -1e-4, 0.02), ["beta"]),
    (lambda: ds.DiscreteSchedule.linear(1000, 1e-4, 2.0), ["beta"]),
    (lambda: ds.DiscreteSchedule.linear(1000, NAN, 0.02), ["beta"]),
    (lambda: ds.VPLinearSchedule(beta_min=-1.0), ["beta_min"]),
    (lambda: ds.VPLinearSchedule(beta_min=5.0, beta_max=1.0), ["beta_max", "beta_min"]),
    (lambda: ds.VPLinearSchedule(t_eps=0.0), ["t_eps"]),
    (lambda: ds.VPCosineSchedule(t_end=1.5), ["t_end"]),
    (lambda: ds.VPCosineSchedule(s=-1.0), ["s"]),
    (lambda: ds.SigmaSchedule(10.0, 1.0), ["sigma_min"]),
    (lambda: ds.SigmaSchedule(0.1, INF), ["sigma_max"]),
    (lambda: ds.SigmaSchedule(0.1, 10.0, space="flow"), ["space"]),
    (lambda: ds.SigmaSchedule("a", 10.0), ["sigma_min"]),
    (lambda: ds.EDMSchedule(-1.0, 80.0), ["sigma_min"]),
    (lambda: ds.FlowSchedule(t_eps=0.5, t_end=0.1), ["t_eps"]),
    # from_diffusers
    (lambda: _from_diffusers(model=3), ["model"]),
    *[(lambda v=v: ds.from_diffusers(Model(), v), ["config", "scheduler"]) for v in (3, "ddim", None, [1])],
    (lambda: _from_diffusers(config={"prediction_type": "epsilonn"}), ["prediction_type"]),
    (lambda: _from_diffusers(config={"beta_schedule": "cosine"}), ["beta_schedule"]),
    (lambda: _from_diffusers(config={"num_train_timesteps": 0}), ["num_train_timesteps"]),
    (lambda: _from_diffusers(config={"beta_start": "a"}), ["beta_start"]),
    (lambda: _from_diffusers(config={"beta_end": 2.0}), ["beta"]),
    (lambda: ds.diffusers_grid({}, 0), ["steps"]),
    (lambda: ds.diffusers_grid({"timestep_spacing": "middle"}, 10), ["timestep_spacing"]),
    # k_sampler
    *[(lambda v=v: _k_sampler(name=v), ["solver", "name"]) for v in ("nope", 3, None)],
    (lambda: _k_sampler(options={"eta": -1.0}), ["eta"]),
    *[(lambda v=v: _k_sampler(x=v), ["x"]) for v in (None, torch.zeros(0, 3), torch.full((2, 3), NAN), [1.0])],
    *[(lambda v=v: _k_sampler(sigmas=v), ["sigmas"]) for v in ([1.0], [0.0, 1.0], "abc", [[1.0, 0.0]], [NAN, 0.0])],
    (lambda: _k_sampler(extra_args=3), ["extra_args"]),
    (lambda: _k_sampler(callback=3), ["callback"]),
    (lambda: _k_sampler(model=3), ["model"]),
    (lambda: _k_sampler(generator=5, options=None, name="euler-ancestral"), ["generator"]),
]


def _call(case):
    if len(case) == 2:
        return case[0]()
    fn, kwargs, _ = case
    return fn(**kwargs)


def _names(case):
    return case[-1]


def check_refused(case) -> None:
    Model.calls = 0
    with pytest.raises((ValueError, TypeError)) as info:
        _call(case)
    exc = info.value
    message = str(exc)
    assert any(word in message for word in _names(case)), f"{_names(case)} not named in: {message!r}"
    innermost = traceback.extract_tb(exc.__traceback__)[-1].filename
    assert str(Path(innermost).resolve()).startswith(PACKAGE), (
        f"raised outside diffsolve ({innermost}): {type(exc).__name__}: {message}"
    )
    assert Model.calls == 0, "the model was called before the argument was refused"


@settings(max_examples=max(settings().max_examples * 4, 100))
@given(st.sampled_from(CASES))
def test_a_wrong_argument_is_refused_by_diffsolve_naming_it(case):
    check_refused(case)


def test_every_fuzz_case_is_refused_naming_its_argument():
    # the whole table once, so no case depends on hypothesis drawing it
    failures = []
    for case in CASES:
        try:
            check_refused(case)
        except BaseException as exc:  # noqa: BLE001 - collect every failing case
            where = case[1] if len(case) == 3 else case[0].__code__.co_firstlineno
            failures.append(f"{where}: {type(exc).__name__}: {exc}"[:400])
    assert not failures, "\n".join(failures)


# -- generated wrong values -------------------------------------------------------------------------
def _nan_state(draw_shape, pos, value):
    x = torch.zeros(*draw_shape)
    x.view(-1)[pos % x.numel()] = value
    return x


bad_steps = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=3),
    st.booleans(),
    st.none(),
)
bad_eta = st.one_of(st.floats(max_value=-1e-12, allow_infinity=True), st.just(NAN), st.just(INF), st.text(max_size=3))
shapes = st.lists(st.integers(1, 3), min_size=1, max_size=3)
bad_x = st.one_of(
    st.builds(_nan_state, shapes, st.integers(0, 100), st.sampled_from([NAN, INF, -INF])),
    shapes.map(lambda s: torch.zeros(*s, dtype=torch.int32)),
    shapes.map(lambda s: torch.zeros(0, *s)),
    st.floats(allow_nan=False).map(torch.tensor),
    st.lists(st.floats(-1, 1), min_size=1, max_size=4),
)
# grids that break one rule: not decreasing somewhere, negative, non-finite, too short, above the range
increasing_pair = st.lists(st.floats(0.02, 100.0), min_size=2, max_size=6).map(lambda v: sorted(v) + [0.0])
bad_sigmas = st.one_of(
    increasing_pair.filter(lambda v: v[0] < v[-2]),
    st.lists(st.floats(0.02, 100.0), min_size=1, max_size=4).map(lambda v: sorted(v, reverse=True) + [-1.0]),
    st.lists(st.floats(0.02, 100.0), min_size=1, max_size=4).map(lambda v: sorted(v, reverse=True) + [NAN]),
    st.floats(0.0, 100.0).map(lambda v: [v]),
    st.floats(200.0, 1e8).map(lambda v: [v, 1.0, 0.0]),
)
bad_generator = st.one_of(
    st.integers(),
    st.text(max_size=3),
    st.floats(),
    st.integers(0, 5).filter(lambda n: n != 2).map(lambda n: [torch.Generator()] * n),
)
bad_guidance = st.one_of(st.just(NAN), st.just(INF), st.just(-INF), st.text(max_size=3))
bad_prediction = st.text(max_size=8).filter(
    lambda p: p not in ("eps", "x0", "sample", "v", "score", "flow", "epsilon", "v_prediction")
)

GENERATED = st.one_of(
    st.tuples(st.just(_sample), bad_steps.map(lambda v: {"steps": v}), st.just(["steps"])),
    st.tuples(st.just(_sample), bad_eta.map(lambda v: {"eta": v}), st.just(["eta"])),
    st.tuples(st.just(_sample), bad_x.map(lambda v: {"x_T": v}), st.just(["x_T"])),
    st.tuples(st.just(_sample), bad_sigmas.map(lambda v: {"steps": None, "sigmas": v}), st.just(["sigmas"])),
    st.tuples(st.just(_sample), bad_generator.map(lambda v: {"generator": v}), st.just(["generator"])),
    st.tuples(
        st.just(_sample),
        st.text(min_size=1, max_size=8).filter(lambda n: n not in ds.list_solvers()).map(lambda v: {"solver": v}),
        st.just(["solver"]),
    ),
    st.tuples(st.just(_invert), bad_x.map(lambda v: {"x0": v}), st.just(["x0"])),
    st.tuples(st.just(_grid), bad_steps.map(lambda v: {"steps": v}), st.just(["steps"])),
    st.tuples(
        st.just(_grid),
        st.text(max_size=8).filter(lambda n: n not in ds.list_grids()).map(lambda v: {"name": v}),
        st.just(["grid"]),
    ),
    st.tuples(st.just(_wrap), bad_prediction.map(lambda v: {"prediction": v}), st.just(["prediction"])),
    st.tuples(
        st.just(_wrap),
        bad_guidance.map(lambda v: {"guidance": v, "cond": {"c": 1}, "uncond": {"c": 1}}),
        st.just(["guidance"]),
    ),
    st.tuples(
        st.just(_wrap),
        st.floats(allow_nan=True).filter(lambda v: not 0 <= v <= 1).map(lambda v: {"guidance_rescale": v}),
        st.just(["guidance_rescale"]),
    ),
    st.tuples(st.just(lambda **kw: _k_sampler(**kw)), bad_x.map(lambda v: {"x": v}), st.just(["x"])),
    st.tuples(
        st.just(lambda **kw: _k_sampler(**kw)),
        bad_sigmas.filter(lambda v: len(v) < 3 or v[0] < 200).map(lambda v: {"sigmas": v}),
        st.just(["sigmas"]),
    ),
)


@settings(max_examples=max(settings().max_examples * 4, 100))
@given(GENERATED)
def test_generated_wrong_values_are_refused_naming_the_argument(case):
    check_refused(case)
