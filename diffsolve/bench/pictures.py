"""Pictures of the digits model: solver rows x NFE columns, the same x_T in every cell.

:func:`solver_grid_png` draws one PNG: each row is a ``(label, sample_fn)`` pair, each column
an NFE budget, and a last column holds the reference ODE solution (float64 dopri5) from the
same start states. ``sample_fn(ode, x_T, nfe)`` returns the samples or None when the method
cannot run with that many model calls. :func:`default_rows` gives the rows of ``make demo``;
a new row is one more pair in the list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..analytic import reference_solution
from ..counting import steps_for_nfe
from ..recipe import Recipe
from ..sampling import make_grid, sample
from ..wrapper import DiffusionODE

__all__ = [
    "solver_grid_png",
    "default_rows",
    "solver_row",
    "recipe_row",
    "RECIPES",
    "image_mosaic",
    "BEST_FIXED",
    "DEMO_NFES",
]

_F64 = torch.float64
#: the NFE columns of the demo picture
DEMO_NFES = (3, 5, 10, 20)
#: the best fixed (solver, grid) on digits: the lowest mean log10 RMSE to the reference over NFE 3, 5, 10, 20 in
#: `diffsolve bench --problem digits --nfe 3,5,10,20 --grids trailing,karras,logsnr,time-uniform --samples 32`
#: (default solvers; see docs/paper.md, "Pictures"): deis on trailing, just ahead of unipc on trailing
BEST_FIXED = ("deis", "trailing")

SampleFn = Callable[[DiffusionODE, torch.Tensor, int], "torch.Tensor | None"]


def solver_row(solver: str, grid: str | None = None, label: str | None = None, **options) -> tuple[str, SampleFn]:
    """A row that runs ``solver`` on ``grid`` (default: the schedule's) with the most steps fitting each NFE."""

    def run(ode: DiffusionODE, x_T: torch.Tensor, nfe: int):
        g = grid or ode.schedule.default_grid
        steps = steps_for_nfe(solver, nfe, grid=g, schedule=ode.schedule, **options)
        if steps is None:
            return None
        return sample(
            ode,
            x_T,
            solver,
            sigmas=make_grid(g, ode.schedule, steps),
            generator=torch.Generator().manual_seed(0),
            **options,
        )

    return label or (solver if grid is None else f"{solver} / {grid}"), run


#: recipes tuned to the shipped digits model (``benchmarks/tune_digits.py``), one file per NFE
RECIPES = Path(__file__).resolve().parent / "recipes"


def recipe_row(name: str = "digits", label: str = "tuned recipe", folder: Path = RECIPES) -> tuple[str, SampleFn]:
    """A row that runs the recipe ``{name}-nfe{N}.json`` of ``folder`` at each NFE (n/a where none is shipped)."""

    def run(ode: DiffusionODE, x_T: torch.Tensor, nfe: int):
        path = Path(folder) / f"{name}-nfe{nfe}.json"
        if not path.exists():
            return None
        return sample(ode, x_T, recipe=Recipe.load(path))

    return label, run


def default_rows() -> list[tuple[str, SampleFn]]:
    """ddim, dpmpp-2m, unipc (each on the schedule's default grid), the best fixed solver+grid and the
    recipes tuned to the model (:func:`diffsolve.tune`, shipped in ``diffsolve/bench/recipes``)."""
    return [
        solver_row("ddim"),
        solver_row("dpmpp-2m"),
        solver_row("unipc"),
        solver_row(*BEST_FIXED, label=f"best fixed: {BEST_FIXED[0]} / {BEST_FIXED[1]}"),
        recipe_row(),
    ]


def save_figure(fig, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (PNG, 110 dpi; folders made) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def image_mosaic(images: torch.Tensor, cols: int) -> torch.Tensor:
    """(N, H, W) -> one (rows*(H+1)-1, cols*(W+1)-1) image with 1-pixel gaps (value 0.5, grey)."""
    n, h, w = images.shape
    rows = -(-n // cols)
    out = torch.full((rows * (h + 1) - 1, cols * (w + 1) - 1), 0.5, dtype=images.dtype)
    for k in range(n):
        r, c = divmod(k, cols)
        out[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[k]
    return out


def solver_grid_png(
    problem,
    path: str | Path,
    rows: Sequence[tuple[str, SampleFn]] | None = None,
    nfes: Sequence[int] = DEMO_NFES,
    n: int = 16,
    seed: int = 0,
    reference: bool = True,
    dtype: torch.dtype = torch.float32,
    title: str | None = None,
) -> Path:
    """Draw rows x NFE columns (+ the reference) of ``problem``'s samples from one x_T into ``path``.

    ``problem`` is a benchmark problem with ``to_images`` (the digits problem); ``n`` samples per
    cell, drawn as a square-ish mosaic. Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(default_rows() if rows is None else rows)
    if not rows:
        raise ValueError("rows: give at least one (label, sample_fn) pair")
    ode = problem.ode(dtype)
    x_T = problem.x_T(seed, n)
    cols = max(1, int(round(n**0.5)))
    cells: list[list[torch.Tensor | None]] = []
    for _, fn in rows:
        cells.append([fn(ode, x_T.to(dtype), int(k)) for k in nfes])
    ncols = len(nfes) + (1 if reference else 0)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.9 * ncols + 1.2, 1.9 * len(rows) + 0.5), squeeze=False)
    ref_img = None
    if reference:
        sigma_max = float(make_grid(problem.schedule.default_grid, problem.schedule, 10)[0])
        ref = reference_solution(problem.reference_ode(), x_T, sigma_max, 0.0, rtol=1e-7, atol=1e-7)
        ref_img = image_mosaic(problem.to_images(ref), cols)
    for i, (label, _) in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(nfes):
                x = cells[i][j]
                if x is None:
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
                else:
                    ax.imshow(image_mosaic(problem.to_images(x), cols).numpy(), cmap="gray_r", vmin=0, vmax=1)
                if i == 0:
                    ax.set_title(f"NFE {nfes[j]}", fontsize=10)
            else:
                ax.imshow(ref_img.numpy(), cmap="gray_r", vmin=0, vmax=1)
                if i == 0:
                    ax.set_title("reference ODE", fontsize=10)
            if j == 0:
                ax.set_ylabel(label, fontsize=9)
    fig.suptitle(
        title
        or f"{problem.name}: the same {n} x_T in every cell (rows without a grid: {problem.schedule.default_grid})",
        fontsize=11,
    )
    return save_figure(fig, path)
