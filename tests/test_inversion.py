"""Inversion: BDIA's exact inverse, the round-trip helper, and the errors bad input gets."""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import Gaussian, get_problem
from diffsolve.plugins import get_registry

SIGMA_MAX = 157.40728081


@pytest.fixture(scope="module")
def mixture():
    prob = get_problem("gmm64")
    return prob, prob.ode()  # DDPM's linear schedule, exact eps


def _x_T(prob, n=6, seed=0):
    return torch.randn(n, *prob.shape, generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


# -- exact inversion ------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [5, 10, 50])
def test_bdia_sample_then_invert_recovers_x_T_to_1e_10(mixture, steps):
    prob, ode = mixture
    x_T = _x_T(prob)
    state = ds.sample_reversible(ode, x_T, "bdia", steps=steps)
    assert torch.equal(state.x, ds.sample(ode, x_T, "bdia", steps=steps))  # the same sample
    ode.nfe = 0
    back = ds.invert(ode, state, solver="bdia", steps=steps)  # the same grid, checked
    assert _rel(back, x_T) < 1e-10
    assert ode.nfe == steps - 1  # one call per step but the first
    assert torch.equal(back, ds.invert_exact(ode, state))


@pytest.mark.parametrize("space", ["model", "sigma"])
@pytest.mark.parametrize("gamma, steps", [(1.0, 50), (0.5, 5), (0.5, 10)])
def test_exact_inversion_holds_for_each_coupling(mixture, space, gamma, steps):
    # gamma < 1 amplifies rounding by 1/g per inverse step: fine for few steps (see docs/inversion.md)
    prob, ode = mixture
    x_T = _x_T(prob, seed=1)
    state = ds.sample_reversible(ode, x_T, "bdia", steps=steps, gamma=gamma, space=space)
    assert _rel(ds.invert(ode, state), x_T) < 1e-10


def test_exact_inversion_in_float32_is_good_to_float32_rounding(mixture):
    prob, ode = mixture
    x_T = _x_T(prob, seed=2).float()
    state = ds.sample_reversible(ode, x_T, "bdia", steps=10)
    back = ds.invert(ode, state)
    assert back.dtype == torch.float32 and _rel(back.double(), x_T.double()) < 1e-4


def test_exact_inversion_trajectory_and_callback_walk_back_up_the_grid(mixture):
    prob, ode = mixture
    x_T = _x_T(prob, n=2)
    traj_fwd = ds.sample(ode, x_T, "bdia", steps=5, return_trajectory=True)[1]
    state = ds.sample_reversible(ode, x_T, "bdia", steps=5)
    infos = []
    back, traj = ds.invert_exact(ode, state, return_trajectory=True, callback=infos.append)
    assert torch.equal(back, traj[-1]) and len(traj) == 6 and [i["i"] for i in infos] == [0, 1, 2, 3, 4]
    for a, b in zip(traj, reversed(traj_fwd)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_bdia_with_gamma_zero_is_ddim_and_has_no_exact_inverse(mixture):
    prob, ode = mixture
    x_T = _x_T(prob)
    torch.testing.assert_close(
        ds.sample(ode, x_T, "bdia", steps=8, gamma=0.0), ds.sample(ode, x_T, "ddim", steps=8), rtol=0, atol=1e-12
    )
    state = ds.sample_reversible(ode, x_T, "bdia", steps=8, gamma=0.0)
    with pytest.raises(ValueError, match="DDIM step and has no exact inverse"):
        ds.invert(ode, state)


def test_bdia_is_first_order_and_more_accurate_than_ddim():
    # Gaussian data (E38) on the claim-10 grid: BDIA's error falls with a fitted slope >= 1
    # and stays below DDIM's (the paper's accuracy claim) at every step count
    g = Gaussian(torch.full((4,), 0.3), 0.5)
    ode = g.ode(ds.SigmaSchedule(0.0, SIGMA_MAX, space="vp"))
    x_T = torch.tensor([[-2.0, -0.5, 0.7, 1.9]])
    exact = g.exact_flow(ode.to_xbar(x_T, SIGMA_MAX), SIGMA_MAX, 0.0)
    errs = {}
    for S in (40, 80, 160, 320):
        k = torch.arange(S + 1, dtype=torch.float64)
        grid = (SIGMA_MAX ** (1 / 7) * (1 - k / S)) ** 7
        errs[S] = [(ds.sample(ode, x_T, s, sigmas=grid) - exact).abs().max().item() for s in ("bdia", "ddim")]
    logs = torch.tensor([[math.log(S), math.log(e[0])] for S, e in errs.items()])
    slope = -torch.linalg.lstsq(torch.stack([logs[:, 0], torch.ones(4)], 1), logs[:, 1:]).solution[0].item()
    assert slope >= 0.95
    assert all(b < d for b, d in errs.values())


def test_sample_reversible_refuses_a_solver_without_an_exact_inverse(mixture):
    prob, ode = mixture
    with pytest.raises(ValueError, match="not reversible.*e.g. 'bdia'"):
        ds.sample_reversible(ode, _x_T(prob), "ddim", steps=5)


def test_a_reversible_sample_must_be_inverted_on_its_own_grid_and_solver(mixture):
    prob, ode = mixture
    state = ds.sample_reversible(ode, _x_T(prob), "bdia", steps=5)
    with pytest.raises(ValueError, match="differs from the grid"):
        ds.invert(ode, state, steps=6)
    with pytest.raises(ValueError, match="made by 'bdia'"):
        ds.invert(ode, state, solver="heun")
    with pytest.raises(ValueError, match="carries its solver's options"):
        ds.invert(ode, state, gamma=0.5)
    with pytest.raises(TypeError, match="ReversibleSample"):
        ds.invert_exact(ode, state.x)


def test_exact_inversion_checks_the_runs_grid_against_the_models_sigma_range(mixture):
    # a ReversibleSample inverted with the ODE of another schedule (sigma_max 14.6 < the run's 157.4)
    # ran with the model clamped at its sigma_max, silently; invert(..., allow_out_of_range=) was dropped
    prob, ode = mixture
    state = ds.sample_reversible(ode, _x_T(prob), "bdia", steps=5)
    other = prob.ode(ds.DiscreteSchedule.scaled_linear())
    for undo in (ds.invert_exact, ds.invert):
        with pytest.raises(
            ValueError, match=r"ReversibleSample's sigmas reach sigma = 157\.407, above the model's range"
        ):
            undo(other, state)
    assert torch.isfinite(ds.invert(other, state, allow_out_of_range=True)).all()


# -- approximate inversion and the round trip ------------------------------------------------------
def test_reconstruction_error_reproduces_the_ddim_round_trip_of_claim_12():
    g = Gaussian(torch.full((4,), 0.3), 0.5)
    ode = g.ode(ds.SigmaSchedule(0.0, SIGMA_MAX, space="vp"))
    x0 = torch.tensor([[-0.7, 0.1, 0.45, 1.3]])
    for S, expected in [(160, 4.8934e-2), (320, 2.4774e-2)]:
        k = torch.arange(S + 1, dtype=torch.float64)
        grid = (SIGMA_MAX ** (1 / 7) * (1 - k / S)) ** 7
        err = ds.reconstruction_error(ode, x0, "ddim", sigmas=grid)
        assert err.shape == (1,) and err.item() == pytest.approx(expected, rel=1e-3)


def test_ddim_round_trip_on_the_mixture_decreases_at_order_one(mixture):
    prob, ode = mixture
    x0 = prob.sample(8, generator=torch.Generator().manual_seed(0))
    errs = [ds.reconstruction_error(ode, x0, "ddim", steps=S).max().item() for S in (10, 20, 50, 100, 200)]
    assert all(a > b for a, b in zip(errs, errs[1:]))
    assert 0.8 <= math.log2(errs[-2] / errs[-1]) <= 1.2  # 0.96 measured (docs/inversion.md)


def test_reconstruction_error_is_per_sample_and_rms_is_below_max(mixture):
    prob, ode = mixture
    x0 = prob.sample(3, generator=torch.Generator().manual_seed(1))
    e_max = ds.reconstruction_error(ode, x0, "ddim", steps=10)
    e_rms = ds.reconstruction_error(ode, x0, "ddim", steps=10, norm="rms")
    assert e_max.shape == e_rms.shape == (3,) and (e_rms <= e_max).all() and (e_rms > 0).all()
    with pytest.raises(ValueError, match="norm='l1' is not known"):
        ds.reconstruction_error(ode, x0, "ddim", steps=10, norm="l1")


def _deterministic_names():
    names = []
    for name in sorted(get_registry().solvers):
        s = ds.make_solver(name)
        if not s.stochastic and s.invertible:
            names.append(name)
    return names


def _stochastic_names():
    return [n for n in sorted(get_registry().solvers) if ds.make_solver(n).stochastic]


@pytest.mark.parametrize("name", _deterministic_names())
def test_every_deterministic_solver_inverts_and_its_round_trip_shrinks_with_steps(name):
    # the registry-wide round-trip table of docs/inversion.md, at two step counts
    prob = get_problem("gmm64")
    ode = prob.ode()
    x0 = prob.sample(4, generator=torch.Generator().manual_seed(0))
    e10, e50 = (ds.reconstruction_error(ode, x0, name, steps=S).max().item() for S in (10, 50))
    assert math.isfinite(e10) and math.isfinite(e50)
    assert e50 < e10 and e50 < 0.25


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, options", [("ddim", {"eta": 0.5}), ("ddim", {"variance": "large"})] + [(n, {}) for n in _stochastic_names()]
)
def test_inverting_with_a_stochastic_solver_is_refused(mixture, name, options):
    prob, ode = mixture
    with pytest.raises(ValueError, match=f"solver {name!r} cannot invert: it is stochastic"):
        ds.invert(ode, prob.sample(2), name, steps=5, **options)


def test_a_decreasing_grid_given_to_invert_is_refused(mixture):
    prob, ode = mixture
    with pytest.raises(ValueError, match="strictly increasing for invert"):
        ds.invert(ode, prob.sample(2), "ddim", sigmas=[10.0, 1.0, 0.0])


@pytest.mark.parametrize("run", [ds.invert, ds.sample_reversible])
def test_a_generator_given_to_a_deterministic_run_is_named_not_blamed_on_the_solver(mixture, run):
    # it reached the solver's options: "solver 'ddim': unknown option(s) ['generator']"
    prob, ode = mixture
    with pytest.raises(TypeError, match=f"{run.__name__} takes no generator=: it runs a deterministic solver"):
        run(ode, _x_T(prob), steps=3, generator=torch.Generator().manual_seed(0))


def test_a_recipe_given_to_invert_is_refused_by_name(mixture):
    # it was read as a solver option: "pass steps= ..." or "solver 'ddim': unknown option(s) ['recipe']"
    from diffsolve.recipe_ode import schedule_fingerprint

    prob, ode = mixture
    sig = ds.grid("logsnr", ode.schedule, 3).tolist()
    recipe = ds.Recipe("ddim", {}, sig, False, 3, schedule_fingerprint(ode.schedule, ode.prediction))
    for extra in ({}, {"steps": 3}):
        with pytest.raises(TypeError, match="invert takes no recipe="):
            ds.invert(ode, _x_T(prob), recipe=recipe, **extra)
