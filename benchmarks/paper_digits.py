"""The DDIM paper's experiments on the shipped digits model (docs/paper.md).

    python benchmarks/paper_digits.py                 # everything; resumes from benchmarks/results/paper_digits.json
    python benchmarks/paper_digits.py --fresh         # start over

Parts (Song et al., "Denoising Diffusion Implicit Models", ICLR 2021):

* Table 1: FDD (Frechet distance of the digit classifier's features to the 297 held-out
  digits; this data set's FID) of ``ddim`` with eta in {0, 0.2, 0.5, 1} and with
  ``variance="large"`` (sigma-hat, E25) at S in {10, 20, 50, 100, 1000} steps on the paper's
  uniform grid (``ddim-uniform``), ``--samples`` samples per cell, one x_T batch per seed
  shared by every cell of that seed. Baselines at the same sample size: real train digits
  vs the held-out ones.
* Consistency (Sec. 5.2): the classifier's label of the eta = 0 sample at S = 10, 20, 50
  against S = 1000 from the same x_T.
* Interpolation (Sec. 5.3, E43): ``ds.slerp`` between x_T pairs, decoded with 50-step DDIM;
  a figure in docs/images/digits_interpolation.png.
* Reconstruction (Sec. 5.4, Table 2): held-out digits encoded with ``ds.invert`` (DDIM,
  S steps) and decoded with ``ds.sample`` (the same grid), per-pixel MSE in [0, 1].

Results are written after every cell to ``--out`` (JSON); a rerun skips what is there.
One torch thread; float32 sampling, as the benchmark runs the network.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch

import diffsolve as ds
from diffsolve.bench.catalog import get_bench_problem
from diffsolve.bench.digits import frechet_distance

ROOT = Path(__file__).resolve().parents[1]
ETAS = (0.0, 0.2, 0.5, 1.0)
STEPS = (10, 20, 50, 100, 1000)
VARIANTS = [(f"eta={e:g}", {"eta": e}) for e in ETAS] + [("sigma-hat", {"eta": 1.0, "variance": "large"})]
GRID = "ddim-uniform"
RECON_STEPS = (10, 20, 50, 100, 200, 1000)
#: DDIM paper, Table 1, CIFAR-10 column (FID) and Table 2 (CIFAR-10 reconstruction MSE per dimension)
PAPER_CIFAR10 = {
    "eta=0": [13.36, 6.84, 4.67, 4.16, 4.04],
    "eta=0.2": [14.04, 7.11, 4.77, 4.25, 4.09],
    "eta=0.5": [16.66, 8.35, 5.25, 4.46, 4.29],
    "eta=1": [41.07, 18.36, 8.01, 5.78, 4.73],
    "sigma-hat": [367.43, 133.37, 32.72, 9.99, 3.17],
}
PAPER_RECON = {10: 0.014, 20: 0.0065, 50: 0.0023, 100: 0.0009, 200: 0.0004, 500: 0.0001, 1000: 0.0001}


def _problem(model_dir):
    if model_dir is None:
        return get_bench_problem("digits")
    from diffsolve.bench.digits import CLASSIFIER_WEIGHTS, UNET_WEIGHTS, digits_problem

    return digits_problem(
        unet_path=Path(model_dir) / UNET_WEIGHTS.name, classifier_path=Path(model_dir) / CLASSIFIER_WEIGHTS.name
    )


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Store:
    """A JSON dict on disk, rewritten atomically after every result."""

    def __init__(self, path: Path, settings: dict, fresh: bool):
        self.path = path
        self.data = {"settings": settings, "cells": {}}
        if path.exists() and not fresh:
            old = json.loads(path.read_text())
            if old.get("settings") == settings:
                self.data = old
            else:
                print(f"{path}: settings changed ({old.get('settings')} -> {settings}); starting over")

    def __contains__(self, key):
        return key in self.data["cells"]

    def __getitem__(self, key):
        return self.data["cells"][key]

    def put(self, key, value):
        self.data["cells"][key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        os.replace(tmp, self.path)


_WORKER: dict = {}


def _init_worker(model_dir) -> None:
    torch.set_num_threads(1)
    _WORKER["problem"] = _problem(model_dir)


def _table_cell(job):
    """One Table 1 cell: (key, result)."""
    key, label, opts, S, seed, samples = job
    problem = _WORKER["problem"]
    t0 = time.perf_counter()
    x_T = problem.x_T(seed, samples).float()
    gen = torch.Generator().manual_seed(10_000 + seed)
    x0 = ds.sample(problem.ode(torch.float32), x_T, "ddim", steps=S, grid=GRID, generator=gen, **opts).double()
    p = problem.probabilities(x0)
    return key, {
        "fdd": problem.fdd(x0),
        "top_prob": float(p.max(1).values.mean()),
        "labels": "".join(map(str, p.argmax(1).tolist())),
        "wall_s": time.perf_counter() - t0,
    }


def table_cells(model_dir, store, samples, seeds, steps, bar, workers: int = 1):
    """Every Table 1 cell not in the store; the slowest (S = 1000) first so that workers finish together."""
    jobs = [
        (f"table/{label}/S={S}/seed={seed}", label, opts, S, seed, samples)
        for seed in seeds
        for S in sorted(steps, reverse=True)
        for label, opts in VARIANTS
    ]
    jobs = [j for j in jobs if j[0] not in store]

    def done(key, result):
        store.put(key, result)
        bar.update(1)
        bar.set_postfix_str(f"{key} FDD={result['fdd']:.2f}")

    if workers <= 1:
        _init_worker(model_dir)
        for j in jobs:
            done(*_table_cell(j))
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(model_dir,)
    ) as pool:
        for fut in as_completed([pool.submit(_table_cell, j) for j in jobs]):
            done(*fut.result())


def baselines(problem, store, samples, seeds):
    if "baseline" in store:
        return
    test_p = problem.probabilities(problem.data("test"))
    train = problem.data("train")
    subsets = []
    for seed in seeds:  # real-vs-real at the sample size of the table's cells
        idx = torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(seed))[:samples]
        subsets.append(problem.fdd(train[idx]))
    store.put(
        "baseline",
        {
            "fdd_test_vs_train": frechet_distance(problem.features(problem.data("test")), problem.features(train)),
            "fdd_train_subset_vs_test": subsets,
            "subset_size": min(samples, train.shape[0]),
            "top_prob_test": float(test_p.max(1).values.mean()),
            "test_accuracy": float((test_p.argmax(1) == problem.labels("test")).double().mean()),
        },
    )


def reconstruction(problem, store, recon_steps, bar):
    ode = problem.ode(torch.float32)
    x0 = problem.data("test").float()
    for S in recon_steps:
        key = f"recon/S={S}"
        if key in store:
            continue
        x_T = ds.invert(ode, x0, "ddim", steps=S, grid=GRID)
        back = ds.sample(ode, x_T, "ddim", steps=S, grid=GRID)
        err = float((problem.to_images(back) - problem.to_images(x0)).pow(2).mean())
        store.put(key, {"mse": err, "x_T_std": float(x_T.std())})
        bar.update(1)
        bar.set_postfix_str(f"reconstruction S={S}: {err:.2e}")


def interpolation_figure(problem, path: Path, pairs: int = 6, points: int = 11, steps: int = 50) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ode = problem.ode(torch.float32)
    z = problem.x_T(99, 2 * pairs).float()
    alphas = torch.linspace(0, 1, points, dtype=torch.float64)
    rows = []
    for k in range(pairs):
        zs = ds.slerp(z[2 * k], z[2 * k + 1], alphas)  # (points, 1, H, W)
        rows.append(problem.to_images(ds.sample(ode, zs.float(), "ddim", steps=steps, grid=GRID)))
    fig, axes = plt.subplots(pairs, points, figsize=(points * 0.8, pairs * 0.85 + 0.5), squeeze=False)
    for i, imgs in enumerate(rows):
        for j in range(points):
            ax = axes[i][j]
            ax.imshow(imgs[j].numpy(), cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{float(alphas[j]):.1f}", fontsize=8)
    fig.suptitle(f"digits: slerp of x_T (E43), each point decoded with {steps}-step DDIM (eta = 0)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _labels(cell) -> np.ndarray:
    """A cell's classifier labels (stored as one digit character per sample)."""
    return np.frombuffer(cell["labels"].encode(), dtype=np.uint8).astype(np.int64) - ord("0")


