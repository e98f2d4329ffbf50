"""CFG-Zero* (Fan et al. 2025), docs/math.md#guidance-zero-star, on eps:

    s*  = <eps_c, eps_u> / |eps_u|^2                      (per sample)
    eps = s* eps_u + w (eps_c - s* eps_u),   D = xbar - sigma eps
    zero-init: during the run's first ``zero_init_steps`` solver steps, D = x (the model-space state),
               eps = (xbar - D) / sigma

s* is the scale that best matches the unconditional to the conditional prediction (least squares).
The paper works on a flow model's velocity u = eps - x0; here the optimized scale acts on eps (the
sigma-form ODE's right-hand side). Its zero-init sets u = 0, i.e. x0hat = x_t: the denoised estimate
is the model-space state itself, which is the rule above for every schedule (for a flow model it is
exactly u = 0). The step count is the run's (the driver's step counter): outside a run zero-init is
an error, not silently skipped.
"""

from __future__ import annotations

import operator

import torch

from .base import Guidance, per_sample_dot


class CFGZeroStar(Guidance):
    """CFG with the optimized scale s* and zero-init of the first steps (docs/math.md#guidance-zero-star)."""

    name = "cfg-zero-star"

    def __init__(self, scale: float, *, zero_init_steps: int = 1, sigma_interval=None):
        super().__init__(scale, sigma_interval=sigma_interval)
        try:
            zero_init_steps = operator.index(zero_init_steps)
        except TypeError:
            raise TypeError(f"zero_init_steps must be an integer >= 0, got {zero_init_steps!r}") from None
        if zero_init_steps < 0:
            raise ValueError(f"zero_init_steps must be an integer >= 0, got {zero_init_steps!r}")
        self.zero_init_steps = zero_init_steps

    def options(self):
        return {"zero_init_steps": self.zero_init_steps}

    def combine(self, xbar, sigma, cond, other, state):
        if self.zero_init_steps:
            if state is None:
                raise ValueError(
                    "cfg-zero-star zero-inits the run's first steps: call it inside a run (ds.sample, or "
                    "ode.start_run()), or pass zero_init_steps=0"
                )
            if state["step"] < self.zero_init_steps:
                if sigma == 0:  # ds.invert's first step leaves the data: no eps = (xbar - D) / sigma
                    raise ValueError(
                        f"cfg-zero-star zero-inits a run's first {self.zero_init_steps} step(s), which start from "
                        "noise when sampling; this run starts at sigma = 0 (ds.invert), where the rule has no eps: "
                        "invert with make_guidance('cfg-zero-star', scale=..., zero_init_steps=0)"
                    )
                denoised = xbar * state["scale"]  # x0hat = x_t: the flow model's zero velocity
                return denoised, (xbar - denoised) / sigma
        eps_c, eps_u = cond[1], other[1]
        uu = per_sample_dot(eps_u, eps_u)
        s_star = per_sample_dot(eps_c, eps_u) / torch.where(uu > 0, uu, torch.ones_like(uu))
        base = s_star * eps_u
        eps = torch.add(base, torch.sub(eps_c, base), alpha=self.scale)
        return torch.add(xbar, eps, alpha=-sigma), eps
