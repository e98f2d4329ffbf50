"""The driver loop: grids, noise, callbacks, trajectories, dtypes and errors, for any solver."""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import Gaussian, GaussianMixture


@pytest.fixture
def mixture_ode():
    mix = GaussianMixture(torch.tensor([[1.0, -0.5], [-0.8, 0.4]]), [0.3, 0.5])
    return mix.ode(ds.DiscreteSchedule.linear())


def test_nfe_equals_steps_for_ddim_and_user_grid_is_used(mixture_ode):
    sig = ds.grid("karras", mixture_ode.schedule, 7)
    seen = []
    ds.sample(mixture_ode, torch.randn(3, 2), "ddim", sigmas=sig, callback=lambda info: seen.append(info["sigma"]))
    assert mixture_ode.nfe == 7
    assert seen == sig[:-1].tolist()


def test_callback_and_trajectory_report_every_step(mixture_ode):
    infos = []
    x, traj = ds.sample(mixture_ode, torch.randn(3, 2), "ddim", steps=4, callback=infos.append, return_trajectory=True)
    assert [i["i"] for i in infos] == [0, 1, 2, 3]
    assert set(infos[0]) >= {"i", "sigma", "sigma_next", "x", "xbar", "denoised", "nfe"}
    assert len(traj) == 5 and torch.equal(traj[-1], x)


def test_progress_bar_runs(mixture_ode, capsys):
    ds.sample(mixture_ode, torch.randn(2, 2), "ddim", steps=3, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_per_sample_generators_make_a_sample_independent_of_its_batch(mixture_ode):
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    full = ds.sample(mixture_ode, x_T, "ddim", steps=10, eta=1.0, generator=gens([10, 11, 12, 13]))
    part = ds.sample(mixture_ode, x_T[[2, 0]], "ddim", steps=10, eta=1.0, generator=gens([12, 10]))
    torch.testing.assert_close(part, full[[2, 0]], rtol=0, atol=0)


def test_stochastic_run_is_reproducible_with_a_seeded_generator(mixture_ode):
    x_T = torch.randn(3, 2)
    a = ds.sample(mixture_ode, x_T, "ddim", steps=6, eta=0.7, generator=torch.Generator().manual_seed(5))
    b = ds.sample(mixture_ode, x_T, "ddim", steps=6, eta=0.7, generator=torch.Generator().manual_seed(5))
    c = ds.sample(mixture_ode, x_T, "ddim", steps=6, eta=0.7, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_input_keeps_its_dtype_and_stays_close_to_float64(mixture_ode, dtype):
    x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    ref = ds.sample(mixture_ode, x_T, "ddim", steps=10)
    out = ds.sample(mixture_ode, x_T.to(dtype), "ddim", steps=10)
    assert out.dtype == dtype
    # float16/bfloat16 input: state in float32, the model sees the input's dtype;
    # the distance is dominated by rounding x_T and the model input (bfloat16: 8 bits)
    tol = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-1}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=tol)


def test_nan_from_the_model_names_the_step_and_sigma():
    sched = ds.EDMSchedule()

    def model(x, t):
        return torch.full_like(x, float("nan")) if t[0] < 5.0 else torch.zeros_like(x)

    ode = ds.wrap(model, sched)
    sig = torch.tensor([40.0, 10.0, 4.0, 1.0, 0.0])
    with pytest.raises(
        ds.NonFiniteError,
        match=r"first appeared at step 2 of 4 \(sigma 4 -> 1\); "
        r"the model returned non-finite values at step 2 \(sigma=4\)",
    ):
        ds.sample(ode, torch.zeros(2, 3), "ddim", sigmas=sig)


