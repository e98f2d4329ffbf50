"""Every tuning variant in one table: RMSE on unseen x_T and tune CPU seconds, against the best fixed solver+grid
and the best peer (docs/tuning.md, "All variants in one table"; issue 22).

For each problem and NFE, ``diffsolve.tune`` is fitted on ``--fit-samples`` x_T of seed ``--fit-seed`` (split
fit / held-out inside tune), once per variant:

* ``plain``: the fixed-solver recipe (``tune(...)``, the default);
* ``per-step``: USF's per-step search (``tune(per_step=True)``);
* ``v3``: dpm-solver-v3 on model statistics from ``--fit-samples`` x_T of ``--statistics-seed``, neither the fit
  nor the evaluation draw (``tune(statistics=ds.model_statistics(...))``, docs/tuning.md's recommended use); its
  cost column adds the statistics' CPU seconds (computed once per problem) to the tune's;
* ``learn``: the learned multistep coefficients (``tune(learn=True)``, solver learned-lms).

Each recipe then runs on ``--eval-samples`` x_T of seed ``--eval-seed`` (tune never saw them); RMSE to the float64
dopri5 end of each x_T (the benchmark's reference cache, OUT/references). Beside them: the best fixed solver+grid
(``diffsolve.tuning.best_fixed``: every deterministic fixed-call solver x registered grid, default options, no
AFS) picked on the evaluation x_T themselves (an optimistic baseline), and the best peer (diffusers' schedulers and
k-diffusion's samplers on the trailing, karras and logsnr grids) on the same x_T, by ``bench_tuning.run_peers``,
the code path of docs/tuning.md's other peer numbers.

    OMP_NUM_THREADS=1 python benchmarks/tuning_table.py --problem gmm64,mlp-spiral --nfe 3,4,5,6,8,10 \\
        --out bench-results/tuning-table
    OMP_NUM_THREADS=1 python benchmarks/tuning_table.py --problem digits --nfe 3,5 --fit-samples 256 \\
        --eval-samples 512 --out bench-results/tuning-table-digits     # tune_digits.py's protocol
    python benchmarks/tuning_table.py --table bench-results/tuning-table bench-results/tuning-table-digits  # print

One row per (problem, NFE, variant) is appended to OUT/table.csv as it finishes (the variants above plus
``best-fixed`` and ``peer``); a rerun skips the rows already there, and refuses an OUT whose rows were made with
other seeds or sample counts. The recipes are saved as OUT/recipes/<problem>-nfe<N>-<variant>.json. At the end
the markdown table is printed; ``--table OUT ...`` prints the rows of several OUT folders (two protocols, as for
digits above) as one table.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch

VARIANTS = ("plain", "per-step", "v3", "learn")
BASELINES = ("best-fixed", "peer")
#: the tune() keywords of each variant (v3's statistics are computed per problem, from another draw)
TUNE_OPTIONS = {"plain": {}, "per-step": {"per_step": True}, "v3": {}, "learn": {"learn": True}}
FIELDS = [
    "problem",
    "nfe",
    "variant",
    "rmse",
    "nfe_used",
    "recipe",
    "tune_cpu_seconds",
    "statistics_cpu_seconds",
    "tune_seconds",
    "heldout_rmse",
    "fit_seed",
    "fit_samples",
    "eval_seed",
    "eval_samples",
    "statistics_seed",
]
#: the columns that fix the protocol: every row of one OUT must agree on them
PROTOCOL = ("fit_seed", "fit_samples", "eval_seed", "eval_samples")


def read_rows(path: Path) -> list[dict]:
    """The rows of OUT/table.csv, every field of :data:`FIELDS` present ("" where an older file lacks the column)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [{k: (r.get(k) or "") for k in FIELDS} for r in csv.DictReader(f)]


def check_protocol(rows: list[dict], protocol: dict) -> None:
    """A ValueError if a row of ``rows`` was made with another seed or sample count than ``protocol``."""
    for r in rows:
        for k in PROTOCOL:
            if r[k] != "" and int(r[k]) != int(protocol[k]):
                raise ValueError(
                    f"--out holds rows made with {k}={r[k]} ({r['problem']} NFE {r['nfe']} {r['variant']}), this run "
                    f"has {k}={protocol[k]}: give another --out rather than mix two evaluation sets in one table"
                )


