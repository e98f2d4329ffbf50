"""Classifier-free guidance (Ho & Salimans 2022), docs/math.md#guidance-cfg:

    D = D_u + w (D_c - D_u),   eps = eps_u + w (eps_c - eps_u)

Both lines are the same affine combination of two pairs on rays through one state, so the result
is on that ray too (D + sigma eps = xbar). w = 1 is the conditional model, w = 0 the unconditional.
"""

from __future__ import annotations

import torch

from .base import Guidance, Prediction


def lerp_pair(other: Prediction, cond: Prediction, w: float) -> Prediction:
    """``other + w (cond - other)`` for both members of the pairs (w a Python float)."""
    return tuple(torch.add(o, torch.sub(c, o), alpha=w) for c, o in zip(cond, other))  # type: ignore[return-value]


class CFG(Guidance):
    """Classifier-free guidance: ``u + w (c - u)`` (docs/math.md#guidance-cfg)."""

    name = "cfg"

    def combine(self, xbar, sigma, cond, other, state):
        return lerp_pair(other, cond, self.scale)
