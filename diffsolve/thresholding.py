"""Corrections of the predicted x0: clipping and dynamic thresholding.

Each factory returns a ``denoised_transform`` for :func:`diffsolve.wrap`: a callable
``(denoised, sigma) -> denoised``. The wrapper then recomputes eps = (xbar - D)/sigma, so the
pair (x0hat, epshat) stays consistent (docs/math.md pitfall 1): a DDIM step at eta = 1 with
clipping is exactly the clipped DDPM posterior form (E23). Off by default; with a transform
on, the ODE is no longer the probability-flow ODE, so exact reversibility and convergence
order no longer hold.

::

    ode = ds.wrap(model, schedule, denoised_transform=ds.DynamicThresholding(0.995))
"""

from __future__ import annotations

import math

import torch

__all__ = ["Clipping", "DynamicThresholding"]


class Clipping:
    """Clamp the predicted x0 to ``[lo, hi]`` (default [-1, 1], images scaled to that range)."""

    def __init__(self, lo: float = -1.0, hi: float = 1.0):
        lo, hi = float(lo), float(hi)
        if not (lo < hi):
            raise ValueError(f"clipping needs lo < hi, got lo={lo}, hi={hi}")
        self.lo, self.hi = lo, hi

    def __call__(self, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
        return denoised.clamp(self.lo, self.hi)

    def rows(self, idx, n: int) -> Clipping:
        """Itself: the clamp acts on each sample alone (:meth:`diffsolve.DiffusionODE.rows`)."""
        return self

    def __repr__(self) -> str:
        return f"Clipping({self.lo}, {self.hi})"


class DynamicThresholding:
    """Dynamic thresholding (Saharia et al. 2022, Imagen, Sec. 2.3).

    Per sample: s = max(1, quantile(|x0|, p)) over all its entries (capped at ``max_value``),
    then x0 = clamp(x0, -s, s) / s. With s = 1 this is clipping to [-1, 1]; a larger s pulls
    saturated values inwards instead of flattening them. The rule is defined for every p in
    [0, 1] and every ``max_value`` > 0 (diffusers accepts them all): a ``max_value`` below 1 wins
    over the floor 1, so s = max_value.
    """

    def __init__(self, p: float = 0.995, max_value: float = math.inf):
        p, max_value = float(p), float(max_value)
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"the percentile p must be in [0, 1], got {p}")
        if not max_value > 0.0:
            raise ValueError(f"max_value must be > 0, got {max_value}")
        self.p, self.max_value = p, max_value

    def __call__(self, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
        flat = denoised.reshape(denoised.shape[0], -1)
        work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
        s = torch.quantile(work.abs(), self.p, dim=1).clamp(min=1.0, max=self.max_value)[:, None]
        out = torch.maximum(torch.minimum(work, s), -s) / s
        return out.to(denoised.dtype).reshape(denoised.shape)

    def rows(self, idx, n: int) -> DynamicThresholding:
        """Itself: the threshold s is each sample's own (:meth:`diffsolve.DiffusionODE.rows`)."""
        return self

    def __repr__(self) -> str:
        return f"DynamicThresholding(p={self.p}, max_value={self.max_value})"
