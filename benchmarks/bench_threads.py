"""Throughput of N threads sharing one wrapped model, against one thread.

    python benchmarks/bench_threads.py [--threads 1 2 4] [--jobs 32] [--steps 10] [--dim 1024] [--batch 16]

The model is an eps-MLP layer of ``--dim`` x ``--dim`` (a float32 torch matmul, which releases the
GIL while it runs), wrapped once; every thread samples from that one ODE (``dpmpp-2m``, ``--steps``
steps, a batch of ``--batch``). Each thread count runs the same ``--jobs`` jobs, split between its
threads by a pool; torch runs one intra-op thread per call (``torch.set_num_threads(1)``), so
parallelism comes from the Python threads alone.

Printed per thread count: wall time, jobs and model calls per second, the speed-up over the first
count given, the cores the process kept busy (CPU time / wall time: on a machine shared with other
work, this bounds the speed-up), and whether every result equals the serial run's bit for bit. Each
row is the best of ``--repeats`` rounds, the thread counts interleaved within a round. Expect at
most the machine's core count as a speed-up (the model's matmuls run in parallel; the solver's
Python between them does not).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import diffsolve as ds  # noqa: E402


def make_ode(dim: int) -> ds.DiffusionODE:
    """A fixed random layer as the eps model, eps = tanh(x W) / 4: its cost is the matmul."""
    w = torch.randn(dim, dim, generator=torch.Generator().manual_seed(0)) / dim**0.5

    def model(x, t):
        return torch.tanh(x @ w) * 0.25

    return ds.wrap(model, ds.DiscreteSchedule.linear())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--jobs", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(1)

    ode = make_ode(a.dim)
    xs = [torch.randn(a.batch, a.dim, generator=torch.Generator().manual_seed(k)) for k in range(a.jobs)]

    def job(x):
        return ds.sample(ode, x, "dpmpp-2m", steps=a.steps)

    serial = [job(x) for x in xs]  # also the warm-up
    calls_per_job = a.steps

    print(
        f"# diffsolve threads benchmark: torch {torch.__version__}, {os.cpu_count()} CPU core(s) "
        f"({platform.machine()}), intra-op threads {torch.get_num_threads()}"
    )
    print(
        f"# model: {a.batch} x {a.dim} @ {a.dim} x {a.dim} float32 per call; dpmpp-2m, {a.steps} steps; "
        f"{a.jobs} jobs; best of {a.repeats}"
    )

    def timed(n):
        c0, t0 = time.process_time(), time.perf_counter()
        if n == 1:
            outs = [job(x) for x in xs]
        else:
            with ThreadPoolExecutor(n) as pool:
                outs = list(pool.map(job, xs))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return wall, cpu / wall, all(torch.equal(u, v) for u, v in zip(outs, serial))

    # rounds interleave the thread counts, so every count meets the same phases of a shared machine
    best = {n: float("inf") for n in a.threads}
    equal = {n: True for n in a.threads}
    cores = {n: 0.0 for n in a.threads}
    for _ in range(a.repeats):
        for n in a.threads:
            wall, busy, same = timed(n)
            if wall < best[n]:
                best[n], cores[n] = wall, busy
            equal[n] = equal[n] and same
    print(f"{'threads':>7} {'wall s':>8} {'jobs/s':>8} {'calls/s':>8} {'speed-up':>8} {'cores':>6} {'equal':>6}")
    base = best[a.threads[0]]
    for n in a.threads:
        print(
            f"{n:>7} {best[n]:>8.3f} {a.jobs / best[n]:>8.1f} {a.jobs * calls_per_job / best[n]:>8.0f} "
            f"{base / best[n]:>8.2f} {cores[n]:>6.2f} {str(equal[n]):>6}"
        )


if __name__ == "__main__":
    main()
