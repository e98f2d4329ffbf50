"""DDRM (Kawar, Elad, Ermon & Song 2022): denoising diffusion restoration in A's SVD (docs/math.md section 12, I6).

In the spectral coordinates of A = U diag(s) V^T, with c = V^T xbar, chat = V^T D (one model call),
ybar_i = (U^T y)_i / s_i and sigma_y the measurement noise, a step sigma -> sigma' sets each
coordinate by its own rule (z standard normal, eta and eta_b the paper's two knobs):

* s_i = 0 (unmeasured):            c'_i = chat_i + sqrt(1 - eta^2) sigma' (c_i - chat_i) / sigma + eta sigma' z_i
* sigma' < sigma_y / s_i:          c'_i = chat_i + sqrt(1 - eta^2) sigma' (ybar_i - chat_i) s_i / sigma_y + eta sigma' z_i
* sigma' >= sigma_y / s_i:         c'_i = (1 - eta_b) chat_i + eta_b ybar_i + sqrt(sigma'^2 - eta_b^2 sigma_y^2 / s_i^2) z_i

The start (sigma_0) is c_i = ybar_i + sqrt(sigma_0^2 - sigma_y^2 / s_i^2) z_i where sigma_0 > sigma_y / s_i,
else sigma_0 z_i. DDRM is its own sampler (``solver=`` is refused); ``grid=`` and ``steps=`` pick the levels.
With sigma_y = 0 and eta_b = 1 the last step returns ybar on the measured coordinates: A x = y.
"""

from __future__ import annotations

import math

import torch

from ...validation import check_finite_number
from ..base import Restorer, Task


class DDRM(Restorer):
    """DDRM: per-coordinate posterior steps in the SVD basis of a linear A."""

    name = "ddrm"
    linear_only = True
    uses_solver = False
    default_solver = ("", {})
    paper = "Kawar, Elad, Ermon & Song 2022, Denoising Diffusion Restoration Models"

    def __init__(self, *, eta: float = 0.85, eta_b: float = 1.0):
        self.eta = check_finite_number(eta, "ddrm: eta")
        self.eta_b = check_finite_number(eta_b, "ddrm: eta_b")
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"ddrm: eta must be in [0, 1], got {eta}")
        if not 0.0 <= self.eta_b <= 1.0:
            raise ValueError(f"ddrm: eta_b must be in [0, 1], got {eta_b}")

    def restore(self, task: Task):
        op, ode, shape, sy = task.linear, task.ode, task.x_shape, task.noise_std
        sig = task.sigmas
        x = task.x_T
        s = op.singulars(shape).to(device=x.device, dtype=torch.float64)
        measured = s > 0
        s_safe = torch.where(measured, s, 1.0)
        ybar = torch.where(measured, op.ut(task.y, shape).to(torch.float64) / s_safe, 0.0).to(x.dtype)
        level = torch.where(measured, sy / s_safe, math.inf)  # sigma_y / s_i: the noise of ybar_i (inf if unmeasured)
        z = task.noise(ybar)
        start = torch.sqrt((sig[0] ** 2 - level**2).clamp_min(0)).to(x.dtype)
        c = torch.where(measured & (level < sig[0]), ybar + start * z, sig[0] * z)
        xbar = op.v(c, shape)
        eta, eta_b = self.eta, self.eta_b
        for sigma, sigma_next in task.levels(list(zip(sig[:-1], sig[1:])), "diffsolve ddrm"):
            denoised, _ = ode.predict(xbar, sigma)
            chat, c = op.vt(denoised), op.vt(xbar)
            z = task.noise(c)
            keep = math.sqrt(1 - eta * eta) * sigma_next
            unmeasured = chat + (keep / sigma) * (c - chat) + (eta * sigma_next) * z
            ratio = torch.where(measured, s_safe / max(sy, 1e-300), 0.0).to(x.dtype)  # 1 / level
            noisier = chat + keep * (ybar - chat) * ratio + (eta * sigma_next) * z
            cleaner_std = torch.sqrt((sigma_next**2 - (eta_b * level) ** 2).clamp_min(0)).to(x.dtype)
            cleaner = (1 - eta_b) * chat + eta_b * ybar + cleaner_std * z
            c_next = torch.where(~measured, unmeasured, torch.where(sigma_next < level, noisier, cleaner))
            xbar = op.v(c_next, shape)
        return ode.from_xbar(xbar, sig[-1])
