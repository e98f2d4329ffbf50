"""The ODE a recipe runs on: the analytical first step (AFS, Zhou et al. CVPR 2024; or its Gaussian form,
:mod:`diffsolve.gaussian_step`), DC-Solver's compensation ratios (Zhao et al. ECCV 2024) and the recipe's budget
of model calls, as a wrapper of any :class:`DiffusionODE`,
so every solver runs with them. :func:`run_parts` samples with them; :func:`diffsolve.count_calls` counts
through it, :mod:`diffsolve.recipe` and :mod:`diffsolve.tuning` run through it. The derivation of AFS is in
:mod:`diffsolve.tuning`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence

import torch

from .driver import sample_core
from .wrapper import DiffusionODE, _CallCounter

__all__ = ["RecipeError", "RecipeODE", "AFSODE", "run_parts"]


class RecipeError(ValueError):
    """A recipe that cannot be used here: another schedule or prediction, or a damaged file."""


# -- AFS and the per-step compensation ------------------------------------------------------------
def afs_eps(xbar: torch.Tensor, sigma: float) -> torch.Tensor:
    """The analytical first step's eps at the grid's first sigma: xbar / sqrt(1 + sigma^2), the Gaussian limit of
    E[eps | xbar] (derivation in :mod:`diffsolve.tuning`, "The analytical first step")."""
    return xbar * (1.0 / math.sqrt(1.0 + sigma * sigma))


class RecipeODE(DiffusionODE):
    """The ODE a recipe runs on: ``base`` with the analytical first step (``afs_sigma``: the first
    call at that sigma is answered by eps = xbar / sqrt(1 + sigma^2), see the module docstring)
    or, with ``gaussian`` moments, by the Gaussian first step to ``afs_next``, the grid's second sigma
    (docs/math.md G3), and the optional per-evaluation compensation ratios ``compensation`` (DC-Solver, see
    :func:`tune`): evaluation k >= 1 returns D_k + c_k (D_k - D_{k-1}), eps made consistent
    with it (E9); all c_k = 0 leaves every output untouched. With ``budget`` the model may be
    called at most that many times (a recipe's ``nfe``): one more call raises :class:`RecipeError`.

    Made fresh for each run. Model calls are counted on this object; :func:`run_recipe` adds
    them to ``base.nfe``.
    """

    def __init__(
        self,
        base: DiffusionODE,
        afs_sigma: float | None = None,
        compensation: Sequence[float] | None = None,
        budget: int | None = None,
        gaussian=None,
        afs_next: float | None = None,
    ):
        if type(base) is not DiffusionODE:  # its class's overrides would be bypassed: only its __dict__ is copied
            raise RecipeError(
                f"a recipe's run (analytical first step, compensation, call budget) needs the plain ODE of ds.wrap / "
                f"ds.from_diffusers; this one is a {type(base).__name__}, whose changes to the model's outputs "
                "(ds.modify's lml / time_shift, a subclass's overrides) the run would silently drop. Sample it "
                "without the recipe: ds.sample(ode, x_T, recipe.solver, sigmas=recipe.sigmas, **recipe.solver_options)"
            )
        self.__dict__.update(base.__dict__)
        if budget is not None:
            self.model = _CallBudget(base.model, budget)
        self._counter = _CallCounter()  # this run's calls; run_recipe adds them to base's shared count
        self._afs_sigma = None if afs_sigma is None else float(afs_sigma)
        self._gaussian, self._afs_next = gaussian, afs_next
        self._comp = None if compensation is None else [float(c) for c in compensation]
        self._k = 0
        self._prev_d = None

    def _evaluate(self, xbar, sigma, need_denoised: bool):
        sigma = float(sigma)
        if self._afs_sigma is not None and sigma == self._afs_sigma:
            self._afs_sigma = None
            if self._gaussian is None:
                eps = afs_eps(xbar, sigma)
            else:
                eps = self._gaussian.first_eps(xbar, sigma, self._afs_next)
            denoised = torch.add(xbar, eps, alpha=-sigma)
            if self.denoised_transform is not None:
                denoised = self.denoised_transform(denoised, sigma)
                eps = (xbar - denoised) / sigma
        elif self._comp is None and not need_denoised:
            return None, super().eps(xbar, sigma)
        else:
            denoised, eps = super().predict(xbar, sigma)
        if self._comp is None:
            return denoised, eps
        k, prev = self._k, self._prev_d
        self._k, self._prev_d = k + 1, denoised
        c = self._comp[k - 1] if 1 <= k <= len(self._comp) else 0.0
        if c != 0.0 and prev is not None:
            denoised = torch.add(denoised, denoised - prev, alpha=c)
            if sigma != 0:
                eps = (xbar - denoised) / sigma
        return denoised, eps

    def predict(self, xbar, sigma):
        return self._evaluate(xbar, sigma, True)

    def eps(self, xbar, sigma):
        return self._evaluate(xbar, sigma, False)[1]

    __call__ = eps


class AFSODE(RecipeODE):
    """``base`` with the analytical first step at ``sigma0`` only (see :class:`RecipeODE`)."""

    def __init__(self, base: DiffusionODE, sigma0: float):
        super().__init__(base, afs_sigma=sigma0)


class _CallBudget:
    """The model, refusing to be called more than ``nfe`` times (the recipe's NFE contract)."""

    def __init__(self, model, nfe: int):
        self.model, self.nfe, self.used = model, int(nfe), 0

    def __call__(self, *args, **kwargs):
        if self.used >= self.nfe:
            raise RecipeError(
                f"this recipe's run asked for model call {self.used + 1}, over the recipe's nfe={self.nfe}: "
                "the recipe was edited after it was made, or a plugin solver's call count changed; "
                "count its calls with diffsolve.count_calls(solver, sigmas, afs=..., **options)"
            )
        self.used += 1
        return self.model(*args, **kwargs)


def run_parts(ode, x, solver, options, sigmas, afs, compensation=None, budget=None, gaussian=None, **kw):
    """Sample with a solver, its options and a grid, with AFS (the Gaussian first step with ``gaussian`` moments)
    and compensation ratios when asked, and at most ``budget`` model calls when given (one more raises
    :class:`RecipeError`)."""
    if gaussian is not None and not afs:
        raise ValueError("gaussian moments answer the analytical first step: they need afs=True")
    if not afs and not compensation and budget is None:
        return sample_core(ode, x, solver, sigmas=sigmas, **options, **kw)
    run_ode = RecipeODE(ode, sigmas[0] if afs else None, compensation, budget, gaussian, float(sigmas[1]))
    try:
        return sample_core(run_ode, x, solver, sigmas=sigmas, **options, **kw)
    finally:
        ode._counter.add(run_ode.nfe)


# -- the schedule's fingerprint ------------------------------------------------------------------
def schedule_fingerprint(schedule, prediction: str) -> str:
    """A short hash of what a recipe depends on: the schedule's sigma <-> t map, its space and
    range, and the model's prediction type. Equal schedules built the same way hash equal."""
    lo, hi = float(schedule.sigma_min), float(schedule.sigma_max)
    probes = [math.exp(math.log(lo) + k / 15 * (math.log(hi) - math.log(lo))) for k in range(16)]
    t = schedule.t(torch.tensor(probes, dtype=torch.float64)).tolist()
    parts = [
        type(schedule).__name__,
        str(schedule.space),
        f"{lo:.12g}",
        f"{hi:.12g}",
        [f"{v:.12g}" for v in t],
        [f"{schedule.scale(p):.12g}" for p in probes],
        str(getattr(schedule, "num_steps", "")),
        str(prediction),
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]
