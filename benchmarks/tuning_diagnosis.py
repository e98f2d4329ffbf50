"""Why a tuned recipe can lose to a fixed solver+grid on other x_T (issue 22 item 6): teacher, over-fitting or
candidate set, measured on the recipes of ``benchmarks/bench_tuning.py``.

For each recipe OUT/recipes/<problem>-nfe<N>.json (tuned on seed ``--fit-seed``), on the tuning x_T and on the
evaluation x_T (seed ``--eval-seed``), it prints:

* the teacher's error: the bench reference cache's convergence estimate ``ref_err`` (dopri5 at tol vs tol / 2)
  beside the candidates' RMSE;
* over-fitting: the recipe's RMSE on the fit part, the held-out part and the evaluation x_T, beside the same three
  for the best fixed candidate tune reported (``report["best_fixed"]``) and for the best fixed solver+grid chosen
  on the evaluation x_T itself (``best_fixed``);
* the spread of the per-sample error: the share of the squared error carried by the worst 1% of x_T (an RMSE
  dominated by a few start states differs between draws of x_T even without any fitting), and for the analytic
  mixtures the number of x_T whose end lies nearest another component than the reference's ("flips").

    python benchmarks/tuning_diagnosis.py --problem gmm64 --nfe 15,20 --out bench-results/tuning

Needs the reference cache of the bench_tuning run (OUT/references); computes any missing reference.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch


def _errors(ode, x, ref, solver, options, sigmas, afs, comp=None, means=None):
    """Per-sample squared error, and how many samples end nearest another mixture component than the reference
    (None without the problem's component means)."""
    from diffsolve.recipe import run_parts

    with torch.no_grad():
        out = run_parts(ode, x, solver, options, sigmas, afs, comp).to(torch.float64).cpu()
    e = (out - ref).reshape(x.shape[0], -1).pow(2).mean(1)
    if means is None:
        return e, None

    def comp_of(y):
        return torch.cdist(y.reshape(y.shape[0], -1), means).argmin(1)

    return e, int((comp_of(out) != comp_of(ref)).sum())


def _rmse(e) -> float:
    return float(e.mean().sqrt())


def _top_share(e, frac=0.01) -> float:
    k = max(1, int(round(frac * e.numel())))
    return float(e.sort(descending=True).values[:k].sum() / e.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="gmm64")
    ap.add_argument("--nfe", default="15,20")
    ap.add_argument("--fit-seed", type=int, default=1000)
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--fit-samples", type=int, default=512)
    ap.add_argument("--eval-samples", type=int, default=512)
    ap.add_argument("--out", default="bench-results/tuning")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import diffsolve as ds
    from diffsolve.bench.catalog import get_bench_problem
    from diffsolve.bench.reference import ReferenceCache
    from diffsolve.tuning import best_fixed

    out = Path(args.out)
    refs = ReferenceCache(out / "references")
    prob = get_bench_problem(args.problem, args.eval_samples)
    ode = prob.ode(prob.dtype)
    smax = float(prob.schedule.sigma_max)
    scale = prob.x_T_scale(smax)
    x_fit = prob.x_T(args.fit_seed, args.fit_samples) * scale
    x_eval = prob.x_T(args.eval_seed, args.eval_samples) * scale
    ref_fit, err_fit = refs.get(prob, x_fit, smax, 0.0, args.fit_seed)
    ref_eval, err_eval = refs.get(prob, x_eval, smax, 0.0, args.eval_seed)
    from diffsolve.analytic import PROBLEMS, get_problem

    means = get_problem(args.problem).means if args.problem in PROBLEMS else None
    print(f"{args.problem}: teacher error (reference cache ref_err) {err_fit:.1e} (tuning x_T), {err_eval:.1e} (eval)")
    for nfe in [int(v) for v in args.nfe.split(",")]:
        recipe = ds.Recipe.load(out / "recipes" / f"{args.problem}-nfe{nfe}.json")
        r = recipe.report
        perm = torch.randperm(x_fit.shape[0], generator=torch.Generator().manual_seed(int(r["seed"])))
        n_fit = r["fit_samples"]
        fit_idx, held_idx = perm[:n_fit].sort().values, perm[n_fit:].sort().values
        comp = recipe.params.get("compensation")
        rows = {"recipe": (recipe.solver, recipe.options, recipe.sigmas, recipe.afs, comp)}
        bf = r["best_fixed"]
        rows[f"tune's best fixed ({bf['solver']}, {bf['grid']})"] = (
            bf["solver"],
            {},
            ds.grid(bf["grid"], prob.schedule, bf["steps"]).tolist(),
            False,
            None,
        )
        ev = best_fixed(ode, x_eval.to(prob.dtype), nfe, teacher=ref_eval)
        rows[f"eval's best fixed ({ev['solver']}, {ev['grid']})"] = (
            ev["solver"],
            {},
            ds.grid(ev["grid"], prob.schedule, ev["steps"]).tolist(),
            False,
            None,
        )
        print(f"\nNFE {nfe}: {recipe!r}; fallback_to_fixed={r.get('fallback_to_fixed')}")
        print(f"  {'':<44} {'fit':>9} {'held-out':>9} {'eval':>9}  worst 1% share, flips (tuning / eval)")
        for label, (solver, options, sig, afs, c) in rows.items():
            e_t, f_t = _errors(ode, x_fit.to(prob.dtype), ref_fit, solver, options, sig, afs, c, means)
            e_v, f_v = _errors(ode, x_eval.to(prob.dtype), ref_eval, solver, options, sig, afs, c, means)
            print(
                f"  {label:<44} {_rmse(e_t[fit_idx]):9.2e} {_rmse(e_t[held_idx]):9.2e} {_rmse(e_v):9.2e}"
                f"  {_top_share(e_t):.2f}, {f_t} / {_top_share(e_v):.2f}, {f_v}"
            )
        if not math.isfinite(r["heldout_rmse"]):
            print("  (recipe held-out not finite)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
