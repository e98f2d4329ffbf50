"""DPM-Solver-v3 (Zheng et al. 2023): a multistep predictor-corrector on the user's model statistics.

docs/math.md section 3.7. With statistics l, s, b on a logSNR grid (:mod:`diffsolve.statistics`) and
f = (1 - l) xbar - D from each model call (V2), one step lambda_s -> lambda_t (V6) reads

    xbar_t = a xbar_s - sum_j W_j f_j + c,

a, W_j, c float64 tensors (one value per dimension) from the integrals of V6, computed in ``init`` (per run);
the f_j are the current output and the previous ones (multistep, order p = min(solver_order, step + 1),
lowered at the end by ``final_step`` as in DPM-Solver++). ``pseudo=True`` estimates the derivatives of
g by divided differences (V7, the paper's pseudo-order predictor).

Corrector (V8): once the model has been called at the predicted xbar_t, the step into it is taken
again with that output as a node (c = 1) in place of the oldest one; the output kept in the history
is the one at the predicted point (it costs no call). ``corrector="auto"`` (the default) uses it with
statistics on grids of fewer than 15 steps, where the paper's low-NFE settings use it and where it
helped on digits; without statistics it made DPM-Solver++(3M) worse there, so ``"auto"`` leaves it
off (docs/dpm-solver-v3.md). The step into sigma = 0 is the denoising step E27, with D linearised to
the corrected state: D_c = (1 - l) xbar_c - f (V9).

Neutral statistics (l = 1, s = b = 0; ``statistics=None``) make f = -D and the step DPM-Solver++'s
(X2, X3): with ``corrector=False`` it equals dpmpp-2m (``solver_type="taylor"``) at order 2 and
dpmpp-3m at order 3. Order p (the corrector keeps the number of nodes); one model call per step.
"""

from __future__ import annotations

import math

import torch

from ..statistics import ModelStatistics, StatisticsError
from ._exponential import LOWER_ORDER_BELOW, ExponentialSolver
from .base import check_choice, check_int


class DPMSolverV3(ExponentialSolver):
    """DPM-Solver-v3: multistep predictor-corrector on empirical model statistics (Zheng et al. 2023), order p."""

    name = "dpm-solver-v3"
    order = 3
    calls_per_step = 1

    def __init__(
        self,
        *,
        statistics: ModelStatistics | None = None,
        solver_order: int = 3,
        corrector: bool | str = "auto",
        pseudo: bool = False,
        final_step: str = "auto",
    ):
        super().__init__(final_step=final_step)
        if statistics is not None and not isinstance(statistics, ModelStatistics):
            raise TypeError(
                "statistics must be a diffsolve.ModelStatistics (from diffsolve.model_statistics or "
                f"ModelStatistics.load) or None, got {type(statistics).__name__}"
            )
        self.statistics = statistics
        self.order = check_int("solver_order", solver_order, (1, 2, 3))
        self.corrector = check_choice("corrector", corrector, ("auto", True, False))
        self.pseudo = check_choice("pseudo", pseudo, (True, False))

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        stats = self.statistics
        lam = [x for x in state.lam if math.isfinite(x)]
        if stats is None:
            stats = ModelStatistics.neutral(min(lam), max(lam) if len(lam) > 1 else min(lam) + 1.0)
        stats.check(ode)
        stats.check_range(state.sigmas)
        state.one_minus_l = [1.0 - stats.value("l", x) if math.isfinite(x) else None for x in state.lam]
        p, n = state.orders, len(state.orders)
        auto = self.statistics is not None and n < LOWER_ORDER_BELOW
        use_corrector = auto if self.corrector == "auto" else bool(self.corrector)
        coef = lambda i, k, nodes: self._coef(state.lam, stats, i, k, nodes)  # noqa: E731
        state.pred = [coef(i, i + 1, range(i, i - p[i], -1)) if p[i] else None for i in range(n)]
        # the corrector of step i - 1 runs at the top of step i: nodes i - 1, i, i - 2, ...
        state.corr = [
            coef(i - 1, i, [i - 1, i, *range(i - 2, i - p[i - 1], -1)])
            if use_corrector and i >= 1 and p[i - 1] >= 2
            else None
            for i in range(n)
        ]
        state.history, state.cast = [], {}
        return state

    def _check_shape(self, x: torch.Tensor) -> None:
        """The statistics hold one value per coordinate of a sample: they must fit the samples' shape."""
        shape, own = tuple(x.shape[1:]), self.statistics.sample_shape
        try:
            fits = torch.broadcast_shapes(shape, own) == shape
        except RuntimeError:
            fits = False
        if not fits:
            raise StatisticsError(
                f"these statistics are for samples of shape {own}; this run's samples have shape {shape}: compute "
                "them for this model with diffsolve.model_statistics(ode, x_T)"
            )

    def _coef(self, lam, stats, i, k, nodes):
        nodes = list(nodes)
        a, w, c = stats.step_coefficients(lam[i], lam[k], [lam[j] for j in nodes], self.pseudo)
        return a, list(zip(nodes, w)), c

    @staticmethod
    def _t(state, v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A float64 coefficient in the state's dtype and device (cast once per run)."""
        key = (id(v), like.dtype, like.device)
        if key not in state.cast:
            state.cast[key] = v.to(dtype=like.dtype, device=like.device)
        return state.cast[key]

    def _apply(self, state, coef, x, f):
        a, w, c = coef
        out = x * self._t(state, a, x) + self._t(state, c, x)
        for j, wj in w:
            out = out - self._t(state, wj, x) * f[j]
        return out

    def step(self, i, x, state):
        # the run's first step: the samples' shape (statistics without a fingerprint are unchecked, as in
        # ModelStatistics.check: the NFE dry run of a recipe uses such a copy on a one-element state)
        if not state.history and self.statistics is not None and self.statistics.fingerprint is not None:
            self._check_shape(x)
        denoised, eps = yield x, state.sigmas[i], True
        x = state.ode.renoised(x, denoised, eps, state.sigmas[i])  # CFG++, DDNM (docs/math.md 3.6)
        f = x * self._t(state, state.one_minus_l[i], x) - denoised  # V2
        fs = {j: fj for j, (_, fj) in state.history}
        fs[i] = f
        if state.corr[i] is not None:
            x = self._apply(state, state.corr[i], state.history[0][1][0], fs)  # V8: xbar_s is the corrected state
        state.history.insert(0, (i, (x, f)))
        del state.history[max(self.order, 2) :]
        if state.pred[i] is None:  # E27 with D linearised to the corrected state (V9)
            return x * self._t(state, state.one_minus_l[i], x) - f, denoised
        return self._apply(state, state.pred[i], x, fs), denoised
