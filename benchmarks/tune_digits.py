"""Tune the recipes shipped for the digits model (diffsolve/bench/recipes/digits-nfe{N}.json).

Each recipe is ``diffsolve.tune`` on x_T of seed 1000 (256 draws: half fit, half held out), so the
benchmark's and the pictures' x_T (seed 0) are never seen by it. ``make demo``'s picture runs them
in its "tuned recipe" row. Seeded and deterministic: the same inputs give the same recipe, bit for bit.

    python benchmarks/tune_digits.py --nfe 3,5,10 --scalars   # 3-5 minutes per NFE on one core

``--per-step`` adds USF's per-step search (docs/tuning.md); give ``--out`` elsewhere to keep the shipped files.
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
    ap.add_argument(
        "--per-step", action="store_true", help="also search USF's per-step choices (tune(per_step=True), solver usf)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    problem = get_bench_problem("digits")
    ode = problem.ode(problem.dtype)
    x_T = problem.x_T(args.seed, args.samples).to(problem.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for nfe in [int(n) for n in args.nfe.split(",")]:
        t0 = time.process_time()
        recipe = ds.tune(ode, x_T, nfe=nfe, scalars=args.scalars, per_step=args.per_step, progress=True)
        recipe.report["problem"] = "digits"
        path = recipe.save(out / f"digits-nfe{nfe}.json")
        r = recipe.report
        print(
            f"NFE {nfe}: {recipe!r}; held-out RMSE {r['heldout_rmse']:.3e} vs best fixed "
            f"{r['best_fixed']['heldout_rmse']:.3e} ({r['best_fixed']['solver']} / {r['best_fixed']['grid']}); "
            f"{time.process_time() - t0:.0f} s CPU -> {path}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
