"""Shared numerics of the exponential-integrator (log-SNR) solvers.

Notation (docs/math.md 1.3): lambda = -log sigma (E7), one step goes sigma_t -> sigma_s with
h = lambda_s - lambda_t, so exp(-h) = sigma_s / sigma_t (h < 0 on an increasing, inverting grid).
Variation of constants on the sigma-form ODE (E29) gives the exact step in two forms:

    (X1) noise form, E32 divided by A_s (DPM-Solver, Lu et al. 2022a eq. (3.4)):
         xbar_s = xbar_t - sigma_t int_0^h exp(-u) eps(lambda_t + u) du
    (X2) data form (DPM-Solver++, Lu et al. 2022b):
         xbar_s = exp(-h) xbar_t + int_0^h exp(u - h) D(lambda_t + u) du

(X2) follows from (X1) with D = xbar - sigma eps (E9). An exponential integrator replaces eps
(or D) by the polynomial through model outputs m_j taken at lambda_t + c_j h (c_0 = 0; earlier
points of a multistep history have c_j < 0, stages of a singlestep method 0 < c_j < 1):

    xbar_s = a xbar_t + sum_j w_j m_j,    sum_j w_j c_j^k = I_k  for k < (number of points)           (X3)
    I_k = int_0^h K(u) (u/h)^k du = k! h phi_{k+1}(-h)           data form, K = exp(u - h), a = exp(-h)
                                  = -sigma_s k! h phi_{k+1}(h)   noise form, K = -sigma_t exp(-u), a = 1

with phi_k(z) = int_0^1 exp((1 - r) z) r^(k-1)/(k-1)! dr, so phi_1(z) = expm1(z)/z (X4). With one
point (X3) is DPM-Solver-1 (E33) or DPM-Solver++(1) (E34); both equal DDIM (E30).

The step to sigma_s = 0 has h = +inf. (X2) with D frozen gives xbar_0 = D(xbar_t, sigma_t), the
denoising step E27; a polynomial in lambda cannot be integrated to lambda = inf (its history nodes
collapse to c = 0 and (X3) becomes singular; code that forms these weights at h = inf divides by it,
e.g. by UniPC's B(h) = h for bh1),
and a noise-form polynomial has a finite but wrong limit (eps ~ sigma along the flow is not a
polynomial in lambda). So every solver here takes the step into sigma = 0 as the denoising step
E27, with one model call, and never evaluates a coefficient at h = inf. Extrapolating D to 0 from
the history instead (a line in sigma or sigma^2, or an eps line in sigma integrated over
[0, sigma_t]) was measured on gmm2d and gave no consistent gain, so it is not offered.

``final_step`` (:data:`FINAL_STEPS`) picks how the steps before it are taken (:func:`step_orders`):

* ``"denoise"``: every step but the one into 0 at the method's full order;
* ``"lower-order"``: the k-th step from the end uses order <= k (DPM-Solver's ``lower_order_final``);
* ``"auto"``: ``"lower-order"`` on grids of fewer than 15 steps, else ``"denoise"``.

``step_orders`` (a sequence with one order per grid step) replaces that rule when a caller knows
the orders it wants: :class:`diffsolve.DiffsolveScheduler` passes diffusers' ``lower_order_final`` /
``euler_at_final`` orders of the emulated scheduler, whose "fewer than 15 steps" counts the whole
schedule, not the part a run starting mid-schedule (img2img) integrates. The step into sigma = 0
stays the denoising step E27; an order above the method's, or above the history a multistep
method has at that step (i + 1), is an error.

The defaults (``"auto"`` for the multistep solvers, ``"denoise"`` for the singlestep ones) and the
measurements behind them are in docs/benchmarks.md, "Measurements behind the defaults". For order
<= 2 on a grid ending at 0 the options coincide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import Solver, check_choice

FINAL_STEPS = ("auto", "denoise", "lower-order")
#: ``final_step="auto"`` lowers the order at the end on grids with fewer steps than this
#: (DPM-Solver++ and diffusers' ``lower_order_final`` rule).
LOWER_ORDER_BELOW = 15


# -- scalars (Python floats, float64) ------------------------------------------------------
def log_snr(sigma: float) -> float:
    """lambda = -log sigma (E7); +inf at sigma = 0."""
    return math.inf if sigma == 0 else -math.log(sigma)


def phi(k: int, z: float) -> float:
    """phi_k(z) of (X4), k >= 1, stable for all finite z: Taylor series sum_n z^n/(n+k)! for
    |z| < 1, else phi_1 = expm1(z)/z and phi_{j+1} = (phi_j - 1/j!)/z."""
    if abs(z) < 1.0:
        term, total = 1.0 / math.factorial(k), 0.0
        for n in range(30):  # |z|^30 / 30! < 1e-32
            total += term
            term *= z / (n + k + 1)
        return total
    value = math.expm1(z) / z
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def moments(h: float, count: int, form: str, sigma_s: float = 0.0) -> list[float]:
    """I_0..I_{count-1} of (X3) for a step of size h; ``form`` is "data" or "noise"."""
    if form == "data":
        return [math.factorial(k) * h * phi(k + 1, -h) for k in range(count)]
    return [-sigma_s * math.factorial(k) * h * phi(k + 1, h) for k in range(count)]


def poly_weights(nodes: Sequence[float], mom: Sequence[float]) -> list[float]:
    """w solving sum_j w_j c_j^k = I_k, k < len(nodes) (X3): exact integration of the
    interpolating polynomial. Nodes are in units of h; at most 4 points (Gauss elimination)."""
    n = len(nodes)
    rows = [[float(c) ** k for c in nodes] + [float(mom[k])] for k in range(n)]
    for col in range(n):
        piv = max(range(col, n), key=lambda r: abs(rows[r][col]))
        rows[col], rows[piv] = rows[piv], rows[col]
        for r in range(n):
            if r != col:
                f = rows[r][col] / rows[col][col]
                rows[r] = [a - f * b for a, b in zip(rows[r], rows[col])]
    return [rows[j][n] / rows[j][j] for j in range(n)]


def step_orders(sigmas: Sequence[float], order: int, final_step: str, multistep: bool) -> list[int]:
    """Order of each step: 0 marks the denoising step into sigma = 0 (E27).

    Multistep methods start at order 1 and gain one order per step while their history
    builds. With ``final_step="lower-order"`` (or ``"auto"`` on a grid of fewer than
    :data:`LOWER_ORDER_BELOW` steps) the order also falls towards the end: the k-th step
    from the end uses at most order k (DPM-Solver's ``lower_order_final``), counting the
    denoising step into 0 as the last.
    """
    n = len(sigmas) - 1
    lower = final_step == "lower-order" or (final_step == "auto" and n < LOWER_ORDER_BELOW)
    out = []
    for i in range(n):
        p = min(order, i + 1) if multistep else order
        if lower:
            p = min(p, n - i)
        out.append(0 if sigmas[i + 1] == 0 else p)
    return out


# -- tensors --------------------------------------------------------------------------------
def combine(a: float, x: torch.Tensor, terms) -> torch.Tensor:
    """a * x + sum_j w_j m_j in the state's dtype; ``terms`` is a sequence of (w_j, m_j).

    The first term makes a new tensor and the rest accumulate into it in place: one
    allocation per call, and neither ``x`` nor any m_j is modified.
    """
    out = None if a == 1.0 else x * a
    for w, m in terms:
        if w == 0.0:
            continue
        if out is None:
            out = torch.add(x, m, alpha=w)
        else:
            out.add_(m, alpha=w)
    return x if out is None else out


class ExponentialSolver(Solver):
    """Base of the log-SNR solvers: the ``final_step`` option and the lambda grid.

    Subclasses set ``form`` ("data": combine denoised D, "noise": combine eps) and call
    :meth:`init` to get a run state with ``state.lam`` (lambda per grid point), ``state.h`` (per
    step) and ``state.orders`` (:func:`step_orders`). They all continue from the renoised state
    after each model evaluation (``renoise_ok``).
    """

    form = "data"
    multistep = True
    renoise_ok = True

    def __init__(self, *, final_step: str = "auto", step_orders: Sequence[int] | None = None):
        self.final_step = check_choice("final_step", final_step, FINAL_STEPS)
        if step_orders is not None:
            try:
                step_orders = tuple(step_orders)
            except TypeError:
                raise ValueError(f"step_orders must be None or a sequence of orders, got {step_orders!r}") from None
            if not all(isinstance(p, int) and not isinstance(p, bool) and p >= 1 for p in step_orders):
                raise ValueError(f"step_orders must hold integers >= 1 (one per grid step), got {step_orders!r}")
        self.step_orders = step_orders

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        state.lam = [log_snr(s) for s in state.sigmas]
        state.h = [b - a for a, b in zip(state.lam[:-1], state.lam[1:])]
        state.orders = step_orders(state.sigmas, self.max_order, self.final_step, self.multistep)
        if self.step_orders is not None:
            state.orders = self._given_orders(state.orders)
        return state

    def _given_orders(self, rule: list[int]) -> list[int]:
        """The ``step_orders`` option on this grid (0, the denoising step into sigma = 0, kept)."""
        given = self.step_orders
        if len(given) != len(rule):
            raise ValueError(f"step_orders has {len(given)} entries for a grid of {len(rule)} steps: give one per step")
        for i, p in enumerate(given):
            cap = min(self.max_order, i + 1) if self.multistep else self.max_order
            if p > cap:
                raise ValueError(
                    f"step_orders[{i}] = {p}: step {i} of {self.name!r} can take order {cap} at most "
                    "(the method's order, and a multistep method's history at that step)"
                )
        return [0 if r == 0 else p for r, p in zip(rule, given)]

    @property
    def max_order(self) -> int:
        return self.order

    def output(self, denoised: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The model output this solver's polynomial interpolates."""
        return denoised if self.form == "data" else eps
