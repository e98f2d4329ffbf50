"""Convergence of DPM-Solver++(3M) with the exact and the reference weights (issue 14, docs/findings.md).

On a 1-D Gaussian N(0.5, 0.5^2) (exact flow E38), sigma from 80 down to 0.05 on steps uniform in
lambda = -log sigma (8 to 256 steps), every step at full order (final_step="denoise" on a grid that
ends above 0), max error over 64 starting points:

* diffsolve dpmpp-3m, exact weights (default) and weights="reference";
* k-diffusion's own sample_dpmpp_3m_sde at eta = 0 (loaded from its installed files), and diffsolve
  dpmpp-3m-sde at eta = 0 with both weightings.

Run: python benchmarks/dpmpp_3m_weights.py      (a few seconds on a CPU; prints a markdown table)
"""

from __future__ import annotations

import math

import torch

import diffsolve as ds
from diffsolve.analytic import Gaussian
from diffsolve.bench.peers import kdiffusion

torch.set_num_threads(1)
SIGMA_MAX, SIGMA_END = 80.0, 0.05
STEPS = [8, 16, 32, 64, 128, 256]


def main() -> None:
    g = Gaussian(torch.tensor([0.5], dtype=torch.float64), 0.5)
    ode = g.ode(ds.SigmaSchedule(0.0, 1e3, space="ve"), time="sigma")
    x_T = 0.5 + SIGMA_MAX * torch.randn(64, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = g.exact_flow(x_T, SIGMA_MAX, SIGMA_END)
    K = kdiffusion()

    def denoiser(x, sigma):
        return ode.predict(x, float(sigma.reshape(-1)[0]))[0]

    runs = {
        "dpmpp-3m (exact, default)": lambda sig: ds.sample(ode, x_T, "dpmpp-3m", sigmas=sig, final_step="denoise"),
        "dpmpp-3m weights=reference": lambda sig: ds.sample(
            ode, x_T, "dpmpp-3m", sigmas=sig, final_step="denoise", weights="reference"
        ),
        "dpmpp-3m-sde eta=0 (exact)": lambda sig: ds.sample(
            ode, x_T, "dpmpp-3m-sde", sigmas=sig, eta=0.0, final_step="denoise"
        ),
        "dpmpp-3m-sde eta=0 weights=reference": lambda sig: ds.sample(
            ode, x_T, "dpmpp-3m-sde", sigmas=sig, eta=0.0, final_step="denoise", weights="reference"
        ),
        "k-diffusion sample_dpmpp_3m_sde eta=0": lambda sig: K.sampling.sample_dpmpp_3m_sde(
            denoiser, x_T.clone(), sig, eta=0.0, disable=True
        ),
    }
    print(f"| method | {' | '.join(f'N={n}' for n in STEPS)} | slopes {STEPS[0]}..{STEPS[-1]} |")
    print("|---|" + "---|" * (len(STEPS) + 1))
    for label, run in runs.items():
        errs = []
        for n in STEPS:
            sig = torch.linspace(math.log(SIGMA_MAX), math.log(SIGMA_END), n + 1, dtype=torch.float64).exp()
            errs.append(float((run(sig) - exact).abs().max()))
        slopes = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
        print(f"| {label} | {' | '.join(f'{e:.2e}' for e in errs)} | {', '.join(f'{s:.2f}' for s in slopes)} |")


if __name__ == "__main__":
    main()
