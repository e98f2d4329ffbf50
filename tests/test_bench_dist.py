"""Distributed sweeps: 2 processes under torchrun (gloo, CPU) give the single-process results."""

import csv
import os
import subprocess
import sys

from diffsolve.bench import TIMING_FIELDS


def _rows(path):
    return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in csv.DictReader(path.open())]


def test_two_process_torchrun_equals_single_process(tmp_path):
    args = [
        "-m",
        "diffsolve",
        "bench",
        "--problem",
        "gmm2d",
        "--solvers",
        "ddim,ddim:eta=1",
        "--grids",
        "trailing",
        "--nfe",
        "5,10",
        "--seeds",
        "0,1",
        "--samples",
        "32",
        "--ref-tol",
        "1e-8",
        "--no-plots",
        "--quiet",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args += ["--cache", str(tmp_path / "refs")]  # references are keyed and deterministic: share them
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            *args,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=180
    )
    assert single.returncode == 0, single.stderr
    one_rows, two_rows = _rows(tmp_path / "one" / "results.csv"), _rows(tmp_path / "two" / "results.csv")
    assert len(one_rows) == 2 * 2 * 2 and one_rows == two_rows
    # each rank wrote its own half of the cells
    assert len([p for p in (tmp_path / "two").glob("cells/*/*.json") if p.name != "settings.json"]) == 8
