"""``diffsolve sample --problem digits``: samples of the shipped digits model as a PNG grid or an .npz array.

Every sample ``i`` has its own generators, seeded from ``(seed, i)``: one draws its x_T, one
its solver noise (stochastic solvers). Samples run in fixed chunks of ``--batch``; under
``torchrun`` rank ``r`` takes chunks ``r, r + W, ...`` and rank 0 gathers them, so the array
written is the same, bit for bit, as one process's (each chunk sees the same inputs and the
same batch size either way; one torch thread per process).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["sample_digits", "per_sample_seed", "digits_samples", "write_samples"]

_MAX_N = 2**24


def per_sample_seed(seed: int, index: int, stream: int) -> int:
    """The seed of sample ``index``'s generator ``stream`` (0: x_T, 1: solver noise)."""
    return (int(seed) * _MAX_N + int(index)) * 2 + int(stream)


def _generators(seed: int, lo: int, hi: int, stream: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(per_sample_seed(seed, i, stream)) for i in range(lo, hi)]


def digits_samples(
    problem,
    solver: str,
    steps: int,
    grid: str | None,
    n: int,
    seed: int,
    batch: int = 500,
    chunks: list[int] | None = None,
    progress: bool = False,
    **options,
) -> dict[int, np.ndarray]:
    """``{chunk index: x0 (float32, model space)}`` for the chunks asked (default: all of them)."""
    from ..sampling import sample

    ode = problem.ode(torch.float32)
    shape = problem.shape
    n_chunks = -(-n // batch)
    chunks = list(range(n_chunks)) if chunks is None else chunks
    out: dict[int, np.ndarray] = {}
    bar = None
    if progress and chunks:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chunks), desc="sample", unit="chunk", file=sys.stderr)
    for c in chunks:
        lo, hi = c * batch, min(n, (c + 1) * batch)
        x_T = torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in _generators(seed, lo, hi, 0)])
        x0 = sample(ode, x_T, solver, steps=steps, grid=grid, generator=_generators(seed, lo, hi, 1), **options)
        out[c] = x0.detach().cpu().numpy().astype(np.float32)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return out


def _save_png(problem, x0: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .pictures import image_mosaic

    images = problem.to_images(torch.from_numpy(x0))
    cols = max(1, int(np.ceil(np.sqrt(images.shape[0]))))
    mosaic = image_mosaic(images, cols).numpy()
    side = min(12.0, 0.45 * cols + 1.0)
    fig, ax = plt.subplots(figsize=(side, side * mosaic.shape[0] / mosaic.shape[1] + 0.4))
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_samples(problem, x0: np.ndarray, out, title: str, **meta) -> str:
    """Write digits samples ``x0`` (model space) as a PNG grid or an .npz (``x0``, ``images`` and ``meta``);
    return the line that says so."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".png":
        _save_png(problem, x0, out, title)
    else:
        images = problem.to_images(torch.from_numpy(x0)).numpy().astype(np.float32)
        np.savez(out, x0=x0, images=images, **{k: np.asarray(v) for k, v in meta.items()})
    return f"wrote {out}: {x0.shape[0]} samples"


def sample_digits(args) -> int:
    """The ``digits`` branch of ``diffsolve sample`` (``--out`` .png: a grid; .npz: the arrays)."""
    from . import dist
    from .catalog import get_bench_problem

    out = Path(args.out) if args.out else None
    if out is None or out.suffix not in (".png", ".npz"):
        print(
            "diffsolve sample: error: --problem digits needs --out FILE.png (a picture) or FILE.npz (the arrays)",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.samples <= _MAX_N:
        print(f"diffsolve sample: error: --n must be in [1, {_MAX_N}], got {args.samples}", file=sys.stderr)
        return 2
    if args.batch < 1:
        print(f"diffsolve sample: error: --batch must be >= 1, got {args.batch}", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    problem = get_bench_problem("digits")
    options = dict(getattr(args, "solver_options", None) or ({"eta": args.eta} if args.eta is not None else {}))
    rank, world = dist.setup("cpu")
    try:
        n_chunks = -(-args.samples // args.batch)
        t0 = time.perf_counter()
        mine = digits_samples(
            problem,
            args.solver,
            args.steps,
            args.grid,
            args.samples,
            args.seed,
            args.batch,
            chunks=list(range(rank, n_chunks, world)),
            progress=rank == 0,
            **options,
        )
        if world > 1:
            import torch.distributed as tdist

            bucket = [None] * world if rank == 0 else None
            tdist.gather_object(mine, bucket, dst=0)
            if rank == 0:
                for part in bucket:
                    mine.update(part)
        if rank != 0:
            return 0
        x0 = np.concatenate([mine[c] for c in range(n_chunks)])
        grid = args.grid or problem.schedule.default_grid
        title = f"digits: {args.solver} ({grid} grid), {args.steps} steps, seed {args.seed}"
        wrote = write_samples(problem, x0, out, title, seed=args.seed, steps=args.steps, solver=args.solver, grid=grid)
        print(
            f"{wrote}, {args.solver} {args.steps} steps ({grid}), {world} process(es), {time.perf_counter() - t0:.1f} s"
        )
        return 0
    finally:
        dist.teardown()
