"""DPM-Solver-v3 on the digits model's own statistics against dpmpp-2m and unipc (issue 22, docs/dpm-solver-v3.md).

The statistics are computed with :func:`diffsolve.model_statistics` from the x_T of ``--fit-seed``
(``--fit-samples`` start states, the float64 ODE); every solver then runs on every registered grid
from the x_T of ``--eval-seed`` (a different draw) at each NFE, and its RMSE to the float64 dopri5
reference of those x_T (the bench's reference cache) is written to OUT/rows.csv as it finishes (a
rerun skips what is there; the statistics are saved to OUT/digits-statistics.json and reloaded).
The best grid of each solver is picked on the evaluation x_T itself (optimistic for every solver).

    OMP_NUM_THREADS=1 python benchmarks/bench_dpm_solver_v3.py --out bench-results/dpm_solver_v3
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from pathlib import Path

import torch

FIELDS = ["problem", "nfe", "solver", "options", "grid", "rmse", "model_calls"]
SOLVERS = [
    ("dpmpp-2m", {}),
    ("unipc", {}),
    ("dpm-solver-v3", {"statistics": True}),
    ("dpm-solver-v3", {"statistics": True, "pseudo": True}),
    ("dpm-solver-v3", {"statistics": True, "corrector": False}),
    ("dpm-solver-v3", {"corrector": True}),  # neutral statistics: DPM-Solver++(3M) with v3's corrector
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="digits")
    ap.add_argument("--nfe", default="5,6,8,10")
    ap.add_argument("--fit-seed", type=int, default=1000)
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--fit-samples", type=int, default=256)
    ap.add_argument("--eval-samples", type=int, default=256)
    ap.add_argument("--points", type=int, default=100, help="intervals of the statistics' lambda grid")
    ap.add_argument("--out", default="bench-results/dpm_solver_v3")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import diffsolve as ds
    from diffsolve.bench.catalog import get_bench_problem
    from diffsolve.bench.reference import ReferenceCache

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prob = get_bench_problem(args.problem, args.eval_samples)
    smax = float(prob.schedule.sigma_max)
    scale = prob.x_T_scale(smax)
    stats_path = out / f"{args.problem}-statistics.json"
    if stats_path.exists():
        stats = ds.ModelStatistics.load(stats_path)
        print(f"statistics loaded from {stats_path}: {stats.info}", flush=True)
    else:
        x_fit = (prob.x_T(args.fit_seed, args.fit_samples) * scale).to(torch.float64)
        stats = ds.model_statistics(prob.reference_ode(), x_fit, points=args.points, progress=True)
        stats.save(stats_path)
        print(f"statistics computed: {stats.info}", flush=True)
    refs = ReferenceCache(out / "references")
    x_eval = prob.x_T(args.eval_seed, args.eval_samples) * scale
    ref = refs.get(prob, x_eval, smax, 0.0, args.eval_seed)[0]
    ode = prob.ode(prob.dtype)
    x_run = x_eval.to(prob.dtype)

    path = out / "rows.csv"
    done = set()
    if path.exists():
        with path.open() as f:
            done = {(r["nfe"], r["solver"], r["options"], r["grid"]) for r in csv.DictReader(f)}
    grids = ds.list_grids()
    todo = [(n, s, o, g) for n in [int(v) for v in args.nfe.split(",")] for s, o in SOLVERS for g in grids]
    new = not path.exists()
    t0 = time.perf_counter()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for k, (nfe, solver, opts, grid) in enumerate(todo):
            label = _label(opts)
            if (str(nfe), solver, label, grid) in done:
                continue
            run_opts = {**opts, "statistics": stats} if opts.get("statistics") else opts
            n0 = ode.nfe
            try:
                with torch.no_grad():
                    y = ds.sample(ode, x_run, solver, steps=nfe, grid=grid, **run_opts)
                rmse = float((y.to(torch.float64) - ref).pow(2).mean().sqrt())
            except (ValueError, FloatingPointError) as exc:  # a grid outside the range, a non-finite run
                print(f"  {solver} {label} {grid} NFE {nfe}: {exc}", file=sys.stderr)
                rmse = math.nan
            w.writerow(
                dict(
                    problem=args.problem,
                    nfe=nfe,
                    solver=solver,
                    options=label,
                    grid=grid,
                    rmse=rmse,
                    model_calls=ode.nfe - n0,
                )
            )
            f.flush()
            print(
                f"[{k + 1}/{len(todo)} {time.perf_counter() - t0:.0f}s] NFE {nfe} {solver} {label} {grid}: {rmse:.4e}",
                flush=True,
            )
    summary(path)
    return 0


def _label(opts: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(opts.items())) or "-"


def summary(path: Path) -> None:
    """Best grid per solver configuration and NFE; the v3 rows against the best of dpmpp-2m and unipc."""
    best: dict[tuple, tuple[float, str]] = {}
    with path.open() as f:
        for r in csv.DictReader(f):
            rmse = float(r["rmse"])
            if math.isnan(rmse):
                continue
            key = (int(r["nfe"]), r["solver"], r["options"])
            if key not in best or rmse < best[key][0]:
                best[key] = (rmse, r["grid"])
    print("\n| NFE | solver | options | best grid | RMSE | vs best of dpmpp-2m/unipc |")
    print("|---|---|---|---|---|---|")
    for nfe in sorted({k[0] for k in best}):
        base = min(v[0] for k, v in best.items() if k[0] == nfe and k[1] in ("dpmpp-2m", "unipc"))
        for key in sorted(k for k in best if k[0] == nfe):
            rmse, grid = best[key]
            print(f"| {nfe} | {key[1]} | {key[2]} | {grid} | {rmse:.4e} | {rmse / base:.3f}x |")


if __name__ == "__main__":
    sys.exit(main())
