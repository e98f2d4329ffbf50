"""``diffsolve bench``: the NFE-vs-quality sweep from the shell (:mod:`diffsolve.cli` adds it to its subcommands)."""

from __future__ import annotations

import argparse
import sys

from ..cli_args import MAX_NFE, MAX_SAMPLES, MAX_SEED, MAX_THREADS, float_open, int_in, int_list
from .errors import BenchError
from .harness import DEFAULTS


def _list(kind):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"empty {kind} list")
        return items

    return parse


#: the one line ``diffsolve --help`` shows for ``bench``
HELP = "NFE-vs-quality benchmark of solvers x grids x NFE (and peers) on analytic problems and models"


def configure(p: argparse.ArgumentParser) -> None:
    p.description = (
        "NFE-vs-quality benchmark: every solver x grid x NFE x seed on analytic problems (exact eps) "
        "and a trained model; table, CSV/JSON and plots in --out. Reruns resume."
    )
    p.add_argument(
        "--problem",
        type=_list("problem"),
        default=None,
        help=f"comma list of problems (default {','.join(DEFAULTS['problems'])}; see `diffsolve bench --list`)",
    )
    p.add_argument(
        "--solvers",
        type=_list("solver"),
        default=None,
        help="comma list of registered solvers (options after colons: ddim:eta=1), peers "
        "(diffusers:ddim, ...) or 'tuned' (a diffsolve.tune recipe per problem and NFE, fitted "
        "on x_T of seed + 1000); default: the quick default set",
    )
    p.add_argument("--grids", type=_list("grid"), default=None, help=f"default {','.join(DEFAULTS['grids'])}")
    p.add_argument(
        "--nfe", type=int_list("NFE", 1, MAX_NFE), default=None, help=f"default {','.join(map(str, DEFAULTS['nfe']))}"
    )
    p.add_argument(
        "--seeds", type=int_list("seeds", 0, MAX_SEED), default=None, help="x_T seeds, e.g. 0,1 or 0-3 (default 0)"
    )
    p.add_argument(
        "--samples", type=int_in(1, MAX_SAMPLES), default=None, help="samples per cell (default: per problem)"
    )
    p.add_argument("--out", default="bench-results", help="output folder (default ./bench-results)")
    p.add_argument(
        "--model",
        default=None,
        metavar="PKG.MODULE:FACTORY",
        help="a user model: factory() returns a ModelProblem, a DiffusionODE or model(x, t)",
    )
    p.add_argument(
        "--schedule",
        default=None,
        help="schedule of a plain --model callable (linear, scaled_linear, squaredcos_cap_v2) (default: linear)",
    )
    p.add_argument(
        "--prediction", default=None, help="what a plain --model callable predicts (eps, x0, v, ...) (default: eps)"
    )
    p.add_argument("--shape", default=None, help="shape of one sample of --model, e.g. 3,32,32")
    p.add_argument("--peers", action="store_true", help="also run diffusers' schedulers (and k-diffusion if installed)")
    p.add_argument("--fresh", action="store_true", help="recompute cells already on disk (default: resume)")
    p.add_argument("--dtype", choices=["float32", "float64"], default=None, help="default: per problem")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", default=None, help="reference cache folder (default OUT/references)")
    p.add_argument("--ref-tol", type=float_open(0.0, 1.0), default=1e-10, help="tolerance of the reference ODE solve")
    p.add_argument(
        "--overhead",
        action="store_true",
        help="also time per-step overhead side by side (1x64 and 256x3x32x32, float32)",
    )
    p.add_argument(
        "--threads",
        type=int_in(1, MAX_THREADS),
        default=1,
        help="torch CPU threads (default 1: stable timings; small problems gain nothing from more)",
    )
    p.add_argument("--no-plots", action="store_true", help="no PNG plots (and no digits picture)")
    p.add_argument(
        "--no-picture",
        action="store_true",
        help="skip the digits pictures written by the default sweep and by sweeps with --problem digits: "
        "OUT/digits_solvers.png (rows ddim, dpmpp-2m, unipc, best fixed solver+grid; columns NFE 3, 5, 10, 20 "
        "and the reference), OUT/digits_restoration.png and OUT/digits_guidance.png (guidance methods x NFE)",
    )
    p.add_argument(
        "--guidance",
        type=_list("guidance"),
        default=None,
        metavar="METHOD[:SCALE],...",
        help="guided sampling on --problem digits-cond: comma list of guidance methods with their scale "
        "(cfg:8, cfg++:0.6, apg:8:eta=0.5, autoguidance:2; cfg:8:clip=True clips x0); prints accuracy to the "
        "requested labels, class-wise FDD and saturation per method x solver x NFE (default solvers ddim,dpmpp-2m; "
        "NFE 5,10,20; grid trailing); results in OUT/guidance.jsonl (docs/guidance.md)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--list", action="store_true", help="list problems, solvers, grids and peers, then exit")
    p.add_argument(
        "--task",
        choices=["sampling", "inverse"],
        default="sampling",
        help="sampling (default): the solver benchmark; inverse: restoration methods on the held-out digits "
        "(diffsolve/bench/inverse.py; uses --out, --samples as the number of digits, --fresh, --quiet)",
    )


