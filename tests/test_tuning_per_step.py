"""ds.tune(per_step=True): USF's per-step search (diffsolve.tuning._search_per_step) on solver ``usf``
(docs/math.md X5-X7). The searched recipe replays bit for bit (after a JSON round trip too), uses exactly its
nfe model calls, is reproducible, and never has a higher fit error than the candidate it started from."""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import default_schedule, get_problem
from diffsolve.tuning import PER_STEP_PASSES, _fixed_call_solvers, _step_choices

SOLVERS = ["dpmpp-2m"]


def _setup(n=32, seed=3):
    ode = get_problem("gmm2d").ode(default_schedule())
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return ode, x


def _tune(ode, x):
    return ds.tune(ode, x, nfe=4, solvers=SOLVERS, progress=False, refine=1, max_evals=40, per_step=True)


@pytest.fixture(scope="module")
def searched():
    ode, x = _setup()
    return ode, x, _tune(ode, x)


def test_the_search_keeps_a_usf_recipe_that_lowers_the_fit_error_of_its_start(searched):
    _, _, recipe = searched
    info = recipe.report["per_step"]
    assert info["kept"] and recipe.solver == "usf", info
    assert info["fit_rmse_after"] < info["fit_rmse_before"]
    assert info["heldout_rmse_after"] <= info["heldout_rmse_before"]
    n = recipe.steps
    assert all(len(recipe.options[k]) == n for k in ("step_orders", "prediction", "derivative", "corrector"))


def test_a_searched_recipe_uses_exactly_its_nfe_model_calls(searched):
    ode, x, recipe = searched
    n0 = ode.nfe
    recipe.sample(ode, x[:5])
    assert ode.nfe - n0 == recipe.nfe == 4


def test_a_searched_recipe_replays_bit_for_bit_after_a_json_round_trip(searched, tmp_path):
    ode, x, recipe = searched
    back = ds.Recipe.load(recipe.save(tmp_path / "r.json"))
    assert back.to_dict() == recipe.to_dict()
    out = recipe.sample(ode, x)
    assert torch.equal(back.sample(ode, x), out)
    assert torch.equal(ds.sample(ode, x, recipe=back), out)


def test_same_inputs_give_the_same_searched_recipe_bit_for_bit(searched):
    ode, x, recipe = searched
    a, b = recipe.to_dict(), _tune(ode, x).to_dict()
    for d in (a, b):
        for k in ("seconds", "tuning_model_calls", "teacher_model_calls"):
            d["report"].pop(k)
    assert a == b


def test_the_default_sweep_leaves_usf_out_and_the_search_is_bounded():
    # usf at its defaults is dpmpp-3m (X7): the plain tuner's candidates and results are unchanged by it
    assert "usf" not in _fixed_call_solvers(None) and "dpmpp-3m" in _fixed_call_solvers(None)
    # per step at most 3 orders x (data: 1 + 3 + 6 + 2, noise: 1 + 2 + 4 + 2) = 21 choices (docs/tuning.md)
    n = 10
    counts = [len(_step_choices(i, n)) for i in range(n - 1)]
    assert max(counts) == 21 and counts[0] < counts[2]
    assert all(len(set(_step_choices(i, n))) == len(_step_choices(i, n)) for i in range(n - 1))
    assert PER_STEP_PASSES == 2


def test_the_per_step_search_ranks_its_starts_and_results_by_the_tunings_own_objective():
    # with tail_weight > 0 the objective is not the mean: every candidate the search makes must carry the
    # objective of its own fit errors (fit_score), or the ranking (_Candidate.key) compares stale values
    from diffsolve.tuning import _configs, _descend, _refine_grids, _split, _sweep, _teacher, _usf_starts

    ode, x = _setup(n=24)
    ref = _teacher(ode, x, float(ode.schedule.sigma_max))
    t = _split(ode, x, ref, 4, 12, 0, False, 20, 0.3)
    swept = _sweep(t, _configs(SOLVERS))
    chosen = _refine_grids(t, swept, 1)
    starts = _usf_starts(t, chosen, swept)
    assert starts
    for c in [*starts, *(_descend(t, s)[0] for s in starts)]:
        e = t.fit_scorer.errors(c.config, c.sigmas)
        # equal up to usf's own rounding against the solver it stands for (<= 4e-14 relative, docs/tuning.md)
        assert math.isclose(c.fit_score, t.score(e), rel_tol=1e-9) and math.isclose(
            c.fit_mse, float(e.mean()), rel_tol=1e-9
        )