def _ms(values):
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def markdown(store, seeds, steps=STEPS) -> str:
    cells = store.data["cells"]
    b = cells["baseline"]
    lines = [
        f"Table 1 on digits: FDD to the 297 held-out digits, mean +- std over seeds {','.join(map(str, seeds))}, "
        f"{store.data['settings']['samples']} samples per cell, `ddim` on the `{GRID}` grid "
        "(CIFAR-10 FID of the paper in brackets).",
        "",
        "| | " + " | ".join(f"S = {S}" for S in steps) + " |",
        "|---|" + "---:|" * len(steps),
    ]
    for label, _ in VARIANTS:
        row = []
        for S in steps:
            vals = [
                cells[f"table/{label}/S={S}/seed={s}"]["fdd"] for s in seeds if f"table/{label}/S={S}/seed={s}" in cells
            ]
            if not vals:
                row.append("")
                continue
            m, sd = _ms(vals)
            paper = PAPER_CIFAR10[label][STEPS.index(S)] if S in STEPS else math.nan
            row.append(f"{m:.2f} +- {sd:.2f} ({paper:g})")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    sm, ssd = _ms(b["fdd_train_subset_vs_test"])
    lines += [
        "",
        f"Real digits: FDD(train subset of {b['subset_size']} vs held-out) = {sm:.2f} +- {ssd:.2f}; "
        f"FDD(all 1,500 train vs held-out) = {b['fdd_test_vs_train']:.2f}. Classifier: held-out accuracy "
        f"{b['test_accuracy']:.4f}, mean top-class probability {b['top_prob_test']:.4f}.",
        "",
    ]
    lines += [
        "Consistency: share of x_T whose eta = 0 sample gets the same classifier label as at S = 1000.",
        "",
        "| S | " + " | ".join(str(S) for S in (10, 20, 50, 100)) + " |",
        "|---|" + "---:|" * 4,
    ]
    agree = []
    for S in (10, 20, 50, 100):
        vals = []
        for s in seeds:
            a, ref = cells.get(f"table/eta=0/S={S}/seed={s}"), cells.get(f"table/eta=0/S=1000/seed={s}")
            if a and ref:
                vals.append(float(np.mean(_labels(a) == _labels(ref))))
        agree.append(f"{_ms(vals)[0]:.3f} +- {_ms(vals)[1]:.3f}" if vals else "")
    lines.append("| label agreement with S = 1000 | " + " | ".join(agree) + " |")
    lines += ["", "Done-when checks (eta = 0):", ""]
    s50 = [cells[f"table/eta=0/S=50/seed={s}"] for s in seeds if f"table/eta=0/S=50/seed={s}" in cells]
    if s50:
        tp = _ms([c["top_prob"] for c in s50])[0]
        shares = np.stack([np.bincount(_labels(c), minlength=10) / len(c["labels"]) for c in s50])
        lines.append(
            f"- mean top-class probability, 50-step DDIM: {tp:.4f} (held-out real: {b['top_prob_test']:.4f}; "
            f"difference {abs(tp - b['top_prob_test']):.4f})"
        )
        lines.append(
            f"- class shares of 50-step DDIM samples (all seeds): min {shares.min():.3f}, max {shares.max():.3f}"
        )
    s100 = [cells[f"table/eta=0/S=100/seed={s}"]["fdd"] for s in seeds if f"table/eta=0/S=100/seed={s}" in cells]
    if s100:
        lines.append(
            f"- FDD(DDIM, S = 100) = {_ms(s100)[0]:.2f} vs 3 x FDD(held-out vs train) = "
            f"{3 * b['fdd_test_vs_train']:.2f}"
        )
    for S in (10, 20):
        means = {}
        for label in ("eta=0", "eta=1", "sigma-hat"):
            v = [
                cells[f"table/{label}/S={S}/seed={s}"]["fdd"] for s in seeds if f"table/{label}/S={S}/seed={s}" in cells
            ]
            means[label] = _ms(v)[0] if v else math.nan
        ok = means["eta=0"] < means["eta=1"] < means["sigma-hat"]
        lines.append(
            f"- S = {S}: FDD eta=0 {means['eta=0']:.2f} < eta=1 {means['eta=1']:.2f} < sigma-hat "
            f"{means['sigma-hat']:.2f}: {'yes' if ok else 'NO'}"
        )
    rec = [(int(k.split("=")[1]), v["mse"]) for k, v in cells.items() if k.startswith("recon/")]
    rec.sort()
    if rec:
        lines += [
            "",
            "Reconstruction (encode with `ds.invert`, decode with `ds.sample`, DDIM, same grid; per-pixel "
            "MSE with pixels in [0, 1]; the paper's CIFAR-10 Table 2 in brackets):",
            "",
            "| S | " + " | ".join(str(S) for S, _ in rec) + " |",
            "|---|" + "---:|" * len(rec),
            "| MSE | " + " | ".join(f"{v:.2e} ({PAPER_RECON.get(S, float('nan')):g})" for S, v in rec) + " |",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=300, help="samples per Table 1 cell (default 300)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", default=",".join(map(str, STEPS)), help="Table 1 columns (default 10,20,50,100,1000)")
    p.add_argument("--recon-steps", default=",".join(map(str, RECON_STEPS)))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "paper_digits.json")
    p.add_argument("--figure", type=Path, default=ROOT / "docs" / "images" / "digits_interpolation.png")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--no-figure", action="store_true", help="skip the interpolation figure")
    p.add_argument("--workers", type=int, default=3, help="processes for Table 1 cells (default 3)")
    p.add_argument("--model-dir", type=Path, default=None, help="weights folder (default: the shipped ones)")
    a = p.parse_args()
    torch.set_num_threads(1)
    from tqdm.auto import tqdm

    seeds = [int(s) for s in a.seeds.split(",")]
    steps = [int(s) for s in a.steps.split(",")]
    recon_steps = [int(s) for s in a.recon_steps.split(",") if s.strip()]
    problem = _problem(a.model_dir)
    store = Store(a.out, {"samples": a.samples, "grid": GRID, "model": problem.fingerprint()}, a.fresh)
    t0, c0 = time.time(), cpu_seconds()
    baselines(problem, store, a.samples, seeds)
    total = len(seeds) * len(VARIANTS) * len(steps) + len(recon_steps)
    done = sum(1 for k in store.data["cells"] if k.startswith(("table/", "recon/")))
    with tqdm(total=total, initial=done, desc="paper", unit="cell") as bar:
        table_cells(a.model_dir, store, a.samples, seeds, steps, bar, a.workers)
        reconstruction(problem, store, recon_steps, bar)
    if not a.no_figure:
        interpolation_figure(problem, a.figure)
    md = markdown(store, seeds, steps)
    a.out.with_suffix(".md").write_text(md)
    print(md)
    child = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"wrote {a.out}, {a.out.with_suffix('.md')} and {a.figure}; this run: wall {time.time() - t0:.0f} s, "
        f"CPU {cpu_seconds() - c0 + child.ru_utime + child.ru_stime:.0f} s (workers included)"
    )


if __name__ == "__main__":
    main()
