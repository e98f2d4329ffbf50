"""ds.count_calls / ds.steps_for_nfe and the recipe's NFE contract (issue 22 item 1): a recipe makes exactly
its ``nfe`` model calls on any x_T, and ``ds.sample(..., recipe=r)`` raises rather than exceed it."""

import hashlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import diffsolve as ds
from diffsolve.analytic import default_schedule, get_problem
from diffsolve.recipe import RecipeError, RecipeODE, schedule_fingerprint
from diffsolve.tuning import _configs, _fixed_call_solvers

ODE = get_problem("gmm2d").ode(default_schedule())
FP = schedule_fingerprint(ODE.schedule, ODE.prediction)
#: every configuration the tuner may pick (solver x option variant x AFS)
CONFIGS = _configs(_fixed_call_solvers(None))
GRIDS = ["logsnr", "karras", "time-uniform", "ddim-uniform", "trailing", "kl-optimal"]


def _real_calls(solver, sigmas, **options):
    n0 = ODE.nfe
    ds.sample(ODE, torch.zeros(2, 2, dtype=torch.float64), solver, sigmas=sigmas, **options)
    return ODE.nfe - n0


@pytest.mark.parametrize("solver", ["ddim", "heun", "dpmpp-2m", "dpmpp-3s", "unipc", "ipndm", "dpm-2"])
@pytest.mark.parametrize("grid", ["logsnr", "ddim-uniform"])
def test_count_calls_equals_the_calls_of_a_real_run(solver, grid):
    for steps in (1, 2, 3, 6):
        sig = ds.grid(grid, ODE.schedule, steps)
        assert ds.count_calls(solver, sig) == _real_calls(solver, sig), (solver, grid, steps)


def test_ddim_uniform_returns_more_levels_than_steps_which_the_count_sees():
    # the root cause of issue 22's 9-call "nfe=6" recipe: ddim-uniform at 3 steps is a 4-step grid (it adds
    # sigma_min before 0), and the tuner used to count calls on a synthetic grid of 3 steps
    sched = ds.DiscreteSchedule.linear()
    sig = ds.grid("ddim-uniform", sched, 3)
    assert len(sig) == 5
    assert ds.count_calls("dpmpp-3s", sig, afs=True) == 9  # 3 + 3 + 3 + 1 (denoise into 0) - 1 (AFS)
    with pytest.raises(RecipeError, match="nfe=6, but 'dpmpp-3s'.*makes 9 model calls"):
        ds.Recipe("dpmpp-3s", {}, sig.tolist(), True, 6, schedule_fingerprint(sched, "eps"))
    steps = ds.steps_for_nfe("dpmpp-3s", 6, grid="ddim-uniform", schedule=sched, afs=True)
    assert ds.count_calls("dpmpp-3s", ds.grid("ddim-uniform", sched, steps), afs=True) <= 6


@pytest.mark.parametrize("nfe", [3, 5, 8])
def test_steps_for_nfe_is_the_most_steps_that_fit(nfe):
    sched = ds.DiscreteSchedule.linear()
    for solver in ("ddim", "heun", "dpmpp-3s", "dpm-2", "unipc"):
        for grid in ("karras", "ddim-uniform", "trailing"):
            for afs in (False, True):
                steps = ds.steps_for_nfe(solver, nfe, grid=grid, schedule=sched, afs=afs)
                if steps is None:  # not even one step fits
                    assert ds.count_calls(solver, ds.grid(grid, sched, 1), afs=afs) > nfe
                    continue
                assert ds.count_calls(solver, ds.grid(grid, sched, steps), afs=afs) <= nfe
                assert ds.count_calls(solver, ds.grid(grid, sched, steps + 1), afs=afs) > nfe, (solver, grid, afs)


