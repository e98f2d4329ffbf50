"""Guided sampling on ``digits-cond``: one measured cell, the guidance x NFE picture and ``diffsolve bench --problem
digits-cond --guidance ...`` (docs/guidance.md, "Measured on digits-cond").

A cell samples requested labels from one x_T with a guidance method, a solver and a number of model calls (NFE)
on the ``trailing`` grid (the most steps whose real call count fits the NFE) and scores the samples with
:meth:`~diffsolve.bench.digits_cond.DigitsCondProblem.metrics`: accuracy of the shipped classifier to the
requested labels, class-wise FDD, FDD and saturation. benchmarks/bench_guidance.py runs its sweeps through
:func:`run_cell`; ``make demo`` draws :func:`picture` with a small batch.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from .errors import BenchError

__all__ = ["GRID", "PICTURE_ROWS", "DEFAULT_SCALES", "parse_guidance", "run_cell", "run_cell_samples", "picture"]

#: the grid of every cell (DPM-Solver++'s guided experiment uses uniform time steps ending at the data)
GRID = "trailing"
#: the scale a ``--guidance METHOD`` without ``:SCALE`` gets: the large scales of docs/guidance.md's methods table
DEFAULT_SCALES = {"cfg": 8.0, "apg": 8.0, "cfg-rescale": 8.0, "cfg-zero-star": 8.0, "cfg++": 1.0, "autoguidance": 2.0}
#: rows of the picture: (label, method, scale, options, solver); one class per row
PICTURE_ROWS = [
    ("cfg 8", "cfg", 8.0, {}, "dpmpp-2m"),
    ("cfg 8 + dyn. threshold", "cfg", 8.0, {"threshold": True}, "dpmpp-2m"),
    ("cfg 8, interval (0.3, 5]", "cfg", 8.0, {"sigma_interval": (0.3, 5.0)}, "dpmpp-2m"),
    ("apg 8", "apg", 8.0, {"eta": 0.0}, "dpmpp-2m"),
    ("cfg-rescale 8", "cfg-rescale", 8.0, {"phi": 0.7}, "dpmpp-2m"),
    ("cfg-zero-star 8", "cfg-zero-star", 8.0, {}, "dpmpp-2m"),
    ("cfg++ 1.0 (ddim)", "cfg++", 1.0, {}, "ddim"),
    ("autoguidance 2", "autoguidance", 2.0, {}, "dpmpp-2m"),
]


def parse_guidance(spec: str) -> tuple[str, float, dict]:
    """``"METHOD[:SCALE][:key=value...]"`` -> ``(method, scale, options)``, checked by building the method once.

    ``cfg:8`` is classifier-free guidance with a float scale (exactly ``ds.wrap(guidance=8)``); a missing scale
    is :data:`DEFAULT_SCALES`' (cfg 8, cfg++ 1, autoguidance 2, ...). Options are the method's keyword options
    (``apg:8:eta=0.5``) or the cell's ``threshold=True`` (dynamic thresholding) and ``clip=True`` (x0 clipped to
    [-1, 1]). Raises :class:`BenchError` naming the spec (an unknown method with the known list and a did-you-mean).
    """
    from ..guidance import list_guidance, make_guidance
    from ..validation import suggest
    from .spec import _literal

    if not isinstance(spec, str) or not spec.strip():
        raise BenchError(f"--guidance: expected METHOD[:SCALE][:key=value], got {spec!r}")
    name, *parts = spec.strip().split(":")
    known = list_guidance()
    if name not in known:
        raise BenchError(
            f"--guidance {spec!r}: unknown method {name!r}{suggest(name, known)}; known: {', '.join(known)}"
        )
    scale, options = DEFAULT_SCALES.get(name, 1.0), {}
    for k, part in enumerate(parts):
        if "=" in part:
            key, value = part.split("=", 1)
            options[key] = _literal(value)
        elif k == 0:
            try:
                scale = float(part)
            except ValueError:
                raise BenchError(f"--guidance {spec!r}: the scale {part!r} is not a number") from None
        else:
            raise BenchError(f"--guidance {spec!r}: {part!r} must look like key=value (e.g. apg:8:eta=0.5)")
    method_options = {k: v for k, v in options.items() if k not in ("threshold", "clip")}
    if name == "autoguidance":
        method_options["weak_model"] = lambda x, t, **kw: x  # only to check the options; cells use the weak UNet
    try:
        make_guidance(name, scale=scale, **method_options)
    except (ValueError, TypeError) as exc:
        raise BenchError(f"--guidance {spec!r}: {exc}") from None
    if not math.isfinite(scale):
        raise BenchError(f"--guidance {spec!r}: the scale must be finite")
    return name, scale, options


def _ode(problem, labels, method, scale, options):
    options = dict(options)
    threshold, clip = options.pop("threshold", False), options.pop("clip", False)
    if method == "cfg" and not options:
        guidance = float(scale)  # exactly ds.wrap(guidance=w)
    else:
        guidance = problem.guidance(method, scale, **options)
    from ..thresholding import Clipping, DynamicThresholding

    transform = DynamicThresholding(0.995) if threshold else (Clipping(-1.0, 1.0) if clip else None)
    return problem.ode(torch.float32, labels=labels, guidance=guidance, denoised_transform=transform)


def _steps(problem, solver, nfe, grid=GRID):
    from .pictures import steps_for_nfe

    return steps_for_nfe(solver, nfe, grid=grid, schedule=problem.schedule)


def run_cell_samples(problem, labels, x_T, *, method, scale, solver, nfe, options, seed, steps=None, grid=GRID):
    """The samples of one cell (None when no step count of ``solver`` fits ``nfe`` on ``grid``)."""
    from ..sampling import grid as make_grid
    from ..sampling import sample

    ode = _ode(problem, labels, method, scale, options)
    steps = steps or _steps(problem, solver, nfe, grid)
    if steps is None:
        return None
    sigmas = make_grid(grid, problem.schedule, steps)
    return sample(ode, x_T, solver, sigmas=sigmas, generator=torch.Generator().manual_seed(seed))


def run_cell(problem, labels, x_T, *, method, scale, solver, nfe, threshold, options, seed, steps=None, grid=GRID):
    """One cell: sample ``labels`` from ``x_T`` and return the metrics, the steps, the model calls made and the
    seconds, or ``{"error": why}`` where the cell cannot run (no step count fits, a solver that refuses CFG++,
    non-finite samples)."""
    from ..wrapper import NonFiniteError

    options = dict(options)
    if threshold:
        options["threshold"] = True
    if steps is None:
        steps = _steps(problem, solver, nfe, grid)
    row = {"steps": steps}
    if steps is None:
        return {**row, "error": f"no step count of {solver} fits NFE {nfe}"}
    t0 = time.perf_counter()
    ode = _ode(problem, labels, method, scale, options)
    from ..sampling import grid as make_grid
    from ..sampling import sample

    try:
        x = sample(
            ode,
            x_T,
            solver,
            sigmas=make_grid(grid, problem.schedule, steps),
            generator=torch.Generator().manual_seed(seed),
        )
    except ValueError as exc:  # a solver without the renoise hook refuses CFG++
        return {**row, "error": str(exc).split(":")[0]}
    except NonFiniteError as exc:
        return {**row, "error": f"non-finite: {exc}"}
    row["seconds"] = time.perf_counter() - t0
    row["nfe_used"] = ode.nfe
    row.update(problem.metrics(x, labels))
    return row


def picture(
    path: str | Path,
    seed: int = 0,
    nfes=(5, 10, 20),
    n: int = 9,
    cols: int = 3,
    ref_steps: int = 250,
    rows=PICTURE_ROWS,
    problem=None,
) -> Path:
    """Rows: guidance methods at a large scale (row i samples class i); columns: NFE ``nfes`` with the row's
    solver and the same method with DDIM at ``ref_steps`` steps; the same ``n`` x_T in every cell, drawn as a
    mosaic ``cols`` wide. docs/images/guidance_methods.png is ``n=9``; ``make demo`` draws ``n=3, cols=3,
    ref_steps=100`` (one row of digits per cell; about 8 s of CPU)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .digits_cond import DigitsCondProblem
    from .pictures import image_mosaic, save_figure

    problem = problem or DigitsCondProblem()
    x_T = problem.x_T(seed, n)
    size = (8.2, 1.75 * len(rows) + 0.6) if n > cols else (8.2, 0.8 * len(rows) + 0.6)
    fig, axes = plt.subplots(len(rows), len(nfes) + 1, figsize=size, squeeze=False)
    for i, (label, method, scale, opts, solver) in enumerate(rows):
        labels = torch.full((n,), i % 10, dtype=torch.long)
        for j, nfe in enumerate([*nfes, None]):
            x = run_cell_samples(
                problem,
                labels,
                x_T,
                method=method,
                scale=scale,
                solver=solver if nfe else "ddim",
                nfe=nfe or ref_steps,
                options=opts,
                seed=seed,
                steps=None if nfe else ref_steps,
            )
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if x is None:
                ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
            else:
                ax.imshow(image_mosaic(problem.to_images(x), cols).numpy(), cmap="gray_r", vmin=0, vmax=1)
            if i == 0:
                ax.set_title(f"NFE {nfe}" if nfe else f"DDIM {ref_steps}", fontsize=10)
            if j == 0:
                if n > cols:
                    ax.set_ylabel(f"{label}\n{solver}, class {i % 10}", fontsize=8)
                else:  # one row of digits per cell: the label beside it, horizontal
                    ax.set_ylabel(f"{label}\n{solver}", fontsize=7, rotation=0, ha="right", va="center")
    title = f"digits-cond: guidance methods at a large scale, the same {n} x_T in every cell"
    fig.suptitle(title + ("" if n > cols else "; row i samples class i"), fontsize=10)
    return save_figure(fig, path)


