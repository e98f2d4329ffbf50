"""DPM-Solver-12 / DPM-Solver-23 with adaptive step size (Lu et al. 2022a, section 3.4 and
Appendix, Algorithms 4 and 5; k-diffusion's ``sample_dpm_adaptive``).

In lambda = -log sigma (E7) every attempted step s -> t = s + h (h in lambda) computes two
singlestep DPM-Solver solutions (noise form, (X3) of ``_exponential``) sharing their model calls:

    order 3 (Alg. 5):  x_low = DPM-Solver-2 with r1 = 1/3,   x_high = DPM-Solver-3 (r1 = 1/3, r2 = 2/3)
    order 2 (Alg. 4):  x_low = DPM-Solver-1 (E33),           x_high = DPM-Solver-2 (r1 = 1/2)

and the scaled error

    delta = max(atol, rtol * max(|x_low|, |x_prev|))        (elementwise; x_prev: the last x_low)
    E     = || (x_low - x_high) / delta ||_2 / sqrt(numel)

A step is accepted when the controller's factor is large enough, and h is rescaled by it. The
paper's rule is h <- theta h E^(-1/k) (k = order), accept when E <= 1. The controller here is
k-diffusion's PID form of it (``pcoeff``, ``icoeff``, ``dcoeff``; the defaults 0, 1, 0 are the integral
controller f = (1/E)^(1/k)), with the limiter f <- 1 + atan(f - 1) and acceptance when
f >= ``accept_safety`` (0.81 = 0.9^2). Each attempt costs k model calls (the first is the same on
a rejected retry only in the paper; here, as in k-diffusion, every attempt calls the model k times).

The solver controls its own steps (it overrides :meth:`Solver.run`): the grid only fixes the
points the driver sees (callbacks, trajectories); steps are clipped to land on each of them and the
step size carries over. A grid ending at sigma = 0 is integrated down to the model's smallest
level (the schedule's sigma_min) and ends with the denoising step E27 there (one call).
``rtol``/``atol`` default to the paper's image values (0.05, 0.0078); for a tolerance study use
small values (``benchmarks/dpm_adaptive_vs_dopri5.py``).
"""

from __future__ import annotations

import math

import torch

from ._exponential import combine, log_snr, moments, poly_weights
from .base import Solver, check_int


def _positive(option: str, value) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{option} must be a finite number > 0, got {value}")
    return value


