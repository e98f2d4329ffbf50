"""ds.tune / ds.Recipe: a tuned recipe beats the best fixed grid on held-out x_T, round-trips through
JSON, is reproducible bit for bit, and refuses what it cannot use."""

import json
import math

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import default_schedule, get_problem
from diffsolve.tuning import AFSODE, RecipeError, best_fixed

SOLVERS = ["ddim", "dpmpp-2m", "ipndm", "heun"]


def _setup(n=64, seed=3):
    ode = get_problem("gmm2d").ode(default_schedule())
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return ode, x


@pytest.fixture(scope="module")
def tuned():
    ode, x = _setup()
    recipe = ds.tune(ode, x, nfe=4, solvers=SOLVERS, progress=False, refine=2, max_evals=120)
    return ode, x, recipe


def test_tuned_recipe_beats_every_fixed_solver_and_grid_on_fresh_x_T(tuned):
    ode, _, recipe = tuned
    _, x_new = _setup(n=64, seed=11)  # never seen by tune
    from diffsolve.analytic import reference_solution

    ref = reference_solution(ode, x_new, recipe.sigmas[0])
    err = float((recipe.sample(ode, x_new) - ref).pow(2).mean().sqrt())
    fixed = best_fixed(ode, x_new, 4, teacher=ref)  # every deterministic solver x registered grid
    assert recipe.nfe <= 4
    assert err < fixed["rmse"], (recipe, err, fixed)
    assert recipe.report["heldout_rmse"] < recipe.report["best_fixed"]["heldout_rmse"]


def test_recipe_nfe_is_the_exact_number_of_model_calls(tuned):
    ode, x, recipe = tuned
    n0 = ode.nfe
    recipe.sample(ode, x[:5])
    assert ode.nfe - n0 == recipe.nfe


def test_recipe_round_trips_through_json_bit_for_bit(tuned, tmp_path):
    ode, x, recipe = tuned
    path = recipe.save(tmp_path / "r.json")
    back = ds.Recipe.load(path)
    assert back.to_dict() == recipe.to_dict()
    assert back.sigmas[-1] == 0.0 and all(isinstance(s, float) for s in back.sigmas)
    assert torch.equal(back.sample(ode, x), recipe.sample(ode, x))


def test_same_inputs_give_the_same_recipe_bit_for_bit(tuned):
    ode, x, recipe = tuned
    again = ds.tune(ode, x, nfe=4, solvers=SOLVERS, progress=False, refine=2, max_evals=120)
    a, b = recipe.to_dict(), again.to_dict()
    for d in (a, b):
        d["report"].pop("seconds")
        d["report"].pop("tuning_model_calls")  # the first call also solved the (now cached) teacher
        d["report"].pop("teacher_model_calls")
    assert a == b


def test_afs_answers_the_first_call_analytically_and_saves_it():
    ode, x = _setup(n=4)
    sig = ds.grid("logsnr", ode.schedule, 5).tolist()
    afs = AFSODE(ode, sig[0])
    xbar = ode.to_xbar(x, sig[0])
    d, e = afs.predict(xbar, sig[0])
    torch.testing.assert_close(e, xbar / math.sqrt(1 + sig[0] ** 2), rtol=0, atol=0)
    torch.testing.assert_close(d, xbar - sig[0] * e, rtol=1e-12, atol=1e-12)
    assert afs.nfe == 0
    afs.predict(xbar, sig[0])  # only the first call is replaced
    assert afs.nfe == 1
    # through a recipe: one call fewer than the plain run, and close to it at sigma_max = 157
    fp = ds.tuning.schedule_fingerprint(ode.schedule, ode.prediction)
    plain = ds.Recipe("dpmpp-2m", {}, sig, False, 5, fp)
    with_afs = ds.Recipe("dpmpp-2m", {}, sig, True, 4, fp)
    n0 = ode.nfe
    a = plain.sample(ode, x)
    n1 = ode.nfe
    b = with_afs.sample(ode, x)
    assert (n1 - n0, ode.nfe - n1) == (5, 4)
    assert float((a - b).abs().max()) < 0.05


