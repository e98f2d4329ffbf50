"""BDIA-DDIM (Zhang, Lewis & Kleijn 2023, "Exact Diffusion Inversion via Bi-directional
Integration Approximation", arXiv:2307.10829): a two-step DDIM whose update can be solved
exactly for the older state, so sampling can be undone to rounding error.

With eps_i = eps(xbar_i, sigma_i) and the DDIM move E30, D(sigma) = xbar_i + (sigma - sigma_i) eps_i,
one step from (xbar_{i-1}, xbar_i) to xbar_{i+1} (grid index i runs down in sigma) is

    xbar_{i+1} = D(sigma_{i+1}) + g_i * (xbar_{i-1} - D(sigma_{i-1}))                  (BDIA)

the forward DDIM move plus g_i times the correction that the backward DDIM move from
xbar_i finds for the previous step. The paper states it in its own VP state z = scale * xbar:
z_{i+1} = gamma z_{i-1} - gamma DDIM(z_i -> sigma_{i-1}) + DDIM(z_i -> sigma_{i+1}), i.e.
g_i = gamma * scale(sigma_{i-1}) / scale(sigma_{i+1}) (``space="model"``, the default);
``space="sigma"`` uses g_i = gamma, the same scheme on the sigma-form ODE. gamma = 0 is DDIM;
gamma = 1 with ``space="sigma"`` is the leapfrog rule xbar_{i+1} = xbar_{i-1} + (sigma_{i+1} - sigma_{i-1}) eps_i.
The first step has no older state and is plain DDIM, as in the paper.

Exact inverse (:meth:`BDIA.unstep`): the update is linear in xbar_{i-1}, so

    xbar_{i-1} = D(sigma_{i-1}) + (xbar_{i+1} - D(sigma_{i+1})) / g_i

with the same eps_i; :func:`diffsolve.invert_exact` walks it back from the last two states.
Rounding is amplified by 1/g_i per step, so exact inversion wants gamma = 1 (the paper's
choice for editing); gamma < 1 damps the sampling but makes long inversions lose digits.
Order 1 on general grids (2 on uniform ones with gamma = 1), one model call per step.
"""

from __future__ import annotations

import torch

from .base import ReversibleSolver, check_choice, check_real

SPACES = ("model", "sigma")


class BDIA(ReversibleSolver):
    """BDIA-DDIM (Zhang et al. 2023): two-step DDIM, exactly reversible from its last two states."""

    name = "bdia"
    order = 1
    calls_per_step = 1

    def __init__(self, *, gamma: float = 1.0, space: str = "model"):
        self.gamma = check_real("gamma", gamma, low=0.0, high=1.0)
        self.space = check_choice("space", space, SPACES)

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        sig, scale = state.sigmas, ode.schedule.scale
        # g[i] couples xbar_{i-1} into the step i -> i+1 (unused at i = 0)
        state.g = [0.0] + [
            self.gamma * (scale(sig[i - 1]) / scale(sig[i + 1]) if self.space == "model" else 1.0)
            for i in range(1, len(sig) - 1)
        ]
        state.prev: torch.Tensor | None = None  # xbar_{i-1}
        state.last: torch.Tensor | None = None  # xbar_i after the last step
        return state

    def step(self, i, x, state):
        sig = state.sigmas
        s_prev, s_t, s_next = sig[i - 1] if i else None, sig[i], sig[i + 1]
        denoised, eps = yield x, s_t, True
        x_next = x + (s_next - s_t) * eps
        if i and state.g[i] != 0.0:
            x_next = x_next + state.g[i] * (state.prev - (x + (s_prev - s_t) * eps))
        state.prev, state.last = x, x_next
        return x_next, denoised

    def unstep(self, i: int, x: torch.Tensor, x_next: torch.Tensor, state):
        """Undo :meth:`step` ``i`` (i >= 1): from xbar_i and xbar_{i+1}, return xbar_{i-1} exactly."""
        if i < 1 or state.g[i] == 0.0:
            raise ValueError(f"step {i} of bdia (gamma={self.gamma}) is a DDIM step and has no exact inverse")
        s_prev, s_t, s_next = state.sigmas[i - 1], state.sigmas[i], state.sigmas[i + 1]
        _, eps = yield x, s_t, True
        return x + (s_prev - s_t) * eps + (x_next - (x + (s_next - s_t) * eps)) / state.g[i]
