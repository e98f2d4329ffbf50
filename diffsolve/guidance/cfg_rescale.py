"""CFG with guidance rescale (Lin et al. 2024, eqs. 15-16), docs/math.md#guidance-rescale, on eps:

    eps_cfg = eps_u + w (eps_c - eps_u)
    eps     = phi * eps_cfg * std(eps_c) / std(eps_cfg) + (1 - phi) * eps_cfg   (std per sample)
    D       = xbar - sigma eps

For an eps-prediction model this is ``ds.wrap(guidance=w, guidance_rescale=phi)`` (which rescales
the raw output); as a method it works on eps whatever the model predicts.
"""

from __future__ import annotations

import torch

from ..validation import check_finite_number
from .base import Guidance
from .cfg import lerp_pair


class CFGRescale(Guidance):
    """CFG, then eps rescaled to the conditional eps's per-sample std and blended with phi (docs/math.md#guidance-rescale)."""

    name = "cfg-rescale"

    def __init__(self, scale: float, *, phi: float = 0.7, sigma_interval=None):
        super().__init__(scale, sigma_interval=sigma_interval)
        self.phi = check_finite_number(phi, "phi")
        if not 0.0 <= self.phi <= 1.0:
            raise ValueError(f"phi must be in [0, 1] (Lin et al. use 0.7), got {phi!r}")

    def options(self):
        return {"phi": self.phi}

    def combine(self, xbar, sigma, cond, other, state):
        _, eps = lerp_pair(other, cond, self.scale)
        eps_c = cond[1]
        dims = tuple(range(1, eps.dim()))
        rescaled = eps * (eps_c.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True))
        eps = self.phi * rescaled + (1 - self.phi) * eps
        return torch.add(xbar, eps, alpha=-sigma), eps
