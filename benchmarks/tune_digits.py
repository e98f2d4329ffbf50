"""Tune the recipes shipped for the digits model (diffsolve/bench/recipes/digits-nfe{N}.json).

Each recipe is ``diffsolve.tune`` on x_T of seed 1000 (256 draws: half fit, half held out), so the
benchmark's and the pictures' x_T (seed 0) are never seen by it. ``make demo``'s picture runs them
in its "tuned recipe" row. Seeded and deterministic: the same inputs give the same recipe, bit for bit.

    python benchmarks/tune_digits.py --nfe 3,5,10 --scalars   # 3-5 minutes per NFE on one core

Guided recipes for the class-conditional model (``digits-cond``, issue 20): the same x_T with the labels
0, 1, ..., 9, 0, 1, ... (each class 25-26 times, split at random into fit and held-out parts like x_T), under
classifier-free guidance at ``--cfg`` (a float scale: exactly ``ds.wrap(guidance=w)``); the teacher solves
the same guided ODE. A recipe already in ``--out`` is kept (rerun with ``--force``), so a stopped run resumes:

    python benchmarks/tune_digits.py --problem digits-cond --cfg 8 --nfe 5,10   # digits-cond-cfg8-nfe{N}.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import diffsolve as ds
from diffsolve.bench.catalog import get_bench_problem
from diffsolve.bench.pictures import RECIPES


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nfe", default="3,5,10,20", help="comma list of NFE (default 3,5,10,20)")
    ap.add_argument("--samples", type=int, default=256, help="x_T drawn (half fit, half held out; default 256)")
    ap.add_argument("--seed", type=int, default=1000, help="x_T seed (default 1000; the benchmark uses 0)")
    ap.add_argument("--out", default=str(RECIPES), help="folder of the recipes (default: the package's)")
    ap.add_argument(
        "--scalars", action="store_true", help="also fit DC-Solver's compensation ratios (tune(scalars=True))"
    )
    ap.add_argument("--problem", choices=["digits", "digits-cond"], default="digits")
    ap.add_argument("--cfg", type=float, default=8.0, help="digits-cond: the CFG scale (default 8)")
    ap.add_argument("--force", action="store_true", help="digits-cond: retune recipes already in --out")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.problem == "digits":
        problem = get_bench_problem("digits")
        ode = problem.ode(problem.dtype)
        x_T = problem.x_T(args.seed, args.samples).to(problem.dtype)
        name = "digits"
    else:
        problem = get_bench_problem("digits-cond")
        x_T = problem.x_T(args.seed, args.samples, torch.float32)
        ode = problem.ode(torch.float32, labels=tune_labels(args.samples), guidance=float(args.cfg))
        name = f"digits-cond-cfg{args.cfg:g}"
    for nfe in [int(n) for n in args.nfe.split(",")]:
        target = out / f"{name}-nfe{nfe}.json"
        if args.problem == "digits-cond" and target.exists() and not args.force:
            print(f"NFE {nfe}: {target} exists (--force to retune)")
            continue
        t0 = time.process_time()
        recipe = ds.tune(ode, x_T, nfe=nfe, scalars=args.scalars, progress=True)
        recipe.report["problem"] = args.problem
        if args.problem == "digits-cond":
            recipe.report["labels"] = "arange(samples) % 10"
        path = recipe.save(target)
        r = recipe.report
        print(
            f"NFE {nfe}: {recipe!r}; held-out RMSE {r['heldout_rmse']:.3e} vs best fixed "
            f"{r['best_fixed']['heldout_rmse']:.3e} ({r['best_fixed']['solver']} / {r['best_fixed']['grid']}); "
            f"{time.process_time() - t0:.0f} s CPU -> {path}"
        )
    return 0


def tune_labels(n: int) -> torch.Tensor:
    """The labels the guided recipes are tuned on: 0, 1, ..., 9, 0, 1, ... (every class, balanced)."""
    return torch.arange(int(n)) % 10


if __name__ == "__main__":
    raise SystemExit(main())
