"""Tuned recipes against the best fixed solver+grid, per problem and NFE (docs/tuning.md).

For each problem and NFE: ``diffsolve.tune`` is fitted on x_T of seed ``--fit-seed`` (``--fit-samples``
start states, split fit / held-out inside tune), then the recipe and every deterministic fixed-call
solver x registered grid (default options) run on the benchmark's x_T (seed ``--eval-seed``, a different
draw, ``--eval-samples`` of them); RMSE to the float64 dopri5 reference of each x_T (the bench's reference
cache). The best fixed solver+grid is chosen on the evaluation x_T itself (an optimistic baseline). The same
numbers on the first ``--eval-head`` evaluation x_T (the same start states as a run with ``--eval-samples`` of that
size: the draw is a prefix) are reported beside them (``*_head`` columns, peers in ``peers-best-head.csv``): the
per-sample error is heavy-tailed, and one x_T of 512 can carry most of an RMSE (docs/tuning.md).

    python benchmarks/bench_tuning.py --problem gmm64,mlp-spiral --nfe 3,4,5,6,8,10,20 --out bench-results/tuning

``--per-step`` tunes with USF's per-step search (``tune(per_step=True)``); run it into another ``--out`` and
compare the two ``tuning.csv`` (docs/tuning.md, "Per-step search"). ``--statistics`` also searches dpm-solver-v3 on
model statistics computed from the fit x_T (``tune(statistics=True)``; the time is in the tune's CPU seconds);
``--learn`` tunes with the learned multistep coefficients (``tune(learn=True)``; what the stage did is in each
saved recipe's ``report["learn"]``).

Every variant in one table (plain, per-step, v3, learn, best fixed, best peer, each tune's CPU seconds):
``benchmarks/tuning_table.py``, which uses this script's inputs, evaluation and peers.

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

FIELDS = [
    "problem",
    "nfe",
    "tuned_rmse",
    "tuned_nfe",
    "tuned_recipe",
    "fixed_rmse",
    "fixed_solver",
    "fixed_grid",
    "fixed_nfe",
    "ratio",
    "tune_heldout_rmse",
    "tune_fixed_heldout_rmse",
    "tune_seconds",
    "tune_cpu_seconds",
    "tune_model_calls",
    "fit_samples",
    "eval_samples",
    "per_step_kept",
    "teacher_err_fit",
    "teacher_err_eval",
    "tuned_worst_share",
    "tuned_rmse_head",
    "fixed_rmse_head",
    "fixed_solver_head",
    "fixed_grid_head",
    "eval_head",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="gmm64,mlp-spiral")
    ap.add_argument("--nfe", default="3,4,5,6,8,10,20")
    ap.add_argument("--fit-seed", type=int, default=1000)
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--fit-samples", type=int, default=512, help="x_T drawn for tune (half fit, half held out)")
    ap.add_argument("--eval-samples", type=int, default=4096)
    ap.add_argument(
        "--eval-head",
        type=int,
        default=512,
        help="also score the first N evaluation x_T (0: off; the earlier protocol)",
    )
    ap.add_argument("--out", default="bench-results/tuning")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--peers",
        action="store_true",
        help="also run the installed peers (diffusers, k-diffusion) on the evaluation x_T, every grid",
    )
    ap.add_argument("--plot", default=None, help="write the error-vs-NFE figure here (PNG)")
    ap.add_argument("--scalars", action="store_true", help="tune with the per-step compensation ratios")
    ap.add_argument(
        "--per-step",
        action="store_true",
        help="tune with the per-step search (order, prediction, derivative estimate, corrector; solver usf)",
    )
    ap.add_argument(
        "--statistics",
        action="store_true",
        help="also search dpm-solver-v3 on model statistics computed from the fit x_T (tune(statistics=True))",
    )
    ap.add_argument(
        "--statistics-seed",
        type=int,
        default=None,
        help="with --statistics: compute them once per problem from --fit-samples x_T of this seed instead (neither "
        "the fit nor the evaluation draw), outside the tune's CPU time",
    )
    ap.add_argument(
        "--learn",
        action="store_true",
        help="tune with the learned multistep coefficients (tune(learn=True), solver learned-lms; report in the recipe)",
    )
    ap.add_argument(
        "--with-scalars-csv", default=None, help="tuning.csv of a --scalars run, drawn as a second tuned line in --plot"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

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
            f.flush()  # before a second run on the same OUT can see the file and skip its header
        for name in args.problem.split(","):
            inp = problem_inputs(
                name, args.fit_seed, args.eval_seed, args.fit_samples, args.eval_samples, refs, args.device
            )
            ode, x_fit_run, x_eval_run = inp["ode"], inp["x_fit"], inp["x_eval"]
            ref_fit, err_fit, ref_eval, err_eval = inp["ref_fit"], inp["err_fit"], inp["ref_eval"], inp["err_eval"]
            statistics = True if args.statistics else None
            if args.statistics and args.statistics_seed is not None:
                statistics = other_draw_statistics(inp, args.statistics_seed, args.fit_samples)
            for nfe in [int(v) for v in args.nfe.split(",")]:
                if (name, nfe) in done:
                    print(f"{name} NFE {nfe}: already in {path}")
                    continue
                n0 = ode.nfe
                t0, c0 = time.perf_counter(), time.process_time()
                recipe = tune(
                    ode,
                    x_fit_run,
                    nfe,
                    teacher=ref_fit,
                    seed=0,
                    progress=False,
                    scalars=args.scalars,
                    per_step=args.per_step,
                    statistics=statistics,
                    learn=args.learn,
                )
                secs, cpu = time.perf_counter() - t0, time.process_time() - c0
                calls = ode.nfe - n0
                recipe.save(out / "recipes" / f"{name}-nfe{nfe}.json")
                e = per_sample_mse(recipe, ode, x_eval_run, ref_eval)
                tuned = float(e.mean().sqrt())
                fixed = best_fixed(ode, x_eval_run, nfe, teacher=ref_eval)
                head = min(args.eval_head, args.eval_samples)
                fixed_head = best_fixed(ode, x_eval_run[:head], nfe, teacher=ref_eval[:head]) if head else None
                row = {
                    "problem": name,
                    "nfe": nfe,
                    "tuned_rmse": tuned,
                    "tuned_nfe": recipe.nfe,
                    "tuned_recipe": repr(recipe),
                    "fixed_rmse": fixed["rmse"],
                    "fixed_solver": fixed["solver"],
                    "fixed_grid": fixed["grid"],
                    "fixed_nfe": fixed["nfe"],
                    "ratio": tuned / fixed["rmse"],
                    "tune_heldout_rmse": recipe.report["heldout_rmse"],
                    "tune_fixed_heldout_rmse": recipe.report["best_fixed"]["heldout_rmse"],
                    "tune_seconds": secs,
                    "tune_cpu_seconds": cpu,
                    "tune_model_calls": calls,
                    "fit_samples": recipe.report["fit_samples"],
                    "eval_samples": args.eval_samples,
                    "per_step_kept": recipe.report.get("per_step", {}).get("kept", ""),
                    "teacher_err_fit": err_fit,
                    "teacher_err_eval": err_eval,
                    # the share of the squared error carried by the single worst evaluation x_T
                    "tuned_worst_share": float(e.max() / e.sum()),
                    "tuned_rmse_head": float(e[:head].mean().sqrt()) if head else "",
                    "fixed_rmse_head": fixed_head["rmse"] if head else "",
                    "fixed_solver_head": fixed_head["solver"] if head else "",
                    "fixed_grid_head": fixed_head["grid"] if head else "",
                    "eval_head": head,
                }
                w.writerow(row)
                f.flush()
                print(
                    f"{name} NFE {nfe}: tuned {tuned:.3e} ({recipe!r}) | best fixed {fixed['rmse']:.3e} "
                    f"({fixed['solver']} on {fixed['grid']}) | ratio {tuned / fixed['rmse']:.3f} | "
                    f"tune {secs:.1f} s, {calls} model calls",
                    flush=True,
                )
    peer_best = run_peers(args, out, args.eval_samples, "") if args.peers else {}
    if args.peers and args.eval_head and args.eval_head < args.eval_samples:
        run_peers(args, out, args.eval_head, "-head")
    if args.plot:
        plot(path, peer_best, args.plot, args.with_scalars_csv)
    return 0


def problem_inputs(name: str, fit_seed: int, eval_seed: int, fit_samples: int, eval_samples: int, refs, device="cpu"):
    """One bench problem's tuning inputs: ``{"prob", "ode", "x_fit", "x_eval", "ref_fit", "err_fit", "ref_eval",
    "err_eval"}``; x_T of ``fit_seed`` (tune's) and ``eval_seed`` (the evaluation's, never seen by tune) at
    sigma_max in the model's dtype on ``device``, their float64 dopri5 ends from the reference cache ``refs`` and
    the cache's own error estimate of them (the teacher's error, issue 22 item 6)."""
    from diffsolve.bench.catalog import get_bench_problem

    prob = get_bench_problem(name, eval_samples)
    ode = prob.ode(prob.dtype, device)
    smax = float(prob.schedule.sigma_max)
    scale = prob.x_T_scale(smax)
    x_fit = prob.x_T(fit_seed, fit_samples) * scale
    x_eval = prob.x_T(eval_seed, eval_samples) * scale
    ref_fit, err_fit = refs.get(prob, x_fit, smax, 0.0, fit_seed)
    ref_eval, err_eval = refs.get(prob, x_eval, smax, 0.0, eval_seed)
    return {
        "prob": prob,
        "ode": ode,
        "x_fit": x_fit.to(device=device, dtype=prob.dtype),
        "x_eval": x_eval.to(device=device, dtype=prob.dtype),
        "ref_fit": ref_fit,
        "err_fit": err_fit,
        "ref_eval": ref_eval,
        "err_eval": err_eval,
    }


def other_draw_statistics(inp: dict, seed: int, samples: int):
    """DPM-Solver-v3's model statistics from ``samples`` x_T of ``seed``: neither the fit nor the evaluation draw
    (the configuration docs/tuning.md recommends for ``tune(statistics=...)``)."""
    import diffsolve as ds

    prob = inp["prob"]
    smax = float(prob.schedule.sigma_max)
    x_stats = (prob.x_T(seed, samples) * prob.x_T_scale(smax)).to(inp["x_fit"])
    return ds.model_statistics(inp["ode"], x_stats, progress=False)


def per_sample_mse(recipe, ode, x_T: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The recipe's squared error to the float64 reference, averaged over each x_T's entries (one per x_T)."""
    with torch.no_grad():
        y = recipe.sample(ode, x_T)
    return (y.to(torch.float64).cpu() - ref).reshape(y.shape[0], -1).pow(2).mean(1)


