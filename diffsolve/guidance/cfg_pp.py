"""CFG++ (Chung et al. 2024), docs/math.md#guidance-cfgpp:

The guided data estimate with scale lambda in [0, 1], renoised with the *unconditional* noise:

    D = D_u + lambda (D_c - D_u),   eps = eps_u

The pair is off the state's ray (D + sigma eps = xbar + lambda (D_c - D_u) != xbar), so the method
sets ``renoise``: a solver continues from ``D + sigma eps`` (docs/math.md#guidance-cfgpp, RENOISE). With
DDIM that is the paper's Euler form x_next = D + sigma_next (x - D_u) / sigma. lambda = 0 is the
unconditional model; lambda in [0, 1] plays the role of w in about [1, 12.5] of CFG.
"""

from __future__ import annotations

import torch

from .base import Guidance


class CFGPlusPlus(Guidance):
    """CFG++: guided denoised, unconditional eps; solvers renoise (docs/math.md#guidance-cfgpp)."""

    name = "cfg++"
    renoise = True
    scale_range = (0.0, 1.0)

    def combine(self, xbar, sigma, cond, other, state):
        d_c, _ = cond
        d_u, eps_u = other
        return torch.add(d_u, torch.sub(d_c, d_u), alpha=self.scale), eps_u