def test_a_state_made_non_finite_before_the_model_is_reported_at_its_own_step():
    # step 0's denoised_transform makes the state inf; the model then returns inf on it at step 1. The
    # report named step 1 and blamed the model, even with check_finite="step" (which knows step 0)
    ode = ds.wrap(lambda x, t: 0.5 * x, ds.EDMSchedule(), denoised_transform=lambda d, s: d * math.inf if s > 20 else d)
    sig = [40.0, 10.0, 4.0, 1.0, 0.0]
    with pytest.raises(ds.NonFiniteError, match=r"at step 0 of 4 \(sigma 40 -> 10\); the model's outputs up to there"):
        ds.sample(ode, torch.ones(2, 3), "ddim", sigmas=sig, check_finite="step")
    with pytest.raises(ds.NonFiniteError, match=r"at step 1 .*if the model was handed a non-finite state.*'step'"):
        ds.sample(ode, torch.ones(2, 3), "ddim", sigmas=sig)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"steps": 0}, ValueError, "steps must be an integer >= 1, got 0"),
        ({"steps": 5, "eta": -0.1}, ValueError, r"eta must be a finite number in \[0.0, inf\], got -0.1"),
        ({"steps": 5, "variance": "huge"}, ValueError, "variance='huge' is not allowed; allowed: 'eta', 'large'"),
        ({"steps": 5, "etaa": 0.3}, ValueError, "solver 'ddim': .*etaa.*its options are: eta, variance"),
        ({}, ValueError, "pass steps="),
        ({"steps": 5, "sigmas": [1.0, 0.0]}, ValueError, "either sigmas= or steps="),
        ({"sigmas": [1.0, 2.0, 0.0]}, ValueError, "strictly decreasing for sampling; entry 1"),
        ({"steps": 5, "grid": "nope"}, ds.UnknownNameError, "unknown grid 'nope'; known grids:"),
    ],
)
def test_bad_sample_arguments_name_the_argument(mixture_ode, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ds.sample(mixture_ode, torch.zeros(1, 2), "ddim", **kwargs)


def test_invert_refuses_stochastic_solvers_and_decreasing_grids(mixture_ode):
    with pytest.raises(ValueError, match="'ddim' cannot invert: it is stochastic"):
        ds.invert(mixture_ode, torch.zeros(1, 2), "ddim", steps=5, eta=0.5)
    with pytest.raises(ValueError, match="strictly increasing for invert"):
        ds.invert(mixture_ode, torch.zeros(1, 2), "ddim", sigmas=[1.0, 0.5, 0.0])


def test_invert_runs_upward_and_sample_brings_it_back(mixture_ode):
    x0 = torch.tensor([[0.9, -0.4], [-0.7, 0.5]])
    x_T = ds.invert(mixture_ode, x0, "ddim", steps=200, grid="time-uniform")
    assert x_T.abs().max() < 5  # at sigma_max, VP scale: back in N(0, I) range
    back = ds.sample(mixture_ode, x_T, "ddim", steps=200, grid="time-uniform")
    assert (back - x0).abs().max() < 0.05


def test_grid_ending_above_zero_returns_the_state_at_that_sigma():
    g = Gaussian([0.5], 0.4)
    ode = g.ode(ds.SigmaSchedule(0.0, 10.0, space="vp"))
    x_T = torch.tensor([[0.3]])
    sig = torch.linspace(10.0, 1.0, 2001)
    out = ds.sample(ode, x_T, "ddim", sigmas=sig)
    exact = ode.from_xbar(g.exact_flow(ode.to_xbar(x_T, 10.0), 10.0, 1.0), 1.0)
    torch.testing.assert_close(out, exact, rtol=0, atol=2e-4)  # Euler error ~ C / 2000


def test_nan_during_invert_names_the_step_where_the_model_was_called():
    # invert takes the first step itself, then the solver counts from 0: the report must not
    # shift by one (the model is first called at sigma = 10 on step 3, 10 -> 40)
    def model(x, t):
        return torch.full_like(x, float("nan")) if t[0] > 5.0 else torch.zeros_like(x)

    ode = ds.wrap(model, ds.EDMSchedule())
    with pytest.raises(
        ds.NonFiniteError,
        match=r"at step 3 of 4 \(sigma 10 -> 40\); "
        r"the model returned non-finite values at step 3 \(sigma=10\)",
    ):
        ds.invert(ode, torch.zeros(1, 2), "ddim", sigmas=[0.0, 1.0, 4.0, 10.0, 40.0])


class _RecordingModel:
    """An eps model that keeps every input tensor it is handed (as feature-caching hooks do)."""

    def __init__(self):
        self.inputs, self.copies = [], []

    def __call__(self, x, t):
        self.inputs.append(x)
        self.copies.append(x.clone())
        return torch.tanh(x) * 0.3


@pytest.mark.parametrize("schedule", [ds.DiscreteSchedule.linear(), ds.EDMSchedule()], ids=["vp", "ve"])
def test_no_tensor_handed_out_is_changed_by_a_later_step(schedule):
    # DDIM updates its state in place when no one else holds it; nothing the caller, the model,
    # a callback or the trajectory was given may change afterwards, and the result is the same
    model = _RecordingModel()
    ode = ds.wrap(model, schedule, prediction="eps", time="index" if schedule.space == "vp" else "sigma")
    x_T = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    x_T_copy = x_T.clone()
    out = ds.sample(ode, x_T, "ddim", steps=6)
    assert torch.equal(x_T, x_T_copy)
    assert all(torch.equal(a, b) for a, b in zip(model.inputs, model.copies)) and len(model.inputs) == 6
    seen = []
    out_cb, traj = ds.sample(
        ode,
        x_T,
        "ddim",
        steps=6,
        return_trajectory=True,
        callback=lambda info: seen.append((info["xbar"], info["xbar"].clone())),
    )
    assert torch.equal(out, out_cb)
    assert all(torch.equal(a, b) for a, b in seen) and len({id(a) for a, _ in seen}) == 6
    assert torch.equal(traj[-1], out) and torch.equal(traj[0], x_T)


def test_gradients_through_sample_are_those_of_the_out_of_place_run():
    # the in-place state update must not disturb autograd (model parameters and x_T require grad)
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)
    ode = ds.wrap(lambda x, t: torch.tanh(lin(x)), ds.DiscreteSchedule.linear(), prediction="eps", time="index")
    x_T = torch.randn(3, 4, requires_grad=True)
    grads = []
    for callback in (None, lambda info: None):  # a callback makes every update out of place
        out = ds.sample(ode, x_T, "ddim", steps=5, callback=callback, grad=True)
        g = torch.autograd.grad(out.square().sum(), [x_T, lin.weight])
        grads.append(g)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sample_keeps_no_graph_unless_grad_is_true():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)
    ode = ds.wrap(lambda x, t: torch.tanh(lin(x)), ds.DiscreteSchedule.linear(), prediction="eps", time="index")
    x_T = torch.randn(3, 4)
    assert not ds.sample(ode, x_T, "ddim", steps=5).requires_grad
    assert not ds.invert(ode, x_T, "ddim", steps=5).requires_grad
    assert ds.sample(ode, x_T, "ddim", steps=5, grad=True).requires_grad
    with pytest.raises(TypeError, match="grad must be True or False"):
        ds.sample(ode, x_T, "ddim", steps=5, grad="yes")


