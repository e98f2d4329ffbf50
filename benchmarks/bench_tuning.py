"""Tuned recipes against the best fixed solver+grid, per problem and NFE (docs/tuning.md).

For each problem and NFE: ``diffsolve.tune`` is fitted on x_T of seed ``--fit-seed`` (``--fit-samples``
start states, split fit / held-out inside tune), then the recipe and every deterministic fixed-call
solver x registered grid (default options) run on the benchmark's x_T (seed ``--eval-seed``, a different
draw); RMSE to the float64 dopri5 reference of each x_T (the bench's reference cache). The best fixed
solver+grid is chosen on the evaluation x_T itself (an optimistic baseline).

    python benchmarks/bench_tuning.py --problem gmm64,mlp-spiral --nfe 3,4,5,6,8,10,20 --out bench-results/tuning

Any bench problem name works (``diffsolve bench --list``), e.g. ``--problem digits`` once registered.
Rows are appended to OUT/tuning.csv as they finish (a rerun skips the rows already there); the recipes
are saved as OUT/recipes/<problem>-nfe<N>.json.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

FIELDS = ["problem", "nfe", "tuned_rmse", "tuned_nfe", "tuned_recipe", "fixed_rmse", "fixed_solver", "fixed_grid",
          "fixed_nfe", "ratio", "tune_heldout_rmse", "tune_fixed_heldout_rmse", "tune_seconds", "tune_model_calls",
          "fit_samples", "eval_samples"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="gmm64,mlp-spiral")
    ap.add_argument("--nfe", default="3,4,5,6,8,10,20")
    ap.add_argument("--fit-seed", type=int, default=1000)
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--fit-samples", type=int, default=512, help="x_T drawn for tune (half fit, half held out)")
    ap.add_argument("--eval-samples", type=int, default=512)
    ap.add_argument("--out", default="bench-results/tuning")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from diffsolve.bench.problems import get_bench_problem
    from diffsolve.bench.reference import ReferenceCache
    from diffsolve.tuning import best_fixed, tune

    out = Path(args.out)
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    refs = ReferenceCache(out / "references")
    path = out / "tuning.csv"
    done = set()
    if path.exists():
        with path.open() as f:
            done = {(r["problem"], int(r["nfe"])) for r in csv.DictReader(f)}
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for name in args.problem.split(","):
            prob = get_bench_problem(name, args.eval_samples)
            ode = prob.ode(prob.dtype, args.device)
            smax = float(prob.schedule.sigma_max)
            scale = prob.x_T_scale(smax)
            x_fit = prob.x_T(args.fit_seed, args.fit_samples) * scale
            x_eval = prob.x_T(args.eval_seed, args.eval_samples) * scale
            ref_fit = refs.get(prob, x_fit, smax, 0.0, args.fit_seed)[0]
            ref_eval = refs.get(prob, x_eval, smax, 0.0, args.eval_seed)[0]
            x_fit_run = x_fit.to(device=args.device, dtype=prob.dtype)
            x_eval_run = x_eval.to(device=args.device, dtype=prob.dtype)
            for nfe in [int(v) for v in args.nfe.split(",")]:
                if (name, nfe) in done:
                    print(f"{name} NFE {nfe}: already in {path}")
                    continue
                n0 = ode.nfe
                t0 = time.perf_counter()
                recipe = tune(ode, x_fit_run, nfe, teacher=ref_fit, seed=0, progress=False)
                secs = time.perf_counter() - t0
                calls = ode.nfe - n0
                recipe.save(out / "recipes" / f"{name}-nfe{nfe}.json")
                with torch.no_grad():
                    y = recipe.sample(ode, x_eval_run)
                tuned = float((y.to(torch.float64).cpu() - ref_eval).pow(2).mean().sqrt())
                fixed = best_fixed(ode, x_eval_run, nfe, teacher=ref_eval)
                row = {"problem": name, "nfe": nfe, "tuned_rmse": tuned, "tuned_nfe": recipe.nfe,
                       "tuned_recipe": repr(recipe), "fixed_rmse": fixed["rmse"], "fixed_solver": fixed["solver"],
                       "fixed_grid": fixed["grid"], "fixed_nfe": fixed["nfe"], "ratio": tuned / fixed["rmse"],
                       "tune_heldout_rmse": recipe.report["heldout_rmse"],
                       "tune_fixed_heldout_rmse": recipe.report["best_fixed"]["heldout_rmse"],
                       "tune_seconds": secs, "tune_model_calls": calls,
                       "fit_samples": recipe.report["fit_samples"], "eval_samples": args.eval_samples}
                w.writerow(row)
                f.flush()
                print(f"{name} NFE {nfe}: tuned {tuned:.3e} ({recipe!r}) | best fixed {fixed['rmse']:.3e} "
                      f"({fixed['solver']} on {fixed['grid']}) | ratio {tuned / fixed['rmse']:.3f} | "
                      f"tune {secs:.1f} s, {calls} model calls", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