@pytest.mark.parametrize("nfe,match", [(0, "between 1 and"), (5000, "between 1 and"), (2.5, "integer")])
def test_bad_nfe_is_refused(nfe, match):
    ode, x = _setup(n=8)
    with pytest.raises(ValueError, match=match):
        ds.tune(ode, x, nfe=nfe, progress=False)


def test_unknown_solver_names_solvers_and_suggests_the_registered_spelling():
    ode, x = _setup(n=8)
    n0 = ode.nfe
    with pytest.raises(ValueError, match=r"solvers: unknown solver 'dpmpp_2m' \(did you mean 'dpmpp-2m'\?\); known: "):
        ds.tune(ode, x, nfe=5, solvers=["dpmpp_2m"], progress=False)
    assert ode.nfe == n0  # refused before any model call


def test_stochastic_solver_is_refused():
    ode, x = _setup(n=8)
    with pytest.raises(ValueError, match="'euler-ancestral' is stochastic"):
        ds.tune(ode, x, nfe=4, solvers=["euler-ancestral"], progress=False)
    with pytest.raises(RecipeError, match="stochastic"):
        ds.Recipe("dpmpp-2m-sde", {}, [10.0, 0.0], False, 1, "x")


def test_x_T_with_nan_is_refused():
    ode, x = _setup(n=8)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x_T contains NaN"):
        ds.tune(ode, x, nfe=4, progress=False)


def test_recipe_of_another_schedule_is_refused(tuned):
    _, x, recipe = tuned
    other = get_problem("gmm2d").ode(ds.DiscreteSchedule.scaled_linear())
    with pytest.raises(RecipeError, match="tuned for another schedule"):
        recipe.sample(other, x)
    v_model = get_problem("gmm2d").ode(default_schedule(), prediction="v")
    with pytest.raises(RecipeError, match="another schedule or prediction"):
        recipe.sample(v_model, x)