def run_peers(args, out: Path, samples: int, suffix: str) -> dict:
    """``{(problem, nfe): (rmse, label)}``: the best installed peer on the first ``samples`` evaluation x_T, written
    to OUT/peers-best<suffix>.csv."""
    from diffsolve.bench import peers
    from diffsolve.bench.harness import run_bench

    labels = peers.available_peers()
    if not labels:
        print("no peer library installed")
        return {}
    nfes = [int(v) for v in args.nfe.split(",")]
    res = run_bench(
        args.problem.split(","),
        labels,
        ["trailing", "karras", "logsnr"],
        nfes,
        [args.eval_seed],
        out=out / f"peers{suffix}",
        samples=samples,
        cache=out / "references",
        progress=True,
        reports=False,
    )
    best: dict = {}
    for r in res.rows:
        if r["status"] != "ok" or r["rmse"] is None or r["nfe"] is None or r["nfe"] > r["nfe_target"]:
            continue
        k = (r["problem"], r["nfe_target"])
        if k not in best or r["rmse"] < best[k][0]:
            best[k] = (r["rmse"], f"{r['solver']} ({r['grid']})")
    with (out / f"peers-best{suffix}.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["problem", "nfe", "peer_rmse", "peer"])
        for (p, n), (e, lab) in sorted(best.items()):
            w.writerow([p, n, e, lab])
    return best


def plot(path: Path, peer_best: dict, png: str, scalars_csv: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with path.open() as f:
        rows = list(csv.DictReader(f))
    sc_rows = []
    if scalars_csv:
        with open(scalars_csv) as f:
            sc_rows = list(csv.DictReader(f))
    if not peer_best and (path.parent / "peers-best.csv").exists():
        with (path.parent / "peers-best.csv").open() as f:
            peer_best = {(r["problem"], int(r["nfe"])): (float(r["peer_rmse"]), r["peer"]) for r in csv.DictReader(f)}
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = plt.subplots(1, len(problems), figsize=(5.2 * len(problems), 4.0), squeeze=False)
    for ax, p in zip(axes[0], problems):
        rs = sorted((r for r in rows if r["problem"] == p), key=lambda r: int(r["nfe"]))
        n = [int(r["nfe"]) for r in rs]
        ax.plot(n, [float(r["tuned_rmse"]) for r in rs], "o-", color="C3", lw=2, label="diffsolve tuned recipe")
        hd = [r for r in rs if r.get("tuned_rmse_head")]
        if hd:
            ax.plot(
                [int(r["nfe"]) for r in hd],
                [float(r["tuned_rmse_head"]) for r in hd],
                "o:",
                color="C3",
                lw=1,
                ms=3,
                alpha=0.6,
                label=f"tuned, first {hd[0]['eval_head']} x_T only",
            )
        sc = sorted((r for r in sc_rows if r["problem"] == p), key=lambda r: int(r["nfe"]))
        if sc:
            ax.plot(
                [int(r["nfe"]) for r in sc],
                [float(r["tuned_rmse"]) for r in sc],
                "D-",
                color="C1",
                lw=1.5,
                label="tuned + compensation scalars",
            )
        ax.plot(n, [float(r["fixed_rmse"]) for r in rs], "s--", color="C0", label="diffsolve best fixed solver+grid")
        pn = [k for k in n if (p, k) in peer_best]
        if pn:
            ax.plot(
                pn, [peer_best[(p, k)][0] for k in pn], "^:", color="0.4", label="best peer (diffusers, k-diffusion)"
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(n)
        ax.set_xticklabels([str(k) for k in n])
        ax.minorticks_off()
        ax.set_xlabel("NFE (model calls)")
        ax.set_ylabel("RMSE to the exact ODE solution")
        ax.set_title(p)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


if __name__ == "__main__":
    sys.exit(main())
