"""USF's space (Liu et al., "A unified sampling framework for solver searching"): a multistep exponential
integrator in lambda = -log sigma whose choices are made per grid step (docs/math.md section 3.9, X5-X7).

Step i goes sigma_i -> sigma_{i+1} (h = lambda_{i+1} - lambda_i) by (X3) through the model outputs of the
last p_i evaluations, at nodes c_j = (lambda_{i-j} - lambda_i)/h:

    xbar_{i+1} = a xbar_i + sum_j w_j m_{i-j},   data: m = D, a = exp(-h);   noise: m = eps, a = 1

Options, each one value for every step or a sequence with one entry per grid step:

* ``step_orders``: p_i in 1-3, at most i + 1 (the history); default: DPM-Solver's rule at order 3 with
  ``final_step`` (as dpmpp-3m);
* ``prediction``: "data" or "noise" (X7);
* ``derivative``: the weight J_1 of a two-point step's divided difference (X5): "taylor" (exact moment),
  "midpoint" (I_0 / 2, DPM-Solver++(2M), UniPC bh2) or "bh1" (h / 2, UniPC bh1; data form only); steps with
  three or more nodes use the exact weights of (X3) whatever it says;
* ``corrector``: UniC (X6) on the step's result with the next step's model output (no extra call); a
  sequence may set it only on steps whose successor is not the denoising step E27 (correcting the state
  that the denoising step reads would need one more call), ``True`` sets it on every such step.

The step into sigma = 0 is the denoising step E27, whatever its entries say. The analytical first step is
the recipe's ``afs`` (:class:`diffsolve.AFSODE`), as for every solver. One choice for every step reduces to
dpmpp-2m / dpmpp-3m / dpm-solver-2m / -3m / unipc / ddim (X7; tests/solvers/test_usf.py). ``diffsolve.tune``
searches these choices per step with ``per_step=True`` (docs/tuning.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from ._exponential import ExponentialSolver, combine, moments, poly_weights
from .base import check_choice

PREDICTIONS = ("data", "noise")
DERIVATIVES = ("taylor", "midpoint", "bh1")


def _per_step(option: str, value, allowed: Sequence) -> tuple | None:
    """A single allowed value (None: given for every step, kept as is) or a tuple of allowed values."""
    if isinstance(value, (str, bool)):
        check_choice(option, value, allowed)
        return None
    try:
        values = tuple(value)
    except TypeError:
        raise ValueError(
            f"{option} must be one of {', '.join(map(repr, allowed))} or a sequence of them (one per grid step), "
            f"got {value!r}"
        ) from None
    for k, v in enumerate(values):
        check_choice(f"{option}[{k}]", v, allowed)
    return values


class USF(ExponentialSolver):
    """USF's space: a multistep exponential integrator with per-step order, prediction and corrector (X5-X7).

    One model call per step; the derivative estimate of two-point steps is chosen per step too."""

    name = "usf"
    order = 3
    calls_per_step = 1

    def __init__(
        self,
        *,
        step_orders: Sequence[int] | None = None,
        prediction: str | Sequence[str] = "data",
        derivative: str | Sequence[str] = "midpoint",
        corrector: bool | Sequence[bool] = False,
        final_step: str = "auto",
    ):
        super().__init__(final_step=final_step, step_orders=step_orders)
        if self.step_orders is not None and any(p > 3 for p in self.step_orders):
            raise ValueError(f"step_orders: usf takes orders 1-3, got {list(self.step_orders)}")
        per = {
            "prediction": (prediction, PREDICTIONS),
            "derivative": (derivative, DERIVATIVES),
            "corrector": (corrector, (True, False)),
        }
        self._lists = {k: _per_step(k, v, allowed) for k, (v, allowed) in per.items()}
        self.prediction, self.derivative, self.corrector = prediction, derivative, corrector
        # UniC rebuilds the state from the previous base: a renoised state would be discarded (section 3.6)
        self.renoise_ok = corrector is False or (not isinstance(corrector, bool) and not any(corrector))
        if self.derivative == "bh1" and self.prediction == "noise":
            raise ValueError("derivative='bh1' is defined for prediction='data' only (UniPC's B(h) = h, X5)")

    def _choice(self, key: str, n: int):
        """The option ``key`` as one value per grid step (checked against the grid's length)."""
        values = self._lists[key]
        if values is None:
            return [getattr(self, key)] * n
        if len(values) != n:
            raise ValueError(f"{key} has {len(values)} entries for a grid of {n} steps: give one per step")
        return list(values)

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        n, orders = len(state.sigmas) - 1, state.orders
        form = self._choice("prediction", n)
        deriv = self._choice("derivative", n)
        corr = self._choice("corrector", n)
        for i in range(n):
            if orders[i] and form[i] == "noise" and deriv[i] == "bh1":
                raise ValueError(
                    f"step {i}: derivative 'bh1' is defined for prediction 'data' only (UniPC's B(h) = h, X5)"
                )
        # a corrector needs a successor step that evaluates the model and is not the denoising step (X6)
        can = [bool(orders[i]) and i + 1 < n and bool(orders[i + 1]) for i in range(n)]
        if self._lists["corrector"] is not None:
            bad = [i for i in range(n) if corr[i] and not can[i]]
            if bad:
                raise ValueError(
                    f"corrector[{bad[0]}] = True, but step {bad[0]} has no corrector: its result is the state the "
                    "denoising step into sigma = 0 reads (or the last state), so correcting it would cost one "
                    "more model call (docs/math.md X6); set it False there"
                )
        else:
            corr = [c and ok for c, ok in zip(corr, can)]
        state.pred = [self._weights(state, i, p, form[i], deriv[i], False) if p else None for i, p in enumerate(orders)]
        state.corr = [
            self._weights(state, i, p, form[i], deriv[i], True) if p and corr[i] else None for i, p in enumerate(orders)
        ]
        state.history, state.x_base = [], None
        return state

    @staticmethod
    def _weights(state, i: int, p: int, form: str, derivative: str, corrector: bool):
        """(a, w, k) of step i: w over the history [m_new (corrector only), m_i, m_{i-1}, ...]; k picks D (0) or
        eps (1) from each stored output pair."""
        h, lam, s_s = state.h[i], state.lam, state.sigmas[i + 1]
        nodes = [(lam[i - j] - lam[i]) / h for j in range(p)] + ([1.0] if corrector else [])
        mom = moments(h, len(nodes), form, s_s)
        if len(nodes) == 2 and derivative != "taylor":  # X5: the stand-in for the exact I_1
            mom[1] = mom[0] / 2 if derivative == "midpoint" else h / 2
        w = poly_weights(nodes, mom)
        a = s_s / state.sigmas[i] if form == "data" else 1.0
        return a, (w[-1:] + w[:-1] if corrector else w), (0 if form == "data" else 1)

    def step(self, i, x, state):
        s_t = state.sigmas[i]
        denoised, eps = yield x, s_t, True
        if state.pred[i] is None:
            return denoised, denoised  # E27: the step into sigma = 0
        x = state.ode.renoised(x, denoised, eps, s_t)
        state.history.insert(0, (denoised, eps))
        if i > 0 and state.corr[i - 1] is not None:
            a, w, k = state.corr[i - 1]  # X6: step i - 1 again, from its base, with the new output at c = 1
            x = combine(a, state.x_base, zip(w, [m[k] for m in state.history]))
        del state.history[3:]
        state.x_base = x
        a, w, k = state.pred[i]
        return combine(a, x, zip(w, [m[k] for m in state.history])), denoised


#: the registered solvers (with their options) that are points of this family (X7)
EQUIVALENT = ("ddim", "dpmpp-2m", "dpmpp-3m", "dpm-solver-2m", "dpm-solver-3m", "unipc")


def usf_options(solver: str, options: dict, sigmas: Sequence[float]) -> dict | None:
    """The ``usf`` options (one entry per step of ``sigmas``) that run ``solver`` with ``options`` on that grid
    (X7), or None where it is not a point of the family (another solver, DDIM with eta, the reference 3M
    weights). ``tune(per_step=True)`` starts its search from these."""
    from ..driver import make_solver
    from ._exponential import step_orders

    if solver not in EQUIVALENT:
        return None
    s = make_solver(solver, **options)
    n = len(sigmas) - 1
    if solver == "ddim":
        if s.stochastic:
            return None
        orders, form, deriv, corr = [1] * n, "data", "taylor", False
    else:
        if getattr(s, "weights", "exact") != "exact":
            return None
        rule = step_orders(list(sigmas), s.max_order, s.final_step, True)
        orders = list(s._given_orders(rule)) if s.step_orders is not None else rule
        form = s.form
        if solver == "unipc":
            deriv, corr = ("midpoint" if s.variant == "bh2" else "bh1"), s.corrector
        else:
            deriv, corr = ("midpoint" if s.solver_type == "midpoint" else "taylor"), False
    can = [bool(orders[i]) and i + 1 < n and bool(orders[i + 1]) for i in range(n)]
    return {
        "step_orders": [max(p, 1) for p in orders],
        "prediction": [form] * n,
        "derivative": [deriv] * n,
        "corrector": [bool(corr and ok) for ok in can],
    }
