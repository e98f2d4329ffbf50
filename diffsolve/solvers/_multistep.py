"""Shared numerics of the multistep solvers (lms, ipndm, plms, plms-hb, ghvb), written once.

All weights are float64 Python floats, computed in a solver's ``setup`` and applied in the
state's dtype. A multistep step on the sigma-form ODE (docs/math.md E29) reads

    xbar_{i+1} = xbar_i + h_i * sum_j w_j * f_{i-j},      h_i = sigma_{i+1} - sigma_i,

with f the history (eps for Adams-Bashforth, velocities for GHVB), newest first.

* :func:`lagrange_weights`: variable-step Adams-Bashforth. w_j = (1/h) integral over the step of
  the Lagrange basis polynomial l_j through the history nodes sigma_i, sigma_{i-1}, ..., so the
  step integrates the polynomial interpolating eps exactly (the LMS of k-diffusion).
* :func:`ghvb_weights`: fixed (equal-step) weights from the backward-difference form of
  Adams-Bashforth, Wizadwongsa et al. 2023 (arXiv:2307.11118) eq. 15,
  ``Delta x_{n+1} = h (1 + Delta/2 + 5 Delta^2/12 + 3 Delta^3/8 + ...) f_n``, multiplied by the
  momentum operator ``(beta + (1 - beta) Delta)`` and truncated (their eqs. 16-19). At beta = 1
  these are the classical Adams-Bashforth weights (:func:`adams_bashforth`).
* :func:`warmup_weights`: per-step weights with the order ramping up while history builds.
* :class:`History`: the last k tensors, newest first.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence

import torch

__all__ = ["History", "adams_bashforth", "adams_series", "ghvb_weights", "lagrange_weights", "warmup_weights"]


def lagrange_weights(nodes: Sequence[float], a: float, b: float) -> list[float]:
    """w_j with integral_a^b P(s) ds = (b - a) sum_j w_j y_j for the polynomial P through (nodes_j, y_j).

    Exact polynomial integration in float64, in the scaled variable u = (s - a)/(b - a).
    """
    h = b - a
    r = [(s - a) / h for s in nodes]
    weights = []
    for j, rj in enumerate(r):
        coef, denom = [1.0], 1.0  # coefficients of prod_{m != j} (u - r_m), lowest power first
        for m, rm in enumerate(r):
            if m != j:
                coef = [
                    (coef[p - 1] if p > 0 else 0.0) - (rm * coef[p] if p < len(coef) else 0.0)
                    for p in range(len(coef) + 1)
                ]
                denom *= rj - rm
        weights.append(sum(c / (p + 1) for p, c in enumerate(coef)) / denom)
    return weights


def adams_series(n: int) -> list[float]:
    """The first n coefficients 1, 1/2, 5/12, 3/8, 251/720, ... of eq. 15 (Adams' gamma_j).

    They satisfy sum_{i=0..j} gamma_i / (j - i + 1) = 1 (integrating the Newton backward form).
    """
    gamma: list[float] = []
    for j in range(n):
        gamma.append(1.0 - sum(gamma[i] / (j - i + 1) for i in range(j)))
    return gamma


def ghvb_weights(order: int, beta: float) -> list[float]:
    """Weights on v_{n+1}, v_n, ... of the order-``order`` GHVB step (eqs. 16-19, Algorithm 2).

    Series in Delta: (1/beta) (beta gamma_j + (1 - beta) gamma_{j-1}), j < order; then
    Delta^j v_{n+1} = sum_i (-1)^i C(j, i) v_{n+1-i}.
    """
    gamma = adams_series(order)
    series = [(beta * gamma[j] + (1.0 - beta) * (gamma[j - 1] if j else 0.0)) / beta for j in range(order)]
    weights = [0.0] * order
    for j, c in enumerate(series):
        for i in range(j + 1):
            weights[i] += c * (-1) ** i * math.comb(j, i)
    return weights


def adams_bashforth(order: int) -> list[float]:
    """Equal-step Adams-Bashforth weights on f_n, f_{n-1}, ...: e.g. order 4 -> (55, -59, 37, -9)/24."""
    return ghvb_weights(order, 1.0)


def warmup_weights(sigmas: Sequence[float], order: int, variable_step: bool) -> list[list[float]]:
    """h_i * w_j for every grid step i, at order min(i + 1, order) (lower order while history builds).

    ``variable_step``: Lagrange weights on the actual sigmas (LMS); else fixed equal-step weights.
    """
    fixed = [adams_bashforth(k) for k in range(1, order + 1)]
    out = []
    for i in range(len(sigmas) - 1):
        k = min(i + 1, order)
        h = sigmas[i + 1] - sigmas[i]
        w = lagrange_weights(sigmas[i::-1][:k], sigmas[i], sigmas[i + 1]) if variable_step else fixed[k - 1]
        out.append([h * wj for wj in w])
    return out


class History:
    """The last ``size`` tensors, newest first."""

    def __init__(self, size: int):
        self.items: deque[torch.Tensor] = deque(maxlen=size)

    def push(self, x: torch.Tensor) -> None:
        self.items.appendleft(x)

    def __len__(self) -> int:
        return len(self.items)

    def combine(self, weights: Sequence[float], start: torch.Tensor | None = None) -> torch.Tensor:
        """start + sum_j weights[j] * items[j] (Python-float weights, applied in the items' dtype).

        One new tensor, accumulated in place; ``start`` and the items are not modified.
        """
        items = list(self.items)
        if start is None:
            out = items[0] * weights[0]
        else:
            out = torch.add(start, items[0], alpha=weights[0])
        for w, item in zip(weights[1:], items[1:]):
            out.add_(item, alpha=w)
        return out
