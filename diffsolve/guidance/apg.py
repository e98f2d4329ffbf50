"""Adaptive projected guidance, APG (Sadat et al. 2024), docs/math.md#guidance-apg, on the data estimate:

    delta  = D_c - D_u
    delta <- delta + beta * m_prev          (momentum; m = the new delta is kept for the next call)
    delta <- delta * min(1, r / |delta|)    (norm threshold r, per sample; off when r = 0)
    delta_par  = <delta, D_c> / |D_c|^2 * D_c,   delta_perp = delta - delta_par   (per sample)
    D = D_c + (w - 1) (delta_perp + eta delta_par),   eps = (xbar - D) / sigma

With eta = 1, beta = 0 and r = 0 this is CFG. The momentum average is run state (kept in the run
view's dict, never on the method). ``formulation="uncond"`` gives the variant D_u + w (delta_perp +
eta delta_par) (diffusers' default); both agree with CFG at eta = 1 without threshold or momentum.
"""

from __future__ import annotations

import math

import torch

from ..validation import check_finite_number
from .base import Guidance, per_sample_dot

FORMULATIONS = ("paper", "uncond")


class APG(Guidance):
    """APG: the guidance update split parallel / orthogonal to the conditional D (docs/math.md#guidance-apg)."""

    name = "apg"

    def __init__(
        self,
        scale: float,
        *,
        eta: float = 0.0,
        norm_threshold: float = 0.0,
        momentum: float = 0.0,
        formulation: str = "paper",
        sigma_interval=None,
    ):
        super().__init__(scale, sigma_interval=sigma_interval)
        self.eta = check_finite_number(eta, "eta")
        self.norm_threshold = check_finite_number(norm_threshold, "norm_threshold")
        if self.norm_threshold < 0:
            raise ValueError(f"norm_threshold must be >= 0 (0: off), got {norm_threshold!r}")
        self.momentum = check_finite_number(momentum, "momentum")
        if not -1.0 < self.momentum < 1.0:
            raise ValueError(f"momentum must be in (-1, 1) (the paper uses -0.5; 0: off), got {momentum!r}")
        if formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {', '.join(FORMULATIONS)}, got {formulation!r}")
        self.formulation = formulation

    def options(self):
        return {
            "eta": self.eta,
            "norm_threshold": self.norm_threshold,
            "momentum": self.momentum,
            "formulation": self.formulation,
        }

    def combine(self, xbar, sigma, cond, other, state):
        d_c, _ = cond
        d_u, _ = other
        delta = d_c - d_u
        if self.momentum != 0.0:
            if state is None:
                raise ValueError(
                    "apg with momentum keeps a running average over the run's evaluations: call it inside a run "
                    "(ds.sample, or ode.start_run() for a hand-written loop)"
                )
            prev = state.get("momentum")
            if prev is not None:
                delta = torch.add(delta, prev, alpha=self.momentum)
            state["momentum"] = delta
        if self.norm_threshold > 0:
            norm = per_sample_dot(delta, delta).sqrt()
            delta = delta * torch.clamp(self.norm_threshold / norm, max=1.0)
        dd = per_sample_dot(d_c, d_c)
        par = per_sample_dot(delta, d_c) / torch.where(dd > 0, dd, torch.ones_like(dd)) * d_c
        update = (delta - par) + self.eta * par
        if self.formulation == "paper":
            denoised = torch.add(d_c, update, alpha=self.scale - 1.0)
        else:
            denoised = torch.add(d_u, update, alpha=self.scale)
        if sigma == 0 or not math.isfinite(sigma):
            return denoised, cond[1]
        return denoised, (xbar - denoised) / sigma
