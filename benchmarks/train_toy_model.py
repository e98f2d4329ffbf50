"""Train the eps-prediction MLP shipped with the benchmark (diffsolve/bench/toy_spiral.pt).

    python benchmarks/train_toy_model.py            # writes diffsolve/bench/toy_spiral.pt

Reproducible: fixed seed, one torch thread, float32 on CPU (about a minute). Data: the
procedural two-arm spiral of :func:`diffsolve.bench.toy.spiral` drawn fresh every step from
a generator seeded with TRAIN_SEED; the benchmark's held-out set uses another seed.

Loss: DDPM's simple loss E ||eps_theta(x_t, t) - eps||^2 with x_t = A_t x0 + B_t eps (E8),
t drawn uniformly in [0, T - 1] as a *fractional* index (sigma log-linear between levels,
the same rule diffsolve's DiscreteSchedule uses), so the model is smooth between the
schedule's levels and every grid may evaluate it.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from diffsolve.analytic import default_schedule
from diffsolve.bench.toy import NUM_TRAIN_STEPS, TRAIN_SEED, WEIGHTS, EpsMLP, spiral


def train(steps: int, batch: int, lr: float, seed: int, out: Path) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    sched = default_schedule()
    model = EpsMLP()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    lr_at = lambda k: lr * 0.5 * (1 + math.cos(math.pi * k / steps))  # noqa: E731 - cosine decay
    t0 = time.time()
    ema = None
    for k in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(k)
        x0 = spiral(batch, g)
        t = torch.rand(batch, generator=g, dtype=torch.float64) * (NUM_TRAIN_STEPS - 1)
        sigma = sched.sigma(t)
        a = 1 / torch.sqrt(1 + sigma**2)  # A_t (E5)
        b = sigma * a  # B_t
        eps = torch.randn(batch, 2, generator=g, dtype=torch.float64)
        x_t = (a[:, None] * x0 + b[:, None] * eps).float()
        loss = (model(x_t, t.float()) - eps.float()).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        value = float(loss.detach())
        ema = value if ema is None else 0.99 * ema + 0.01 * value
        if k % 1000 == 0 or k == steps - 1:
            print(f"step {k:>6}  loss(ema) {ema:.4f}  {time.time() - t0:.0f}s", flush=True)
    state = {name: p.detach().clone() for name, p in model.state_dict().items()}
    blob = {
        "config": model.config,
        "state_dict": state,
        "meta": {
            "steps": steps,
            "batch": batch,
            "lr": lr,
            "seed": seed,
            "final_loss_ema": ema,
            "command": "python benchmarks/train_toy_model.py",
            "torch": str(torch.__version__),
        },
    }
    tmp = out.with_suffix(".tmp")
    torch.save(blob, tmp)
    tmp.replace(out)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB) in {time.time() - t0:.0f}s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=15000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=TRAIN_SEED)
    p.add_argument("--out", type=Path, default=WEIGHTS)
    a = p.parse_args()
    train(a.steps, a.batch, a.lr, a.seed, a.out)


if __name__ == "__main__":
    main()
