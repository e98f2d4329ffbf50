"""Recipes: a solver, its options, a tuned grid and optional learned per-step parameters, saved as
JSON and bound to the schedule they were tuned on. :func:`diffsolve.tune` makes them (see
:mod:`diffsolve.tuning` for the method); ``ds.sample(ode, x_T, recipe=recipe)`` runs one.

The analytical first step (AFS, Zhou et al. CVPR 2024) replaces the first model call at sigma_max
by its Gaussian limit, eps = xbar / sqrt(1 + sigma^2) (derivation in :mod:`diffsolve.tuning`); the
compensation ratios are DC-Solver's (Zhao et al. ECCV 2024) in two-point form.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .counting import count_calls, is_adaptive
from .driver import list_solvers, make_solver, sample_core
from .grids import validate_sigmas
from .wrapper import DiffusionODE
from .wrapper import _Counter as _CallCounter

__all__ = ["Recipe", "RecipeError", "RecipeODE", "AFSODE", "run_recipe", "schedule_fingerprint"]

_F64 = torch.float64
FORMAT = "diffsolve-recipe"
VERSION = 1


class RecipeError(ValueError):
    """A recipe that cannot be used here: another schedule or prediction, or a damaged file."""


# -- the schedule's fingerprint ------------------------------------------------------------------
def schedule_fingerprint(schedule, prediction: str) -> str:
    """A short hash of what a recipe depends on: the schedule's sigma <-> t map, its space and
    range, and the model's prediction type. Equal schedules built the same way hash equal."""
    lo, hi = float(schedule.sigma_min), float(schedule.sigma_max)
    probes = [math.exp(math.log(lo) + k / 15 * (math.log(hi) - math.log(lo))) for k in range(16)]
    t = schedule.t(torch.tensor(probes, dtype=_F64)).tolist()
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


