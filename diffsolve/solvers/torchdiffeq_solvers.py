"""torchdiffeq's integrators (Chen et al., github.com/rtqichen/torchdiffeq) on the sigma-form ODE.

Registered as ``torchdiffeq-<method>`` with torchdiffeq's method names (``torchdiffeq-rk4``,
``torchdiffeq-dopri5``, ...). The right-hand side handed to ``torchdiffeq.odeint`` is

    variable="sigma"      d xbar / d sigma = eps(xbar, sigma)                      (E29)
    variable="log-sigma"  d xbar / d u = sigma * eps(xbar, sigma),  u = log sigma

The log-sigma form is far smoother, but sigma = 0 lies at u = -infinity: the integration stops at
the grid's last positive sigma and the step to sigma = 0 is the denoised estimate there (E27, one
model call, first order in that sigma). In u the flow contracts at rate about 1 where sigma is
large (xbar - x0 ~ sigma), so a log-step must fit the method's stability interval: about 0.3
for explicit_adams (30 or more logsnr steps over DDPM's range), 2.8 for rk4. Each evaluation of
the right-hand side is one model call, counted by the wrapper (``ode.nfe``).

Fixed-grid methods take one step per grid interval, in one ``odeint`` call over the whole grid
(so Adams history persists). Tableaus are torchdiffeq's: ``rk4`` is Kutta's 3/8 rule, ``heun3``
has nodes 0, 1/3, 2/3; ``euler`` in sigma is DDIM (E30). ``explicit_adams`` is AB4 after two RK4
warm-up steps (NFE = steps + 6) with equal-step weights: full order only on a grid uniform in the
integration variable (``logsnr`` with log-sigma). Its history is cut to AB4 (torchdiffeq's default
goes to AB11, whose stability region is too small for diffusion steps). Not offered:
``implicit_adams`` (at most 4 corrector iterations, after which torchdiffeq drops history, so order
and NFE depend on the tolerance) and ``fehlberg2`` (its error estimate, the 1/512-weighted gap to
the first-order solution, misses the error of the propagated solution: on E38 its global error is
100 to 1600 times the tolerance).

Adaptive methods (dopri5, bosh3, adaptive_heun, dopri8) take ``rtol``/``atol`` (torchdiffeq's RMS
error ratio) and land on every grid point, so the grid only sets where the driver sees the state;
a coarse grid is cheapest. On E38 their global error stays within 20 (atol + rtol |x|).
Their ``calls_per_step`` is the stages per internal step; ``ode.nfe`` has the calls used.

torchdiffeq hands times as tensors and compares them on the host, so these solvers synchronise
with the device at every step, unlike the native ones. The ``denoised`` given to callbacks is
that of the last model call in the grid step.
"""

from __future__ import annotations

import math

import torch

from .base import Solver, check_choice, check_real

VARIABLES = ("sigma", "log-sigma")


class _Field:
    """The right-hand side for torchdiffeq; reports finished grid steps to the driver."""

    def __init__(self, ode, log: bool, times: list[float], after_step):
        self.ode, self.log, self.times, self.after_step = ode, log, times, after_step
        self.sign = 1.0 if times[-1] > times[0] else -1.0
        self.lo, self.hi = min(times[0], times[-1]), max(times[0], times[-1])
        self.done, self.denoised = 0, None

    def __call__(self, t, y):
        # clamped to the grid: only torchdiffeq's initial-step probe can fall outside it
        u = min(max(float(t), self.lo), self.hi)
        sigma = math.exp(u) if self.log else u
        self.denoised, eps = self.ode.predict(y, sigma)
        return sigma * eps if self.log else eps

    def callback_step(self, t0, y0, dt):
        u = float(t0)
        while self.done + 1 < len(self.times) and self.sign * (u - self.times[self.done + 1]) >= 0:
            self.after_step(self.done, y0, self.denoised)
            self.done += 1


