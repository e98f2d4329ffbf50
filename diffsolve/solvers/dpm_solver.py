"""Singlestep DPM-Solver (noise prediction, Lu et al. 2022a) and DPM-Solver++ (data prediction,
Lu et al. 2022b): orders 1, 2 and 3 with 1, 2 and 3 model calls per step.

Every stage is a step of (X3) (see ``_exponential``) from xbar_t, with a = exp(-c h) (data) or 1
(noise), through outputs m_0 = m(xbar_t) and m_j = m(u_j) at lambda_t + c_j h:

* order 1, DPM-Solver-1 (E33) / DPM-Solver++(1) (E34): xbar_s = a xbar_t + I_0 m_0; both are DDIM (E30).
* order 2, c_1 = 1/2 (2022a Alg. 1 "DPM-Solver-2", 2022b Alg. 1 "DPM-Solver++(2S)"):
      u_1 = first-order step to c_1;  xbar_s = a xbar_t + I_0 [(1 - 1/(2 c_1)) m_0 + m_1/(2 c_1)]
* order 3, c_1 = 1/3, c_2 = 2/3 (2022a Alg. 2 "DPM-Solver-3"; the data form is its DPM-Solver++ twin):
      u_1 = first-order step to c_1
      u_2 = step to c_2 with the line through (0, m_0), (c_1, m_1), integrated exactly (I_0, I_1 over c_2 h)
      xbar_s = a xbar_t + (I_0 - I_1/c_2) m_0 + (I_1/c_2) m_2

Orders 1-3 (measured: tests). The step into sigma = 0 is the denoising step E27 (one call, not
``calls_per_step``). ``final_step`` defaults to ``"denoise"`` here (every other step at full order):
with ``"lower-order"`` (or ``"auto"`` on grids of < 15 steps) the second-to-last 3S step becomes a 2S
step, which at equal NFE was worse in 8 of 12 measured settings (see ``_exponential``).
"""

from __future__ import annotations

import math

from ._exponential import ExponentialSolver, combine, moments, poly_weights

STAGES = {1: (), 2: (1 / 2,), 3: (1 / 3, 2 / 3)}


class _Singlestep(ExponentialSolver):
    multistep = False

    def __init__(self, *, final_step: str = "denoise"):
        super().__init__(final_step=final_step)

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        state.plan = [self._plan(state, i, p) if p else None for i, p in enumerate(state.orders)]
        return state

    def _substep(self, s_t: float, h: float, nodes, second_order_shortcut=False):
        """(sigma at the end, a, weights) of one (X3) step of size h from s_t through ``nodes``."""
        s_end = s_t * math.exp(-h)
        mom = moments(h, len(nodes), self.form, s_end)
        if second_order_shortcut:
            mom[1] = mom[0] / 2
        return s_end, (s_end / s_t if self.form == "data" else 1.0), poly_weights(nodes, mom)

    def _plan(self, state, i: int, p: int) -> list:
        s_t, h = state.sigmas[i], state.h[i]
        if p == 1:
            return [self._substep(s_t, h, [0.0])]
        if p == 2:
            (c1,) = STAGES[2]
            return [self._substep(s_t, c1 * h, [0.0]), self._substep(s_t, h, [0.0, c1], True)]
        c1, c2 = STAGES[3]
        _, a, (w0, w2) = self._substep(s_t, h, [0.0, c2])
        return [
            self._substep(s_t, c1 * h, [0.0]),
            self._substep(s_t, c2 * h, [0.0, c1 / c2]),
            (state.sigmas[i + 1], a, [w0, 0.0, w2]),
        ]

    def step(self, i, x, state):
        s_t = state.sigmas[i]
        denoised, eps = yield x, s_t, True
        if state.plan[i] is None:
            return denoised, denoised  # E27: the step into sigma = 0
        x = state.ode.renoised(x, denoised, eps, s_t)
        outs = [self.output(denoised, eps)]
        *stages, (_, a, w) = state.plan[i]
        for s_j, a_j, w_j in stages:
            u = combine(a_j, x, zip(w_j, outs))
            d_j, eps_j = yield u, s_j, True
            # a stage's own renoised state enters no later combination: only its output does
            outs.append(self.output(d_j, eps_j))
        return combine(a, x, zip(w, outs)), denoised


class DPMSolver1(_Singlestep):
    """DPM-Solver-1 (E33): noise prediction, order 1, one call per step; equal to DDIM (E30)."""

    name, order, calls_per_step, form = "dpm-solver-1", 1, 1, "noise"


class DPMSolver2S(_Singlestep):
    """DPM-Solver-2: singlestep noise prediction, order 2, two calls per step (Lu et al. 2022a, Alg. 1)."""

    name, order, calls_per_step, form = "dpm-solver-2s", 2, 2, "noise"


class DPMSolver3S(_Singlestep):
    """DPM-Solver-3: singlestep noise prediction, order 3, three calls per step (Lu et al. 2022a, Alg. 2)."""

    name, order, calls_per_step, form = "dpm-solver-3s", 3, 3, "noise"


class DPMSolverPP1(_Singlestep):
    """DPM-Solver++(1) (E34): data prediction, order 1, one call per step; equal to DDIM (E30)."""

    name, order, calls_per_step = "dpmpp-1", 1, 1


class DPMSolverPP2S(_Singlestep):
    """DPM-Solver++(2S): singlestep data prediction, order 2, two calls per step (Lu et al. 2022b, Alg. 1)."""

    name, order, calls_per_step = "dpmpp-2s", 2, 2


class DPMSolverPP3S(_Singlestep):
    """DPM-Solver++(3S): singlestep data prediction, order 3, three calls per step (DPM-Solver-3's stages)."""

    name, order, calls_per_step = "dpmpp-3s", 3, 3