def _recipe_for(ode, solver="heun"):
    from diffsolve.recipe import schedule_fingerprint

    sig = ds.grid("karras", ode.schedule, 3).tolist()
    return ds.Recipe(solver, {}, sig, False, 5, schedule_fingerprint(ode.schedule, ode.prediction))


@pytest.mark.parametrize(
    "given",
    [{"solver": "ddim"}, {"solver": "heun"}, {"steps": 3}, {"grid": "karras"}, {"sigmas": [1.0, 0.0]}]
    + [{"grid_options": {"rho": 7.0}}, {"eta": 0.0}],
)
def test_an_explicit_argument_with_a_recipe_is_an_error_even_when_it_equals_the_default(mixture_ode, given):
    # issue 23 item 4: solver="ddim" (the default's value) with recipe= ran the recipe's solver in silence
    recipe = _recipe_for(mixture_ode)
    with pytest.raises(ValueError, match=f"a recipe fixes the solver.*without {next(iter(given))}"):
        ds.sample(mixture_ode, torch.randn(3, 2, dtype=torch.float64), recipe=recipe, **given)


def test_a_recipe_alone_runs_its_own_solver(mixture_ode):
    recipe = _recipe_for(mixture_ode)
    x = torch.randn(3, 2, dtype=torch.float64)
    out = ds.sample(mixture_ode, x, recipe=recipe)
    assert torch.equal(out, ds.sample(mixture_ode, x, "heun", sigmas=recipe.sigmas))
