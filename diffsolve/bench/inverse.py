"""Inverse problems on the shipped digits model (issue 21, docs/restoration.md).

    python benchmarks/bench_inverse.py                  # every cell; resumes from benchmarks/results/inverse.jsonl
    python benchmarks/bench_inverse.py --report         # the table (markdown) and the figures from what is there
    python benchmarks/bench_inverse.py --fresh          # start over
    diffsolve bench --task inverse --out DIR            # the same, results and figures in DIR

The 297 held-out digits (``get_bench_problem("digits")``, 8x8, model space [-1, 1]), the shipped
eps-UNet as the prior and the shipped classifier as the judge. Tasks, each at measurement noise
sigma_y = 0 and 0.05 (model space): ``inpaint50`` (random 50% of the pixels kept, one mask per digit),
``box4`` (a 4x4 box missing in the middle), ``sr2`` (2x average-pooling super-resolution), ``blur``
(5x5 Gaussian, std 1 pixel, zero padding). y = A(x0) + sigma_y n (inpainting: on the kept pixels only).

Rows: ``naive`` (A^+ y; nearest upsampling of y for sr2; y itself for blur) and each method at its
settings (METHODS below). One restoration per measurement, no averaging; metrics per cell: PSNR
(peak-to-peak 2 in model space, mean over digits of 10 log10(4 / MSE)), data consistency
||A x - y||_2 (mean over digits), accuracy of the shipped classifier on the restored digit against
its true label, NFE per digit and wall time for all 297. Each cell is appended to ``--out`` as one
JSON line when it finishes (a rerun skips the cells there); one torch thread; float32.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from ..inverse import Blur, Downsample, Inpaint, restore
from .catalog import get_bench_problem

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "results" / "inverse.jsonl"
NOISES = (0.0, 0.05)
TASKS = ("inpaint50", "box4", "sr2", "blur")
#: row name -> (method, steps, options); NFE per digit = steps (DAPS: levels x inner steps)
METHODS = {
    "ddnm-20": ("ddnm", 20, {}),
    "ddnm-50": ("ddnm", 50, {}),
    "ddnm-100": ("ddnm", 100, {}),
    "pigdm-20": ("pigdm", 20, {}),
    "pigdm-50": ("pigdm", 50, {}),
    "pigdm-100": ("pigdm", 100, {}),
    "pigdm-200": ("pigdm", 200, {}),
    "ddrm-20": ("ddrm", 20, {}),
    "ddrm-100": ("ddrm", 100, {}),
    "dps-100": ("dps", 100, {"zeta": 1.0}),
    "dps-1000": ("dps", 1000, {"zeta": 0.1}),
    "red-diff-100": ("red-diff", 100, {}),
    "daps-100": ("daps", 25, {"inner_steps": 4}),
}
#: the cells of issue 21's Done-when run first
FIRST = (("inpaint50", 0.0), ("sr2", 0.05))
KEEP_IMAGES = 4  # restored digits kept per cell for the picture


def operator(task: str, n: int):
    if task == "inpaint50":
        return Inpaint.random((n, 1, 8, 8), 0.5, torch.Generator().manual_seed(1))
    if task == "box4":
        return Inpaint.box((1, 8, 8), 2, 2, 4, 4)
    if task == "sr2":
        return Downsample(2)
    if task == "blur":
        return Blur.gaussian(5, 1.0)
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def measure(op, x, noise):
    y = op.forward(x)
    if noise > 0:
        y = y + noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=y.dtype)
    if isinstance(op, Inpaint):
        y = op.forward(y)  # missing pixels are not measured at all
    return y


def naive(task, op, y):
    if task == "sr2":
        return torch.nn.functional.interpolate(y, scale_factor=2, mode="nearest")
    if task == "blur":
        return y
    return op.pinv(y, (1, 8, 8))


def psnr_each(x, truth):
    """Per-digit PSNR: 10 log10(peak^2 / MSE) with the peak-to-peak range 2 of model space."""
    mse = (x - truth).pow(2).reshape(x.shape[0], -1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(4.0 / mse)


def psnr(x, truth):
    return float(psnr_each(x, truth).mean())


def cell_key(task, noise, row):
    return f"{task}|{noise:g}|{row}"


def load(out: Path) -> dict[str, dict]:
    """The finished cells of ``out`` and of its siblings ``<stem>-*.jsonl`` (runs of some rows in parallel)."""
    done = {}
    for path in [out, *sorted(out.parent.glob(f"{out.stem}-*.jsonl"))]:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    key = cell_key(rec["task"], rec["noise"], rec["row"])
                    if key not in done or done[key]["n"] <= rec["n"]:  # more digits win; then the later file
                        done[key] = rec
    return done


def run(args):
    from tqdm import tqdm

    torch.set_num_threads(1)
    problem = get_bench_problem("digits")
    ode = problem.ode(torch.float32)
    truth = problem.data("test").float()[: args.n]
    labels = problem.labels("test")[: args.n]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.fresh and out.exists():
        out.unlink()
    done = load(out)
    rows = ["naive", *METHODS] if not args.rows else args.rows
    unknown = [r for r in rows if r not in METHODS and r != "naive"]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: naive, {', '.join(METHODS)}")
    pairs = [p for p in FIRST if p[0] in args.tasks] + [
        (t, s) for t in args.tasks for s in NOISES if (t, s) not in FIRST
    ]
    cells = [(t, s, r) for t, s in pairs for r in rows]
    todo = [c for c in cells if cell_key(*c) not in done]
    for task, noise, row in tqdm(todo, desc="inverse cells", disable=args.quiet):
        op = operator(task, len(truth))
        y = measure(op, truth, noise)
        t0, n0 = time.perf_counter(), ode.nfe
        if row == "naive":
            x = naive(task, op, y)
        else:
            method, steps, options = METHODS[row]
            gen = torch.Generator().manual_seed(3)
            x = restore(ode, y, op, method, steps=steps, noise_std=noise, generator=gen, **options)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            pred = problem.probabilities(x.double()).argmax(1)
        rec = {
            "task": task,
            "noise": noise,
            "row": row,
            "method": METHODS[row][0] if row != "naive" else "naive",
            "psnr": psnr(x, truth),
            "psnr_each": psnr_each(x, truth).tolist(),
            "dc": float((op.forward(x) - y).reshape(len(x), -1).norm(dim=1).mean()),
            "accuracy": float((pred == labels).double().mean()),
            "nfe": ode.nfe - n0,
            "seconds": seconds,
            "n": len(truth),
            "images": x[:KEEP_IMAGES].reshape(min(KEEP_IMAGES, len(x)), -1).tolist(),
        }
        with out.open("a") as f:
            f.write(json.dumps(rec) + "\n")
    return load(out)


def table(done: dict[str, dict], tasks=TASKS) -> str:
    rows = ["naive", *METHODS]
    head = "| method | NFE | " + " | ".join(f"{t} σy={s:g}" for t in tasks for s in NOISES) + " |"
    lines = [head, "|---|---:|" + "---:|" * (len(tasks) * len(NOISES))]
    for row in rows:
        cells, nfe = [], None
        for t in tasks:
            for s in NOISES:
                rec = done.get(cell_key(t, s, row))
                if rec is None:
                    cells.append("–")
                    continue
                nfe = rec["nfe"]
                cells.append(f"{rec['psnr']:.2f} / {100 * rec['accuracy']:.0f}% / {rec['dc']:.3f}")
        if nfe is not None:
            ns = {rec["n"] for rec in done.values() if rec["row"] == row}
            label = row if ns == {297} else f"{row} (first {min(ns)} digits)"
            lines.append(f"| {label} | {nfe} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def subset_table(done: dict[str, dict], n: int) -> str:
    """Mean PSNR over the first ``n`` digits of every row that has them (per-digit PSNRs), in the cells
    where a row was run on just those ``n``: compares it (dps-1000) with the others on the same digits."""
    cells = [
        (t, s)
        for t in TASKS
        for s in NOISES
        if any(r["n"] == n and (r["task"], r["noise"]) == (t, s) for r in done.values())
    ]
    lines = [
        "| method | NFE | " + " | ".join(f"{t} σy={s:g}" for t, s in cells) + " |",
        "|---|---:|" + "---:|" * len(cells),
    ]
    for row in ["naive", *METHODS]:
        vals, nfe = [], None
        for t, s in cells:
            rec = done.get(cell_key(t, s, row))
            if rec is None or rec["n"] < n:
                vals.append("–")
                continue
            nfe = rec["nfe"]
            each = rec["psnr_each"][:n]
            vals.append(f"{sum(each) / len(each):.2f}")
        if nfe is not None:
            lines.append(f"| {row} | {nfe} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def figures(done: dict[str, dict], truth, outdir: Path, op_images) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # PSNR against NFE, one panel per task (noise 0 solid, 0.05 dashed)
    fig, axes = plt.subplots(1, len(TASKS), figsize=(4 * len(TASKS), 3.4))
    methods = sorted({m for m, _, _ in METHODS.values()})
    for ax, task in zip(axes, TASKS):
        for k, m in enumerate(methods):
            for s, style in zip(NOISES, ("-", "--")):
                recs = sorted(
                    (rec["nfe"], rec["psnr"], rec["n"])
                    for rec in done.values()
                    if rec["task"] == task and rec["noise"] == s and rec["method"] == m
                )
                if recs:
                    ax.plot(
                        [r[0] for r in recs], [r[1] for r in recs], style, color=f"C{k}", label=m if s == 0 else None
                    )
                    for nfe, value, n in recs:  # hollow: a run on fewer than all 297 digits
                        face = f"C{k}" if n == 297 else "none"
                        ax.plot([nfe], [value], "o", color=f"C{k}", markerfacecolor=face)
        for s, style in zip(NOISES, ("-", "--")):
            rec = done.get(cell_key(task, s, "naive"))
            if rec:
                ax.axhline(rec["psnr"], color="gray", ls=style, lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("NFE per digit")
        ax.set_title(f"{task} (solid σy=0, dashed 0.05; gray: naive; hollow: subset)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("PSNR (dB)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(outdir / "inverse_psnr_nfe.png", dpi=110)
    plt.close(fig)

    # picture: rows truth, measurement, naive, each method; columns tasks (noise 0.05), digit 0
    rows = ["truth", "measurement", "naive", *METHODS]
    # per task the noise level with the most finished rows (0.05 on ties)
    noise_of = {t: max(NOISES, key=lambda s: (sum(cell_key(t, s, r) in done for r in METHODS), s)) for t in TASKS}
    fig, axes = plt.subplots(len(rows), len(TASKS), figsize=(1.4 * len(TASKS) + 1.2, 1.3 * len(rows)))
    for j, task in enumerate(TASKS):
        for i, row in enumerate(rows):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if row == "truth":
                img = truth[0, 0]
            elif row == "measurement":
                img = op_images[(task, noise_of[task])]
            else:
                rec = done.get(cell_key(task, noise_of[task], row))
                if rec is None:
                    ax.axis("off")
                    continue
                img = torch.tensor(rec["images"][0]).reshape(8, 8)
            ax.imshow(img.clamp(-1, 1), cmap="gray", vmin=-1, vmax=1)
            if j == 0:
                ax.set_ylabel(row, fontsize=7, rotation=0, ha="right", va="center")
            if i == 0:
                ax.set_title(f"{task}\nσy={noise_of[task]:g}", fontsize=8)
    fig.tight_layout()
    fig.savefig(outdir / "inverse_gallery.png", dpi=110)
    plt.close(fig)


def report(args, done):
    problem = get_bench_problem("digits")
    truth = problem.data("test").float()[: args.n]
    op_images = {}
    for task in TASKS:
        for noise in NOISES:
            op = operator(task, len(truth))
            y = measure(op, truth, noise)
            # the measurement as a picture: sr2's 4x4 y shown by nearest upsampling
            op_images[(task, noise)] = naive(task, op, y)[0, 0] if task == "sr2" else y[0, 0]
    outdir = Path(args.figures)
    outdir.mkdir(parents=True, exist_ok=True)
    figures(done, truth, outdir, op_images)
    text = table(done)
    small = min((rec["n"] for rec in done.values()), default=args.n)
    if small < max((rec["n"] for rec in done.values()), default=small):
        text += f"\n\nMean PSNR (dB) on the first {small} digits, every row that has them:\n\n" + subset_table(
            done, small
        )
    print(text)
    Path(args.out).with_suffix(".md").write_text(
        "Inverse problems on the 297 held-out digits: PSNR (dB) / classifier accuracy / ||A x - y||_2\n"
        "(`python benchmarks/bench_inverse.py`; one restoration per measurement)\n\n" + text + "\n"
    )


def configure(p: argparse.ArgumentParser, out: str = str(OUT), figures: str = str(ROOT / "docs" / "images")) -> None:
    p.add_argument("--out", default=out, help="results (JSON lines; the table goes beside it as .md)")
    p.add_argument("--figures", default=figures, help="folder of the two PNG figures")
    p.add_argument("--n", type=int, default=297, help="held-out digits (default: all 297)")
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--noises", nargs="+", type=float, default=None, help="measurement noise levels (default 0 0.05)")
    p.add_argument("--rows", nargs="+", default=None, help=f"method rows to run (default: all): {', '.join(METHODS)}")
    p.add_argument("--fresh", action="store_true", help="forget earlier results")
    p.add_argument("--report", action="store_true", help="only write the table and the figures")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def handle(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    done = load(Path(args.out)) if args.report else run(args)
    report(args, done)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(p)
    return handle(p.parse_args(argv))


#: the picture's columns (task, measurement noise): `make demo` draws it (restoration_png)
PICTURE_CELLS = (("inpaint50", 0.0), ("box4", 0.0), ("sr2", 0.05), ("blur", 0.0))
PICTURE_METHODS = ("ddnm", "pigdm", "dps")


def restoration_cells(n: int = 9, steps: int = 50, methods=PICTURE_METHODS, cells=PICTURE_CELLS):
    """The restorations behind :func:`restoration_png`: ``{(row, task): (n, 1, 8, 8) model-space tensor}`` with
    rows "truth", "measurement" (the naive A^+ y / nearest upsampling / y) and each method at ``steps`` (its
    default settings, DDIM as the solver, seed 3), on the first ``n`` held-out digits."""
    problem = get_bench_problem("digits")
    ode = problem.ode(torch.float32)
    truth = problem.data("test").float()[:n]
    out = {}
    for task, noise in cells:
        op = operator(task, n)
        y = measure(op, truth, noise)
        out[("truth", task)] = truth
        out[("measurement", task)] = naive(task, op, y)
        for method in methods:
            gen = torch.Generator().manual_seed(3)
            out[(method, task)] = restore(ode, y, op, method, steps=steps, noise_std=noise, generator=gen)
    return out


def restoration_png(path, n: int = 9, steps: int = 50, methods=PICTURE_METHODS, cells=PICTURE_CELLS) -> Path:
    """A picture of restored held-out digits: rows truth, measurement and each method, columns the tasks
    (docs/restoration.md; ``make demo`` writes it as bench-results/digits_restoration.png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .pictures import image_mosaic, save_figure

    images = restoration_cells(n, steps, methods, cells)
    rows = ["truth", "measurement", *methods]
    cols = max(1, int(round(n**0.5)))
    fig, axes = plt.subplots(len(rows), len(cells), figsize=(2.0 * len(cells) + 1.0, 2.0 * len(rows) + 0.5))
    for i, row in enumerate(rows):
        for j, (task, noise) in enumerate(cells):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            x = images[(row, task)].clamp(-1, 1)
            ax.imshow(image_mosaic((x[:, 0] + 1) / 2, cols).numpy(), cmap="gray_r", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(f"{task}, noise {noise:g}", fontsize=9)
            if j == 0:
                label = {"truth": "truth", "measurement": "naive (A^+ y)"}.get(row, f"{row} ({steps} NFE)")
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(f"restoring {n} held-out digits (ds.restore, DDIM steps)", fontsize=11)
    return save_figure(fig, path)
