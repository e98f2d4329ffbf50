"""Momentum samplers of Wizadwongsa et al. 2023 ("Diffusion Sampling with Momentum for Mitigating
Divergence Artifacts", arXiv:2307.11118), on the sigma-form ODE (their eq. 2 = docs/math.md E29).

``plms-hb``: Polyak's heavy ball on PLMS (their eq. 14, Algorithm 1):

    e_hat   = sum_{j<k} b^(k)_j eps_{n-j}          (Adams-Bashforth, k = min(n + 1, order))
    v_{n+1} = (1 - beta) v_n + beta e_hat,          xbar_{n+1} = xbar_n + h_n v_{n+1}

First order for beta < 1 (their Theorem 1); beta = 1 is AB with lower orders while history
builds instead of PNDM's pseudo-RK warm-up, i.e. ``ipndm``.

``ghvb``: generalized heavy ball (their eqs. 15-19, Algorithm 2): the moving average is taken
before the Adams sum,

    v_{n+1} = (1 - beta) v_n + beta eps_n,          xbar_{n+1} = xbar_n + h_n sum_{j<k} c_j(beta) v_{n+1-j}

with c(beta) the backward-difference series of AB times (beta + (1 - beta) Delta), truncated
after k terms and divided by beta (:func:`._multistep.ghvb_weights`; k = 2:
((2 + beta) v_{n+1} - (2 - beta) v_n) / (2 beta)). Order k (their Theorem 2); the paper's
"GHVB 3.8" is ``solver_order=4, beta=0.8``; beta = 1 is Adams-Bashforth. Both start with v_0 = eps_0
(the first step is Euler) and use lower orders while history builds, take one model call per
step, use equal-step weights like PLMS (full order on grids uniform in sigma; as for ``ipndm`` the
warm-up bounds the order by 2 as h -> 0) and need no model call at sigma = 0.
"""

from __future__ import annotations

from ._multistep import History, adams_bashforth, ghvb_weights
from .base import Solver, check_int, check_real


def _check(solver_order, beta) -> float:
    check_int("solver_order", solver_order, (1, 2, 3, 4))
    return check_real("beta", beta, low=0.0, high=1.0, low_open=True)


class PLMSHeavyBall(Solver):
    """PLMS with heavy-ball momentum (Wizadwongsa et al. 2023, eq. 14): order 1 for beta < 1, 1 call/step."""

    name = "plms-hb"
    order = 1
    calls_per_step = 1
    renoise_ok = True

    def __init__(self, *, solver_order: int = 4, beta: float = 0.8):
        self.beta = _check(solver_order, beta)
        self.ab_order = solver_order
        self.order = solver_order if self.beta == 1 else 1

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        ab = [adams_bashforth(k) for k in range(1, self.ab_order + 1)]
        state.weights = [ab[min(i, self.ab_order - 1)] for i in range(len(state.sigmas) - 1)]
        state.history = History(self.ab_order)
        state.velocity = None
        return state

    def step(self, i, x, state):
        s_t = state.sigmas[i]
        denoised, eps = yield x, s_t, True
        x = state.ode.renoised(x, denoised, eps, s_t)
        state.history.push(eps)
        e_hat = state.history.combine(state.weights[i])
        v = e_hat if state.velocity is None else (1 - self.beta) * state.velocity + self.beta * e_hat
        state.velocity = v
        return x + (state.sigmas[i + 1] - s_t) * v, denoised


class GHVB(Solver):
    """Generalized heavy ball (Wizadwongsa et al. 2023, Alg. 2): order `solver_order`, 1 call/step."""

    name = "ghvb"
    order = 4
    calls_per_step = 1
    renoise_ok = True

    def __init__(self, *, solver_order: int = 4, beta: float = 0.8):
        self.beta = _check(solver_order, beta)
        self.order = solver_order

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        table = [ghvb_weights(k, self.beta) for k in range(1, self.order + 1)]
        state.coefs = [
            [(s_next - s) * w for w in table[min(i, self.order - 1)]]
            for i, (s, s_next) in enumerate(zip(state.sigmas[:-1], state.sigmas[1:]))
        ]
        state.history = History(self.order)
        return state

    def step(self, i, x, state):
        s_t = state.sigmas[i]
        denoised, eps = yield x, s_t, True
        x = state.ode.renoised(x, denoised, eps, s_t)
        history = state.history
        v = eps if not len(history) else (1 - self.beta) * history.items[0] + self.beta * eps
        history.push(v)
        return history.combine(state.coefs[i], start=x), denoised
