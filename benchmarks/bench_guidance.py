"""Guided sampling on digits-cond: DPM-Solver++'s guided experiment and the guidance methods (docs/guidance.md).

    python benchmarks/bench_guidance.py reference                 # DDIM 250 at each scale, DDIM 50 at CFG 3, real digits
    python benchmarks/bench_guidance.py solvers                   # CFG scales x solvers x NFE x thresholding
    python benchmarks/bench_guidance.py methods                   # each guidance method at a large scale x solvers x NFE
    python benchmarks/bench_guidance.py report                    # every cell as a markdown table
    python benchmarks/bench_guidance.py compact                   # the matrices of docs/guidance.md
    python benchmarks/bench_guidance.py picture                   # docs/images/guidance_methods.png
    python benchmarks/bench_guidance.py heun                      # why heun fails under CFG at NFE 10

Options: ``--scales 1,2,4,8,12 --solvers ddim,dpmpp-2m --nfe 5,10,20 --threshold both|on|off --out DIR``,
``--methods "cfg++,cfg++ 0.6"`` (labels of ``METHODS``, methods part only).
Every cell samples the 297 labels of the held-out digits (``DigitsCondProblem.eval_labels``) from the seed
``--seed`` in float32 on the CPU with one thread, on the ``trailing`` grid with the most steps that fit the NFE,
and appends one JSON line to ``DIR/<part>.jsonl`` as soon as it is done: a rerun skips the cells already there
(resumable). Metrics: accuracy to the requested labels, class-wise FDD, FDD, saturation (see
diffsolve/bench/digits_cond.py). Thresholding is Imagen's dynamic thresholding at p = 0.995
(``ds.DynamicThresholding``), as DPM-Solver++ uses for pixel-space guided sampling; the methods part also
has static clipping of x0hat to [-1, 1] (``cfg+clip``).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

import diffsolve as ds
from diffsolve.bench.digits_cond import DigitsCondProblem
from diffsolve.bench.guided import append_row as _append
from diffsolve.bench.guided import done_rows as _done
from diffsolve.bench.guided import picture, run_cell

SOLVERS = ["ddim", "dpm-solver-2s", "dpm-solver-3s", "dpmpp-2s", "dpmpp-3s", "dpmpp-2m", "unipc", "heun"]
SOLVERS += ["euler-ancestral"]
#: the methods part: (label, method name, scale, options); "cfg" with a float is ds.wrap(guidance=w)
METHODS = [
    ("cfg", "cfg", 8.0, {}),
    ("cfg+threshold", "cfg", 8.0, {"threshold": True}),
    ("cfg+clip", "cfg", 8.0, {"clip": True}),
    ("cfg-interval", "cfg", 8.0, {"sigma_interval": (0.3, 5.0)}),
    ("apg", "apg", 8.0, {"eta": 0.0, "norm_threshold": 0.0, "momentum": 0.0}),
    ("apg-momentum", "apg", 8.0, {"eta": 0.0, "norm_threshold": 4.0, "momentum": -0.5}),
    ("cfg-rescale", "cfg-rescale", 8.0, {"phi": 0.7}),
    ("cfg-zero-star", "cfg-zero-star", 8.0, {"zero_init_steps": 1}),
    ("cfg++", "cfg++", 1.0, {}),
    ("cfg++ 0.6", "cfg++", 0.6, {}),
    ("autoguidance", "autoguidance", 2.0, {}),
]
METHOD_SOLVERS = ["ddim", "dpmpp-2m", "unipc", "dpmpp-2s", "heun", "euler-ancestral"]


def _floats(text):
    return [float(v) for v in text.split(",") if v]


def _ints(text):
    return [int(v) for v in text.split(",") if v]


def _cells(args):
    if args.part == "reference":
        cells = [("cfg", s, "ddim", 250, False, {}) for s in args.scales]
        cells += [("cfg", 3.0, "ddim", 50, False, {})]
        return cells
    if args.part == "solvers":
        thr = {"both": [False, True], "on": [True], "off": [False]}[args.threshold]
        return [
            ("cfg", s, solver, n, t, {}) for s in args.scales for t in thr for n in args.nfe for solver in args.solvers
        ]
    if args.part == "methods":
        solvers = args.solvers if args.solvers_given else METHOD_SOLVERS
        return [
            (label, (name, scale), solver, n, False, opts)
            for label, name, scale, opts in METHODS
            if args.methods is None or label in args.methods
            for n in args.nfe
            for solver in solvers
        ]
    raise SystemExit(f"unknown part {args.part!r}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["reference", "solvers", "methods", "report", "compact", "picture", "heun"])
    p.add_argument("--scales", type=_floats, default=[1.0, 2.0, 4.0, 8.0, 12.0])
    p.add_argument("--solvers", type=lambda t: t.split(","), default=None)
    p.add_argument("--nfe", type=_ints, default=[5, 10, 20])
    p.add_argument("--threshold", choices=["both", "on", "off"], default="both")
    p.add_argument("--methods", type=lambda t: t.split(","), default=None, help="labels of METHODS (methods part)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-results/guidance"))
    args = p.parse_args()
    args.solvers_given = args.solvers is not None
    args.solvers = args.solvers or SOLVERS
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "report":
        print(report(args.out))
        return
    if args.part == "compact":
        print(compact(args.out))
        return
    if args.part == "heun":
        print(heun())
        return
    if args.part == "picture":
        print(picture(Path("docs/images/guidance_methods.png"), seed=args.seed))
        return
    from tqdm.auto import tqdm

    problem = DigitsCondProblem()
    labels = problem.eval_labels()
    x_T = problem.x_T(args.seed, labels.numel())
    path = args.out / f"{args.part}.jsonl"
    done = _done(path)
    if args.part == "reference" and "real" not in done:
        _append(path, {"key": "real", "fdd_classwise": problem.real_fdd_classwise(), "accuracy": 1.0})
    cells = _cells(args)
    for label, scale, solver, nfe, threshold, opts in tqdm(cells, desc=args.part, unit="cell"):
        name = label
        if isinstance(scale, tuple):
            name, scale = scale
        key = f"{label}|{scale:g}|{solver}|{nfe}|{'thr' if threshold else 'plain'}|seed{args.seed}"
        if key in done:
            continue
        steps = nfe if args.part == "reference" else None
        row = run_cell(
            problem,
            labels,
            x_T,
            method=name,
            scale=scale,
            solver=solver,
            nfe=nfe,
            threshold=threshold,
            options=opts,
            seed=args.seed,
            steps=steps,
        )
        row.update(key=key, label=label, method=name, scale=scale, solver=solver, nfe=nfe, threshold=threshold)
        _append(path, row)


# -- heun under guidance (docs/math.md#guidance-heun) ----------------------------------------------------------
def heun(n: int = 50, scales=(1.0, 8.0)) -> str:
    """RMSE to the guided ODE's solution (DPM-Solver++(2M), 200 logsnr steps, float64 model and state; its own
    error at CFG 1 is 5e-5 against 400 steps) and accuracy of heun, ddim and dpmpp-2s on the same 5 trailing steps
    and heun at 10 and 20 steps: labels 0..9 repeated, x_T of seed 0."""
    problem = DigitsCondProblem()
    labels = torch.arange(n) % 10
    x_T = problem.x_T(0, n).double()
    cells = [("ddim", 5), ("heun", 5), ("dpmpp-2s", 5), ("heun", 10), ("heun", 20)]
    lines = ["| CFG | " + " | ".join(f"{s} {k} steps" for s, k in cells) + " |", "|---" * (len(cells) + 1) + "|"]
    for w in scales:
        ode = problem.ode(torch.float64, labels=labels, guidance=w)
        ref = ds.sample(ode, x_T, "dpmpp-2m", sigmas=ds.grid("logsnr", problem.schedule, 200))
        row = []
        for solver, steps in cells:
            x = ds.sample(ode, x_T, solver, sigmas=ds.grid("trailing", problem.schedule, steps))
            rmse = float((x - ref).pow(2).mean().sqrt())
            row.append(f"{rmse:.3f} / {problem.accuracy(x.float(), labels):.2f}")
        lines.append(f"| {w:g} | " + " | ".join(row) + " |")
    return "\n".join(lines)


# -- compact tables (docs/guidance.md) ---------------------------------------------------------------
def _cell(r, base):
    if r is None:
        return ""
    if "error" in r:
        return "refused" if "cannot run" in r["error"] else "fails"
    ratio = f" ({r['fdd_classwise'] / base:.2f}x)" if base else ""
    return f"{r['accuracy']:.2f} / {r['fdd_classwise']:.0f}{ratio}"


def compact(out: Path) -> str:
    """Matrices of 'accuracy / class-wise FDD (x the 250-step DDIM reference at CFG 8)'."""
    ref = _done(out / "reference.jsonl")
    base = next((r["fdd_classwise"] for k, r in ref.items() if k != "real" and r["nfe"] == 250), None)
    lines = []
    rows = list(_done(out / "solvers.jsonl").values())
    for nfe in sorted({r["nfe"] for r in rows}):
        cols = sorted({(r["scale"], r["threshold"]) for r in rows if r["nfe"] == nfe})
        if not cols:
            continue
        head = [f"CFG {s:g}{' + dyn. thr.' if t else ''}" for s, t in cols]
        lines += [f"\nNFE {nfe}: accuracy / class-wise FDD" + (" (x reference, CFG 8 columns)" if base else ""), ""]
        lines += ["| solver | " + " | ".join(head) + " |", "|---" * (len(cols) + 1) + "|"]
        for solver in SOLVERS:
            cells = []
            for s, t in cols:
                hit = [r for r in rows if (r["nfe"], r["scale"], r["threshold"], r["solver"]) == (nfe, s, t, solver)]
                cells.append(_cell(hit[0] if hit else None, base if s == 8.0 else None))
            if any(cells):
                lines.append(f"| {solver} | " + " | ".join(cells) + " |")
    rows = list(_done(out / "methods.jsonl").values())
    for nfe in sorted({r["nfe"] for r in rows}):
        solvers = [v for v in METHOD_SOLVERS if any(r["solver"] == v and r["nfe"] == nfe for r in rows)]
        lines += [f"\nNFE {nfe}: accuracy / class-wise FDD (x reference)", ""]
        lines += ["| method (scale) | " + " | ".join(solvers) + " |", "|---" * (len(solvers) + 1) + "|"]
        for label, _, scale, _ in METHODS:
            cells = []
            for v in solvers:
                hit = [r for r in rows if (r["label"], r["nfe"], r["solver"]) == (label, nfe, v)]
                cells.append(_cell(hit[0] if hit else None, base))
            if any(cells):
                lines.append(f"| {label} ({scale:g}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- report ------------------------------------------------------------------------------------------
def _fmt(v, digits=1):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def report(out: Path) -> str:
    ref = _done(out / "reference.jsonl")
    lines = []
    if ref:
        real = ref.get("real", {}).get("fdd_classwise")
        lines.append(f"Real held-out digits: class-wise FDD {_fmt(real)}.\n")
        lines.append("| reference | scale | accuracy | class-wise FDD | FDD | saturation |")
        lines.append("|---|---|---|---|---|---|")
        for r in sorted((r for k, r in ref.items() if k != "real"), key=lambda r: (r["nfe"], r["scale"])):
            lines.append(
                f"| DDIM {r['nfe']} | {r['scale']:g} | {_fmt(r.get('accuracy'), 3)} | {_fmt(r.get('fdd_classwise'))} "
                f"| {_fmt(r.get('fdd'))} | {_fmt(r.get('saturation'), 3)} |"
            )
    for part in ("solvers", "methods"):
        rows = list(_done(out / f"{part}.jsonl").values())
        if not rows:
            continue
        refs = {r["scale"]: r for k, r in ref.items() if k != "real" and r["nfe"] == 250}
        lines.append("")
        lines.append(
            f"| {'scale' if part == 'solvers' else 'method'} | solver | NFE | thr | accuracy | class-wise FDD "
            "| x ref | saturation |"
        )
        lines.append("|---|---|---|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: (r["label"], r["scale"], r["nfe"], r["threshold"], r["solver"])):
            base = refs.get(8.0 if part == "methods" else r["scale"], {}).get("fdd_classwise")
            ratio = r.get("fdd_classwise") / base if base and r.get("fdd_classwise") is not None else None
            head = f"{r['scale']:g}" if part == "solvers" else f"{r['label']} ({r['scale']:g})"
            if "error" in r:
                lines.append(
                    f"| {head} | {r['solver']} | {r['nfe']} | {'y' if r['threshold'] else 'n'} | "
                    f"{r['error'][:60]} | | | |"
                )
                continue
            lines.append(
                f"| {head} | {r['solver']} | {r['nfe']} | {'y' if r['threshold'] else 'n'} | {_fmt(r['accuracy'], 3)} "
                f"| {_fmt(r['fdd_classwise'])} | {_fmt(ratio, 2)} | {_fmt(r['saturation'], 3)} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
