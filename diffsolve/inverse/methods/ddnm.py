"""DDNM (Wang, Yu & Zhang 2023): range-null-space projection of the prediction (docs/math.md section 12, I3).

At each model evaluation the x0-prediction is projected onto the measurement,

    D' = D - lambda(sigma) A^+ (A D - y)          (lambda = 1: D' = A^+ y + (I - A^+ A) D)

and the model's eps is kept: the pair (D', eps) is *renoising* (RENOISE_SPEC), so the chosen solver
continues from D' + sigma eps (for DDIM: x_next = D' + sigma_next eps). With noise (sigma_y > 0) the
relaxed form (DDNM+) projects only as far as the noise level allows: lambda = min(1, sigma_next / sigma_y)
with sigma_next the grid's next level below sigma, so the measurement noise (std sigma_y in A^+ y's
coordinates, for operators with singular values <= 1) is never pushed in beyond the noise the next
state carries anyway; the last step (sigma_next = 0) does not project.
"""

from __future__ import annotations

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

    def lam(self, sigma_next: float, noise_std: float) -> float:
        """lambda of I3: 1 without noise (or relax=False), min(1, sigma_next / sigma_y) with it."""
        if noise_std == 0 or not self.relax:
            return 1.0
        return min(1.0, sigma_next / noise_std)

    def restore(self, task: Task):
        op, y, shape = task.linear, task.y, task.x_shape

        def hook(view, xbar, sigma):
            denoised, eps = view.base_predict(xbar, sigma)
            lam = self.lam(next_level(task.sigmas, sigma), task.noise_std)
            correction = op.pinv(op.forward(denoised) - y, shape)
            return denoised - lam * correction, eps

        return task.sample(hooked(task.ode, hook, renoise=True), task.x_T)