# -- resumable results ----------------------------------------------------------------------------------------
def done_rows(path: Path) -> dict:
    """The rows of a JSON-lines results file by their ``key`` (empty where the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["key"]] = row
    return out


def append_row(path: Path, row: dict) -> None:
    """Append one row to a JSON-lines file and flush it to disk (a killed run keeps every finished cell)."""
    with Path(path).open("a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


# -- diffsolve bench --problem digits-cond --guidance ... ---------------------------------------------------------
def bench(
    guidance: list[str],
    solvers: list[str] | None = None,
    nfes: list[int] | None = None,
    grids: list[str] | None = None,
    seeds: list[int] | None = None,
    samples: int | None = None,
    out: str | Path = "bench-results",
    resume: bool = True,
    progress: bool = True,
    file=None,
) -> list[dict]:
    """Every guidance spec x solver x grid x NFE x seed on digits-cond; one JSON line per cell in
    ``OUT/guidance.jsonl`` (a rerun skips the cells there unless ``resume=False``) and a table on ``file``.

    The labels are the 297 held-out digits' (:meth:`DigitsCondProblem.eval_labels`, so class-wise FDD compares
    with the real digits' score), or with ``samples`` given ``0, 1, ..., 9, 0, ...`` (at least 20: class-wise FDD
    needs two samples per class)."""
    from ..sampling import list_grids, list_solvers
    from ..validation import suggest
    from .digits_cond import DigitsCondProblem

    file = file or sys.stdout
    specs = [(g, *parse_guidance(g)) for g in guidance]
    solvers = list(solvers or ["ddim", "dpmpp-2m"])
    for s in solvers:
        if s not in list_solvers():
            raise BenchError(f"unknown solver {s!r}{suggest(s, list_solvers())}; known: {', '.join(list_solvers())}")
    grids = list(grids or [GRID])
    for g in grids:
        if g not in list_grids():
            raise BenchError(f"unknown grid {g!r}{suggest(g, list_grids())}; known: {', '.join(list_grids())}")
    nfes, seeds = list(nfes or [5, 10, 20]), list(seeds or [0])
    problem = DigitsCondProblem()
    if samples is None:
        labels = problem.eval_labels()
    elif samples < 20:
        raise BenchError(f"--samples {samples}: digits-cond needs at least 20 (class-wise FDD: 2 per class)")
    else:
        labels = torch.arange(int(samples)) % 10
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "guidance.jsonl"
    done = done_rows(path) if resume else {}
    cells = [(sp, s, g, n, seed) for sp in specs for s in solvers for g in grids for n in nfes for seed in seeds]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cells), desc="guided bench", unit="cell", file=sys.stderr)
    rows = []
    for (spec, method, scale, opts), solver, grid, nfe, seed in cells:
        key = (
            f"{method}|{scale:g}|{json.dumps(opts, sort_keys=True)}|{solver}|{grid}|{nfe}|n{labels.numel()}|seed{seed}"
        )
        row = done.get(key)
        if row is None:
            x_T = problem.x_T(seed, labels.numel())
            row = run_cell(
                problem, labels, x_T, method=method, scale=scale, solver=solver, nfe=nfe, threshold=False,
                options=opts, seed=seed, grid=grid,
            )  # fmt: skip
            row.update(key=key, guidance=spec, method=method, scale=scale, solver=solver, grid=grid, nfe=nfe, seed=seed)
            append_row(path, row)
        rows.append(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    print(format_table(rows, real=problem.real_fdd_classwise() if samples is None else None), file=file)
    print(f"results: {path}", file=file)
    return rows


def format_table(rows: list[dict], real: float | None = None) -> str:
    """The cells as a markdown table (accuracy, class-wise FDD, FDD, saturation)."""
    lines = []
    if real is not None:
        lines.append(f"real held-out digits: class-wise FDD {real:.1f}")
    lines.append("| guidance | solver | grid | NFE | steps | accuracy | class-wise FDD | FDD | saturation |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        head = f"| {r['guidance']} | {r['solver']} | {r['grid']} | {r['nfe']} | {r.get('steps') or '-'} |"
        if "error" in r:
            lines.append(f"{head} {r['error']} | | | |")
        else:
            lines.append(
                f"{head} {r['accuracy']:.3f} | {r['fdd_classwise']:.1f} | {r['fdd']:.1f} | {r['saturation']:.4f} |"
            )
    return "\n".join(lines)
