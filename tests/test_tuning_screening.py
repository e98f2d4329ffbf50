"""The sweep's screening round (diffsolve.tuning._screen): every candidate on a few fit x_T, the best scored in full.

Claims: the survivors are the SCREEN_KEEP best by the screening score plus the SCREEN_KEEP_DEFAULT best plain ones,
ties broken by name; on a toy problem the screened sweep keeps the candidates the exhaustive sweep would pick
(the refinement's starts, the best on the held-out part) with the very same scores, so tune's recipe is the one the
exhaustive sweep gives, bit for bit; the report says what the sweep scored; best_fixed() stays exhaustive."""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve import tuning
from diffsolve.analytic import default_schedule, get_problem

SOLVERS = ["ddim", "dpmpp-2m", "ipndm"]  # 12 configurations x 14 grids: 168 candidates


def _setup(n=64, seed=3):
    ode = get_problem("gmm2d").ode(default_schedule())
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return ode, x


def _plan(n_plain, n_other):
    plain = tuning._Config("ddim", (), False)
    other = tuning._Config("ddim", (), True)
    return [(plain, f"g{k:03d}", None) for k in range(n_plain)] + [(other, f"g{k:03d}", None) for k in range(n_other)]


def test_survivors_are_the_best_by_score_and_the_best_plain_ones():
    plan = _plan(20, 100)
    # the AFS candidates score better than every plain one: the plain ones survive only through their own quota
    scores = [(float(k), c.label(), g) for k, (c, g, _) in enumerate(plan)]
    scores = [(s + (1000.0 if plan[i][0].is_default else 0.0), lab, g) for i, (s, lab, g) in enumerate(scores)]
    keep = tuning._survivors(plan, scores)
    best = sorted(range(len(plan)), key=scores.__getitem__)[: tuning.SCREEN_KEEP]
    assert set(best) <= keep and all(not plan[i][0].is_default for i in best)
    assert keep - set(best) == set(range(tuning.SCREEN_KEEP_DEFAULT))  # the best plain ones, by score
    assert len(keep) == tuning.SCREEN_KEEP + tuning.SCREEN_KEEP_DEFAULT


def test_survivors_break_ties_by_name_not_by_position():
    plan = _plan(0, 200)
    tied = [(0.0, c.label(), g) for c, g, _ in plan]
    keep = tuning._survivors(plan, tied)
    reversed_keep = tuning._survivors(plan[::-1], tied[::-1])
    assert {plan[i][1] for i in keep} == {plan[::-1][i][1] for i in reversed_keep}
    assert {plan[i][1] for i in keep} == {f"g{k:03d}" for k in range(tuning.SCREEN_KEEP)}


@pytest.fixture(scope="module")
def sweeps():
    ode, x = _setup()
    ref = tuning._teacher(ode, x, float(ode.schedule.sigma_max))
    n_fit = tuning._check_inputs(ode, x, 4, 0.5)
    configs = tuning._configs(SOLVERS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tuning, "SCREEN_SAMPLES", 12)  # a strict subset of the 32 fit x_T (the default would take them all)
        t = tuning._split(ode, x, ref, 4, n_fit, 0, False, None, 0.0)
    screened = tuning._sweep(t, configs)
    info = dict(t.sweep_info)
    t.screen_scorer = None
    full = tuning._sweep(t, configs)
    return full, screened, info


def test_the_screened_sweep_keeps_the_exhaustive_sweeps_picks_with_the_same_scores(sweeps):
    full, screened, info = sweeps
    assert info["candidates"] == len(full) > info["scored_in_full"] == len(screened)
    by_key = {(c.config, c.grid): c for c in screened}
    best_fit = min(full, key=tuning._Candidate.key)
    best_held = min(full, key=lambda c: (c.held_mse, c.config.label(), c.grid))
    for pick in (best_fit, best_held):
        kept = by_key[(pick.config, pick.grid)]  # KeyError: the screening dropped it
        # scored by the same scorer on the same batch: the very same numbers, bit for bit
        assert (kept.fit_mse, kept.held_mse, kept.sigmas) == (pick.fit_mse, pick.held_mse, pick.sigmas)


def test_the_refinement_starts_from_the_same_candidates_after_screening(sweeps):
    full, screened, _ = sweeps

    def starts(swept):
        best = {}
        for c in sorted(swept, key=tuning._Candidate.key):
            if math.isfinite(c.fit_mse) and c.config not in best:
                best[c.config] = c
        return [(c.config, c.grid, c.fit_mse) for c in list(best.values())[:3]]

    assert starts(screened) == starts(full)


def test_the_report_says_what_the_sweep_scored_and_best_fixed_is_one_of_them():
    ode, x = _setup(n=32)
    r = ds.tune(ode, x, nfe=4, solvers=SOLVERS, progress=False, refine=1, max_evals=30).report
    sweep = r["sweep"]
    assert sweep["screen_samples"] == min(tuning.SCREEN_SAMPLES, 16)  # at most the fit part
    assert sweep["scored_in_full"] <= tuning.SCREEN_KEEP + tuning.SCREEN_KEEP_DEFAULT < sweep["candidates"]
    assert r["best_fixed"]["options"] == {} and r["best_fixed"]["afs"] is False


def test_best_fixed_stays_an_exhaustive_sweep(monkeypatch):
    ode, x = _setup(n=8)
    monkeypatch.setattr(tuning, "SCREEN_KEEP", 1)  # 28 candidates: more than a screening round would keep
    monkeypatch.setattr(tuning, "SCREEN_KEEP_DEFAULT", 1)
    monkeypatch.setattr(tuning, "_screen", lambda *a: pytest.fail("best_fixed must score every candidate"))
    assert ds.tuning.best_fixed(ode, x, 4, solvers=["ddim", "dpmpp-2m"])["nfe"] <= 4
