"""Tune the recipes shipped for the digits model (diffsolve/bench/recipes/digits-nfe{N}.json).

Each recipe is ``diffsolve.tune`` on x_T of seed 1000 (256 draws: half fit, half held out), so the
benchmark's and the pictures' x_T (seed 0) are never seen by it. ``make demo``'s picture runs them
in its "tuned recipe" row. Seeded and deterministic: the same inputs give the same recipe, bit for bit.

    python benchmarks/tune_digits.py --nfe 3,5,10 --scalars   # 3-5 minutes per NFE on one core

Guided recipes for the class-conditional model (``digits-cond``, issue 20): the same x_T with the labels
0, 1, ..., 9, 0, 1, ... (each class 25-26 times, split at random into fit and held-out parts like x_T), under
classifier-free guidance at ``--cfg`` (a float scale: exactly ``ds.wrap(guidance=w)``); the teacher solves
the same guided ODE. A recipe already in ``--out`` is kept (rerun with ``--force``), so a stopped run resumes:

    python benchmarks/tune_digits.py --problem digits-cond --cfg 8 --nfe 5 --samples 128 \
        --solvers ddim,dpmpp-2m,dpmpp-3m,unipc,ipndm,ghvb --refine 2 --max-evals 120   # digits-cond-cfg8-nfe5.json

(the shipped ones: NFE 5 and NFE 10, each in its own process; a reduced search for the shared CPU: six solvers,
two refined, 120 Nelder-Mead evaluations each; about half an hour per NFE there).

``--per-step`` adds USF's per-step search, ``--learn`` the learned multistep coefficients (docs/tuning.md); give
``--out`` elsewhere to keep the shipped files.
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
    ap.add_argument("--solvers", default=None, help="comma list of solvers to search (default: every one)")
    ap.add_argument("--refine", type=int, default=3, help="configurations whose grid is refined (default 3)")
    ap.add_argument("--max-evals", type=int, default=None, help="Nelder-Mead evaluations per refined configuration")
    ap.add_argument(
        "--compare",
        default=None,
        metavar="RESULTS.jsonl",
        help="digits-cond: instead of tuning, score the recipes of --out for --nfe against the best fixed solver+grid "
        "on the benchmark's x_T and labels (see compare()), rows appended to RESULTS.jsonl",
    )
    ap.add_argument(
        "--per-step", action="store_true", help="also search USF's per-step choices (tune(per_step=True), solver usf)"
    )
    ap.add_argument(
        "--learn",
        action="store_true",
        help="also fit the multistep coefficients and sigmas by gradient (tune(learn=True), solver learned-lms)",
    )
    ap.add_argument(
        "--evaluate",
        type=int,
        default=None,
        metavar="N",
        help="digits: instead of tuning, score the recipes of --out for --nfe and the package's shipped ones on N x_T "
        "of the benchmark's seed 0 (never seen by tune; see evaluate())",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.evaluate:
        print(evaluate(Path(args.out), [int(n) for n in args.nfe.split(",")], args.evaluate))
        return 0
    if args.compare:
        torch.set_num_threads(1)
        nfes = [int(n) for n in args.nfe.split(",")]
        print(compare(Path(args.out), args.cfg, nfes, Path(args.compare)))
        return 0
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
        solvers = args.solvers.split(",") if args.solvers else None
        recipe = ds.tune(
            ode,
            x_T,
            nfe=nfe,
            solvers=solvers,
            scalars=args.scalars,
            per_step=args.per_step,
            learn=args.learn,
            progress=True,
            refine=args.refine,
            max_evals=args.max_evals,
        )
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


def compare(folder: Path, cfg: float, nfes, results: Path, tol: float = 1e-7) -> str:
    """The guided recipes of ``folder`` against the best fixed solver+grid of their own search (default options,
    the lowest held-out error in tune's sweep) and DPM-Solver++(2M) on ``trailing`` (docs/guidance.md's plain
    cell), on the benchmark's x_T (seed 0, never seen by tune) with the 297 held-out digits' labels: RMSE to the
    guided ODE's exact solution (dopri5 at rtol = atol = ``tol``, float64 state), accuracy, class-wise FDD,
    saturation. One JSON line per row in ``results`` (resumable); returns a markdown table."""
    import json

    from diffsolve.analytic import reference_solution
    from diffsolve.bench.guided import append_row, done_rows

    problem = get_bench_problem("digits-cond")
    labels = problem.eval_labels()
    x_T = problem.x_T(0, labels.numel(), torch.float32)
    ode = problem.ode(torch.float32, labels=labels, guidance=float(cfg))
    done = done_rows(results)
    ref = None
    lines = [
        f"| NFE | sampler | steps | RMSE to the CFG {cfg:g} ODE | accuracy | class-wise FDD | saturation |",
        "|---|---|---|---|---|---|---|",
    ]
    for nfe in nfes:
        recipe = ds.Recipe.load(folder / f"digits-cond-cfg{cfg:g}-nfe{nfe}.json")
        best = recipe.report["best_fixed"]
        runs = [
            (f"tuned recipe: {recipe.solver}{'+afs' if recipe.afs else ''}", dict(recipe=recipe)),
            (f"best fixed: {best['solver']} / {best['grid']}", dict(solver=best["solver"], grid=best["grid"])),
        ]
        plain = ds.steps_for_nfe("dpmpp-2m", nfe, grid="trailing", schedule=problem.schedule)
        runs.append(("dpmpp-2m / trailing", dict(solver="dpmpp-2m", grid="trailing", steps=plain)))
        for label, how in runs:
            key = f"cfg{cfg:g}|nfe{nfe}|{label}|tol{tol:g}"
            if key not in done:
                if ref is None:
                    view = ode.start_run(input_dtype=torch.float32)
                    with torch.no_grad():
                        ref = reference_solution(
                            view, x_T.double(), float(problem.schedule.sigma_max), rtol=tol, atol=tol
                        )
                if "recipe" in how:
                    x, steps = ds.sample(ode, x_T, recipe=how["recipe"]), len(how["recipe"].sigmas) - 1
                else:
                    steps = how.get("steps") or ds.steps_for_nfe(
                        how["solver"], nfe, grid=how["grid"], schedule=problem.schedule
                    )
                    x = ds.sample(ode, x_T, how["solver"], sigmas=ds.grid(how["grid"], problem.schedule, steps))
                row = {"key": key, "nfe": nfe, "label": label, "steps": steps}
                row["rmse"] = float((x.double() - ref).pow(2).mean().sqrt())
                row.update(problem.metrics(x, labels))
                append_row(results, row)
                done[key] = row
            r = done[key]
            lines.append(
                f"| {nfe} | {label} | {r['steps']} | {r['rmse']:.4f} | {r['accuracy']:.3f} | {r['fdd_classwise']:.1f} "
                f"| {r['saturation']:.4f} |"
            )
    print(json.dumps({"reference_tol": tol}))
    return "\n".join(lines)


def evaluate(folder: Path, nfes, samples: int, tol: float = 1e-8) -> str:
    """The recipes ``digits-nfe{N}.json`` of ``folder`` against the package's shipped ones on ``samples`` x_T of the
    benchmark's seed 0 (tune saw seed 1000 only): RMSE to the exact ODE solution (dopri5 at rtol = atol = ``tol``,
    float64 state, as tune's teacher), and the share of the squared error held by the worst 10% of those x_T; a
    markdown table."""
    from diffsolve.analytic import reference_solution

    problem = get_bench_problem("digits")
    ode = problem.ode(problem.dtype)
    x_T = problem.x_T(0, samples).to(problem.dtype)
    cache = folder / f"evaluate-reference-seed0-{samples}-tol{tol:g}.pt"  # the reference is solved once per folder
    if cache.exists():
        ref = torch.load(cache)
    else:
        view = ode.start_run(input_dtype=x_T.dtype)
        with torch.no_grad():
            ref = reference_solution(view, x_T.double(), float(problem.schedule.sigma_max), rtol=tol, atol=tol)
        torch.save(ref, cache)
    lines = [
        f"| NFE | shipped recipe | RMSE | worst 10% share | {folder} | RMSE | worst 10% share | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for nfe in nfes:
        row = []
        for path in (RECIPES / f"digits-nfe{nfe}.json", folder / f"digits-nfe{nfe}.json"):
            recipe = ds.Recipe.load(path)
            x = ds.sample(ode, x_T, recipe=recipe)
            e = (x.double() - ref).pow(2).reshape(samples, -1).mean(1)  # per x_T
            worst = e.sort(descending=True).values[: max(1, samples // 10)].sum() / e.sum()
            name = f"{recipe.solver}{'+afs' if recipe.afs else ''}{'(gaussian)' if 'gaussian' in recipe.params else ''}"
            row.append((name, float(e.mean().sqrt()), float(worst)))
        (a, ra, wa), (b, rb, wb) = row
        lines.append(f"| {nfe} | {a} | {ra:.4e} | {wa:.2f} | {b} | {rb:.4e} | {wb:.2f} | {rb / ra:.3f} |")
    return "\n".join(lines)


def tune_labels(n: int) -> torch.Tensor:
    """The labels the guided recipes are tuned on: 0, 1, ..., 9, 0, 1, ... (every class, balanced)."""
    return torch.arange(int(n)) % 10


if __name__ == "__main__":
    raise SystemExit(main())