class PIDController:
    """Step-size controller: h <- h * limiter(prod_k (1/E_k)^(b_k)); accept when the factor >= safety."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, safety: float):
        self.h = h
        self.b = ((pcoeff + icoeff + dcoeff) / order, -(pcoeff + 2 * dcoeff) / order, dcoeff / order)
        self.safety = safety
        self.inv: list[float] = []

    def propose(self, error: float) -> bool:
        inv = 1.0 / (error + 1e-8)
        if not self.inv:
            self.inv = [inv, inv, inv]
        self.inv[0] = inv
        factor = self.inv[0] ** self.b[0] * self.inv[1] ** self.b[1] * self.inv[2] ** self.b[2]
        factor = 1.0 + math.atan(factor - 1.0)
        accept = factor >= self.safety
        if accept:
            self.inv[2], self.inv[1] = self.inv[1], self.inv[0]
        self.h *= factor
        return accept


class DPMSolverAdaptive(Solver):
    """DPM-Solver-23 / -12 with adaptive steps and error control (Lu et al. 2022a, Alg. 4-5; k-diffusion's dpm_adaptive)."""

    name = "dpm-adaptive"
    order = 3
    calls_per_step = 3
    adaptive = True

    def __init__(
        self,
        *,
        solver_order: int = 3,
        rtol: float = 0.05,
        atol: float = 0.0078,
        h_init: float = 0.05,
        pcoeff: float = 0.0,
        icoeff: float = 1.0,
        dcoeff: float = 0.0,
        accept_safety: float = 0.81,
    ):
        self.method_order = self.order = check_int("solver_order", solver_order, (2, 3))
        self.rtol, self.atol = _positive("rtol", rtol), _positive("atol", atol)
        self.h_init = _positive("h_init", h_init)
        self.pid = tuple(float(c) for c in (pcoeff, icoeff, dcoeff))
        if not all(math.isfinite(c) for c in self.pid):
            raise ValueError(f"pcoeff, icoeff, dcoeff must be finite, got {self.pid}")
        self.accept_safety = _positive("accept_safety", accept_safety)

    # one attempted step: x_low, x_high of (X3) in the noise form
    def _stage(self, x, eps_list, s_from, c, h, nodes, shortcut=False):
        """xbar at lambda_s + c h from the outputs so far (nodes in units of c h)."""
        hc = c * h
        s_end = s_from * math.exp(-hc)
        mom = moments(hc, len(nodes), "noise", s_end)
        if shortcut:
            mom[1] = mom[0] / 2
        return combine(1.0, x, zip(poly_weights(nodes, mom), eps_list)), s_end

    def _attempt(self, ode, x, s_from, h):
        _, e0 = ode.predict(x, s_from)
        if self.method_order == 2:
            low, _ = self._stage(x, [e0], s_from, 1.0, h, [0.0])
            u1, s1 = self._stage(x, [e0], s_from, 0.5, h, [0.0])
            e1 = ode.eps(u1, s1)
            high, _ = self._stage(x, [e0, e1], s_from, 1.0, h, [0.0, 0.5], shortcut=True)
            return low, high, e0
        u1, s1 = self._stage(x, [e0], s_from, 1 / 3, h, [0.0])
        e1 = ode.eps(u1, s1)
        low, _ = self._stage(x, [e0, e1], s_from, 1.0, h, [0.0, 1 / 3], shortcut=True)
        u2, s2 = self._stage(x, [e0, e1], s_from, 2 / 3, h, [0.0, 0.5])
        e2 = ode.eps(u2, s2)
        high, _ = self._stage(x, [e0, e2], s_from, 1.0, h, [0.0, 2 / 3])
        return low, high, e0

    def _integrate(self, state, x, s, end, forward, pid):
        """Adaptive steps from lambda = s to lambda = end (the last step clipped to land there)."""
        denoised = None
        while (s < end - 1e-5) if forward else (s > end + 1e-5):
            t = min(end, s + pid.h) if forward else max(end, s + pid.h)
            low, high, e0 = self._attempt(state.ode, x, math.exp(-s), t - s)
            delta = torch.clamp(self.rtol * torch.maximum(low.abs(), state.x_prev.abs()), min=self.atol)
            error = float(torch.linalg.vector_norm((low - high) / delta)) / math.sqrt(x.numel())
            if not math.isfinite(error):
                raise FloatingPointError(f"dpm-adaptive: non-finite error estimate at sigma = {math.exp(-s):.6g}")
            state.info["steps"] += 1
            state.info["nfe"] += self.method_order
            if pid.propose(error):
                denoised = x - math.exp(-s) * e0
                state.x_prev, x, s = low, high, t
                state.info["n_accept"] += 1
            else:
                state.info["n_reject"] += 1
        return x, denoised

    def run(self, x, after_step, state):
        #: attempted, accepted, rejected steps and model calls of this run
        state.info = {"steps": 0, "n_accept": 0, "n_reject": 0, "nfe": 0}
        sig = state.sigmas
        n = len(sig) - 1
        lam = [log_snr(s) for s in sig]
        forward = n > 0 and sig[-1] < sig[0]
        pid = PIDController(self.h_init if forward else -self.h_init, *self.pid, self.method_order, self.accept_safety)
        state.x_prev = x
        for i in range(n):
            if sig[i + 1] == 0:  # down to the model's smallest level, then the denoising step E27
                lo = float(state.ode.schedule.sigma_min)
                s_last = sig[i]
                if 0 < lo < sig[i]:
                    x, _ = self._integrate(state, x, lam[i], log_snr(lo), forward, pid)
                    s_last = lo
                denoised, _ = state.ode.predict(x, s_last)
                x = denoised
                after_step(i, x, denoised)
                continue
            x, denoised = self._integrate(state, x, lam[i], lam[i + 1], forward, pid)
            after_step(i, x, denoised if denoised is not None else x)
        return x