class TorchdiffeqSolver(Solver):
    """Base of the torchdiffeq solvers (not registered itself: it has no name)."""

    method = ""
    adaptive = False

    def __init__(self, *, variable: str = "sigma"):
        self.variable = check_choice("variable", variable, VARIABLES)
        self.rtol, self.atol = 1e-7, 1e-9  # torchdiffeq's defaults (unused by fixed-grid methods)

    def _options(self, times: torch.Tensor) -> dict:
        if self.adaptive:
            return {"step_t": times[1:]}  # land on every grid point: no step crosses the grid's end
        options = {"grid_constructor": lambda func, y0, t: times}
        if self.method == "explicit_adams":
            options["max_order"] = 5  # torchdiffeq keeps max_order - 1 values: AB4
        return options

    def run(self, x, after_step, state):
        from torchdiffeq import odeint

        sig, log = state.sigmas, self.variable == "log-sigma"
        n = len(sig) - 1
        m = n - 1 if log and sig[-1] == 0 else n  # grid steps integrated by torchdiffeq
        if log and sig[0] == 0:
            raise ValueError("variable='log-sigma' cannot start at sigma = 0")
        times = [math.log(s) for s in sig[: m + 1]] if log else list(sig)
        field = _Field(state.ode, log, times, after_step)
        if m > 0:
            grid = torch.tensor(times, dtype=torch.float64, device=x.device)
            x = odeint(
                field, x, grid[[0, -1]], method=self.method, rtol=self.rtol, atol=self.atol, options=self._options(grid)
            )[-1]
            for i in range(field.done, m):
                after_step(i, x, field.denoised)
        if m < n:  # log-sigma: the step to sigma = 0 is the denoised estimate (E27)
            x, _ = state.ode.predict(x, sig[-2])
            after_step(n - 1, x, x)
        return x


class TorchdiffeqAdaptive(TorchdiffeqSolver):
    """Base of the adaptive torchdiffeq solvers."""

    adaptive = True

    def __init__(self, *, variable: str = "sigma", rtol: float = 1e-5, atol: float = 1e-5):
        super().__init__(variable=variable)
        self.rtol = check_real("rtol", rtol, low=0.0, low_open=True)
        self.atol = check_real("atol", atol, low=0.0, low_open=True)


# One class per torchdiffeq method: its name there, order, and model calls per (internal) step.


class TorchdiffeqEuler(TorchdiffeqSolver):
    """torchdiffeq euler: Euler (= DDIM in sigma) on the sigma-form ODE (order 1)."""

    name = "torchdiffeq-euler"
    method = "euler"
    order = 1
    calls_per_step = 1


class TorchdiffeqMidpoint(TorchdiffeqSolver):
    """torchdiffeq midpoint: explicit midpoint on the sigma-form ODE (order 2)."""

    name = "torchdiffeq-midpoint"
    method = "midpoint"
    order = 2
    calls_per_step = 2


class TorchdiffeqHeun2(TorchdiffeqSolver):
    """torchdiffeq heun2: Heun's 2nd-order method (trapezoidal) on the sigma-form ODE (order 2)."""

    name = "torchdiffeq-heun2"
    method = "heun2"
    order = 2
    calls_per_step = 2


class TorchdiffeqHeun3(TorchdiffeqSolver):
    """torchdiffeq heun3: Heun's 3rd-order method on the sigma-form ODE (order 3)."""

    name = "torchdiffeq-heun3"
    method = "heun3"
    order = 3
    calls_per_step = 3


class TorchdiffeqRk4(TorchdiffeqSolver):
    """torchdiffeq rk4: Runge-Kutta 4 (Kutta's 3/8 rule) on the sigma-form ODE (order 4)."""

    name = "torchdiffeq-rk4"
    method = "rk4"
    order = 4
    calls_per_step = 4


class TorchdiffeqExplicitAdams(TorchdiffeqSolver):
    """torchdiffeq explicit_adams: Adams-Bashforth 4, RK4 warm-up on the sigma-form ODE (order 4)."""

    name = "torchdiffeq-explicit_adams"
    method = "explicit_adams"
    order = 4
    calls_per_step = 1


class TorchdiffeqDopri5(TorchdiffeqAdaptive):
    """torchdiffeq dopri5: adaptive Dormand-Prince 5(4) on the sigma-form ODE (order 5)."""

    name = "torchdiffeq-dopri5"
    method = "dopri5"
    order = 5
    calls_per_step = 6


class TorchdiffeqBosh3(TorchdiffeqAdaptive):
    """torchdiffeq bosh3: adaptive Bogacki-Shampine 3(2) on the sigma-form ODE (order 3)."""

    name = "torchdiffeq-bosh3"
    method = "bosh3"
    order = 3
    calls_per_step = 3


class TorchdiffeqAdaptiveHeun(TorchdiffeqAdaptive):
    """torchdiffeq adaptive_heun: adaptive Heun-Euler 2(1) on the sigma-form ODE (order 2)."""

    name = "torchdiffeq-adaptive_heun"
    method = "adaptive_heun"
    order = 2
    calls_per_step = 2


class TorchdiffeqDopri8(TorchdiffeqAdaptive):
    """torchdiffeq dopri8: adaptive Dormand-Prince 8(7) on the sigma-form ODE (order 8)."""

    name = "torchdiffeq-dopri8"
    method = "dopri8"
    order = 8
    calls_per_step = 13
