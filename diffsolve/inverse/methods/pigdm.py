"""PiGDM (Song, Vahdat, Mardani & Kautz 2023): pseudo-inverse guided diffusion (docs/math.md section 12, I5).

p(x0 | xbar) is approximated by N(D(xbar), r^2 I) with r^2 = sigma^2 / (1 + sigma^2), so that
p(y | xbar) = N(A D, r^2 A A^T + sigma_y^2 I); the guidance is the vector-Jacobian product through
the model

    h = (dD/dxbar)^T A^T (r^2 A A^T + sigma_y^2 I)^-1 (y - A D)

(the inverse of the Gram matrix is diagonal in A's SVD). h is the gradient of log p(y | xbar); the step
moves along it by r^2, the variance of p(x0 | xbar):

    D' = D + w r^2 h,   eps kept (renoising, RENOISE_SPEC)

so DDIM continues from D' + sigma eps. Where D is locally the identity (dD/dxbar = I, low noise) and
sigma_y = 0 this is exactly DDNM's projection, r^2 h = A^+ (y - A D); at high noise the model's
Jacobian shrinks the step. In VP model space this is the usual implementation's
x_{t-1} += sqrt(alpha_bar_{t-1}) sqrt(alpha_bar_t) grad_{x_t} (noise-free: A^+ in place of
A^T (A A^T)^-1 / r^2, equal). w = 1 is the paper's rule.
"""

from __future__ import annotations

import torch

from ...validation import check_finite_number
from ..base import Restorer, Task, hooked


class PiGDM(Restorer):
    """PiGDM: the VJP of (y - A x0hat)^T (r^2 A A^T + sigma_y^2 I)^-1 A through the model."""

    name = "pigdm"
    linear_only = True
    renoising = True
    default_solver = ("ddim", {"eta": 1.0})
    paper = "Song, Vahdat, Mardani & Kautz 2023, Pseudoinverse-Guided Diffusion Models for Inverse Problems"

    def __init__(self, *, scale: float = 1.0):
        self.scale = check_finite_number(scale, "pigdm: scale")
        if self.scale < 0:
            raise ValueError(f"pigdm: scale must be >= 0, got {scale}")

    def restore(self, task: Task):
        op, y, shape, w = task.linear, task.y, task.x_shape, self.scale
        sy2 = task.noise_std**2

        def hook(view, xbar, sigma):
            if sigma == 0 or w == 0:
                return view.base_predict(xbar, sigma)
            r2 = sigma * sigma / (1.0 + sigma * sigma)
            with torch.enable_grad():
                xg = xbar.detach().requires_grad_(True)
                denoised, eps = view.base_predict(xg, sigma)
                s = op.singulars(shape).to(device=y.device)
                # A^T (r^2 A A^T + sigma_y^2 I)^-1 in A's SVD: s / (r^2 s^2 + sigma_y^2) per coordinate
                weight = torch.where(s > 0, s / (r2 * s * s + sy2).clamp_min(1e-300), 0.0).to(y.dtype)
                v = op.v(weight * op.ut(y - op.forward(denoised.detach()), shape), shape)
                (g,) = torch.autograd.grad(denoised, xg, v)
            return denoised.detach() + (w * r2) * g, eps.detach()

        return task.sample(hooked(task.ode, hook, renoise=True), task.x_T)
