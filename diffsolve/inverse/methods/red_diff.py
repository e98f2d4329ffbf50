"""RED-diff (Mardani, Song, Kautz & Vahdat 2023): variational restoration (docs/math.md section 12, I7).

The restored image mu is optimized with Adam. At each level sigma of the grid (high to low) one
draws eps, forms xbar = mu + sigma eps (the sigma form of x_t = alpha (mu + sigma eps)) and
evaluates the model once, *without* backpropagating through it; the gradient with respect to mu is

    A'(mu)^T (A(mu) - y) + lambda sigma (epshat(xbar, sigma) - eps)

(the data term 1/2 ||y - A(mu)||^2, and the score-matching regularizer with the paper's
signal-to-noise weight sigma). mu starts at A^+ y for a linear A, at 0 otherwise.
"""

from __future__ import annotations

import torch

from ...validation import check_finite_number
from ..base import Restorer, Task


class REDDiff(Restorer):
    """RED-diff: Adam on mu with the data gradient plus lambda * sigma * (epshat - eps)."""

    name = "red-diff"
    uses_solver = False
    default_solver = ("", {})
    paper = "Mardani, Song, Kautz & Vahdat 2023, A Variational Perspective on Solving Inverse Problems"

    def __init__(self, *, lam: float = 0.25, lr: float = 0.1):
        self.lam = check_finite_number(lam, "red-diff: lam")
        self.lr = check_finite_number(lr, "red-diff: lr")
        if self.lam < 0 or self.lr <= 0:
            raise ValueError(f"red-diff: lam must be >= 0 and lr > 0, got lam={lam}, lr={lr}")

    def restore(self, task: Task):
        op, ode, y = task.operator, task.ode, task.y
        if op.linear:
            mu = op.pinv(y, task.x_shape).clone()
        else:
            mu = torch.zeros_like(task.x_T)
        mu.requires_grad_(True)
        opt = torch.optim.Adam([mu], lr=self.lr)
        for sigma in task.levels(task.sigmas[:-1], "diffsolve red-diff"):
            with torch.no_grad():
                eps = task.noise(mu)
                eps_hat = ode.eps(mu.detach() + sigma * eps, sigma)
            with torch.enable_grad():
                data = 0.5 * (y - op.forward(mu)).pow(2).sum()
                (g,) = torch.autograd.grad(data, mu)
            mu.grad = g + (self.lam * sigma) * (eps_hat - eps)
            opt.step()
        return mu.detach()
