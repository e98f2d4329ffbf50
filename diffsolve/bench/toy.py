"""The small trained model shipped with the benchmark: an eps-prediction MLP on a 2-D spiral.

Data: a noisy two-arm spiral generated procedurally from a fixed seed (:func:`spiral`),
so nothing is downloaded. Model: :class:`EpsMLP`, ``eps = f(x_t, t)`` with ``t`` the
(fractional) DDPM index of the linear schedule (E1), trained by
``python benchmarks/train_toy_model.py`` (fixed seed, about a minute on one CPU core).
The weights (``toy_spiral.pt``, about 200 KB) are loaded with ``torch.load(...,
weights_only=True)``: the file holds only tensors and plain Python values.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

__all__ = ["EpsMLP", "spiral", "load_toy_model", "spiral_problem", "WEIGHTS", "TRAIN_SEED", "HELD_OUT_SEED"]

WEIGHTS = Path(__file__).with_name("toy_spiral.pt")
TRAIN_SEED = 0
HELD_OUT_SEED = 1
NUM_TRAIN_STEPS = 1000  # DDPM's T: the model's time input is the index 0..999


def spiral(n: int, generator: torch.Generator | None = None, noise: float = 0.04) -> torch.Tensor:
    """``n`` points of a two-arm spiral in the plane (float64), scaled to about [-1, 1]^2.

    Arm k (k = 0, 1) is r(u) (cos(phi(u) + k pi), sin(phi(u) + k pi)) with u ~ U(0, 1),
    phi = 0.5 + 3 pi sqrt(u) and r = phi / (0.5 + 3 pi); Gaussian noise of std ``noise`` is added.
    """
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    arm = torch.randint(0, 2, (n,), generator=generator).to(torch.float64)
    phi_max = 0.5 + 3 * math.pi
    phi = 0.5 + 3 * math.pi * torch.sqrt(u)
    r = phi / phi_max
    angle = phi + math.pi * arm
    x = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], dim=1)
    return x + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)


class EpsMLP(nn.Module):
    """eps-prediction MLP: ``forward(x, t)`` with x of shape (N, dim) and t the DDPM index (N,).

    The time enters through ``frequencies`` sine/cosine features of t / T; hidden layers use SiLU.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 4, frequencies: int = 16):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "frequencies": frequencies}
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(200.0), frequencies)), persistent=False)
        layers: list[nn.Module] = [nn.Linear(dim + 2 * frequencies, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tau = (t.to(x.dtype) / NUM_TRAIN_STEPS).reshape(-1, 1) * self.freqs.to(x.dtype)
        h = torch.cat([x, torch.sin(tau), torch.cos(tau)], dim=1)
        return self.net(h)


def load_toy_model(path: str | Path = WEIGHTS) -> EpsMLP:
    """The shipped MLP in float32, eval mode (safe load: ``weights_only=True``)."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    model = EpsMLP(**blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model.to(torch.float32).eval().requires_grad_(False)


def spiral_problem(samples: int = 256):
    """The shipped model as a benchmark problem (also usable as ``--model diffsolve.bench.toy:spiral_problem``)."""
    from ..analytic import default_schedule
    from .problems import ModelProblem

    held_out = spiral(4096, torch.Generator().manual_seed(HELD_OUT_SEED))
    return ModelProblem(
        "mlp-spiral",
        load_toy_model(),
        default_schedule(),
        shape=(2,),
        prediction="eps",
        time="index",
        data=held_out,
        samples=samples,
        dtype=torch.float32,
        description="eps-MLP trained on a 2-D spiral (shipped weights)",
    )
