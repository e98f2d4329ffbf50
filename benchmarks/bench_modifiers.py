"""The modifiers (docs/modifiers.md) on the digits model: RMSE to the exact ODE solution, with and without.

For each solver, NFE and LML damping lambda: ``ds.sample(ds.modify(ode, lml=lam), x_T, solver, steps=nfe)``
on the x_T of ``--seed`` and the bench's float64 dopri5 reference of those x_T (the reference cache of
benchmarks/bench_dpm_solver_v3.py is reused). Rows go to OUT/modifiers.csv as they finish (a rerun
skips them).

    OMP_NUM_THREADS=1 python benchmarks/bench_modifiers.py --out bench-results/dpm_solver_v3

With ``--time-shift W:C[:V],...`` it runs the time-shift modifier instead (window W, cutoff C, data_var V;
docs/math.md 3.8) and writes OUT/time_shift.csv, with the FDD of the samples (to the 297 held-out digits)
beside the RMSE, for the plain run and for the reference itself:

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_modifiers.py --nfe 5,10,20 \
        --time-shift 10:300,30:300,80:300,30:300:0.57 --seed 0 --out bench-results/ts

(docs/modifiers.md has the table of seeds 0 and 1; rows carry their seed, a rerun skips the done ones).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import torch

FIELDS = ["problem", "solver", "grid", "nfe", "lml", "rmse", "rmse_plain", "moved"]
TS_FIELDS = [
    "problem",
    "seed",
    "solver",
    "grid",
    "nfe",
    "window",
    "cutoff",
    "data_var",
    "rmse",
    "fdd",
    "rmse_plain",
    "fdd_plain",
    "fdd_reference",
    "moved",
    "shifted",
]


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
    ap.add_argument("--time-shift", default=None, help="W:C[:V],... (window, cutoff, data_var): time-shift rows")
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
    if args.time_shift:
        return run_time_shift(args, prob, ode, x_run, ref, out)
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


def run_time_shift(args, prob, ode, x_run, ref, out) -> int:
    """The time-shift rows (OUT/time_shift.csv): RMSE to the reference and FDD, plain and shifted."""
    import diffsolve as ds

    settings = []
    for item in args.time_shift.split(","):
        parts = item.split(":")
        settings.append((int(parts[0]), float(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0))
    path = out / "time_shift.csv"
    done = set()
    if path.exists():
        with path.open() as f:
            done = {
                (r["solver"], int(r["nfe"]), int(r["window"]), float(r["cutoff"]), float(r["data_var"]))
                for r in csv.DictReader(f)
                if int(r["seed"]) == args.seed
            }
    fdd_ref = prob.fdd(ref)
    new = not path.exists()
    with path.open("a", newline="") as f, torch.no_grad():
        w = csv.DictWriter(f, fieldnames=TS_FIELDS)
        if new:
            w.writeheader()
        for solver in args.solvers.split(","):
            for nfe in [int(v) for v in args.nfe.split(",")]:
                todo = [c for c in settings if (solver, nfe, *c) not in done]
                if not todo:
                    continue
                plain = ds.sample(ode, x_run, solver, steps=nfe, grid=args.grid).to(torch.float64)
                rmse_plain = float((plain - ref).pow(2).mean().sqrt())
                fdd_plain = prob.fdd(plain)
                for window, cutoff, data_var in todo:
                    shift = ds.TimeShift(window=window, cutoff=cutoff, data_var=data_var)
                    with _ShiftCounter() as counter:
                        y = ds.sample(ds.modify(ode, time_shift=shift), x_run, solver, steps=nfe, grid=args.grid)
                    y = y.to(torch.float64)
                    row = dict(
                        problem=args.problem,
                        seed=args.seed,
                        solver=solver,
                        grid=args.grid,
                        nfe=nfe,
                        window=window,
                        cutoff=cutoff,
                        data_var=data_var,
                        rmse=float((y - ref).pow(2).mean().sqrt()),
                        fdd=prob.fdd(y),
                        rmse_plain=rmse_plain,
                        fdd_plain=fdd_plain,
                        fdd_reference=fdd_ref,
                        moved=float((y - plain).pow(2).mean().sqrt()),
                        shifted=counter.share(),
                    )
                    w.writerow(row)
                    f.flush()
                    print(row, flush=True)
    return 0


class _ShiftCounter:
    """Counts, during a run, the (sample, model call) pairs whose time the rule moved (the rule's function
    as diffsolve.modifiers calls it, wrapped for the length of the ``with``)."""

    def __enter__(self):
        from diffsolve import modifiers

        self._module, self._rule = modifiers, modifiers.shifted_indices
        self.moved, self.total = 0, 0

        def counting(x, t, schedule, shift):
            tau = self._rule(x, t, schedule, shift)
            self.total += x.shape[0]
            if tau is not None:
                self.moved += int((tau != t).sum())
            return tau

        modifiers.shifted_indices = counting
        return self

    def __exit__(self, *exc):
        self._module.shifted_indices = self._rule

    def share(self) -> float:
        return self.moved / self.total if self.total else 0.0


if __name__ == "__main__":
    sys.exit(main())
