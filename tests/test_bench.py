"""The benchmark harness (issue 4): known facts reproduced, cells, resume, reports, problems, bad input."""

import json
import math
import sys
import textwrap

import pytest
import torch

import diffsolve as ds
from diffsolve.bench import BenchError, get_bench_problem, load_model_problem, run_bench, sliced_wasserstein
from diffsolve.bench.toy import WEIGHTS, load_toy_model, spiral
from diffsolve.cli import main
from diffsolve.solvers.base import Solver


@pytest.fixture(scope="module")
def ref_cache(tmp_path_factory):
    """References shared by this module's sweeps (they are keyed, so sharing is safe)."""
    return tmp_path_factory.mktemp("refs")


def quick(tmp_path, ref_cache, **kw):
    args = dict(
        problems=["gmm2d"],
        solvers=["ddim"],
        grids=["trailing"],
        nfe=[5, 10],
        seeds=[0],
        samples=64,
        out=tmp_path / "out",
        cache=ref_cache,
        progress=False,
        overhead_repeats=1,
        plots=False,
        log=lambda *_: None,
    )
    args.update(kw)
    return run_bench(**args)


class TwoCalls(Solver):
    """Test solver: Euler with a second (wasted) model call, so 2 calls per step."""

    name = "two-calls"
    calls_per_step = 2

    def step(self, i, x, state):
        s, s_next = state.sigmas[i], state.sigmas[i + 1]
        denoised, eps = yield x, s, True
        yield x, s, True
        return (denoised, denoised) if s_next == 0 else (x + (s_next - s) * eps, denoised)


# -- known facts ---------------------------------------------------------------------------------------
def test_ddim_rmse_halves_when_nfe_doubles_in_the_asymptotic_regime(tmp_path, ref_cache):
    res = quick(tmp_path, ref_cache, grids=["karras"], nfe=[100, 200, 400])
    rmse = {r["nfe"]: r["rmse"] for r in res.rows}
    assert set(rmse) == {100, 200, 400}
    for n in (100, 200):
        ratio = rmse[n] / rmse[2 * n]
        assert 1.9 < ratio < 2.15, (n, ratio)  # first order (docs/math.md 3.4 b)
    assert all(r["ref_err"] < 1e-3 * r["rmse"] for r in res.rows)  # the reference is far more accurate


def test_cell_reports_counted_nfe_and_metrics_for_deterministic_and_stochastic_solvers(tmp_path, ref_cache):
    res = quick(tmp_path, ref_cache, solvers=["ddim", "ddim:eta=1"], nfe=[10])
    det, sto = res.rows
    assert det["nfe"] == sto["nfe"] == 10 and det["nfe_exact"] and det["status"] == "ok"
    assert not det["stochastic"] and sto["stochastic"]
    assert det["rmse"] > 0 and sto["rmse"] is None  # RMSE to the ODE only for deterministic solvers
    for r in (det, sto):
        assert math.isfinite(r["nll_gap"]) and r["sw"] > 0
        assert r["wall_s"] > 0 and r["overhead_us_per_step"] > 0 and r["peak_mem_bytes"] is not None
        assert r["sigma_start"] == pytest.approx(157.40728, rel=1e-6) and r["sigma_end"] == 0.0


def test_steps_are_nfe_over_calls_per_step_and_an_inexact_nfe_is_marked(tmp_path, ref_cache):
    res = quick(tmp_path, ref_cache, solvers=["ddim", TwoCalls], nfe=[1, 3, 4])
    by = {(r["solver"], r["nfe_target"]): r for r in res.rows}
    assert by[("two-calls", 4)]["steps"] == 2 and by[("two-calls", 4)]["nfe_exact"]
    assert by[("two-calls", 3)]["nfe"] == 2 and not by[("two-calls", 3)]["nfe_exact"]
    assert by[("two-calls", 1)]["status"] == "unreachable"
    md = (tmp_path / "out" / "results.md").read_text()
    assert "* (2)" in md and "—" in md


def test_nfe_that_no_solver_can_reach_is_a_clear_error(tmp_path, ref_cache):
    with pytest.raises(BenchError, match=r"NFE 1 cannot be reached.*two-calls needs >= 2"):
        quick(tmp_path, ref_cache, solvers=[TwoCalls], nfe=[1, 4])
    with pytest.raises(BenchError, match="NFE must be integers >= 1, got 0"):
        quick(tmp_path, ref_cache, nfe=[0])


