"""A tuned recipe on many fresh draws of x_T: its RMSE per draw of 512, over all of them, and how many x_T end
nearest another mixture component than the exact solution ("flips"), beside the best fixed solver+grid of tune's
report and time-quadratic's best (docs/tuning.md, "Why a recipe can lose on another draw").

Each recipe is tuned on 512 x_T of seed ``--fit-seed`` (as benchmarks/bench_tuning.py does) with each
``--tail-weight`` (``ds.tune(tail_weight=...)``), then run on seeds ``--draws`` (512 x_T each). With weight 0 the
recipe of benchmarks/bench_tuning.py (OUT/recipes/<problem>-nfe<N>.json, the same tune call) is loaded if present.

    python benchmarks/tuning_draws.py --problem gmm64 --nfe 15,20 --tail-weight 0,0.5 --out bench-results/tuning
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="gmm64")
    ap.add_argument("--nfe", default="15,20")
    ap.add_argument("--tail-weight", default="0,0.5")
    ap.add_argument("--fit-seed", type=int, default=1000)
    ap.add_argument("--draws", default="0,1,2,3,4,5,6,7,8", help="seeds of the evaluation draws (512 x_T each)")
    ap.add_argument("--out", default="bench-results/tuning", help="its references/ cache is used and filled")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import diffsolve as ds
    from diffsolve.analytic import PROBLEMS, get_problem
    from diffsolve.bench.catalog import get_bench_problem
    from diffsolve.bench.reference import ReferenceCache
    from diffsolve.recipe import run_parts
    from diffsolve.tuning import best_fixed

    prob = get_bench_problem(args.problem, 512)
    ode = prob.ode(prob.dtype)
    smax = float(prob.schedule.sigma_max)
    scale = prob.x_T_scale(smax)
    refs = ReferenceCache(Path(args.out) / "references")
    means = get_problem(args.problem).means if args.problem in PROBLEMS else None
    x_fit = prob.x_T(args.fit_seed, 512) * scale
    ref_fit = refs.get(prob, x_fit, smax, 0.0, args.fit_seed)[0]
    seeds = [int(s) for s in args.draws.split(",")]
    xs = [prob.x_T(s, 512) * scale for s in seeds]
    rs = [refs.get(prob, x, smax, 0.0, s)[0] for x, s in zip(xs, seeds)]
    X, R = torch.cat(xs).to(prob.dtype), torch.cat(rs)

    def score(solver, options, sigmas, afs, comp=None) -> str:
        with torch.no_grad():
            y = run_parts(ode, X, solver, options, sigmas, afs, comp).to(torch.float64).cpu()
        e = (y - R).reshape(len(X), -1).pow(2).mean(1)
        per = " ".join(f"{float(e[i * 512 : (i + 1) * 512].mean().sqrt()):.2e}" for i in range(len(seeds)))
        fl = ""
        if means is not None:

            def comp_of(v):
                return torch.cdist(v.reshape(len(v), -1), means).argmin(1)

            fl = f", flips {int((comp_of(y) != comp_of(R)).sum())}"
        return f"all {float(e.mean().sqrt()):.2e}{fl} | per draw (seeds {args.draws}) {per}"

    for nfe in [int(v) for v in args.nfe.split(",")]:
        for w in [float(v) for v in args.tail_weight.split(",")]:
            saved = Path(args.out) / "recipes" / f"{args.problem}-nfe{nfe}.json"
            if w == 0 and saved.exists():  # bench_tuning.py's recipe: the same tune call on the same x_T
                r = ds.Recipe.load(saved)
                print(f"(recipe loaded from {saved})")
            else:
                r = ds.tune(ode, x_fit.to(prob.dtype), nfe, teacher=ref_fit, seed=0, progress=False, tail_weight=w)
            comp = r.params.get("compensation")
            print(f"{args.problem} NFE {nfe} tail_weight {w}: {r!r}", flush=True)
            print(f"  recipe: {score(r.solver, r.options, r.sigmas, r.afs, comp)}", flush=True)
            if w == 0:
                bf = r.report["best_fixed"]
                sig = ds.grid(bf["grid"], prob.schedule, bf["steps"]).tolist()
                print(f"  tune's best fixed ({bf['solver']}, {bf['grid']}): {score(bf['solver'], {}, sig, False)}")
                fx = best_fixed(ode, X[:512], nfe, teacher=R[:512], solvers=None)
                sig = ds.grid(fx["grid"], prob.schedule, fx["steps"]).tolist()
                print(
                    f"  draw {seeds[0]}'s best fixed ({fx['solver']}, {fx['grid']}): {score(fx['solver'], {}, sig, False)}"
                )
            if not math.isfinite(r.report["heldout_rmse"]):
                print("  (held-out RMSE not finite)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
