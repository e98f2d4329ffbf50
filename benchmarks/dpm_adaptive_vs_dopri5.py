"""dpm-adaptive (DPM-Solver-23 with error control) against torchdiffeq's dopri5 on gmm64 (issue 14).

Problem: the analytic 64-component mixture ``gmm64`` of the benchmark (DDPM linear schedule, exact
eps), 128 starting points, float64. Both solvers integrate from the schedule's sigma_max down to
sigma_min (the grid [sigma_max, sigma_min]: no final denoising step, so the error is the
integrator's), with rtol = atol = tol; dopri5 in both of diffsolve's variables (sigma, log-sigma).
Error: max |x - x_ref| at sigma_min in model space, x_ref from dopri5 at rtol = atol = 1e-11 in
log-sigma (diffsolve.analytic.reference_solution). NFE: model calls (ode.nfe).

Run: python benchmarks/dpm_adaptive_vs_dopri5.py      (about a minute on one CPU core; a markdown table)
"""

from __future__ import annotations

import torch
from tqdm import tqdm

import diffsolve as ds
from diffsolve.analytic import reference_solution
from diffsolve.bench.catalog import get_bench_problem

torch.set_num_threads(1)
TOLS = [1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6, 3e-7, 1e-7]
TARGETS = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5]
SOLVERS = [
    ("dpm-adaptive", {}),
    ("torchdiffeq-dopri5", {"variable": "sigma"}),
    ("torchdiffeq-dopri5", {"variable": "log-sigma"}),
]


def main() -> None:
    p = get_bench_problem("gmm64")
    ode = p.ode(torch.float64)
    s_max, s_min = float(ode.schedule.sigma_max), float(ode.schedule.sigma_min)
    x_T = p.x_T(0, 128).double()
    ref = reference_solution(ode, x_T, s_max, s_min, rtol=1e-11, atol=1e-11)
    grid = torch.tensor([s_max, s_min], dtype=torch.float64)
    rows = []
    for tol in tqdm(TOLS, desc="tolerances"):
        row = [f"{tol:g}"]
        for name, opts in SOLVERS:
            ode.nfe = 0
            out = ds.sample(ode, x_T, name, sigmas=grid, rtol=tol, atol=tol, **opts)
            row += [str(ode.nfe), f"{float((out - ref).abs().max()):.2e}"]
        rows.append(row)
        print("| " + " | ".join(row) + " |", flush=True)
    head = ["tol"] + [
        f"{n}{'' if not o else ' (' + o['variable'] + ')'} {c}" for n, o in SOLVERS for c in ("NFE", "error")
    ]
    print()
    print(f"gmm64, sigma {s_max:.4g} -> {s_min:.4g}, 128 samples, float64")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    # the fewest model calls with which each solver reached each error (over the tolerance sweep)
    print()
    labels = [f"{n}{'' if not o else ' (' + o['variable'] + ')'}" for n, o in SOLVERS]
    print("| max error <= | " + " | ".join(f"{lab} NFE" for lab in labels) + " |")
    print("|" + "---|" * (len(labels) + 1))
    for target in TARGETS:
        cells = []
        for k in range(len(SOLVERS)):
            hits = [int(r[1 + 2 * k]) for r in rows if float(r[2 + 2 * k]) <= target]
            cells.append(str(min(hits)) if hits else f"> {max(int(r[1 + 2 * k]) for r in rows)}")
        print(f"| {target:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