def _digits_picture(out: str) -> None:
    """The digits model's solver x NFE picture (needs scikit-learn and matplotlib; skipped with a note without)."""
    import os
    import time
    from pathlib import Path

    try:
        import matplotlib  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        print(f"digits picture skipped: {exc.name} is not installed (pip install 'diffsolve[bench,digits]')")
        return
    from .catalog import get_bench_problem
    from .pictures import solver_grid_png

    if os.environ.get("RANK", "0") != "0":  # under torchrun: rank 0 draws it
        return
    t0 = time.perf_counter()
    path = solver_grid_png(get_bench_problem("digits"), Path(out) / "digits_solvers.png")
    print(f"digits picture: {path} ({time.perf_counter() - t0:.1f} s)")
    from .inverse import restoration_png

    t0 = time.perf_counter()
    path = restoration_png(Path(out) / "digits_restoration.png")
    print(f"restoration picture: {path} ({time.perf_counter() - t0:.1f} s)")
    from .guided import picture

    t0 = time.perf_counter()
    path = picture(Path(out) / "digits_guidance.png", n=3, cols=3, ref_steps=100)
    print(f"guidance picture: {path} ({time.perf_counter() - t0:.1f} s)")


def _say_unsupported_peer_cells(grids) -> None:
    """Name the requested peer cells that cannot run, before the sweep (their rows say why too)."""
    from . import peers
    from .harness import DEFAULTS

    for label in peers.available_peers():
        skipped = [g for g in (grids or DEFAULTS["grids"]) if peers.unsupported_grid(label, g)]
        if skipped:
            print(
                f"--peers: {label} cannot run grid(s) {', '.join(skipped)}: {peers.unsupported_grid(label, skipped[0])}"
            )


def _inverse_task(args: argparse.Namespace) -> int:
    """``diffsolve bench --task inverse``: the restoration benchmark, results and figures in --out."""
    from pathlib import Path

    from . import inverse

    out = Path(args.out)
    run = argparse.Namespace(
        out=str(out / "inverse.jsonl"),
        figures=str(out),
        n=args.samples or 297,
        tasks=list(inverse.TASKS),
        rows=None,
        fresh=args.fresh,
        report=False,
        quiet=args.quiet,
    )
    return inverse.handle(run)


def _guided_task(args: argparse.Namespace) -> int:
    """``diffsolve bench --problem digits-cond --guidance ...``: guided sampling (diffsolve/bench/guided.py)."""
    from . import guided

    try:
        if list(args.problem or []) != ["digits-cond"]:
            raise BenchError(
                "--guidance runs on the class-conditional model alone: pass --problem digits-cond (and no other "
                f"problem; got {','.join(args.problem or []) or 'none'})"
            )
        if args.model or args.peers or args.dtype == "float64":
            raise BenchError("--problem digits-cond takes no --model, --peers or --dtype float64 (it samples float32)")
        guided.bench(
            args.guidance or ["cfg:8"],
            solvers=args.solvers,
            nfes=args.nfe,
            grids=args.grids,
            seeds=args.seeds,
            samples=args.samples,
            out=args.out,
            resume=not args.fresh,
            progress=not args.quiet,
        )
    except BenchError as exc:
        print(f"diffsolve bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


def handle(args: argparse.Namespace) -> int:
    model_flags = [f"--{k}" for k in ("schedule", "prediction", "shape") if getattr(args, k, None) is not None]
    if model_flags and not args.model:  # they used to be ignored
        print(
            f"diffsolve bench: error: {', '.join(model_flags)} describe a --model callable; the built-in problems "
            "have their own schedule, prediction and shape: drop them, or pass --model PKG.MODULE:FACTORY",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "task", "sampling") == "inverse":
        return _inverse_task(args)
    from ..sampling import list_grids, list_solvers
    from . import peers
    from .catalog import bench_problem_names, load_model_problem
    from .harness import run_bench

    if args.list:
        print("problems:", ", ".join(bench_problem_names()))
        print("solvers: ", ", ".join(list_solvers()))
        print("grids:   ", ", ".join(list_grids()))
        print("peers:   ", ", ".join(peers.available_peers()) or "none installed (pip install 'diffsolve[peers]')")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    if args.guidance is not None or "digits-cond" in (args.problem or []):
        return _guided_task(args)
    try:
        problems = list(args.problem) if args.problem else ([] if args.model else None)
        if args.model:
            shape = None
            if args.shape:
                try:
                    shape = tuple(int(s) for s in args.shape.split(","))
                except ValueError:
                    raise BenchError(f"--shape {args.shape!r}: expected integers like 3,32,32") from None
            problems.append(
                load_model_problem(
                    args.model,
                    schedule=args.schedule,
                    prediction=args.prediction,
                    shape=shape,
                    samples=args.samples,
                )
            )
        if args.peers:
            _say_unsupported_peer_cells(args.grids)
        run_bench(
            problems,
            args.solvers,
            args.grids,
            args.nfe,
            args.seeds,
            out=args.out,
            peers_=args.peers,
            samples=args.samples,
            dtype=args.dtype,
            device=args.device,
            resume=not args.fresh,
            progress=not args.quiet,
            cache=args.cache,
            ref_tol=args.ref_tol,
            overhead=args.overhead,
            plots=not args.no_plots,
        )
        default_sweep = args.problem is None and not args.model
        if not (args.no_plots or args.no_picture) and (default_sweep or "digits" in (args.problem or [])):
            _digits_picture(args.out)
    except BenchError as exc:
        print(f"diffsolve bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
