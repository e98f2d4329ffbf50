"""Makes docs/images/interpolation.png from the shipped trained model (the 2-D spiral eps-MLP).

Left: slerp paths between pairs of x_T, each decoded with DDIM (50 steps), over the training
distribution. Middle: the same pairs with lerp. Right: the DDIM paper's consistency observation,
the same x_T decoded with 10 and 100 steps. Run: python docs/examples/interpolation_figure.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

import diffsolve as ds
from diffsolve.bench.toy import HELD_OUT_SEED, load_toy_model, spiral

torch.set_num_threads(1)
ode = ds.wrap(load_toy_model(), ds.DiscreteSchedule.linear())  # eps prediction, DDPM index time
data = spiral(2000, torch.Generator().manual_seed(HELD_OUT_SEED))
gen = torch.Generator().manual_seed(0)
pairs = [(torch.randn(2, generator=gen), torch.randn(2, generator=gen)) for _ in range(6)]

fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.5))
for ax, method in zip(axes[:2], ("slerp", "lerp")):
    ax.scatter(data[:, 0], data[:, 1], s=2, c="0.85")
    for k, (z0, z1) in enumerate(pairs):
        path = ds.interpolate(ode, z0, z1, alphas=21, steps=50, method=method)
        ax.plot(path[:, 0], path[:, 1], "-o", ms=3, color=f"C{k}")
    ax.set_title(f"{method}: 21 points between two x_T, DDIM 50 steps")
x_T = torch.randn(120, 2, generator=gen)
coarse, fine = (ds.sample(ode, x_T, "ddim", steps=S) for S in (10, 100))
ax = axes[2]
ax.scatter(data[:, 0], data[:, 1], s=2, c="0.85")
for a, b in zip(coarse, fine):
    ax.plot([a[0], b[0]], [a[1], b[1]], "-", color="C3", lw=0.6)
ax.scatter(fine[:, 0], fine[:, 1], s=10, c="C0", label="100 steps")
ax.scatter(coarse[:, 0], coarse[:, 1], s=10, c="C3", label="10 steps")
ax.legend(loc="lower right")
ax.set_title("same x_T, 10 vs 100 DDIM steps")
for ax in axes:
    ax.set_aspect("equal")
    ax.set_xlim(-1.4, 1.4)
    ax.set_ylim(-1.4, 1.4)
fig.tight_layout()
out = Path(__file__).resolve().parents[1] / "images" / "interpolation.png"
fig.savefig(out, dpi=80)
print("wrote", out, "| mean distance 10 vs 100 steps:", (coarse - fine).norm(dim=1).mean().item())
