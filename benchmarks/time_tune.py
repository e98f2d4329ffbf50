"""Time ds.tune at one NFE with one torch thread: CPU seconds in all and per stage, and check that a second call
gives the same recipe bit for bit (docs/tuning.md, "What tuning costs").

    python benchmarks/time_tune.py                                    # gmm64, NFE 5, 512 x_T (256 fit)
    python benchmarks/time_tune.py --problem digits --samples 256     # the shipped digits recipes' inputs
"""

import argparse
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", default="gmm64")
    ap.add_argument("--nfe", type=int, default=5)
    ap.add_argument("--samples", type=int, default=512, help="x_T of seed 1000 (half fit, half held out)")
    ap.add_argument("--no-repeat", action="store_true", help="skip the bit-for-bit second call")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    import diffsolve as ds
    from diffsolve import tuning
    from diffsolve.bench.catalog import get_bench_problem

    stages = {}

    def timed(name):
        fn = getattr(tuning, name)

        def wrapper(*a, **k):
            c0 = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                stages[name] = stages.get(name, 0.0) + time.process_time() - c0

        setattr(tuning, name, wrapper)

    # the stages of tune and the teacher (the teacher's error check calls _teacher again: counted in both)
    # _screen (the sweep's screening round) runs inside _sweep: counted in both
    for name in (
        "_teacher",
        "_teacher_error",
        "_sweep",
        "_screen",
        "_refine_grids",
        "_fit_compensation",
        "_held_out_check",
    ):
        timed(name)
    p = get_bench_problem(args.problem)
    ode = p.ode(p.dtype)
    x = (p.x_T(1000, args.samples) * p.x_T_scale(float(p.schedule.sigma_max))).to(p.dtype)
    c0, t0 = time.process_time(), time.perf_counter()
    r = ds.tune(ode, x, nfe=args.nfe, progress=False)
    cpu = time.process_time() - c0
    print(
        f"{args.problem} NFE {args.nfe}, {args.samples} x_T: process CPU {cpu:.1f} s (wall {time.perf_counter() - t0:.1f} s), "
        f"model calls {r.report['tuning_model_calls']} (teacher {r.report['teacher_model_calls']}), "
        f"sampler runs {r.report['sampler_runs']}"
    )
    print("  CPU s per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    print(
        f"  {r!r}; held-out RMSE {r.report['heldout_rmse']:.3e}, best fixed {r.report['best_fixed']['heldout_rmse']:.3e}"
    )
    print(f"  teacher RMSE {r.report['teacher_rmse']:.2e}; sweep {r.report.get('sweep')}")
    if not args.no_repeat:
        r2 = ds.tune(ode, x, nfe=args.nfe, progress=False)
        a, b = r.to_dict(), r2.to_dict()
        for d in (a, b):
            for k in ("seconds", "tuning_model_calls", "teacher_model_calls"):
                d["report"].pop(k)
        print("  same recipe bit for bit:", a == b)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