def test_count_calls_refuses_an_adaptive_solver():
    with pytest.raises(ValueError, match="'dpm-adaptive' is adaptive"):
        ds.count_calls("dpm-adaptive", [10.0, 1.0, 0.0])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    k=st.integers(0, len(CONFIGS) - 1),
    grid=st.sampled_from(GRIDS),
    steps=st.integers(1, 7),
    batch=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.01, 300.0),
)
def test_a_recipe_makes_exactly_its_nfe_model_calls_on_any_x_T(k, grid, steps, batch, seed, scale):
    cfg = CONFIGS[k]
    sig = ds.grid(grid, ODE.schedule, steps).tolist()
    nfe = ds.count_calls(cfg.solver, sig, afs=cfg.afs, **cfg.opts)
    recipe = ds.Recipe(cfg.solver, cfg.opts, sig, cfg.afs, nfe, FP)
    x_T = torch.randn(batch, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    n0 = ODE.nfe
    ds.sample(ODE, x_T, recipe=recipe, check_finite=False)  # a wild x_T may overflow: the count must not change
    assert ODE.nfe - n0 == recipe.nfe


def test_sample_with_a_recipe_raises_rather_than_exceed_its_nfe():
    sig = ds.grid("logsnr", ODE.schedule, 4).tolist()
    recipe = ds.Recipe("heun", {}, sig, False, ds.count_calls("heun", sig), FP)
    recipe.sigmas = ds.grid("logsnr", ODE.schedule, 6).tolist()  # edited after it was made
    n0 = ODE.nfe
    with pytest.raises(RecipeError, match="nfe=7, but 'heun'.*makes 11 model calls"):
        ds.sample(ODE, torch.zeros(2, 2, dtype=torch.float64), recipe=recipe)
    assert ODE.nfe == n0  # refused before any model call
    # and the run itself stops at the budget: a 7-call run allowed 5 calls raises at call 6
    run_ode = RecipeODE(ODE, budget=5)
    with pytest.raises(RecipeError, match="asked for model call 6, over the recipe's nfe=5"):
        ds.sample(run_ode, torch.zeros(2, 2, dtype=torch.float64), "heun", sigmas=sig)


#: sha256 of the shipped digits recipes' samples from problem.x_T(0, 4) in float32, under this suite's conftest
#: (one torch thread, float64 default dtype), recorded before the counting / tuner rewrite (commit cabcf4d); NFE 3, 5:
#: the learned-lms recipes of tune(learn=True) (docs/tuning.md, "Digits")
SHIPPED = {
    3: "81cf958b6a992a7f7ebd0ae20e32ee75a71e8f28bf45a6da2aa9fd7bec0da452",
    5: "8f8236783cd3b7c92a837cd25e4ba97af0a3986d53f72304429f3ae9a1d81d94",
    10: "4d74a8ef1068a42dd090886e7371fbe156fd08e71605e1a2f567d3034cb344dd",
}


@pytest.mark.parametrize("nfe", sorted(SHIPPED))
def test_shipped_recipes_load_and_reproduce_their_samples_bit_for_bit(nfe):
    from diffsolve.bench.catalog import get_bench_problem
    from diffsolve.bench.pictures import RECIPES

    problem = get_bench_problem("digits")
    recipe = ds.Recipe.load(RECIPES / f"digits-nfe{nfe}.json")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the convolutions' summation order depends on the thread count
    try:
        out = ds.sample(problem.ode(torch.float32), problem.x_T(0, 4).to(torch.float32), recipe=recipe)
    finally:
        torch.set_num_threads(threads)
    assert hashlib.sha256(out.contiguous().numpy().tobytes()).hexdigest() == SHIPPED[nfe]


#: sha256 of the shipped guided recipes' samples (digits-cond, CFG 8, labels 0, 3, 7, 9, x_T of seed 0, one thread)
SHIPPED_GUIDED = {
    5: "f1cfa3cfab6e3f0e6198ece929e7a7658242bd3433d404f63a5cc7f6053a42de",
    10: "2d01aa64de1e5af433b8a68e5c03586541174628dae24c2ebc00a2ecde917573",
}


@pytest.mark.parametrize("nfe", sorted(SHIPPED_GUIDED))
def test_shipped_guided_recipes_record_cfg_8_make_their_calls_and_reproduce_their_samples_bit_for_bit(nfe):
    """The guided digits recipes (issue 20, item 5; benchmarks/tune_digits.py --problem digits-cond): tuned under
    CFG 8, which their fingerprint records; on the guided ODE with any per-sample labels they make exactly their
    model calls and give the same samples bit for bit; under another scale they are refused."""
    from diffsolve.bench.catalog import get_bench_problem
    from diffsolve.bench.pictures import RECIPES
    from diffsolve.recipe import RecipeError

    problem = get_bench_problem("digits-cond")
    recipe = ds.Recipe.load(RECIPES / f"digits-cond-cfg8-nfe{nfe}.json")
    assert recipe.guidance == "cfg(scale=8.0, guidance_rescale=0.0)" and recipe.nfe == nfe
    labels = torch.tensor([0, 3, 7, 9])
    ode = problem.ode(torch.float32, labels=labels, guidance=8.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the convolutions' summation order depends on the thread count
    try:
        out = ds.sample(ode, problem.x_T(0, 4), recipe=recipe)
    finally:
        torch.set_num_threads(threads)
    assert ode.nfe == nfe
    assert hashlib.sha256(out.contiguous().numpy().tobytes()).hexdigest() == SHIPPED_GUIDED[nfe]
    with pytest.raises(RecipeError, match="guidance"):
        ds.sample(problem.ode(torch.float32, labels=labels, guidance=4.0), problem.x_T(0, 4), recipe=recipe)


def test_steps_for_nfe_looks_above_a_step_count_the_grid_refuses():
    # ddim-quad needs 2 steps; dpm-2 (2 calls per step, 1 into sigma = 0) fits 2 steps in 3 calls. The first
    # search (nfe // calls_per_step = 1, then down) found nothing and the pictures' scan found 2: now all agree
    sched = ds.DiscreteSchedule.linear()
    with pytest.raises(ValueError, match="ddim-quad needs steps >= 2"):
        ds.grid("ddim-quad", sched, 1)
    assert ds.steps_for_nfe("dpm-2", 3, grid="ddim-quad", schedule=sched) == 2
    assert ds.count_calls("dpm-2", ds.grid("ddim-quad", sched, 2)) == 3
