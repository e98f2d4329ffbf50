"""benchmarks/tuning_table.py's bookkeeping: resume, protocol check, old CSVs, the markdown table (no tuning)."""

import csv

import pytest


@pytest.fixture(scope="module")
def table(load_benchmark):
    return load_benchmark("tuning_table")


PROTOCOL = {"fit_seed": 1000, "fit_samples": 512, "eval_seed": 0, "eval_samples": 4096}


def _row(problem, nfe, variant, rmse, recipe="r", cpu="", stats_cpu="", **protocol):
    return {
        "problem": problem,
        "nfe": nfe,
        "variant": variant,
        "rmse": rmse,
        "recipe": recipe,
        "tune_cpu_seconds": cpu,
        "statistics_cpu_seconds": stats_cpu,
        **{**PROTOCOL, **protocol},
    }


def _write(path, rows, fields):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _all_rows(problem, nfe):
    return [_row(problem, nfe, v, 0.01, cpu=1.0) for v in ("plain", "per-step", "v3", "learn", "best-fixed", "peer")]


def test_an_older_csv_without_some_columns_reads_with_those_fields_empty(table, tmp_path):
    path = tmp_path / "table.csv"
    _write(path, [_row("gmm64", 3, "plain", 0.02, cpu=8.0)], ["problem", "nfe", "variant", "rmse", "tune_cpu_seconds"])
    (r,) = table.read_rows(path)
    assert set(r) == set(table.FIELDS)
    assert (r["rmse"], r["tune_cpu_seconds"], r["statistics_cpu_seconds"], r["eval_samples"]) == ("0.02", "8.0", "", "")
    table.check_protocol([r], PROTOCOL)  # a missing protocol column is not a mismatch


def test_pending_skips_the_rows_already_written_and_runs_each_problem_then_its_peers(table):
    rows = [{"problem": "gmm64", "nfe": "3", "variant": "plain"}, {"problem": "gmm64", "nfe": "4", "variant": "peer"}]
    todo = table.pending(rows, ["gmm64", "mlp-spiral"], [3, 4], ["plain", "learn"])
    assert ("gmm64", 3, "plain") not in todo and ("gmm64", 4, "peer") not in todo
    assert todo[:5] == [
        ("gmm64", 3, "learn"),
        ("gmm64", 3, "best-fixed"),
        ("gmm64", 4, "plain"),
        ("gmm64", 4, "learn"),
        ("gmm64", 4, "best-fixed"),
    ]
    assert todo[5] == ("gmm64", 3, "peer")  # gmm64's peers before any mlp-spiral cell
    assert todo[6][0] == "mlp-spiral" and len(todo) == 6 + 2 * 4


def test_rows_of_another_evaluation_set_are_refused(table):
    rows = [{k: str(v) for k, v in _row("gmm64", 3, "plain", 0.02, eval_samples=1024).items()}]
    with pytest.raises(ValueError, match="eval_samples=1024.*this run has eval_samples=4096"):
        table.check_protocol(rows, PROTOCOL)


def test_a_rerun_with_every_row_present_tunes_nothing_and_prints_the_table(table, tmp_path, monkeypatch, capsys):
    out = tmp_path / "t"
    out.mkdir()
    _write(out / "table.csv", _all_rows("gmm2d", 3), table.FIELDS)
    before = (out / "table.csv").read_text()

    def must_not_run(*a, **k):
        raise AssertionError("run() called although every row is in table.csv")

    monkeypatch.setattr(table, "run", must_not_run)
    argv = ["--problem", "gmm2d", "--nfe", "3", "--out", str(out)]
    assert table.main(argv) == 0
    assert (out / "table.csv").read_text() == before
    assert "| gmm2d | 3 |" in capsys.readouterr().out
    # one row missing: run() gets exactly that one
    _write(out / "table.csv", _all_rows("gmm2d", 3)[1:], table.FIELDS)
    seen = []
    monkeypatch.setattr(table, "run", lambda args, out, path, todo: seen.append(todo))
    table.main(argv)
    assert seen == [[("gmm2d", 3, "plain")]]


def test_markdown_gives_ratios_to_the_peer_bolds_the_lowest_variant_and_marks_missing_ones(table):
    rows = [
        _row("gmm64", 5, "plain", 0.010, cpu=20.0),
        _row("gmm64", 5, "per-step", 0.008, cpu=30.0),
        _row("gmm64", 5, "v3", 0.012, cpu=40.0, stats_cpu=2.0),
        _row("gmm64", 5, "best-fixed", 0.030, recipe="ipndm, logsnr"),
        _row("gmm64", 5, "peer", 0.050, recipe="k-diffusion:dpmpp-2m (logsnr)"),
    ]
    rows = [{k: str(v) for k, v in r.items()} for r in rows]
    lines = table.markdown([{**dict.fromkeys(table.FIELDS, ""), **r} for r in rows]).splitlines()
    assert len(lines) == 3
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:2] == ["gmm64", "5"]
    assert cells[2] == "1.00e-02 (0.20x)"
    assert cells[3] == "**8.00e-03** (0.16x)"
    assert cells[4] == "1.20e-02 (0.24x)"
    assert cells[5] == "(not run)"
    assert cells[6] == "3.00e-02 (ipndm, logsnr) (0.60x)"
    assert cells[7] == "5.00e-02 (k-diffusion:dpmpp-2m (logsnr))"
    assert cells[8] == "20 / 30 / 40 (+2) / -"


def test_table_of_two_out_folders_is_one_table_with_both_protocols_rows(table, tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    _write(a / "table.csv", _all_rows("gmm64", 3), table.FIELDS)
    _write(b / "table.csv", [_row("digits", 3, "plain", 0.1, fit_samples=256, eval_samples=512)], table.FIELDS)
    assert table.main(["--table", str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("|")[1].strip() for ln in lines[2:]] == ["gmm64", "digits"]