def test_corrupt_recipe_files_are_refused(tuned, tmp_path):
    _, _, recipe = tuned
    p = tmp_path / "r.json"
    text = json.dumps(recipe.to_dict())
    p.write_text(text[: len(text) // 2])
    with pytest.raises(RecipeError, match="is corrupt"):
        ds.Recipe.load(p)
    p.write_text(json.dumps({"hello": 1}))
    with pytest.raises(RecipeError, match="not a diffsolve recipe"):
        ds.Recipe.load(p)
    bad = recipe.to_dict()
    bad["sigmas"] = [3.0, 5.0, 0.0]
    p.write_text(json.dumps(bad))
    with pytest.raises(RecipeError, match="damaged.*strictly decreasing"):
        ds.Recipe.load(p)
    bad = recipe.to_dict()
    del bad["nfe"]
    p.write_text(json.dumps(bad))
    with pytest.raises(RecipeError, match="damaged: entry 'nfe'"):
        ds.Recipe.load(p)


def test_bench_tuned_entry_fits_on_another_seed_and_beats_the_fixed_grid(tmp_path, monkeypatch):
    from diffsolve.bench import harness

    monkeypatch.setattr(harness, "TUNE_SAMPLES", 48)
    monkeypatch.setattr(harness, "TUNE_SOLVERS", ["ipndm"])
    res = harness.run_bench(
        ["gmm2d"],
        ["ipndm", "tuned"],
        ["logsnr"],
        [4],
        out=tmp_path,
        samples=32,
        progress=False,
        plots=False,
        reports=False,
        log=lambda *a: None,
    )
    by = {r["solver"]: r for r in res.rows}
    assert by["tuned"]["status"] == "ok" and by["tuned"]["grid"] == "tuned" and by["tuned"]["nfe"] <= 4
    assert "tuned on seed 1000" in by["tuned"]["message"]
    assert by["tuned"]["rmse"] < by["ipndm"]["rmse"]


@pytest.mark.parametrize("solver,afs", [("ipndm", False), ("dpmpp-3m", True), ("heun", False), ("unipc", True)])
def test_neutral_compensation_ratios_equal_the_base_solver(solver, afs):
    ode, x = _setup(n=16)
    sig = ds.grid("logsnr", ode.schedule, 6).tolist()
    fp = ds.tuning.schedule_fingerprint(ode.schedule, ode.prediction)
    nfe = ds.count_calls(solver, sig, afs=afs)
    base = ds.Recipe(solver, {}, sig, afs, nfe, fp).sample(ode, x)
    neutral = ds.Recipe(solver, {}, sig, afs, nfe, fp, params={"compensation": [0.0] * 12}).sample(ode, x)
    torch.testing.assert_close(neutral, base, rtol=0, atol=1e-12)
    moved = ds.Recipe(solver, {}, sig, afs, nfe, fp, params={"compensation": [0.1] * 12}).sample(ode, x)
    assert float((moved - base).abs().max()) > 1e-4


def test_compensation_replaces_the_output_by_the_shifted_linear_interpolation():
    from diffsolve.tuning import RecipeODE

    ode, x = _setup(n=4)
    r = RecipeODE(ode, None, [0.3])
    d1, _ = r.predict(x, 2.0)
    d2, e2 = r.predict(x * 0.5, 1.0)
    raw1, raw2 = ode.denoised(x, 2.0), ode.denoised(x * 0.5, 1.0)
    torch.testing.assert_close(d1, raw1, rtol=0, atol=0)
    torch.testing.assert_close(d2, raw2 + 0.3 * (raw2 - raw1), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(e2, (x * 0.5 - d2) / 1.0, rtol=0, atol=0)


def test_tune_with_scalars_does_not_raise_the_fit_error(tuned):
    ode, x, recipe = tuned
    with_c = ds.tune(ode, x, nfe=4, solvers=SOLVERS, progress=False, refine=2, max_evals=120, scalars=True)
    assert with_c.report["fit_rmse"] <= recipe.report["fit_rmse"]
    assert ds.Recipe.from_dict(json.loads(json.dumps(with_c.to_dict()))).params == with_c.params


def test_ds_sample_runs_a_recipe_exactly_as_recipe_sample_and_refuses_a_second_grid(tuned):
    ode, x, recipe = tuned
    n0 = ode.nfe
    out = ds.sample(ode, x[:5], recipe=recipe)
    assert ode.nfe - n0 == recipe.nfe
    assert torch.equal(out, recipe.sample(ode, x[:5]))
    for bad in ({"steps": 5}, {"sigmas": recipe.sigmas}, {"solver": "heun"}, {"eta": 0.5}):
        with pytest.raises(ValueError, match="a recipe fixes the solver"):
            ds.sample(ode, x[:5], recipe=recipe, **bad)
    with pytest.raises(TypeError, match="recipe must be a diffsolve.Recipe"):
        ds.sample(ode, x[:5], recipe=recipe.to_dict())


# -- what a candidate may raise, the teacher, clipping (issue 23 items 5, 6, 10; issue 22 item 6) -------------
class _BuggyEuler(ds.Solver):
    """Euler that fails like a bug (a RuntimeError) on real data; the zero model's dry run passes."""

    name = "buggy-euler"

    def step(self, i, x):
        if bool(x.abs().sum() > 0):
            raise RuntimeError("bug: index 3 is out of bounds for dimension 0 with size 2")
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        denoised, eps = self.ode.predict(x, s)
        return (denoised, denoised) if s_next == 0 else (x + (s_next - s) * eps, denoised)


def test_a_solver_bug_in_a_candidate_propagates_instead_of_scoring_not_feasible(monkeypatch):
    import types

    from diffsolve.plugins import registry

    plugin = types.SimpleNamespace(register_solvers=ds.hookimpl(lambda register: register(_BuggyEuler)))
    ep = types.SimpleNamespace(name="buggy", dist=types.SimpleNamespace(name="dist-buggy"), load=lambda: plugin)
    monkeypatch.setenv("DIFFSOLVE_DISABLE_PLUGINS", "")
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [ep])
    monkeypatch.setattr(registry, "_default", None)
    ode, x = _setup(n=8)
    try:
        with pytest.raises(RuntimeError, match="bug: index 3 is out of bounds"):
            ds.tune(ode, x, nfe=3, solvers=["ddim", "buggy-euler"], teacher=ode.denoised(x, 0.0), progress=False)
    finally:
        registry.reset_registry()


def test_tune_with_a_teacher_and_a_wrong_shape_x_T_raises_the_models_own_error():
    ode, _ = _setup()
    x = torch.randn(8, 3, dtype=torch.float64)  # gmm2d's model takes 2 coordinates
    n0 = ode.nfe
    with pytest.raises(RuntimeError) as info:
        ds.tune(ode, x, nfe=3, solvers=["ddim"], teacher=torch.zeros(8, 3, dtype=torch.float64), progress=False)
    assert "empty sequence" not in str(info.value) and ode.nfe - n0 <= 1  # the first real call raised


def test_report_shows_the_teacher_error_well_below_the_candidates_error(tuned):
    _, _, recipe = tuned
    r = recipe.report
    # the teacher (rtol 1e-10) against one 1000x looser: its own error is far below what the recipes are ranked by
    assert 0 < r["teacher_rmse"] < 0.01 * r["heldout_rmse"]
    assert r["fallback_to_fixed"] in (True, False)


@pytest.fixture(scope="module")
def held_out_case(tuned):
    """A tuning state on 32 fit / the rest held out, its sweep of ddim and dpmpp-2m, the best swept candidate, and
    the same solver on a deliberately poor grid (all steps crowded at the top): worse on held-out x_T."""
    from dataclasses import replace

    from diffsolve import tuning

    ode, x, _ = tuned
    idx = torch.arange(x.shape[0])
    ref = tuning._teacher(ode, x, float(ode.schedule.sigma_max))
    scorer = tuning._Scorer(ode, x, ref)
    t = tuning._Tuning(ode, 4, idx[:32], idx[32:], scorer, scorer, False, None)
    swept = tuning._sweep(t, [tuning._Config("ddim", (), False), tuning._Config("dpmpp-2m", (), False)])
    best = min(swept, key=lambda c: c.held_mse)
    bad = replace(best, sigmas=[best.sigmas[0] * 0.999**k for k in range(len(best.sigmas) - 1)] + [0.0])
    return t, swept, best, bad


def test_a_tuned_candidate_worse_on_held_out_than_a_fixed_one_falls_back_to_it(held_out_case):
    from dataclasses import replace

    from diffsolve import tuning

    t, swept, best, bad = held_out_case
    chosen, check = tuning._held_out_check(t, bad, swept, None)
    assert check["fell_back"] and chosen is best
    kept, check = tuning._held_out_check(t, replace(best), swept, None)
    assert not check["fell_back"] and kept.sigmas == best.sigmas


def test_the_held_out_check_reports_the_paired_difference_and_whether_it_is_noise(held_out_case):
    from dataclasses import replace

    from diffsolve import tuning

    t, swept, best, bad = held_out_case
    _, check = tuning._held_out_check(t, bad, swept, None)
    # the mean of the paired per-x_T differences is the difference of the two held-out MSEs
    assert check["mse_difference"] == pytest.approx(check["tuned_heldout_rmse"] ** 2 - check["fixed_heldout_rmse"] ** 2)
    # a grid crowded at sigma_max loses by far more than the noise of 32 held-out x_T
    assert check["mse_difference"] > tuning.NOISE_SE * check["standard_error"] > 0 and not check["within_noise"]
    _, same = tuning._held_out_check(t, replace(best), swept, None)
    assert same["mse_difference"] == 0 and same["within_noise"]  # the fixed candidate against itself


def test_tune_refuses_a_clipped_diffusers_ode_at_once_and_tunes_the_unclipped_one():
    diffusers = pytest.importorskip("diffusers")
    from tiny_models import tiny_unet

    unet = tiny_unet(channels=3, dtype=torch.float64)  # the default dtype of the test suite (conftest.py)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    clipped = ds.from_diffusers(unet, diffusers.DDPMScheduler())  # clip_sample=True is the default
    with pytest.raises(ValueError, match=r"follow_clipping=False.*teacher="):
        ds.tune(clipped, x, nfe=2, progress=False)
    assert clipped.nfe == 0  # refused before any model call
    ode = ds.from_diffusers(unet, diffusers.DDPMScheduler(), follow_clipping=False)
    with torch.no_grad():  # a 20-step DDIM end stands in for the (slow, float64) teacher: the check is the plumbing
        teacher = ds.sample(ode, x, "ddim", steps=20, grid="trailing")
    recipe = ds.tune(ode, x, nfe=2, solvers=["ddim"], teacher=teacher, refine=1, max_evals=4, progress=False)
    assert recipe.nfe <= 2 and recipe.report["teacher_rmse"] is None  # a given teacher's error is not measured


def test_scipy_which_tune_needs_is_a_core_dependency():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    core = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(
        1
    )  # [project] dependencies (3.10: no tomllib)
    assert re.search(r'^\s*"scipy>=', core, re.M)  # a plain `pip install diffsolve` can run ds.tune


def test_teacher_error_estimate_bounds_the_true_error_on_the_exact_gaussian_flow():
    from diffsolve import tuning

    problem = get_problem("gaussian")  # N(m, s^2 I): the exact flow E38 is known
    ode = problem.ode(default_schedule())
    smax = float(ode.schedule.sigma_max)
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    teacher = tuning._teacher(ode, x, smax)
    # E38 down to the schedule's sigma_min, then the step to 0 with eps held there (the wrapper holds eps outside the
    # model's range: the ODE every candidate and the teacher integrate)
    smin = float(ode.schedule.sigma_min)
    xbar_min = problem.exact_flow(ode.to_xbar(x, smax), smax, smin)
    exact = xbar_min - smin * problem.eps(xbar_min, smin)  # xbar = x at sigma = 0
    true_err = float((teacher - exact).pow(2).mean().sqrt())
    estimate = tuning._teacher_error(ode, x, teacher, True)
    assert true_err <= estimate < 1e-6, (true_err, estimate)  # from above, and far below any few-step error


def test_cli_tune_reports_the_teacher_error_and_where_its_held_out_number_comes_from(tmp_path, capsys):
    from diffsolve.cli import main

    out = tmp_path / "r.json"
    args = ["tune", "--problem", "gmm2d", "--nfe", "2", "--samples", "8", "--solvers", "ddim", "--quiet"]
    assert main(args + ["--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "on the held-out part of these x_T" in text and "teacher's own error: " in text
    recipe = ds.Recipe.load(out)
    assert recipe.nfe <= 2 and recipe.report["teacher_rmse"] < 0.01 * recipe.report["heldout_rmse"]


def test_tune_refuses_a_renoising_ode_before_any_model_call():
    """CFG++ has no step-count-independent limit (docs/math.md#guidance-cfgpp): tuning it against an ODE teacher would be a
    silent wrong answer, so it is refused before the first call, naming what to tune instead."""
    calls = []

    def model(x, t, y):
        calls.append(1)
        return 0.1 * x + 0.01 * y.to(x.dtype)[:, None]

    y, null = torch.zeros(8, dtype=torch.long), torch.full((8,), 2)
    ode = ds.wrap(
        model, default_schedule(), cond={"y": y}, uncond={"y": null}, guidance=ds.make_guidance("cfg++", scale=0.5)
    )
    x_T = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80
    with pytest.raises(ValueError, match="renoising.*no ODE limit.*Tune the plain guided ODE"):
        ds.tune(ode, x_T, nfe=3, progress=False)
    assert not calls


def test_a_recipe_records_its_guidance_and_refuses_an_ode_with_another():
    """Issue 20: the guidance (method, scale, options; or the float CFG scale) is part of what a recipe was tuned
    for: it is saved and loaded, and running the recipe on an ODE with other guidance (or none) is an error."""
    import dataclasses

    from diffsolve.recipe import guidance_fingerprint

    base = get_problem("gmm2d").ode(default_schedule())
    x_T = torch.randn(16, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80

    def cond_model(x, t, y):
        return base.model(x, t) + 0.01 * y.to(x.dtype)[:, None]

    y, null = torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long)

    def wrap(g):
        kw = dict(cond={"y": y}, uncond={"y": null}, guidance=g)
        return ds.wrap(cond_model, base.schedule, prediction=base.prediction, time=base.time, **kw)

    plain = ds.tune(base, x_T, nfe=3, progress=False)
    assert plain.guidance is None  # tune records the ODE's guidance: none here
    guided = wrap(3.0)
    r = dataclasses.replace(plain, guidance=guidance_fingerprint(guided))
    assert r.guidance == "cfg(scale=3.0, guidance_rescale=0.0)"
    assert ds.Recipe.from_dict(r.to_dict()).guidance == r.guidance
    ds.sample(guided, x_T, recipe=r)  # the same guidance: runs
    for other in (wrap(5.0), wrap(ds.make_guidance("apg", scale=3.0)), base):
        with pytest.raises(RecipeError, match="tuned on an ODE with guidance cfg\\(scale=3.0"):
            ds.sample(other, x_T, recipe=r)
    with pytest.raises(RecipeError, match="tuned on an ODE with guidance none"):
        ds.sample(guided, x_T, recipe=plain)
    old = {k: v for k, v in plain.to_dict().items() if k != "guidance"}  # a file written before the field
    assert ds.Recipe.from_dict(old).guidance is None


# -- per-sample conditioning: DiffusionODE.rows and tune on a guided ODE (issue 20, item 5) ---------------------
def _labelled(n=12, guidance=3.0, bias=None, **extra):
    """The gmm2d toy made class-conditional: each sample's label y shifts its eps (0.05 per class; the null label
    is 0; labels 0..3 so a mis-sliced label changes the result); ``bias`` (per sample) and ``scale`` (a nested
    dict holding a shared tensor) shift it further. ``guidance=None``: the labels as plain model_kwargs."""
    base = get_problem("gmm2d").ode(default_schedule())

    def cond_model(x, t, y, bias=None, extra=None):
        out = base.model(x, t) + 0.05 * y.to(x.dtype)[:, None]
        if bias is not None:
            out = out + bias.to(x.dtype).reshape(-1, 1) * (extra["w"] if extra is not None else 1.0)
        return out

    y = torch.arange(n) % 4
    c, u = {"y": y}, {"y": torch.zeros(n, dtype=torch.long)}
    if bias is not None:
        c["bias"] = u["bias"] = bias
    if guidance is None:
        kw = dict(model_kwargs={**c, **extra.pop("model_kwargs", {})}, **extra)
    else:
        kw = dict(cond=c, uncond=u, guidance=guidance, **extra)
    return ds.wrap(cond_model, base.schedule, prediction=base.prediction, time=base.time, **kw)


@pytest.mark.parametrize("guidance", [None, 3.0, ds.make_guidance("apg", scale=4.0, eta=0.5)])
def test_rows_of_a_conditioned_ode_samples_those_rows_as_the_full_batch_does(guidance):
    """ode.rows(idx, n) slices per-sample keyword tensors (cond, uncond, model_kwargs, nested dicts) and keeps the
    shared ones (0-d, leading dimension 1, non-tensors): sampling x_T[idx] with it gives the full run's rows idx,
    and its model calls count on the ODE it came from."""
    n = 12
    bias = torch.linspace(-1, 1, n, dtype=torch.float64)
    shared = {"extra": {"w": torch.tensor([0.5], dtype=torch.float64)}}
    ode = _labelled(n, guidance, bias=bias, model_kwargs=shared)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80
    full = ds.sample(ode, x_T, "dpmpp-2m", steps=6)
    idx = torch.tensor([7, 0, 3, 11])
    sub = ode.rows(idx, n)
    labels = (sub.cond if guidance is not None else sub.model_kwargs)["y"]
    assert torch.equal(labels, torch.arange(n)[idx] % 4) and sub.model_kwargs["extra"]["w"] is shared["extra"]["w"]
    calls = ode.nfe
    part = ds.sample(sub, x_T[idx], "dpmpp-2m", steps=6)
    assert ode.nfe - calls == 6  # the view's calls are the ODE's
    # the same per-row arithmetic in another batch size: the float64 sums may be ordered otherwise (1e-12)
    torch.testing.assert_close(part, full[idx], rtol=1e-12, atol=1e-12)
    other = ds.sample(ode.rows([1, 2], n), x_T[idx[:2]], "dpmpp-2m", steps=6)
    assert not torch.allclose(other, full[idx[:2]])  # other rows' labels land elsewhere: the test can fail


def test_rows_refuses_what_it_cannot_slice_naming_it():
    """Never a silent mis-slice: a tensor with another leading dimension, a list with one item per sample, a
    denoised_transform or guidance method without rows(), a subclass that does not define rows, a run's view
    and indices out of range are errors naming the culprit."""
    n = 6
    with pytest.raises(ValueError, match=r"model_kwargs\['bias'\] has leading dimension 3 for a batch of 6"):
        _labelled(n, None, model_kwargs={"bias": torch.zeros(3)}).rows([0], n)
    with pytest.raises(ValueError, match=r"model_kwargs\['names'\] is a list of 6 items"):
        _labelled(n, None, model_kwargs={"names": ["a"] * 6}).rows([0], n)
    with pytest.raises(TypeError, match="denoised_transform .* has no rows"):
        _labelled(n, denoised_transform=lambda d, s: d.clamp(-1, 1)).rows([0], n)
    assert _labelled(n, denoised_transform=ds.Clipping()).rows([0], n).denoised_transform is not None

    class PerSample(ds.Guidance):
        name = "per-sample-test"

        def __init__(self, w):
            super().__init__(1.0)
            self.w = w

        def options(self):
            return {"w": self.w}

    with pytest.raises(TypeError, match="option 'w' is a tensor of leading dimension 6"):
        _labelled(n, PerSample(torch.ones(n))).rows([0], n)
    ode = _labelled(n)
    with pytest.raises(TypeError, match="AFSODE does not define rows"):
        AFSODE(ode, 80.0).rows([0], n)
    with pytest.raises(ValueError, match="run's view"):
        ode.start_run().rows([0], n)
    with pytest.raises(ValueError, match=r"idx must be a non-empty set of indices in \[0, 6\)"):
        ode.rows([6], n)


def test_tune_on_a_guided_ode_with_per_sample_labels_scores_each_part_with_its_own_labels():
    """ds.tune on a CFG ODE whose labels are per-sample: the fit part runs with the fit rows' labels (ode.rows),
    so the report's fit and held-out errors equal the recipe run on the full batch against the teacher of the
    same guided ODE, on those rows; the recipe records the guidance. Before rows(), the fit part was an error."""
    from diffsolve.tuning import _teacher

    n = 16
    ode = _labelled(n, 4.0)
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 80
    r = ds.tune(ode, x_T, nfe=4, solvers=["ddim", "dpmpp-2m"], progress=False, refine=1, max_evals=20)
    assert r.guidance == "cfg(scale=4.0, guidance_rescale=0.0)"
    ref = _teacher(ode, x_T, float(ode.schedule.sigma_max))
    err = (ds.sample(ode, x_T, recipe=r) - ref).pow(2).mean(1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    fit, held = perm[: n // 2].sort().values, perm[n // 2 :].sort().values
    # the same runs in other batch sizes (float64 summation order): 1e-9 relative
    assert math.isclose(r.report["fit_rmse"], float(err[fit].mean().sqrt()), rel_tol=1e-9)
    assert math.isclose(r.report["heldout_rmse"], float(err[held].mean().sqrt()), rel_tol=1e-9)


def test_the_teacher_of_one_model_and_x_T_depends_on_the_labels_and_the_guidance():
    """The teacher cache keys on the conditioning too: the same model and x_T with other labels or another scale
    is another ODE, with its own exact solution (before, the first one's was served from the cache)."""
    from diffsolve.analytic import reference_solution
    from diffsolve.tuning import _teacher

    n = 4
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 80
    a, b = _labelled(n, 3.0), _labelled(n, 5.0)
    relabelled = ds.wrap(
        a.model, a.schedule, prediction=a.prediction, time=a.time, guidance=3.0,
        cond={"y": torch.full((n,), 3)}, uncond={"y": torch.zeros(n, dtype=torch.long)},
    )  # fmt: skip
    s_max, tol = float(a.schedule.sigma_max), 1e-5  # loose: the claim is which ODE is solved, not how well
    first = _teacher(a, x_T, s_max, tol)
    for other in (b, relabelled):
        own = reference_solution(other.start_run(), x_T, s_max, 0.0, rtol=tol, atol=tol)
        torch.testing.assert_close(_teacher(other, x_T, s_max, tol), own, rtol=0, atol=0)
        assert not torch.allclose(own, first)


def test_objective_at_zero_tail_weight_is_the_log_mean_squared_error():
    from diffsolve.tuning import _objective

    e = torch.tensor([1e-4, 4e-4, 9e-2], dtype=torch.float64)
    assert _objective(e) == math.log(float(e.mean()))
    assert _objective(torch.tensor([1.0, math.inf], dtype=torch.float64)) == 1e3  # infeasible


def test_objective_with_a_tail_weight_prefers_the_lighter_tail_at_the_same_mean():
    from diffsolve.tuning import TAIL_SHARE, _objective, _tail_mse

    even = torch.full((100,), 1.0, dtype=torch.float64)
    heavy = torch.full((100,), 0.5, dtype=torch.float64)
    heavy[0] = 50.5  # the same mean, 1.0, carried by one x_T
    assert float(even.mean()) == pytest.approx(float(heavy.mean()), rel=1e-15)
    assert _objective(heavy) == pytest.approx(_objective(even), abs=1e-15)  # the plain mean cannot tell them apart
    assert _objective(heavy, 0.5) > _objective(even, 0.5)
    # the tail is the mean of the worst TAIL_SHARE (2 of 100 here): (50.5 + 0.5) / 2
    assert math.ceil(TAIL_SHARE * 100) == 2
    assert float(_tail_mse(heavy)) == pytest.approx(25.5, rel=1e-15)


@pytest.mark.parametrize("w", [-0.1, 1.0, "0.5", True])
def test_tail_weight_outside_zero_one_is_refused(w):
    ode, x = _setup(16)
    with pytest.raises(ValueError, match="tail_weight"):
        ds.tune(ode, x, nfe=3, solvers=["ddim"], progress=False, tail_weight=w)


def test_report_shows_the_worst_held_out_x_T_error_of_the_recipe_and_of_the_best_fixed_grid(tuned):
    _, _, recipe = tuned
    tail = recipe.report["heldout_tail_rmse"]
    # the mean of the worst share of per-sample errors is at least their mean over every held-out x_T
    assert tail["recipe"] >= recipe.report["heldout_rmse"] * (1 - 1e-12)
    assert tail["best_fixed"] >= recipe.report["best_fixed"]["heldout_rmse"] * (1 - 1e-12)
    assert recipe.report["tail_weight"] == 0.0


def test_tune_with_a_tail_weight_is_reproducible_and_records_it():
    ode, x = _setup(32)
    kw = dict(nfe=3, solvers=["ddim", "ipndm"], progress=False, refine=1, max_evals=40, tail_weight=0.5)
    a, b = ds.tune(ode, x, **kw), ds.tune(ode, x, **kw)
    assert a.sigmas == b.sigmas and a.solver == b.solver and a.afs == b.afs
    assert a.report["tail_weight"] == 0.5
