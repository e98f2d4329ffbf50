"""The sweep: cells = problem x solver x grid x NFE x seed, run, measured, saved one by one.

For each cell the harness

1. picks the step count: ``steps = NFE // calls_per_step``, checked by counting the calls of
   a dry run with a zero-cost model (:func:`diffsolve.steps_for_nfe`) and lowered (or raised)
   to the largest count whose real NFE fits the budget; a cell whose real NFE differs from the target is marked
   ``nfe_exact = False``, and one with no step count that fits is ``unreachable``;
2. samples the problem from the seed's x_T (noise for stochastic solvers from a generator
   seeded separately), counting model calls, timing the run and recording peak memory;
3. measures framework overhead: the same run with a zero-cost model, best of a few;
4. scores the samples: RMSE to the cached reference (deterministic solvers only) and the
   problem's distribution metrics (every solver);
5. writes the cell's row at once (atomically), so an interrupted sweep resumes where it stopped.

Under ``torchrun`` the cells are dealt round-robin to the ranks and the rows gathered on rank 0.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..counting import count_calls, steps_for_nfe
from ..sampling import list_grids as grid_names
from ..sampling import list_solvers as solver_names
from ..sampling import make_grid, sample
from ..wrapper import DiffusionODE
from . import dist, peers
from .catalog import get_bench_problem
from .errors import BenchError
from .measure import ZeroModel, peak_memory, timed
from .problems import BenchProblem
from .reference import ReferenceCache
from .spec import ROW_FIELDS, TIMING_FIELDS, TUNED, SolverSpec, parse_solver
from .store import CellStore, cell_key

__all__ = ["SolverSpec", "parse_solver", "run_bench", "BenchResult", "DEFAULTS", "ROW_FIELDS", "TIMING_FIELDS"]

FORMAT_VERSION = 1
_F64 = torch.float64

DEFAULTS: dict[str, Any] = {
    "problems": ["gmm2d", "mlp-spiral"],
    "grids": ["trailing", "karras", "logsnr"],
    "nfe": [3, 4, 5, 6, 8, 10, 15, 20],
    "seeds": [0],
}
#: the quick default sweep's solvers (those registered); ``solvers="all"`` takes every registered one
DEFAULT_SOLVERS = [
    "ddim",
    "euler-ancestral",
    "heun",
    "dpmpp-2m",
    "dpmpp-3m",
    "unipc",
    "deis",
    "ipndm",
    "dpm-2",
    "dpm-fast",
]

#: the solver label of tuned recipes (fitted per problem and NFE on x_T of seed + TUNE_SEED_OFFSET,
#: TUNE_SAMPLES start states split fit / held out, then run on the cell's own x_T)
TUNE_SEED_OFFSET = 1000
TUNE_SAMPLES = 512
#: solvers tune() searches for the ``tuned`` entry (None: every deterministic fixed-call solver)
TUNE_SOLVERS = None


# -- configuration ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    problem: str
    solver: str
    grid: str
    nfe: int
    seed: int


@dataclass
class BenchResult:
    rows: list[dict]
    out: Path
    computed: int = 0
    skipped: int = 0
    files: dict[str, Path] = field(default_factory=dict)
    overhead: list[dict] = field(default_factory=list)


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int, type, BenchProblem, SolverSpec)):
        value = [value]
    return list(value)


def _resolve_problems(problems, samples) -> dict[str, BenchProblem]:
    out: dict[str, BenchProblem] = {}
    for p in _as_list(problems):
        prob = p if isinstance(p, BenchProblem) else get_bench_problem(str(p), samples)
        if not isinstance(prob, BenchProblem):  # digits-cond: guided sampling has its own benchmark
            raise BenchError(
                f"problem {p!r} is not a harness problem: run `diffsolve bench --problem digits-cond --guidance "
                "cfg:8` or benchmarks/bench_guidance.py for it"
            )
        if samples and isinstance(p, BenchProblem):
            prob.samples = samples
        out[prob.name] = prob
    if not out:
        raise BenchError("no problem given")
    return out


def _resolve_grids(grids) -> list[str]:
    known = grid_names()
    out = []
    for g in _as_list(grids):
        if g not in known:
            raise BenchError(f"unknown grid {g!r}; known grids: {', '.join(known)}")
        out.append(g)
    if not out:
        raise BenchError("no grid given")
    return out


def _resolve_nfe(nfe, specs: list[SolverSpec]) -> list[int]:
    values = _as_list(nfe)
    if not values:
        raise BenchError("no NFE given")
    for n in values:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise BenchError(f"NFE must be integers >= 1, got {n!r}")
    for n in values:
        if not any(s.calls_per_step <= n for s in specs):
            needs = ", ".join(f"{s.label} needs >= {s.calls_per_step}" for s in specs)
            raise BenchError(f"NFE {n} cannot be reached by any requested solver ({needs} model calls)")
    return sorted(set(values))


def _resolve_seeds(seeds) -> list[int]:
    values = _as_list(seeds) or [0]
    for s in values:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise BenchError(f"seeds must be integers >= 0, got {s!r}")
    return sorted(set(values))


# -- running one cell ---------------------------------------------------------------------------------
class _Context:
    def __init__(self, problems, specs, dtype, device, refs, overhead_repeats):
        self.problems = problems
        self.specs = {s.label: s for s in specs}
        self.dtype_override = dtype
        self.device = device
        self.refs = refs
        self.overhead_repeats = overhead_repeats
        self._steps: dict = {}
        self.recipes: dict = {}

    def dtype(self, problem: BenchProblem) -> torch.dtype:
        return self.dtype_override or problem.dtype

    def zero_ode(self, ode: DiffusionODE) -> DiffusionODE:
        return DiffusionODE(
            ZeroModel(), ode.schedule, prediction=ode.prediction, time=ode.time, time_dtype=ode.time_dtype
        )

    def steps_for(self, spec: SolverSpec, problem: BenchProblem, grid: str, nfe: int) -> tuple[int, int] | None:
        """``(steps, real NFE)`` of the largest run that fits ``nfe`` model calls, or None
        (:func:`diffsolve.steps_for_nfe`, the package's one count)."""
        key = (spec.label, repr(problem.schedule), getattr(problem.schedule, "num_steps", 0), grid, nfe)
        if key not in self._steps:
            opts = dict(spec.options)
            steps = steps_for_nfe(spec.solver, nfe, grid=grid, schedule=problem.schedule, **opts)
            self._steps[key] = (
                None
                if steps is None
                else (steps, count_calls(spec.solver, make_grid(grid, problem.schedule, steps), **opts))
            )
        return self._steps[key]


def _base_row(cell: Cell, problem: BenchProblem, dtype, device) -> dict:
    row = {k: None for k in ROW_FIELDS}
    row.update(
        problem=cell.problem,
        solver=cell.solver,
        grid=cell.grid,
        nfe_target=cell.nfe,
        seed=cell.seed,
        samples=problem.samples,
        dtype=str(dtype).replace("torch.", ""),
        device=str(device),
        message="",
    )
    return row


def _score(row, problem, out, x_T, ctx, seed, stochastic):
    out64 = out.detach().to(_F64).cpu()
    if not torch.isfinite(out64).all():
        row.update(status="error", message="non-finite samples")
        return row
    if not stochastic:
        ref, err = ctx.refs.get(problem, x_T, row["sigma_start"], row["sigma_end"], seed)
        row["rmse"] = float((out64 - ref).pow(2).mean().sqrt())
        row["ref_err"] = err
    row.update(problem.metrics(out64))
    return row


def run_cell(cell: Cell, ctx: _Context) -> dict:
    problem = ctx.problems[cell.problem]
    spec = ctx.specs[cell.solver]
    dtype, device = ctx.dtype(problem), ctx.device
    row = _base_row(cell, problem, dtype, device)
    x_T = problem.x_T(cell.seed, problem.samples)
    if spec.peer is not None:
        return _run_peer_cell(row, cell, problem, spec, x_T, dtype, ctx)
    if spec.tuned:
        return _run_tuned_cell(row, cell, problem, x_T, dtype, ctx)
    try:
        fit = ctx.steps_for(spec, problem, cell.grid, cell.nfe)
        if fit is None:
            # a grid that refuses the step counts that would fit says why (an error row with its message)
            make_grid(cell.grid, problem.schedule, max(1, cell.nfe // spec.calls_per_step))
            row.update(
                status="unreachable",
                peer=False,
                message=f"no step count of {spec.label} on grid {cell.grid!r} runs in {cell.nfe} model calls",
            )
            return row
        steps = fit[0]
        solver = spec.instance()
        sig = make_grid(cell.grid, problem.schedule, steps)
        ode = problem.ode(dtype, device)
        x_in = (x_T * problem.x_T_scale(float(sig[0]))).to(device=device, dtype=dtype)
        gen = torch.Generator(device=device).manual_seed(1_000_003 + cell.seed)
        n0 = ode.nfe
        out, wall = timed(lambda: sample(ode, x_in, solver, sigmas=sig, generator=gen), device)
        nfe = ode.nfe - n0
        # peak memory: the same run again under the meter (it slows every op, so not the timed run)
        mem_bytes, mem_source = peak_memory(
            lambda: sample(
                ode,
                x_in,
                spec.instance(),
                sigmas=sig,
                generator=torch.Generator(device=device).manual_seed(1_000_003 + cell.seed),
            ),
            device,
        )
        # framework overhead: the same run with a zero-cost model, best of a few
        zero = ctx.zero_ode(ode)
        best = math.inf
        for _ in range(ctx.overhead_repeats):
            s = spec.instance()
            _, t = timed(
                lambda: sample(
                    zero,
                    x_in,
                    s,
                    sigmas=sig,
                    generator=torch.Generator(device=device).manual_seed(0),
                    check_finite=False,
                ),
                device,
            )
            best = min(best, t)
        row.update(
            status="ok",
            nfe=nfe,
            steps=steps,
            nfe_exact=nfe == cell.nfe,
            stochastic=bool(solver.stochastic),
            peer=False,
            wall_s=wall,
            overhead_us_per_step=best / steps * 1e6,
            peak_mem_bytes=mem_bytes,
            mem_source=mem_source,
            sigma_start=float(sig[0]),
            sigma_end=float(sig[-1]),
        )
        return _score(row, problem, out, x_in.to(_F64).cpu(), ctx, cell.seed, bool(solver.stochastic))
    except (ValueError, TypeError, RuntimeError, FloatingPointError) as exc:
        row.update(status="error", peer=False, message=f"{type(exc).__name__}: {exc}")
        return row


def _tuned_recipe(cell: Cell, problem: BenchProblem, dtype, ctx):
    """The recipe of (problem, NFE, seed): tuned once per sweep on x_T of another seed."""
    from ..tuning import tune

    key = (cell.problem, cell.nfe, cell.seed, str(dtype), str(ctx.device))
    if key not in ctx.recipes:
        seed = cell.seed + TUNE_SEED_OFFSET
        smax = float(problem.schedule.sigma_max)
        x_fit = problem.x_T(seed, TUNE_SAMPLES) * problem.x_T_scale(smax)
        teacher = ctx.refs.get(problem, x_fit, smax, 0.0, seed)[0]
        ode = problem.ode(dtype, ctx.device)
        n0, t0 = ode.nfe, time.perf_counter()
        recipe = tune(
            ode,
            x_fit.to(device=ctx.device, dtype=dtype),
            cell.nfe,
            teacher=teacher,
            solvers=TUNE_SOLVERS,
            progress=False,
        )
        ctx.recipes[key] = (recipe, ode.nfe - n0, time.perf_counter() - t0)
    return ctx.recipes[key]


def _run_tuned_cell(row, cell, problem, x_T, dtype, ctx) -> dict:
    row.update(peer=False, stochastic=False)
    try:
        recipe, calls, secs = _tuned_recipe(cell, problem, dtype, ctx)
        ode = problem.ode(dtype, ctx.device)
        x_in = (x_T * problem.x_T_scale(recipe.sigmas[0])).to(device=ctx.device, dtype=dtype)
        n0 = ode.nfe
        out, wall = timed(lambda: sample(ode, x_in, recipe=recipe), ctx.device)
        nfe = ode.nfe - n0
        # peak memory: the same run again under the meter (it slows every op, so not the timed run)
        mem_bytes, mem_source = peak_memory(lambda: sample(ode, x_in, recipe=recipe), ctx.device)
        row.update(
            status="ok",
            nfe=nfe,
            steps=recipe.steps,
            nfe_exact=nfe == cell.nfe,
            wall_s=wall,
            peak_mem_bytes=mem_bytes,
            mem_source=mem_source,
            sigma_start=recipe.sigmas[0],
            sigma_end=recipe.sigmas[-1],
            message=f"{recipe!r}; tuned on seed {cell.seed + TUNE_SEED_OFFSET} in {secs:.1f} s, {calls} model calls",
        )
        return _score(row, problem, out, x_in.to(_F64).cpu(), ctx, cell.seed, False)
    except (ValueError, TypeError, RuntimeError, FloatingPointError) as exc:
        row.update(status="error", message=f"{type(exc).__name__}: {exc}")
        return row


def _run_peer_cell(row, cell, problem, spec, x_T, dtype, ctx) -> dict:
    row["peer"] = True
    row["stochastic"] = False
    if str(ctx.device) != "cpu":
        row.update(status="error", message="peers run on the CPU only")
        return row
    try:
        run, wall = timed(lambda: peers.run_peer(spec.peer, problem, x_T, cell.grid, cell.nfe, dtype))
        if run is None:
            row.update(status="unreachable", message=f"{spec.label} cannot run with {cell.nfe} model calls")
            return row
        mem_bytes, mem_source = peak_memory(
            lambda: peers.run_peer(spec.peer, problem, x_T, cell.grid, cell.nfe, dtype), "cpu"
        )
        best = math.inf
        for _ in range(ctx.overhead_repeats):
            _, t = timed(lambda: peers.run_peer(spec.peer, problem, x_T, cell.grid, cell.nfe, dtype, model=ZeroModel()))
            best = min(best, t)
        row.update(
            status="ok",
            nfe=run.nfe,
            steps=run.steps,
            nfe_exact=run.nfe == cell.nfe,
            wall_s=wall,
            overhead_us_per_step=best / run.steps * 1e6,
            peak_mem_bytes=mem_bytes,
            mem_source=mem_source,
            sigma_start=run.sigma_start,
            sigma_end=run.sigma_end,
        )
        if run.sigma_end != 0:
            row["message"] = f"ends at sigma={run.sigma_end:.4g}, not 0; RMSE vs the reference at that sigma"
        return _score(row, problem, run.x0, x_T, ctx, cell.seed, False)
    except (ValueError, TypeError, RuntimeError, FloatingPointError, IndexError) as exc:
        row.update(status="error", message=f"{type(exc).__name__}: {exc}")
        return row


# -- the sweep ----------------------------------------------------------------------------------------
def _cells(problems, specs, grids, nfes, seeds) -> list[Cell]:
    cells = []
    for p in problems:
        for spec in specs:
            gs = [TUNED] if spec.tuned else peers.peer_grids(spec.peer, grids) if spec.peer else grids
            for g in gs:
                for n in nfes:
                    for s in seeds:
                        cells.append(Cell(p, spec.label, g, n, s))
    return cells


def run_bench(
    problems: Sequence[str | BenchProblem] | str | None = None,
    solvers: Sequence[str | type] | str | None = None,
    grids: Sequence[str] | str | None = None,
    nfe: Sequence[int] | int | None = None,
    seeds: Sequence[int] | int | None = None,
    *,
    out: str | Path = "bench-results",
    peers_: bool = False,
    samples: int | None = None,
    dtype: str | torch.dtype | None = None,
    device: str = "cpu",
    resume: bool = True,
    progress: bool = True,
    cache: str | Path | None = None,
    ref_tol: float = 1e-10,
    ref_target: float = 1e-7,
    overhead_repeats: int = 2,
    overhead: bool = False,
    reports: bool = True,
    plots: bool = True,
    log=print,
) -> BenchResult:
    """Run a sweep and write its reports into ``out``; see :mod:`diffsolve.bench` for the parts.

    ``solvers=None`` takes the registered ones of :data:`DEFAULT_SOLVERS`, ``"all"`` every registered solver; ``peers_=True`` adds every installed peer.
    ``"tuned"`` among the solvers adds a recipe from :func:`diffsolve.tune` per problem, NFE and seed (grid column
    ``tuned``), fitted on x_T of seed + :data:`TUNE_SEED_OFFSET` and evaluated on the cell's x_T.
    ``resume=False`` recomputes cells already on disk. Returns the rows of this sweep's cells
    (on rank 0 under torchrun: all ranks' rows; elsewhere: the rank's own).
    """
    from . import report

    problems = _resolve_problems(problems if problems is not None else DEFAULTS["problems"], samples)
    raw_specs = _as_list(solvers)
    if raw_specs == ["all"]:
        raw_specs = solver_names()
    elif not raw_specs:
        raw_specs = [s for s in DEFAULT_SOLVERS if s in solver_names()] or solver_names()
    specs = [parse_solver(s) for s in raw_specs]
    if peers_:
        avail = peers.available_peers()
        if not avail:
            log("--peers: no peer library installed (pip install 'diffsolve[peers]' for diffusers)")
        specs += [parse_solver(p) for p in avail if p not in {s.label for s in specs}]
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise BenchError(f"a solver is listed twice: {', '.join(labels)}")
    grids = _resolve_grids(grids if grids is not None else DEFAULTS["grids"])
    nfes = _resolve_nfe(nfe if nfe is not None else DEFAULTS["nfe"], specs)
    seeds = _resolve_seeds(seeds if seeds is not None else DEFAULTS["seeds"])
    if isinstance(dtype, str):
        if dtype not in ("float32", "float64"):
            raise BenchError(f"unknown dtype {dtype!r}; choices: float32, float64")
        dtype = getattr(torch, dtype)
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device {device!r} asked for, but CUDA is not available; choices: cpu")

    rank, world = dist.setup(device)
    if world > 1 and str(device).startswith("cuda"):
        device = f"cuda:{dist.local_rank()}"
    out = Path(out)
    refs = ReferenceCache(Path(cache) if cache else out / "references", tol=ref_tol, target=ref_target)
    store = CellStore(out, {"format": FORMAT_VERSION, "ref_tol": ref_tol, "ref_target": ref_target})
    ctx = _Context(problems, specs, dtype, device, refs, overhead_repeats)
    cells = _cells(list(problems), specs, grids, nfes, seeds)

    def key(c: Cell) -> str:
        p = problems[c.problem]
        return cell_key([p.fingerprint(), c.solver, c.grid, c.nfe, c.seed, p.samples, ctx.dtype(p), ctx.device])

    mine = cells[rank::world]
    todo = [c for c in mine if not (resume and store.done(key(c)))]
    computed, skipped = 0, len(mine) - len(todo)
    if rank == 0 and skipped:
        log(f"resuming: {skipped} of {len(mine)} cells already done in {store.folder}")
    bar = None
    if progress and rank == 0 and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="bench", unit="cell", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        for c in todo:
            if bar is not None:
                bar.set_postfix_str(f"{c.problem} {c.solver} {c.grid} NFE {c.nfe}", refresh=False)
            row = run_cell(c, ctx)
            store.save(key(c), row)
            computed += 1
            if bar is not None:
                bar.update(1)
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        log(f"interrupted: {computed} new cells saved in {store.folder}; run the same command again to resume")
        raise
    finally:
        if bar is not None:
            bar.close()
    rows_mine = [store.load(key(c)) for c in mine]
    missing = [c for c, r in zip(mine, rows_mine) if r is None]
    for c in missing:  # a damaged file: compute again
        r = run_cell(c, ctx)
        store.save(key(c), r)
        rows_mine[mine.index(c)] = r
        computed += 1
    rows = dist.gather_rows(rows_mine, cells, rank, world)
    result = BenchResult(rows=rows, out=out, computed=computed, skipped=skipped)
    if rank == 0:
        if overhead:
            from .overhead import measure_overhead

            result.overhead = measure_overhead(solvers=[s for s in specs if s.peer is None], log=log)
        if reports:
            result.files = report.write_reports(result, problems, plots=plots, log=log)
        log(report.summary(result, problems, time.perf_counter() - t0))
    dist.teardown()
    return result
