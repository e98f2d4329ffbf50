"""Resumable sweeps: a sweep killed midway loses at most the cell in flight; the rerun completes it."""

import csv
import os
import signal
import subprocess
import sys
import time


def test_sweep_killed_midway_resumes_with_no_lost_or_duplicated_cell(tmp_path):
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "diffsolve",
        "bench",
        "--problem",
        "gmm2d",
        "--solvers",
        "ddim",
        "--grids",
        "trailing,karras,logsnr",
        "--nfe",
        "20,30,40,50,60",
        "--seeds",
        "0,1",
        "--samples",
        "32",
        "--ref-tol",
        "1e-8",
        "--out",
        str(out),
        "--no-plots",
        "--quiet",
    ]
    total = 3 * 5 * 2
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    cells = lambda: [p for p in out.glob("cells/*/*.json") if p.name != "settings.json"]  # noqa: E731
    deadline = time.time() + 120
    while len(cells()) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    done_before = len(cells())
    assert 2 <= done_before < total, f"the kill came too late ({done_before} of {total} cells done)"

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {done_before} of {total} cells already done" in rerun.stdout
    assert f"({total - done_before} computed, {done_before} already done)" in rerun.stdout
    rows = list(csv.DictReader((out / "results.csv").open()))
    keys = [(r["grid"], r["nfe_target"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)) == total  # none lost, none twice
    assert all(r["status"] == "ok" for r in rows) and len(cells()) == total