# -- AFS and the per-step compensation ------------------------------------------------------------
class RecipeODE(DiffusionODE):
    """The ODE a recipe runs on: ``base`` with the analytical first step (``afs_sigma``: the first
    call at that sigma is answered by eps = xbar / sqrt(1 + sigma^2), see the module docstring)
    and the optional per-evaluation compensation ratios ``compensation`` (DC-Solver, see
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
    ):
        self.__dict__.update(base.__dict__)
        if budget is not None:
            self.model = _CallBudget(base.model, budget)
        self._counter = _CallCounter()  # this run's calls; run_recipe adds them to base's shared count
        self._afs_sigma = None if afs_sigma is None else float(afs_sigma)
        self._comp = None if compensation is None else [float(c) for c in compensation]
        self._k = 0
        self._prev_d = None

    def _evaluate(self, xbar, sigma, need_denoised: bool):
        sigma = float(sigma)
        if self._afs_sigma is not None and sigma == self._afs_sigma:
            self._afs_sigma = None
            eps = xbar * (1.0 / math.sqrt(1.0 + sigma * sigma))
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


# -- the recipe ------------------------------------------------------------------------------------
@dataclass
class Recipe:
    """A tuned sampling recipe. ``sample(ode, x_T)`` runs it; ``save``/``load`` keep it as JSON.

    Attributes:
        solver, options: the registered solver and its keyword options.
        sigmas: the grid, float64 Python floats, strictly decreasing, ending at 0.
        afs: whether the first model call is replaced by the analytical first step.
        nfe: the exact number of model calls of one run.
        fingerprint: :func:`schedule_fingerprint` of the schedule and prediction it was tuned on.
        params: learned per-step parameters: ``{"compensation": [c_1, ...]}`` with ``tune(scalars=True)``
            (DC-Solver's ratios, see :func:`tune`), else empty.
        report: fit and held-out RMSE, the best fixed grid's, the cost of tuning.
    """

    solver: str
    options: dict[str, Any]
    sigmas: list[float]
    afs: bool
    nfe: int
    fingerprint: str
    params: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        self.sigmas = [float(s) for s in validate_sigmas(self.sigmas, name="recipe sigmas").tolist()]
        if self.sigmas[-1] != 0.0:
            raise RecipeError(f"recipe sigmas must end at 0, end at {self.sigmas[-1]}")
        if self.solver not in list_solvers():
            raise RecipeError(f"recipe solver {self.solver!r} is not registered; known: {', '.join(list_solvers())}")
        unknown = sorted(set(self.params) - {"compensation"})
        if unknown:
            raise RecipeError(f"recipe params {unknown} are not known; known: 'compensation'")
        comp = self.params.get("compensation")
        if comp is not None:
            if not isinstance(comp, list) or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in comp
            ):
                raise RecipeError("recipe params 'compensation' must be a list of finite numbers")
            self.params["compensation"] = [float(c) for c in comp]
        s = make_solver(self.solver, **self.options)
        if s.stochastic:
            raise RecipeError(f"recipe solver {self.solver!r} is stochastic; a recipe needs a deterministic solver")
        self.check_nfe()

    def check_nfe(self) -> None:
        """Raise :class:`RecipeError` unless one run makes exactly ``nfe`` model calls (the NFE contract),
        counted by a dry run (:func:`diffsolve.count_calls`)."""
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, int) or self.nfe < 0:
            raise RecipeError(f"recipe nfe must be a non-negative integer, got {self.nfe!r}")
        if is_adaptive(self.solver):
            raise RecipeError(f"recipe solver {self.solver!r} is adaptive; a recipe needs a fixed-call solver")
        calls = count_calls(self.solver, self.sigmas, afs=self.afs, **self.options)
        if calls != self.nfe:
            raise RecipeError(
                f"recipe nfe={self.nfe}, but {self.solver!r} with options {self.options} makes {calls} model calls "
                f"on its {self.steps}-step grid (afs={self.afs}): a recipe's nfe is its exact number of model calls"
            )

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    def check(self, ode: DiffusionODE) -> None:
        """Raise :class:`RecipeError` unless ``ode`` has the schedule and prediction the recipe was tuned on."""
        fp = schedule_fingerprint(ode.schedule, ode.prediction)
        if fp != self.fingerprint:
            where = (
                f", tuned on {self.report['schedule']}, prediction {self.report.get('prediction')!r}"
                if "schedule" in self.report
                else ""
            )
            raise RecipeError(
                f"this recipe was tuned for another schedule or prediction type (fingerprint {self.fingerprint}"
                f"{where}); "
                f"this ODE has {ode.schedule!r}, prediction {ode.prediction!r} (fingerprint {fp}): "
                "tune a recipe for it with diffsolve.tune(ode, x_T, nfe=...)"
            )

    def sample(self, ode: DiffusionODE, x_T: torch.Tensor, **kw):
        """Run the recipe: :func:`run_recipe`."""
        return run_recipe(ode, x_T, self, **kw)

    # -- files ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "solver": self.solver,
            "options": dict(self.options),
            "sigmas": list(self.sigmas),
            "afs": bool(self.afs),
            "nfe": int(self.nfe),
            "fingerprint": self.fingerprint,
            "params": dict(self.params),
            "report": dict(self.report),
        }

    def save(self, path: str | Path) -> Path:
        """Write the recipe as JSON (floats written exactly: Python's repr round-trips float64)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "recipe") -> Recipe:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise RecipeError(f"{source} is not a diffsolve recipe (no 'format': {FORMAT!r} entry)")
        if d.get("version") != VERSION:
            raise RecipeError(
                f"{source} has recipe version {d.get('version')!r}; this diffsolve reads version {VERSION}"
            )
        need = {"solver": str, "options": dict, "sigmas": list, "afs": bool, "nfe": int, "fingerprint": str}
        for k, typ in need.items():
            if not isinstance(d.get(k), typ) or (typ is int and isinstance(d.get(k), bool)):
                raise RecipeError(f"{source} is damaged: entry {k!r} must be a {typ.__name__}, got {d.get(k)!r:.80}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in d["sigmas"]):
            raise RecipeError(f"{source} is damaged: 'sigmas' must be a list of numbers")
        try:
            return cls(
                solver=d["solver"],
                options=d["options"],
                sigmas=d["sigmas"],
                afs=d["afs"],
                nfe=d["nfe"],
                fingerprint=d["fingerprint"],
                params=dict(d.get("params") or {}),
                report=dict(d.get("report") or {}),
            )
        except RecipeError:
            raise
        except (ValueError, TypeError) as exc:
            raise RecipeError(f"{source} is damaged: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe written by :meth:`save`; a damaged or foreign file raises :class:`RecipeError`."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecipeError(f"recipe file {str(path)!r} is corrupt (not valid JSON: {exc})") from None
        return cls.from_dict(d, source=f"recipe file {str(path)!r}")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return (
            f"Recipe({self.solver}({opts}), nfe={self.nfe}, steps={self.steps}, afs={self.afs}, "
            f"sigmas={[round(s, 4) for s in self.sigmas]})"
        )


def run_recipe(ode: DiffusionODE, x: torch.Tensor, recipe: Recipe, **kw):
    """Sample ``x`` (x_T, model space) with ``recipe`` (``kw``: the driver's keywords: generator, callback,
    progress, return_trajectory, check_finite, grad). Checks the schedule fingerprint first."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a diffsolve.Recipe, got {type(recipe).__name__}")
    if not isinstance(ode, DiffusionODE):
        raise TypeError(f"expected the ODE from diffsolve.wrap(...), got {type(ode).__name__}")
    recipe.check(ode)
    for k in ("solver", "steps", "grid", "sigmas"):
        if k in kw:
            raise ValueError(f"{k}= cannot be given with a recipe: the recipe fixes the solver and its grid")
    recipe.check_nfe()  # before any model call; the budget below stops a run that would still exceed it
    return run_parts(
        ode,
        x,
        recipe.solver,
        recipe.options,
        recipe.sigmas,
        recipe.afs,
        recipe.params.get("compensation"),
        budget=recipe.nfe,
        **kw,
    )


def run_parts(ode, x, solver, options, sigmas, afs, compensation=None, budget=None, **kw):
    """Sample with a solver, its options and a grid, with AFS and compensation ratios when asked, and at most
    ``budget`` model calls when given (one more raises :class:`RecipeError`)."""
    if not afs and not compensation and budget is None:
        return sample_core(ode, x, solver, sigmas=sigmas, **options, **kw)
    run_ode = RecipeODE(ode, sigmas[0] if afs else None, compensation, budget)
    try:
        return sample_core(run_ode, x, solver, sigmas=sigmas, **options, **kw)
    finally:
        ode._counter.add(run_ode.nfe)