def pending(rows: list[dict], problems: list[str], nfes: list[int], variants: list[str]) -> list[tuple]:
    """``(problem, nfe, variant)`` of the requested cells not yet in ``rows``, in run order: per problem, per NFE the
    variants then the best fixed solver+grid, then the problem's peers (run together, after its cells)."""
    done = {(r["problem"], int(r["nfe"]), r["variant"]) for r in rows}
    cells = [*variants, "best-fixed"]
    return [
        t
        for p in problems
        for t in [(p, n, v) for n in nfes for v in cells] + [(p, n, "peer") for n in nfes]
        if t not in done
    ]


def _fmt(x: float) -> str:
    return f"{x:.2e}"


def markdown(rows: list[dict]) -> str:
    """The table: per problem and NFE, each variant's RMSE with its ratio to the best peer (bold: the lowest of the
    tuned variants), the best fixed solver+grid and the best peer, and each variant's tune CPU seconds."""
    cell = {(r["problem"], int(r["nfe"]), r["variant"]): r for r in rows}
    keys = sorted({(r["problem"], int(r["nfe"])) for r in rows}, key=lambda k: (k[0], k[1]))
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    keys.sort(key=lambda k: (problems.index(k[0]), k[1]))
    head = (
        "| problem | NFE | plain recipe | per-step search | v3 on statistics | learned coefficients | best fixed "
        "(solver, grid) | best peer | tune CPU s: plain / per-step / v3 (+ statistics) / learn |"
    )
    lines = [head, "|" + "---|" * 9]
    for p, n in keys:
        peer = cell.get((p, n, "peer"))
        peer_rmse = float(peer["rmse"]) if peer else None
        tuned = {v: float(cell[(p, n, v)]["rmse"]) for v in VARIANTS if (p, n, v) in cell}
        best = min(tuned.values()) if tuned else None
        cols = []
        for v in VARIANTS:
            if v not in tuned:
                cols.append("(not run)")
                continue
            s = _fmt(tuned[v])
            if tuned[v] == best and len(tuned) > 1:
                s = f"**{s}**"
            if peer_rmse:
                s += f" ({tuned[v] / peer_rmse:.2f}x)"
            cols.append(s)
        fixed = cell.get((p, n, "best-fixed"))
        if fixed:
            f = f"{_fmt(float(fixed['rmse']))} ({fixed['recipe']})"
            if peer_rmse:
                f += f" ({float(fixed['rmse']) / peer_rmse:.2f}x)"
            cols.append(f)
        else:
            cols.append("(not run)")
        cols.append(f"{_fmt(peer_rmse)} ({peer['recipe']})" if peer else "(not run)")
        costs = []
        for v in VARIANTS:
            r = cell.get((p, n, v))
            if r is None or not r["tune_cpu_seconds"]:
                costs.append("-")
            elif v == "v3" and r["statistics_cpu_seconds"]:
                costs.append(f"{float(r['tune_cpu_seconds']):.0f} (+{float(r['statistics_cpu_seconds']):.0f})")
            else:
                costs.append(f"{float(r['tune_cpu_seconds']):.0f}")
        lines.append(f"| {p} | {n} | " + " | ".join(cols) + " | " + " / ".join(costs) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="gmm64,mlp-spiral")
    ap.add_argument("--nfe", default="3,4,5,6,8,10")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--fit-seed", type=int, default=1000)
    ap.add_argument("--eval-seed", type=int, default=0)
    ap.add_argument("--fit-samples", type=int, default=512, help="x_T drawn for tune (half fit, half held out)")
    ap.add_argument("--eval-samples", type=int, default=4096)
    ap.add_argument("--statistics-seed", type=int, default=2000, help="the v3 variant's statistics draw")
    ap.add_argument("--no-peers", action="store_true", help="skip the peers (their column stays empty)")
    ap.add_argument(
        "--table",
        nargs="*",
        metavar="OUT",
        default=None,
        help="only print the table: of these OUT folders together (e.g. two protocols), or of --out",
    )
    ap.add_argument("--out", default="bench-results/tuning-table")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.table is not None:
        print(markdown([r for o in args.table or [args.out] for r in read_rows(Path(o) / "table.csv")]))
        return 0
    out = Path(args.out)
    path = out / "table.csv"
    rows = read_rows(path)
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            from diffsolve.validation import suggest

            raise SystemExit(f"--variants: unknown variant {v!r}{suggest(v, VARIANTS)}; known: {', '.join(VARIANTS)}")
    protocol = {k: getattr(args, k) for k in PROTOCOL}
    check_protocol(rows, protocol)
    problems = args.problem.split(",")
    nfes = [int(v) for v in args.nfe.split(",")]
    todo = pending(rows, problems, nfes, variants)
    if args.no_peers:
        todo = [t for t in todo if t[2] != "peer"]
    torch.set_num_threads(args.threads)
    if todo:
        run(args, out, path, todo)
    print(markdown(read_rows(path)))
    return 0