@pytest.mark.parametrize(
    "kw, pattern",
    [
        ({"problems": ["nope"]}, r"unknown problem 'nope'; known problems: .*gmm2d.*mlp-spiral"),
        ({"solvers": ["nope"]}, r"unknown solver 'nope'; known solvers: .*ddim"),
        ({"grids": ["nope"]}, r"unknown grid 'nope'; known grids: .*karras.*trailing"),
        ({"solvers": ["ddim:eta=-1"]}, r"solver 'ddim:eta=-1': eta must be"),
        ({"dtype": "float16"}, r"unknown dtype 'float16'; choices: float32, float64"),
    ],
)
def test_bad_input_names_the_value_and_the_choices(tmp_path, ref_cache, kw, pattern):
    with pytest.raises(BenchError, match=pattern):
        quick(tmp_path, ref_cache, **kw)


@pytest.mark.parametrize(
    "path, pattern",
    [
        ("no_such_module_xyz:factory", r"cannot import module 'no_such_module_xyz'"),
        ("diffsolve.bench.toy:nope", r"has no attribute 'nope'; its callables are: .*spiral_problem"),
        ("diffsolve.bench.toy", r"expected an import path 'package.module:factory'"),
    ],
)
def test_bad_model_path_is_a_clear_error(path, pattern):
    with pytest.raises(BenchError, match=pattern):
        load_model_problem(path)


