"""DiffsolveScheduler emulating DPMSolverMultistepScheduler(solver_order=3) against diffusers' own loop.

The loop of tests/test_diffusers.py (a smooth nonlinear toy model, 2x3x4x4 latents, float32); the
emulation passes dpmpp-3m the reference weights (``_dpm_method``), so the two loops agree to
float32 rounding. Prints the relative difference of the final latents at 10 and 25 steps.

Run: python benchmarks/dpmpp_3m_scheduler_parity.py      (a second on a CPU)
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from diffusers import DPMSolverMultistepScheduler

from diffsolve import DiffsolveScheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_diffusers import _loop, _rel  # noqa: E402 - the test suite's pipeline loop and measure


def main() -> None:
    torch.set_default_dtype(torch.float32)
    for steps in (10, 25):
        ref = DPMSolverMultistepScheduler(solver_order=3)
        gap = _rel(_loop(DiffsolveScheduler.from_config(ref), steps=steps), _loop(ref, steps=steps))
        print(f"{steps} steps: relative difference {gap:.1e}")


if __name__ == "__main__":
    main()
