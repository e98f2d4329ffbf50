"""An example diffsolve guidance plugin: CFG with a scale that ramps with sigma."""

from __future__ import annotations

import torch

import diffsolve as ds
from diffsolve.guidance import Guidance


class RampedCFG(Guidance):
    """CFG with w(sigma) = 1 + (scale - 1) sigma / (sigma + sigma_half): the conditional model near the data."""

    name = "example-ramped-cfg"

    def __init__(self, scale: float, *, sigma_half: float = 1.0, sigma_interval=None):
        super().__init__(scale, sigma_interval=sigma_interval)
        if not sigma_half > 0:
            raise ValueError(f"sigma_half must be > 0, got {sigma_half!r}")
        self.sigma_half = float(sigma_half)

    def options(self):
        return {"sigma_half": self.sigma_half}

    def combine(self, xbar, sigma, cond, other, state):
        w = 1.0 + (self.scale - 1.0) * sigma / (sigma + self.sigma_half)
        return tuple(torch.add(o, c - o, alpha=w) for c, o in zip(cond, other))


@ds.hookimpl
def register_guidance(register):
    register(RampedCFG)