def test_cli_bad_input_exits_2_with_the_message(tmp_path, capsys):
    assert main(["bench", "--problem", "nope", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "unknown problem 'nope'" in err and "gmm2d" in err
    assert main(["bench", "--model", "x_y_z:f", "--out", str(tmp_path), "--quiet"]) == 2
    assert "cannot import module 'x_y_z'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags", [["--shape", "3"], ["--prediction", "v"], ["--schedule", "scaled_linear", "--shape", "3"]]
)
def test_cli_model_flags_without_a_model_are_an_error_not_ignored(tmp_path, capsys, flags):
    # --problem gmm2d --prediction v ran gmm2d as it is and printed the same table
    argv = ["bench", "--problem", "gmm2d", *flags, "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 2
    given = ", ".join(f for f in flags if f.startswith("--"))
    assert f"{given} describe a --model callable" in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


# -- resume and reports ----------------------------------------------------------------------------------
def test_rerun_with_same_arguments_skips_finished_cells(tmp_path, ref_cache):
    first = quick(tmp_path, ref_cache, solvers=["ddim", "ddim:eta=1"])
    assert first.computed == 4 and first.skipped == 0
    again = quick(tmp_path, ref_cache, solvers=["ddim", "ddim:eta=1"])
    assert again.computed == 0 and again.skipped == 4
    strip = lambda rows: [
        {k: v for k, v in r.items() if k not in ("wall_s", "overhead_us_per_step", "peak_mem_bytes")}  # noqa: E731
        for r in rows
    ]
    assert strip(first.rows) == strip(json.loads(json.dumps(again.rows)))
    more = quick(tmp_path, ref_cache, solvers=["ddim", "ddim:eta=1"], nfe=[5, 10, 20])  # only the new NFE runs
    assert more.computed == 2 and more.skipped == 4


def test_reports_csv_json_markdown_and_plots_are_written(tmp_path, ref_cache):
    res = quick(tmp_path, ref_cache, solvers=["ddim", "ddim:eta=1"], grids=["trailing", "logsnr"], plots=True)
    out = tmp_path / "out"
    for name in (
        "results.csv",
        "results.json",
        "results.md",
        "error_vs_nfe.png",
        "distribution_vs_nfe.png",
        "overhead.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert len((out / "results.csv").read_text().strip().splitlines()) == 1 + len(res.rows) == 9
    assert len(json.loads((out / "results.json").read_text())["cells"]) == 8
    md = (out / "results.md").read_text()
    assert md.count("**") >= 2 * 2  # a bold best per NFE column
    assert (out / "error_vs_nfe.png").read_bytes()[:4] == b"\x89PNG"


def test_reference_is_cached_on_disk_and_reused(tmp_path, monkeypatch):
    quick(tmp_path, tmp_path / "refs", nfe=[5])
    assert len(list((tmp_path / "refs").glob("*.pt"))) == 1

    def boom(*a, **k):
        raise AssertionError("reference recomputed")

    monkeypatch.setattr("diffsolve.bench.reference.reference_solution", boom)
    res = quick(tmp_path, tmp_path / "refs", nfe=[5], out=tmp_path / "other")
    assert res.rows[0]["status"] == "ok"


# -- problems ---------------------------------------------------------------------------------------------
def test_shipped_model_is_small_loads_safely_and_samples_the_spiral():
    assert WEIGHTS.stat().st_size < 400_000
    blob = torch.load(WEIGHTS, weights_only=True)  # plain tensors and values only
    assert blob["meta"]["seed"] == 0
    model = load_toy_model()
    p = get_bench_problem("mlp-spiral", samples=512)
    x0 = ds.sample(p.ode(torch.float32), p.x_T(0, 512).float(), "ddim", steps=50, grid="logsnr")
    assert x0.dtype == torch.float32 and model.net[0].weight.dtype == torch.float32
    sw_model = sliced_wasserstein(x0, p.data)
    sw_noise = sliced_wasserstein(torch.randn(512, 2), p.data)
    sw_data = sliced_wasserstein(spiral(512, torch.Generator().manual_seed(5)), p.data)
    assert sw_model < 0.1 < sw_noise and sw_data < sw_model * 2 + 0.05


def test_user_model_from_an_import_path(tmp_path, monkeypatch, ref_cache):
    (tmp_path / "my_models_for_bench.py").write_text(
        textwrap.dedent("""
        from diffsolve.analytic import default_schedule, get_problem

        def plain():
            return get_problem("gaussian").model(default_schedule())   # model(x, t) -> eps
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BenchError, match="pass --shape"):
        load_model_problem("my_models_for_bench:plain")
    p = load_model_problem("my_models_for_bench:plain", shape=(4,), samples=16)
    res = quick(tmp_path, ref_cache, problems=[p], nfe=[10])
    assert res.rows[0]["status"] == "ok" and res.rows[0]["problem"] == "my_models_for_bench:plain"
    assert res.rows[0]["sw"] is None  # no held-out data given: not defined


def test_a_user_ode_whose_guidance_or_kwargs_the_bench_would_drop_is_refused(tmp_path, monkeypatch):
    # the bench rebuilt the ODE from (model, schedule, prediction, time): a guided ODE ran unguided
    (tmp_path / "my_odes_for_bench.py").write_text(
        textwrap.dedent("""
        import torch
        import diffsolve as ds

        def model(x, t, y=None):
            return 0.5 * x if y is None else 0.5 * x + 0.1 * y.reshape(-1, 1)

        def guided():
            y = torch.ones(4)
            return ds.wrap(model, ds.DiscreteSchedule.linear(), guidance=3.0, cond={"y": y}, uncond={"y": 0 * y})

        def clipped():
            return ds.wrap(model, ds.DiscreteSchedule.linear(), denoised_transform=ds.Clipping())

        def plain():
            return ds.wrap(model, ds.DiscreteSchedule.linear())
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BenchError, match="so guidance would be ignored"):
        load_model_problem("my_odes_for_bench:guided", shape=(1,))
    with pytest.raises(BenchError, match="so a denoised_transform would be ignored"):
        load_model_problem("my_odes_for_bench:clipped", shape=(1,))
    with pytest.raises(BenchError, match="so --prediction would be ignored"):
        load_model_problem("my_odes_for_bench:plain", shape=(1,), prediction="v")
    assert load_model_problem("my_odes_for_bench:plain", shape=(1,)).prediction == "eps"


def test_cli_bench_with_the_shipped_model_path(tmp_path, capsys):
    rc = main(
        [
            "bench",
            "--model",
            "diffsolve.bench.toy:spiral_problem",
            "--solvers",
            "ddim",
            "--grids",
            "trailing",
            "--nfe",
            "5",
            "--samples",
            "16",
            "--out",
            str(tmp_path),
            "--no-plots",
            "--quiet",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "1 cells (1 computed" in out and "mlp-spiral" in out
    assert "mlp-spiral,ddim,trailing,5,0,ok,5" in (tmp_path / "results.csv").read_text()


def test_python_dash_m_diffsolve_bench_lists_choices():
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "diffsolve", "bench", "--list"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "gmm2d" in out and "ddim" in out and "trailing" in out


def test_peak_memory_counts_the_tensors_of_each_run_not_the_process_heap():
    # issue 13: the resident-set reading gave 1988 KiB for the first cell (ddim) and 0 for every later one,
    # because later runs reuse the heap pages the first one faulted in. Tensor accounting sees each run.
    from diffsolve.bench.measure import peak_memory

    n, source = peak_memory(lambda: torch.ones(1000, dtype=torch.float64) * 2)
    assert source == "tensors" and n == 2 * 8000  # the ones and the product are alive together
    mix = ds.analytic.GaussianMixture(torch.tensor([[1.0, -0.5], [-0.8, 0.4]]), [0.3, 0.5])
    x = torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
    readings = {}
    for name in ("ddim", "heun", "dpmpp-2m", "ddim"):
        ode = mix.ode(ds.DiscreteSchedule.linear())
        readings.setdefault(name, []).append(peak_memory(lambda: ds.sample(ode, x, name, steps=10))[0])
    assert all(v > x.numel() * 8 for vs in readings.values() for v in vs), readings  # at least one state
    assert readings["ddim"][0] == readings["ddim"][1]  # the same run reads the same, first or not
