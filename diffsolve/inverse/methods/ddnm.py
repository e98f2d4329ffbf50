"""DDNM (Wang, Yu & Zhang 2023): range-null-space projection of the prediction (docs/math.md section 12, I3).

At each model evaluation the x0-prediction is projected onto the measurement,

    D' = D - V diag(lambda_i / s_i) U^T (A D - y)        (all lambda_i = 1: D' = A^+ y + (I - A^+ A) D)

in A's SVD (I1), and the model's eps is kept: the pair (D', eps) is *renoising* (RENOISE_SPEC), so the
chosen solver continues from D' + sigma eps (for DDIM: x_next = D' + sigma_next eps). Without noise
every lambda_i = 1. With noise (DDNM+, relaxed) coordinate i of A^+ y carries noise of std
sigma_y / s_i, so it is projected only as far as the next level's own noise allows:
lambda_i = min(1, sigma_next s_i / sigma_y), sigma_next the grid's next level below sigma (the last
step, to 0, does not project).
"""

from __future__ import annotations

import torch

from ..base import Restorer, Task, hooked, next_level


class DDNM(Restorer):
    """DDNM: D <- A^+ y + (I - A^+ A) D, the model's eps kept for re-noising (DDNM+ when noisy)."""

    name = "ddnm"
    linear_only = True
    renoising = True
    default_solver = ("ddim", {"eta": 0.85})
    paper = "Wang, Yu & Zhang 2023, Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model"

    def __init__(self, *, relax: bool = True):
        if not isinstance(relax, bool):
            raise ValueError(f"ddnm: relax must be True or False, got {relax!r}")
        self.relax = relax

    def lam(self, sigma_next: float, noise_std: float, s: torch.Tensor) -> torch.Tensor:
        """lambda_i of I3 for singular values ``s``: 1 without noise (or relax=False), else
        min(1, sigma_next s_i / sigma_y)."""
        if noise_std == 0 or not self.relax:
            return torch.ones_like(s)
        return (sigma_next * s / noise_std).clamp(max=1.0)

    def restore(self, task: Task):
        op, y, shape = task.linear, task.y, task.x_shape

        s = op.singulars(shape).to(device=y.device)
        inv = torch.where(s > 0, 1.0 / torch.where(s > 0, s, 1.0), 0.0)

        def hook(view, xbar, sigma):
            denoised, eps = view.base_predict(xbar, sigma)
            gain = (self.lam(next_level(task.sigmas, sigma), task.noise_std, s) * inv).to(denoised.dtype)
            correction = op.v(gain * op.ut(op.forward(denoised) - y, shape), shape)
            return denoised - correction, eps

        return task.sample(hooked(task.ode, hook, renoise=True), task.x_T)
