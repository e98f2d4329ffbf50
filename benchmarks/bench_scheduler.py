"""Step-loop time of DiffsolveScheduler against diffusers' own schedulers, vs the number of steps.

    python benchmarks/bench_scheduler.py            # prints a table; seconds per loop and per step

The model is free (a cheap elementwise function), so the time is the scheduler's own: set_timesteps
plus every step. A linear loop shows a constant time per step as the steps grow.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's diffsolve

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, HeunDiscreteScheduler

from diffsolve.interop.diffusers_scheduler import DiffsolveScheduler


def model(x, t):
    return 0.1 * x


def loop(sched, steps, x):
    t0 = time.perf_counter()
    sched.set_timesteps(steps)
    for t in sched.timesteps:
        x = sched.step(model(sched.scale_model_input(x, t), t), t, x).prev_sample
    return time.perf_counter() - t0


def main(shape=(2, 4, 64, 64), steps_list=(25, 50, 100, 200), repeats=3):
    torch.set_num_threads(1)
    x = torch.randn(*shape)
    pairs = [
        ("DDIMScheduler", DDIMScheduler),
        ("DPMSolverMultistepScheduler", DPMSolverMultistepScheduler),
        ("HeunDiscreteScheduler", HeunDiscreteScheduler),
    ]
    print(f"latents {tuple(shape)} float32, CPU, 1 thread; best of {repeats}; ms per step (seconds per loop)")
    print(f"{'scheduler':48s}" + "".join(f"{n:>20d}" for n in steps_list))
    with torch.no_grad():
        for name, cls in pairs:
            for label, make in (
                (f"diffusers {name}", lambda cls=cls: cls()),
                (f"DiffsolveScheduler.from_config({name})", lambda cls=cls: DiffsolveScheduler.from_config(cls())),
            ):
                cells = []
                for n in steps_list:
                    best = min(loop(make(), n, x) for _ in range(repeats))
                    cells.append(f"{1e3 * best / n:8.3f} ({best:6.3f}s)")
                print(f"{label:48s}" + "".join(f"{c:>20s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
