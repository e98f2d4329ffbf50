"""Modifiers of the model's output that work with every solver: ``ds.modify(ode, lml=...)``.

A modifier changes what the ODE returns, not how a solver steps, so it is an ODE transformer:
:func:`modify` returns a :class:`ModifiedODE`, a :class:`~diffsolve.DiffusionODE` whose ``predict``
(and ``eps``, ``evaluate``) apply the modifier to every model output. State a modifier keeps across
the calls of a run (LML's running mean) lives on the run's view (:meth:`ModifiedODE.start_run`, which
the driver calls once per run), never on the object the user holds: one modified ODE serves any
solver, many runs and many threads, and two runs never see each other's history.

* ``lml=lam`` (Levenberg-Marquardt-Langevin, issue 22; docs/modifiers.md): per sample, with ebar the mean
  of the raw eps of the run's earlier calls,

      eps_LM = eps - ebar <ebar, eps> / (lam + ||ebar||^2),   then rescaled to ||eps||,

  and D made consistent with it, D = xbar - sigma eps_LM (E9). The first call of a run (no ebar) and
  ``lam = inf`` leave eps unchanged.

* ``time_shift=ds.TimeShift(window, cutoff)`` (TS-DDIM / TS-DPM, issue 22; docs/math.md 3.8): per sample,
  the model is told the training step tau near the grid's t whose marginal variance best matches the
  sample's own variance, while t > cutoff; x is unchanged and the solver keeps the grid's sigma. It needs a
  DiscreteSchedule; it is stateless (a function of the state and sigma alone). With ``lml`` it acts first:
  LML corrects (and averages) the time-shifted eps.

These corrections leave the ODE on purpose (they target sample quality, not the exact ODE solution),
so they raise the error against an exact reference: docs/modifiers.md has the measurement.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .time_shift import TimeShift, check_schedule, shifted_indices
from .validation import check_finite_number
from .wrapper import DiffusionODE

__all__ = ["modify", "ModifiedODE", "TimeShift"]


def modify(
    ode: DiffusionODE, *, lml: float | None = None, time_shift: TimeShift | Mapping | None = None
) -> ModifiedODE:
    """``ode`` with the modifiers given (None: off); see the module docstring and docs/modifiers.md.

    Args:
        ode: from :func:`diffsolve.wrap`.
        lml: the damping lambda > 0 of the Levenberg-Marquardt-Langevin correction (``math.inf``: neutral).
        time_shift: a :class:`TimeShift` (or a dict ``{"window": w, "cutoff": c}``, optionally ``data_var``):
            time-shifted model calls (docs/math.md 3.8). Needs a DiscreteSchedule and an ODE without a
            guidance method (a float CFG scale is fine).
    """
    if not isinstance(ode, DiffusionODE):
        raise TypeError(f"ode must be the DiffusionODE from diffsolve.wrap(...), got {type(ode).__name__}")
    if lml is not None:
        if isinstance(lml, bool) or not isinstance(lml, (int, float)) or math.isnan(lml) or lml <= 0:
            raise ValueError(f"lml must be None or a number > 0 (the damping lambda; inf: neutral), got {lml!r}")
        if lml != math.inf:
            check_finite_number(lml, "lml")
    if time_shift is not None:
        time_shift = TimeShift.of(time_shift)
        check_schedule(ode.schedule)
        if ode.guidance_method is not None or ode.renoise:
            name = ode.guidance_method.name if ode.guidance_method is not None else type(ode).__name__
            raise ValueError(
                f"time_shift calls the model once per evaluation with a time per sample; the guidance method "
                f"{name!r} makes its own calls and cannot take per-sample times: use a float guidance scale "
                "or no time_shift"
            )
    if isinstance(ode, ModifiedODE):
        raise ValueError(
            "ode is already a ModifiedODE (modifiers do not nest): pass every modifier to one ds.modify(...) "
            "call on the plain ODE"
        )
    return ModifiedODE(ode, lml=None if lml is None else float(lml), time_shift=time_shift)


class ModifiedODE(DiffusionODE):
    """A :class:`~diffsolve.DiffusionODE` whose outputs pass through modifiers (:func:`modify`)."""

    def __init__(self, base: DiffusionODE, *, lml: float | None = None, time_shift: TimeShift | None = None):
        self.__dict__.update(base.__dict__)
        self.lml = lml
        self.time_shift = time_shift
        self._ebar: dict | None = None  # per-run state: made by start_run, None on the user's object

    def start_run(self, **kwargs) -> ModifiedODE:
        view = super().start_run(**kwargs)
        view._ebar = {"sum": None, "count": 0}
        return view

    def predict(self, xbar: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        denoised, eps = super().predict(xbar, sigma)
        if self.lml is None or self.lml == math.inf or sigma == 0:
            return denoised, eps
        if self._ebar is None:  # outside a run there is no running mean: raise, as guidance methods do
            raise ValueError(
                "lml corrects eps against the run's running mean of eps: call it inside a run (ds.sample, "
                "ds.invert, a restorer that steps with a solver, or ode.start_run()); this caller evaluates the "
                "model outside one (e.g. the ddrm and red-diff restorers), where the correction would be skipped"
            )
        state = self._ebar
        raw = eps
        if state["count"] > 0:
            ebar = state["sum"] / state["count"]
            eps = lml_rule(eps, ebar, self.lml)
            denoised = xbar - float(sigma) * eps
        state["sum"] = raw.clone() if state["sum"] is None else state["sum"] + raw
        state["count"] += 1
        return denoised, eps

    def eps(self, xbar: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.predict(xbar, sigma)[1]

    def _predict(self, xbar: torch.Tensor, sigma: float, need_denoised: bool):
        """The model call, time-shifted per sample where the rule applies (docs/math.md S1-S4)."""
        shift = self.time_shift
        if shift is None or sigma == 0 or sigma == math.inf:
            return super()._predict(xbar, sigma, need_denoised)
        s, a, a_t = self._level(sigma)
        x = xbar * a_t if a != 1.0 else xbar
        t = float(self.schedule.t(s))
        tau = shifted_indices(x, t, self.schedule, shift)
        if tau is None or bool((tau == t).all()):
            return super()._predict(xbar, sigma, need_denoised)  # no sample shifted: the plain call
        sigma_tau = self.schedule.sigma(tau)
        times = tau if self.time in ("index", "t") else self.model_times(sigma_tau)
        out = self._call(x, s, times=times)
        eps = out if self.prediction == "eps" else self._eps_at(out, x, sigma_tau)
        # (S4): the solver keeps the grid's sigma: D = xbar - sigma eps (E9)
        return (torch.add(xbar, eps, alpha=-sigma) if need_denoised else None), eps

    def _eps_at(self, out: torch.Tensor, x: torch.Tensor, sigma_tau: torch.Tensor) -> torch.Tensor:
        """eps of the raw output of a model told level sigma_tau (per sample) on the input x: the wrapper's
        conversion (E9-E17) at each distinct sigma_tau, on xbar_tau = x / scale(sigma_tau)."""
        eps = torch.empty_like(out)
        for value in torch.unique(sigma_tau).tolist():
            rows = sigma_tau == value
            a = self.schedule.scale(value)
            eps[rows] = self._convert(out[rows], x[rows] / a, value, a)[1]
        return eps

    __call__ = eps

    def __repr__(self) -> str:
        return f"ModifiedODE(lml={self.lml!r}, time_shift={self.time_shift!r}, base={super().__repr__()})"


def lml_rule(eps: torch.Tensor, ebar: torch.Tensor, lam: float) -> torch.Tensor:
    """eps - ebar <ebar, eps> / (lam + ||ebar||^2), rescaled to ||eps||; per sample (first dimension)."""
    dims = tuple(range(1, eps.dim()))
    dot = (ebar * eps).sum(dims, keepdim=True)
    out = eps - ebar * (dot / (lam + (ebar * ebar).sum(dims, keepdim=True)))
    norm_in = eps.pow(2).sum(dims, keepdim=True).sqrt()
    norm_out = out.pow(2).sum(dims, keepdim=True).sqrt()
    return out * torch.where(norm_out > 0, norm_in / norm_out, torch.ones_like(norm_out))
