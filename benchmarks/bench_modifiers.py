"""The modifiers (docs/modifiers.md) on the digits model: RMSE to the exact ODE solution, with and without.

For each solver, NFE and LML damping lambda: ``ds.sample(ds.modify(ode, lml=lam), x_T, solver, steps=nfe)``
on the x_T of ``--seed`` and the bench's float64 dopri5 reference of those x_T (the reference cache of
benchmarks/bench_dpm_solver_v3.py is reused). Rows go to OUT/modifiers.csv as they finish (a rerun
skips them).

    OMP_NUM_THREADS=1 python benchmarks/bench_modifiers.py --out bench-results/dpm_solver_v3
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

FIELDS = ["problem", "solver", "grid", "nfe", "lml", "rmse", "rmse_plain", "moved"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="digits")
    ap.add_argument("--solvers", default="ddim,dpmpp-2m")
    ap.add_argument("--nfe", default="5,10")
    ap.add_argument("--lml", default="0.01,0.1,1,10,100")
    ap.add_argument("--grid", default="logsnr")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--out", default="bench-results/dpm_solver_v3")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import diffsolve as ds
    from diffsolve.bench.catalog import get_bench_problem
    from diffsolve.bench.reference import ReferenceCache

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prob = get_bench_problem(args.problem, args.samples)
    smax = float(prob.schedule.sigma_max)
    x_T = prob.x_T(args.seed, args.samples) * prob.x_T_scale(smax)
    ref = ReferenceCache(out / "references").get(prob, x_T, smax, 0.0, args.seed)[0]
    ode = prob.ode(prob.dtype)
    x_run = x_T.to(prob.dtype)
    path = out / "modifiers.csv"
    done = set()
    if path.exists():
        with path.open() as f:
            done = {(r["solver"], r["nfe"], r["lml"]) for r in csv.DictReader(f)}
    new = not path.exists()
    with path.open("a", newline="") as f, torch.no_grad():
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for solver in args.solvers.split(","):
            for nfe in [int(v) for v in args.nfe.split(",")]:
                plain = ds.sample(ode, x_run, solver, steps=nfe, grid=args.grid).to(torch.float64)
                rmse_plain = float((plain - ref).pow(2).mean().sqrt())
                for lam in [float(v) for v in args.lml.split(",")]:
                    if (solver, str(nfe), str(lam)) in done:
                        continue
                    y = ds.sample(ds.modify(ode, lml=lam), x_run, solver, steps=nfe, grid=args.grid)
                    y = y.to(torch.float64)
                    row = dict(
                        problem=args.problem,
                        solver=solver,
                        grid=args.grid,
                        nfe=nfe,
                        lml=lam,
                        rmse=float((y - ref).pow(2).mean().sqrt()),
                        rmse_plain=rmse_plain,
                        moved=float((y - plain).pow(2).mean().sqrt()),
                    )
                    w.writerow(row)
                    f.flush()
                    print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