def run(args, out: Path, path: Path, todo: list[tuple]) -> None:
    from bench_tuning import other_draw_statistics, per_sample_mse, problem_inputs, run_peers
    from tqdm import tqdm

    from diffsolve.bench.reference import ReferenceCache
    from diffsolve.tuning import best_fixed, tune

    (out / "recipes").mkdir(parents=True, exist_ok=True)
    refs = ReferenceCache(out / "references")
    new = not path.exists()
    base = {k: getattr(args, k) for k in PROTOCOL}
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
            f.flush()

        def write(row: dict) -> None:
            w.writerow({**base, **row})
            f.flush()

        def run_problem_peers(p: str, nfes: list[int]) -> None:
            ns = Namespace(problem=p, nfe=",".join(map(str, nfes)), eval_seed=args.eval_seed)
            best = run_peers(ns, out, args.eval_samples, "")  # the reference cache is OUT/references, shared
            for n in nfes:
                if (p, n) not in best or not math.isfinite(best[(p, n)][0]):
                    tqdm.write(f"{p} NFE {n}: no peer result (no peer library installed, or every peer failed)")
                    continue
                e, label = best[(p, n)]
                write({"problem": p, "nfe": n, "variant": "peer", "rmse": e, "recipe": label})
                tqdm.write(f"{p} NFE {n} best peer: {e:.3e} ({label})")

        bar = tqdm(todo, desc="tuning table", dynamic_ncols=True)
        inputs, stats, peers_done = {}, {}, set()
        for p, n, v in bar:
            bar.set_postfix_str(f"{p} NFE {n} {v}")
            if v == "peer":
                if p not in peers_done:
                    peers_done.add(p)
                    run_problem_peers(p, [t[1] for t in todo if t[0] == p and t[2] == "peer"])
                continue
            if p not in inputs:
                inputs = {
                    p: problem_inputs(p, args.fit_seed, args.eval_seed, args.fit_samples, args.eval_samples, refs)
                }
            inp = inputs[p]
            ode = inp["ode"]
            if v == "best-fixed":
                fixed = best_fixed(ode, inp["x_eval"], n, teacher=inp["ref_eval"])
                write(
                    {
                        "problem": p,
                        "nfe": n,
                        "variant": v,
                        "rmse": fixed["rmse"],
                        "nfe_used": fixed["nfe"],
                        "recipe": f"{fixed['solver']}, {fixed['grid']}",
                    }
                )
                tqdm.write(f"{p} NFE {n} best fixed: {fixed['rmse']:.3e} ({fixed['solver']}, {fixed['grid']})")
                continue
            options = dict(TUNE_OPTIONS[v])
            stats_cpu = ""
            if v == "v3":
                if p not in stats:
                    c0 = time.process_time()
                    s = other_draw_statistics(inp, args.statistics_seed, args.fit_samples)
                    stats = {p: (s, time.process_time() - c0)}
                options["statistics"], stats_cpu = stats[p]
            t0, c0 = time.perf_counter(), time.process_time()
            recipe = tune(ode, inp["x_fit"], n, teacher=inp["ref_fit"], seed=0, progress=False, **options)
            secs, cpu = time.perf_counter() - t0, time.process_time() - c0
            recipe.save(out / "recipes" / f"{p}-nfe{n}-{v}.json")
            rmse = float(per_sample_mse(recipe, ode, inp["x_eval"], inp["ref_eval"]).mean().sqrt())
            write(
                {
                    "problem": p,
                    "nfe": n,
                    "variant": v,
                    "rmse": rmse,
                    "nfe_used": recipe.nfe,
                    "recipe": repr(recipe),
                    "tune_cpu_seconds": cpu,
                    "statistics_cpu_seconds": stats_cpu,
                    "tune_seconds": secs,
                    "heldout_rmse": recipe.report["heldout_rmse"],
                    "statistics_seed": args.statistics_seed if v == "v3" else "",
                }
            )
            tqdm.write(f"{p} NFE {n} {v}: {rmse:.3e} ({recipe!r}), tune {cpu:.0f} s CPU")


if __name__ == "__main__":
    sys.exit(main())
