"""DPS (Chung, Kim, Mccann, Klasky & Ye 2023): diffusion posterior sampling (docs/math.md section 12, I4).

Every model evaluation backpropagates the measurement residual through the model,

    g = grad_xbar || y - A(D(xbar)) ||_2      (per sample)
    D' = D - zeta / scale(sigma)^2 * g,   eps kept (renoising, RENOISE_SPEC)

so that DDIM (any eta) takes its unconditional step and then moves by -zeta g / scale^2 in the
sigma form: the paper's x_{t-1} = x'_{t-1} - zeta grad_{x_t} ||y - A(x0hat)|| with the step's two
scale factors (x = scale xbar) merged at the current level (exact as the steps shrink). zeta = 0
is unconditional sampling. A nonlinear A works (autograd).
"""

from __future__ import annotations

import torch

from ...validation import check_finite_number
from ..base import Restorer, Task, hooked, per_sample_norm


class DPS(Restorer):
    """DPS: a solver step minus zeta * grad ||y - A(x0hat)|| through the model."""

    name = "dps"
    renoising = True
    default_solver = ("ddim", {"eta": 1.0})
    paper = "Chung et al. 2023, Diffusion Posterior Sampling for General Noisy Inverse Problems"

    def __init__(self, *, zeta: float = 1.0):
        self.zeta = check_finite_number(zeta, "dps: zeta")
        if self.zeta < 0:
            raise ValueError(f"dps: zeta must be >= 0, got {zeta}")

    def restore(self, task: Task):
        op, y, zeta = task.operator, task.y, self.zeta
        scale = task.ode.schedule.scale

        def hook(view, xbar, sigma):
            if zeta == 0:
                return view.base_predict(xbar, sigma)
            with torch.enable_grad():
                xg = xbar.detach().requires_grad_(True)
                denoised, eps = view.base_predict(xg, sigma)
                residual = per_sample_norm(y - op.forward(denoised)).sum()
                (g,) = torch.autograd.grad(residual, xg)
            step = zeta / scale(min(max(sigma, view.schedule.sigma_min), view.schedule.sigma_max)) ** 2
            return denoised.detach() - step * g, eps.detach()

        return task.sample(hooked(task.ode, hook, renoise=True), task.x_T)
