"""Recipes: a solver, its options, a tuned grid and optional learned per-step parameters, saved as
JSON and bound to the schedule they were tuned on. :func:`diffsolve.tune` makes them (see
:mod:`diffsolve.tuning` for the method); ``ds.sample(ode, x_T, recipe=recipe)`` runs one.

The analytical first step (AFS, Zhou et al. CVPR 2024) replaces the first model call at sigma_max
by its Gaussian limit, eps = xbar / sqrt(1 + sigma^2) (derivation in :mod:`diffsolve.tuning`); the
compensation ratios are DC-Solver's (Zhao et al. ECCV 2024) in two-point form.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .counting import count_calls, is_adaptive
from .driver import list_solvers, make_solver
from .grids import validate_sigmas
from .recipe_ode import AFSODE, RecipeError, RecipeODE, run_parts, schedule_fingerprint
from .wrapper import DiffusionODE

__all__ = [
    "Recipe",
    "RecipeError",
    "RecipeODE",
    "AFSODE",
    "run_recipe",
    "run_parts",
    "schedule_fingerprint",
    "guidance_fingerprint",
]

FORMAT = "diffsolve-recipe"
VERSION = 1


def guidance_fingerprint(ode) -> str | None:
    """The guidance an ODE samples with, as a recipe records it: None without guidance, else the method
    with its scale and options (``make_guidance('apg', scale=8, ...)``) or the float CFG scale and rescale.
    A recipe tuned under one guidance is refused on an ODE with another (:meth:`Recipe.check`)."""
    method = getattr(ode, "guidance_method", None)
    if method is not None:
        return repr(method)
    if getattr(ode, "guidance", None) is not None:
        return f"cfg(scale={ode.guidance!r}, guidance_rescale={ode.guidance_rescale!r})"
    return None


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
            (DC-Solver's ratios, see :func:`tune`); ``"statistics"``, DPM-Solver-v3's model statistics;
            ``"gaussian"``, the moments of the Gaussian first step (:class:`~diffsolve.GaussianMoments`, with
            ``afs``: the first call is answered by the Gaussian fitted to the model's samples, docs/math.md G3).
        report: fit and held-out RMSE, the best fixed grid's, the cost of tuning.
        guidance: :func:`guidance_fingerprint` of the ODE it was tuned on (None: no guidance; files
            written before this field read as None).
    """

    solver: str
    options: dict[str, Any]
    sigmas: list[float]
    afs: bool
    nfe: int
    fingerprint: str
    params: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    guidance: str | None = None

    def __post_init__(self):
        if self.guidance is not None and not isinstance(self.guidance, str):
            raise RecipeError(f"recipe guidance must be a string or None, got {self.guidance!r:.80}")
        self.sigmas = [float(s) for s in validate_sigmas(self.sigmas, name="recipe sigmas").tolist()]
        if self.sigmas[-1] != 0.0:
            raise RecipeError(f"recipe sigmas must end at 0, end at {self.sigmas[-1]}")
        if self.solver not in list_solvers():
            raise RecipeError(f"recipe solver {self.solver!r} is not registered; known: {', '.join(list_solvers())}")
        self.params = dict(self.params)
        unknown = sorted(set(self.params) - {"compensation", "statistics", "gaussian"})
        if unknown:
            raise RecipeError(f"recipe params {unknown} are not known; known: 'compensation', 'statistics', 'gaussian'")
        self._statistics = self._read_statistics()
        self._gaussian = self._read_gaussian()
        # what the NFE dry run hands the solver: the same numbers without the fingerprint (its stand-in model has
        # another schedule, which the fingerprint would refuse); made once, not per run
        st = self._statistics
        self._dry_run_statistics = None if st is None else type(st)(st.lambdas, st.l, st.s, st.b, None, st.info)
        comp = self.params.get("compensation")
        if comp is not None:
            if not isinstance(comp, list) or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in comp
            ):
                raise RecipeError("recipe params 'compensation' must be a list of finite numbers")
            self.params["compensation"] = [float(c) for c in comp]
        s = make_solver(self.solver, **self.solver_options)
        if s.stochastic:
            raise RecipeError(f"recipe solver {self.solver!r} is stochastic; a recipe needs a deterministic solver")
        self.check_nfe()

    def _read_statistics(self):
        """``params["statistics"]``: DPM-Solver-v3's model statistics (a :class:`~diffsolve.ModelStatistics` or its
        ``to_dict()``), stored in the file as that dict and handed to the solver as ``statistics=``."""
        from .statistics import ModelStatistics

        if "statistics" in self.options:
            raise RecipeError(
                "recipe options cannot hold 'statistics' (not JSON): pass them as params={'statistics': stats}"
            )
        if self.params.get("statistics") is not None and self.solver != "dpm-solver-v3":
            raise RecipeError(
                f"recipe params 'statistics' are DPM-Solver-v3's; this recipe's solver is {self.solver!r}"
            )
        return self._read_param("statistics", ModelStatistics)

    def _read_gaussian(self):
        """``params["gaussian"]``: the Gaussian first step's moments (a GaussianMoments or its ``to_dict()``)."""
        from .gaussian_step import GaussianMoments

        if self.params.get("gaussian") is not None and not self.afs:
            raise RecipeError("recipe params 'gaussian' answer the analytical first step: they need afs=True")
        return self._read_param("gaussian", GaussianMoments)

    def _read_param(self, key: str, cls):
        """``params[key]`` as a ``cls`` (given one, or its ``to_dict()``, checked by ``cls.from_dict``: a ValueError
        there is this recipe's :class:`RecipeError`); stored back as the dict, which the file holds. None if absent."""
        value = self.params.get(key)
        if value is None:
            return None
        if not isinstance(value, cls):
            try:
                value = cls.from_dict(value, source=f"recipe params {key!r}")
            except ValueError as exc:
                raise RecipeError(str(exc)) from None
        self.params[key] = value.to_dict()
        return value

    @property
    def solver_options(self) -> dict[str, Any]:
        """The solver's keyword options as a run gets them: ``options`` plus the statistics, if any."""
        if self._statistics is None:
            return dict(self.options)
        return {**self.options, "statistics": self._statistics}

    def check_nfe(self) -> None:
        """Raise :class:`RecipeError` unless one run makes exactly ``nfe`` model calls (the NFE contract),
        counted by a dry run (:func:`diffsolve.count_calls`)."""
        if isinstance(self.nfe, bool) or not isinstance(self.nfe, int) or self.nfe < 0:
            raise RecipeError(f"recipe nfe must be a non-negative integer, got {self.nfe!r}")
        if is_adaptive(self.solver):
            raise RecipeError(f"recipe solver {self.solver!r} is adaptive; a recipe needs a fixed-call solver")
        opts = (
            self.options
            if self._dry_run_statistics is None
            else {**self.options, "statistics": self._dry_run_statistics}
        )
        calls = count_calls(self.solver, self.sigmas, afs=self.afs, **opts)
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
        g = guidance_fingerprint(ode)
        if g != self.guidance:
            raise RecipeError(
                f"this recipe was tuned on an ODE with guidance {self.guidance or 'none'}; this ODE has guidance "
                f"{g or 'none'}: the best grid depends on the guided field, so tune a recipe for this ODE with "
                "diffsolve.tune(ode, x_T, nfe=...)"
            )
        if self._statistics is not None:
            self._statistics.check(ode)

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
            "guidance": self.guidance,
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
                guidance=d.get("guidance"),
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
            f"Recipe({self.solver}({opts}), nfe={self.nfe}, steps={self.steps}, "
            f"afs={'gaussian' if self._gaussian is not None else self.afs}, "
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
        recipe.solver_options,
        recipe.sigmas,
        recipe.afs,
        recipe.params.get("compensation"),
        budget=recipe.nfe,
        gaussian=recipe._gaussian,
        **kw,
    )
