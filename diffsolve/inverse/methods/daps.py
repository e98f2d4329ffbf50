"""DAPS (Zhang, Chu, Berner, Ma, Yue & Anandkumar 2024): decoupled annealing posterior sampling
(docs/math.md section 12, I8).

For each level sigma_k of the annealing grid (high to low):

1. x0hat = the ODE solved from (xbar_k, sigma_k) to 0 with a few steps of the chosen solver;
2. Langevin dynamics on x0 for p(x0 | xbar_k, y) ~ exp(-||x0 - x0hat||^2 / (2 r_k^2) - ||y - A(x0)||^2 / (2 beta^2)),
   started at x0hat, with r_k = sigma_k, beta = max(sigma_y, beta_min) and the step
   tau = lr / (1 / r_k^2 + 1 / beta^2) (lr a fraction of the largest stable step for ||A|| <= 1):
   x0 <- x0 + tau grad log p + sqrt(2 tau) z;
3. re-noise: xbar_{k+1} = x0 + sigma_{k+1} z.

The last level's x0 is returned. A nonlinear A works (autograd). NFE = levels x inner steps.
"""

from __future__ import annotations

import math

import torch

from ...validation import check_finite_number
from ..base import Restorer, Task


def _inner_grid(sigma: float, sigma_min: float, steps: int) -> list[float]:
    """``steps`` levels log-uniform from ``sigma`` down to the model's ``sigma_min``, then 0."""
    if steps == 1 or sigma <= sigma_min:
        return [sigma, 0.0]
    lo, hi = math.log(sigma_min), math.log(sigma)
    return [math.exp(hi + (lo - hi) * j / (steps - 1)) for j in range(steps)] + [0.0]


class DAPS(Restorer):
    """DAPS: per level, a short ODE solve to x0hat, Langevin on x0 with the data term, re-noise."""

    name = "daps"
    default_solver = ("ddim", {})
    paper = "Zhang et al. 2024, Improving Diffusion Inverse Problem Solving with Decoupled Noise Annealing"

    def __init__(self, *, inner_steps: int = 4, langevin_steps: int = 30, lr: float = 0.5, beta_min: float = 0.02):
        if isinstance(inner_steps, bool) or not isinstance(inner_steps, int) or inner_steps < 1:
            raise ValueError(f"daps: inner_steps must be an integer >= 1, got {inner_steps!r}")
        if isinstance(langevin_steps, bool) or not isinstance(langevin_steps, int) or langevin_steps < 0:
            raise ValueError(f"daps: langevin_steps must be an integer >= 0, got {langevin_steps!r}")
        self.inner_steps, self.langevin_steps = inner_steps, langevin_steps
        self.lr = check_finite_number(lr, "daps: lr")
        self.beta_min = check_finite_number(beta_min, "daps: beta_min")
        if not 0 < self.lr <= 1 or self.beta_min <= 0:
            raise ValueError(f"daps: lr must be in (0, 1] and beta_min > 0, got lr={lr}, beta_min={beta_min}")

    def restore(self, task: Task):
        op, ode, y = task.operator, task.ode, task.y
        beta2 = max(task.noise_std, self.beta_min) ** 2
        sigma_min = ode.schedule.sigma_min if ode.schedule.sigma_min > 0 else 1e-3
        sig = task.sigmas
        x = task.x_T
        x0 = x
        for k, sigma in task.levels(list(enumerate(sig[:-1])), "diffsolve daps"):
            x0hat = task.sample(ode, x, _inner_grid(sigma, sigma_min, self.inner_steps), progress=False)
            r2 = sigma * sigma
            tau = self.lr / (1.0 / r2 + 1.0 / beta2)
            x0 = x0hat
            for _ in range(self.langevin_steps):
                with torch.enable_grad():
                    xg = x0.detach().requires_grad_(True)
                    data = (y - op.forward(xg)).pow(2).sum() / (2 * beta2)
                    (g,) = torch.autograd.grad(data, xg)
                x0 = x0 + tau * (-(x0 - x0hat) / r2 - g) + math.sqrt(2 * tau) * task.noise(x0)
            sigma_next = sig[k + 1]
            if sigma_next > 0:  # re-noise to the next level (model space: x = scale * xbar)
                x = ode.from_xbar(x0 + sigma_next * task.noise(x0), sigma_next)
        return x0
