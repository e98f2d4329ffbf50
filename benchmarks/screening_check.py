"""Does the sweep's screening round (diffsolve.tuning._screen) keep what the exhaustive sweep would pick?

For each problem and NFE, on tune's inputs (``--fit-samples`` x_T of seed 1000, split as ``tune(seed=0)`` splits
them): the exhaustive sweep (every candidate on every x_T, as before the screening round) and the screening round
(every candidate on the first SCREEN_SAMPLES fit x_T). Reports where the exhaustive sweep's picks rank in the
screening order and whether they survive: the starts of the grid refinement (the ``refine`` best configurations,
each on its best grid by the fit objective), the best candidate on the held-out part (the fallback), and the best
plain (default options, no AFS) candidate on the held-out part (the report's ``best_fixed``). Where every pick
survives, the recipe is the exhaustive sweep's bit for bit (the survivors are scored by the same scorer on the same
batch). With ``--recipes DIR`` it also runs ``ds.tune`` and compares its recipe with ``DIR/<problem>-nfe<N>.json``.

    python benchmarks/screening_check.py --problem gmm64,mlp-spiral --nfe 3,4,5,6,8,10,15,20 \\
        --references bench-results/tuning/references --recipes bench-results/tuning/recipes --out screening.csv

One torch thread; rows appended to ``--out`` as they are done (a rerun skips them).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch

FIELDS = [
    "problem",
    "nfe",
    "candidates",
    "survivors",
    "refine_starts_screen_ranks",
    "heldout_best_screen_rank",
    "plain_heldout_best_screen_rank",
    "plain_heldout_best_plain_rank",
    "plain_heldout_rmse_exhaustive",
    "plain_heldout_rmse_screened",
    "all_picks_survive",
    "worst_pick_rank",
    "recipe_same_as_file",
    "exhaustive_sweep_cpu_s",
    "tune_cpu_s",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="gmm64,mlp-spiral")
    ap.add_argument("--nfe", default="3,4,5,6,8,10,15,20")
    ap.add_argument("--fit-samples", type=int, default=512)
    ap.add_argument("--references", default=None, help="a ReferenceCache folder with the fit x_T's teacher")
    ap.add_argument("--recipes", default=None, help="folder of recipes to compare tune's with (<problem>-nfe<N>.json)")
    ap.add_argument("--refine", type=int, default=3)
    ap.add_argument("--out", default="screening.csv")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import diffsolve as ds
    from diffsolve import tuning
    from diffsolve.bench.catalog import get_bench_problem
    from diffsolve.bench.reference import ReferenceCache

    out = Path(args.out)
    done = set()
    if out.exists():
        with out.open() as f:
            done = {(r["problem"], int(r["nfe"])) for r in csv.DictReader(f)}
    new = not out.exists()
    with out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for name in args.problem.split(","):
            prob = get_bench_problem(name)
            ode = prob.ode(prob.dtype)
            smax = float(prob.schedule.sigma_max)
            x = (prob.x_T(1000, args.fit_samples) * prob.x_T_scale(smax)).to(prob.dtype)
            if args.references:
                ref, _ = ReferenceCache(args.references).get(prob, x.to(torch.float64), smax, 0.0, 1000)
            else:
                ref = tuning._teacher(ode, x, smax)
            n_fit = tuning._check_inputs(ode, x, 5, 0.5)
            names = tuning._fixed_call_solvers(None)
            for nfe in [int(v) for v in args.nfe.split(",")]:
                if (name, nfe) in done:
                    continue
                row = check(ds, tuning, ode, x, ref, nfe, n_fit, names, args)
                row.update(problem=name, nfe=nfe)
                if args.recipes:
                    c0 = time.process_time()
                    r = ds.tune(ode, x, nfe, teacher=ref, seed=0, progress=False, refine=args.refine)
                    row["tune_cpu_s"] = round(time.process_time() - c0, 1)
                    path = Path(args.recipes) / f"{name}-nfe{nfe}.json"
                    if path.exists():
                        old = json.loads(path.read_text())
                        keys = ("solver", "options", "sigmas", "afs", "nfe")
                        now = r.to_dict()
                        row["recipe_same_as_file"] = all(now[k] == old[k] for k in keys)
                w.writerow(row)
                f.flush()
                print(row, flush=True)
    return 0


def check(ds, tuning, ode, x, ref, nfe, n_fit, names, args) -> dict:
    configs = tuning._configs(names)
    c0 = time.process_time()
    t = tuning._split(ode, x, ref, nfe, n_fit, 0, False, None, 0.0)
    screen = t.screen_scorer
    t.screen_scorer = None  # the exhaustive sweep
    full = tuning._sweep(t, configs)
    cpu_full = time.process_time() - c0
    t.screen_scorer = screen
    plan = [(c.config, c.grid, c.sigmas) for c in full]
    scores = tuning._screen_scores(t, plan)
    keep = tuning._survivors(plan, scores)
    rank = {i: r for r, i in enumerate(sorted(range(len(plan)), key=scores.__getitem__))}

    best: dict = {}
    for i in sorted(range(len(full)), key=lambda i: full[i].key()):
        if math.isfinite(full[i].fit_mse) and full[i].config not in best:
            best[full[i].config] = i
    starts = list(best.values())[: args.refine]
    held = min(range(len(full)), key=lambda i: (full[i].held_mse, full[i].config.label(), full[i].grid))
    plain = [i for i in range(len(full)) if full[i].config.is_default and math.isfinite(full[i].held_mse)]
    plain_held = min(plain, key=lambda i: full[i].held_mse)
    picks = starts + [held, plain_held]
    plain_order = [i for i in sorted(range(len(plan)), key=scores.__getitem__) if full[i].config.is_default]
    plain_kept = [i for i in plain if i in keep]
    plain_screened = min(plain_kept, key=lambda i: full[i].held_mse) if plain_kept else None
    return {
        "candidates": len(plan),
        "survivors": len(keep),
        "refine_starts_screen_ranks": " ".join(str(rank[i]) for i in starts),
        "heldout_best_screen_rank": rank[held],
        "plain_heldout_best_screen_rank": rank[plain_held],
        "plain_heldout_best_plain_rank": plain_order.index(plain_held),
        # the report's best_fixed: the exhaustive sweep's against the best plain candidate scored in full
        "plain_heldout_rmse_exhaustive": f"{math.sqrt(full[plain_held].held_mse):.4e}",
        "plain_heldout_rmse_screened": ""
        if plain_screened is None
        else f"{math.sqrt(full[plain_screened].held_mse):.4e}",
        "all_picks_survive": all(i in keep for i in picks),
        "worst_pick_rank": max(rank[i] for i in picks[:-1]),
        "exhaustive_sweep_cpu_s": round(cpu_full, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
