"""A linear multistep method in sigma with free per-step coefficients (docs/math.md section 3.10, M1):

    xbar_{i+1} = xbar_i + sum_{j<=i} c_{ij} eps_j,      eps_j = eps(xbar_j, sigma_j),

one model call per step (the step into sigma = 0 included, as iPNDM and LMS do it). The coefficients are
``coefficients``, the lower triangle of c row by row: ``[c_00, c_10, c_11, c_20, c_21, c_22, ...]``,
n (n + 1) / 2 numbers for a grid of n steps. DDIM is c_ii = sigma_{i+1} - sigma_i and nothing else (the
default); iPNDM, LMS, DPM-Solver++(2M) and DC-Solver's compensation ratios are points of the family too (M2).
``diffsolve.tune(learn=True)`` fits them to the model by gradient (:mod:`diffsolve.tuning_learn`); a recipe
stores them as plain floats, so it replays bit for bit. Order 1 in general (DDIM's with the default);
a fitted table is consistent only on the grid it was fitted on, so an increasing grid is refused.
"""

from __future__ import annotations

import math

import torch

from .base import Solver


def check_coefficients(coefficients) -> tuple[float, ...]:
    """``coefficients`` as a tuple of float64, or a ValueError naming the option: finite numbers, a triangular
    count n (n + 1) / 2."""
    if isinstance(coefficients, (str, bytes)) or not hasattr(coefficients, "__len__"):
        raise ValueError(f"coefficients must be a list of numbers, got {coefficients!r:.80}")
    out = []
    for c in coefficients:
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise ValueError(f"coefficients must be finite numbers, got {c!r:.40} among them")
        out.append(float(c))
    n = round((math.sqrt(8 * len(out) + 1) - 1) / 2)
    if len(out) == 0 or n * (n + 1) // 2 != len(out):
        raise ValueError(
            f"coefficients has {len(out)} numbers; a grid of n steps needs the lower triangle of c, "
            "n (n + 1) / 2 numbers (1, 3, 6, 10, 15, 21, ...)"
        )
    return tuple(out)


def coefficient_rows(coefficients: tuple[float, ...] | None, sigmas: list[float]) -> list[list[float]]:
    """Row i of c (i + 1 floats) for every step of ``sigmas``: DDIM's without ``coefficients`` (M1)."""
    n = len(sigmas) - 1
    if coefficients is None:
        return [[0.0] * i + [sigmas[i + 1] - sigmas[i]] for i in range(n)]
    if len(coefficients) != n * (n + 1) // 2:
        raise ValueError(
            f"coefficients has {len(coefficients)} numbers for a grid of {n} steps, which needs n (n + 1) / 2 = "
            f"{n * (n + 1) // 2}: the coefficients are fitted to one grid (a recipe's sigmas)"
        )
    if any(b >= a for a, b in zip(sigmas, sigmas[1:])) or math.isinf(sigmas[0]):
        raise ValueError("coefficients are for a decreasing grid starting at a finite sigma; this grid is not one")
    return [list(coefficients[i * (i + 1) // 2 : (i + 1) * (i + 2) // 2]) for i in range(n)]


class LearnedLMS(Solver):
    """Linear multistep in sigma with free per-step coefficients (docs/math.md section 3.10), 1 call/step."""

    name = "learned-lms"
    order = 1
    calls_per_step = 1
    invertible = False

    def __init__(self, *, coefficients=None):
        self.coefficients = None if coefficients is None else check_coefficients(coefficients)

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        state.rows = coefficient_rows(self.coefficients, state.sigmas)
        state.eps = {}  # step index -> its eps: row i reads eps_0 .. eps_i
        return state

    def step(self, i, x, state):
        denoised, eps = yield x, state.sigmas[i], state.sigmas[i + 1] == 0
        state.eps[i] = eps
        x_next = x
        for j, c in enumerate(state.rows[i]):
            if c != 0.0:  # DDIM's rows add one term: the same kernel as ddim's step
                x_next = torch.add(x_next, state.eps[j], alpha=c)
        return x_next, denoised
