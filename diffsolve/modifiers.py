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

These corrections leave the ODE on purpose (they target sample quality, not the exact ODE solution),
so they raise the error against an exact reference: docs/modifiers.md has the measurement.
"""

from __future__ import annotations

import math

import torch

from .validation import check_finite_number
from .wrapper import DiffusionODE

__all__ = ["modify", "ModifiedODE"]


def modify(ode: DiffusionODE, *, lml: float | None = None) -> ModifiedODE:
    """``ode`` with the modifiers given (None: off); see the module docstring and docs/modifiers.md.

    Args:
        ode: from :func:`diffsolve.wrap`.
        lml: the damping lambda > 0 of the Levenberg-Marquardt-Langevin correction (``math.inf``: neutral).
    """
    if not isinstance(ode, DiffusionODE):
        raise TypeError(f"ode must be the DiffusionODE from diffsolve.wrap(...), got {type(ode).__name__}")
    if lml is not None:
        if isinstance(lml, bool) or not isinstance(lml, (int, float)) or math.isnan(lml) or lml <= 0:
            raise ValueError(f"lml must be None or a number > 0 (the damping lambda; inf: neutral), got {lml!r}")
        if lml != math.inf:
            check_finite_number(lml, "lml")
    return ModifiedODE(ode, lml=None if lml is None else float(lml))


class ModifiedODE(DiffusionODE):
    """A :class:`~diffsolve.DiffusionODE` whose outputs pass through modifiers (:func:`modify`)."""

    def __init__(self, base: DiffusionODE, *, lml: float | None = None):
        self.__dict__.update(base.__dict__)
        self.lml = lml
        self._ebar: dict | None = None  # per-run state: made by start_run, None on the user's object

    def start_run(self, **kwargs) -> ModifiedODE:
        view = super().start_run(**kwargs)
        view._ebar = {"sum": None, "count": 0}
        return view

    def predict(self, xbar: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        denoised, eps = super().predict(xbar, sigma)
        if self.lml is None or self._ebar is None or sigma == 0:
            return denoised, eps
        state = self._ebar
        raw = eps
        if state["count"] > 0 and self.lml != math.inf:
            ebar = state["sum"] / state["count"]
            eps = lml_rule(eps, ebar, self.lml)
            denoised = xbar - float(sigma) * eps
        state["sum"] = raw.clone() if state["sum"] is None else state["sum"] + raw
        state["count"] += 1
        return denoised, eps

    def eps(self, xbar: torch.Tensor, sigma: float) -> torch.Tensor:
        return self.predict(xbar, sigma)[1]

    __call__ = eps

    def __repr__(self) -> str:
        return f"ModifiedODE(lml={self.lml!r}, base={super().__repr__()})"


def lml_rule(eps: torch.Tensor, ebar: torch.Tensor, lam: float) -> torch.Tensor:
    """eps - ebar <ebar, eps> / (lam + ||ebar||^2), rescaled to ||eps||; per sample (first dimension)."""
    dims = tuple(range(1, eps.dim()))
    dot = (ebar * eps).sum(dims, keepdim=True)
    out = eps - ebar * (dot / (lam + (ebar * ebar).sum(dims, keepdim=True)))
    norm_in = eps.pow(2).sum(dims, keepdim=True).sqrt()
    norm_out = out.pow(2).sum(dims, keepdim=True).sqrt()
    return out * torch.where(norm_out > 0, norm_in / norm_out, torch.ones_like(norm_out))
