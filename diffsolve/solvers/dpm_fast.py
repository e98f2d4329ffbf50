"""DPM-Solver-fast (Lu et al. 2022a, section 3.4; k-diffusion's ``sample_dpm_fast``): singlestep
DPM-Solver (noise prediction) with the orders that spend a model-call budget N on K = floor(N/3) + 1
steps:

    N = 3K - 3:  orders 3, ..., 3, 2, 1        N = 3K - 2:  3, ..., 3, 1        N = 3K - 1:  3, ..., 3, 2

Each step of order 1, 2, 3 is DPM-Solver-1 (E33), -2 (Alg. 1, r1 = 1/2) or -3 (Alg. 2, r1 = 1/3,
r2 = 2/3) of :mod:`dpm_solver`, the noise form of (X3) in ``_exponential``. The paper takes the K steps
uniform in lambda = -log sigma (E7): the ``logsnr`` grid. Here the grid is the caller's; ``nfe``
picks N among 3K - 3 (default; 2 for K = 1), 3K - 2, 3K - 1 for the K positive steps of the grid. A step into
sigma = 0 is the denoising step E27 (one more call). Declared order 2: the final first-order step
(N = 3K - 3 or 3K - 2) has a local error O(h^2) that is not accumulated but does not shrink faster
either, so the global error is O(h^2) (measured 1.97 by the order law); with N = 3K - 1 it ends with
a second-order step and converges with order 3.
"""

from __future__ import annotations

from ._exponential import ExponentialSolver
from .dpm_solver import _Singlestep


class DPMSolverFast(_Singlestep):
    """DPM-Solver-fast (Lu et al. 2022a, 3.4; k-diffusion's dpm_fast): 3S steps ending with orders 2, 1 for a budget of N calls."""

    name = "dpm-fast"
    order = 2
    calls_per_step = 3
    form = "noise"

    def __init__(self, *, nfe: int | None = None):
        super().__init__(final_step="denoise")
        if nfe is not None and (isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1):
            raise ValueError(f"nfe must be None or an integer >= 1, got {nfe!r}")
        self.nfe = nfe

    def init(self, ode, sigmas, noise):
        k = sum(1 for s in list(sigmas)[1:] if s > 0)  # positive steps (the step into 0 denoises)
        if k:
            n = (3 * k - 3 if k > 1 else 2) if self.nfe is None else self.nfe
            if n // 3 + 1 != k or n < 1:
                allowed = [m for m in (3 * k - 3, 3 * k - 2, 3 * k - 1) if m >= 1]
                raise ValueError(
                    f"nfe={self.nfe} does not fit a grid of {k} positive steps "
                    f"(K = floor(nfe/3) + 1); allowed: {', '.join(map(str, allowed))}"
                )
            fast_orders = [3] * (k - 2) + [2, 1] if n % 3 == 0 else [3] * (k - 1) + [n % 3]
        else:
            fast_orders = []
        state = ExponentialSolver.init(self, ode, sigmas, noise)
        state.plan = [self._plan(state, i, fast_orders[i]) if p else None for i, p in enumerate(state.orders)]
        return state
