"""Sampling recipes tuned to the user's model: the lowest error at a few model calls.

:func:`tune` searches, for one model, one start distribution and one budget of model calls
(NFE), the solver, its options, the free low-NFE rules and the timestep grid that bring a
few-step sample closest to the exact ODE solution (E29) from the same x_T. The result is a
:class:`Recipe`: a solver name and options, an explicit float64 grid ending at 0, whether
the analytical first step is used, the exact number of model calls, and a report of the
held-out error beside that of the best fixed grid.

What is searched (the stages of :func:`tune`)
---------------------------------------------
1. :func:`_sweep`: every deterministic fixed-call solver of the registry (with the option variants of
   :data:`VARIANTS`: order, ``final_step`` = denoise / lower-order final, UniPC's variant,
   DEIS' variable) x every registered grid that accepts the schedule x AFS on/off. Each
   configuration gets, on each grid, the largest step count whose real number of model calls fits
   the budget (:func:`diffsolve.steps_for_nfe`: a dry run of that solver on that grid with the
   package's zero model, so a 2-call solver gets half the steps). A screening round (:func:`_screen`)
   runs every candidate on :data:`SCREEN_SAMPLES` fit x_T first; the :data:`SCREEN_KEEP` best and the
   :data:`SCREEN_KEEP_DEFAULT` best plain ones are scored on every x_T (fit and held out). This is also the
   baseline: the best fixed solver+grid among them, scored on the held-out part.
2. :func:`_refine_grids`: solver-aware timestep calibration: for the best configurations of
   step 1 (ranked on the fit part only), the interior sigmas are refined by Nelder-Mead on the log of the
   log-sigma gaps, ``sigma_k = sigma_max exp(-(g_1 + ... + g_k))``, ``g_j = exp(z_j)``,
   scoring the *global* error of the very solver that will run (its own states,
   multistep history included) against the teacher: the mean squared difference of the
   final samples (the OSS/LD3 objective, here derivative-free; GITS' Euler local cost is
   not used because it is blind to the solver); with ``tail_weight`` > 0 the worst x_T weigh in
   as well (:func:`_objective`). The first sigma stays sigma_max (x_T lives
   there) and the last is 0; the last non-zero sigma is free. The lowest *fit* error wins.
2b. :func:`_search_per_step` (opt-in, ``per_step=True``): USF's per-step search (Liu et al., "A unified
   sampling framework for solver searching") on solver ``usf`` (docs/math.md X5-X7): per step the order,
   data or noise prediction, derivative estimate and corrector, by coordinate descent on the global fit
   error from the best grid (AFS off and on), then the grid refined once more.
3. :func:`_fit_compensation` (opt-in, ``scalars=True``): DC-Solver's per-step compensation ratios on
   the winner, neutral at their initial value 0, then one more grid refinement with them.
4. :func:`_held_out_check` and :func:`_report`: the winner's held-out error against the best fixed
   candidate the sweep scored in full; where that one is better on the held-out part, it is the recipe
   (``report["fallback_to_fixed"]``). The report shows both, and the teacher's own error.

A candidate whose run raises one of :data:`INFEASIBLE` is "not feasible"; any other error propagates.

The teacher
-----------
The exact solution from each x_T: adaptive dopri5 in a float64 state
(:func:`diffsolve.analytic.reference_solution`, rtol = atol = 1e-10 for a float64 x_T,
1e-8 otherwise), computed once per (ODE, x_T) and cached in memory. Pass ``teacher=``
with precomputed ends (model space, sigma = 0) to skip it. Its own error is estimated by the same
solve :data:`TEACHER_CHECK_FACTOR` times less strict (``report["teacher_rmse"]``). An ODE with a
``denoised_transform`` (clipping) is refused at once without ``teacher=``: the teacher cannot
integrate the clipped ODE.

The analytical first step (AFS)
-------------------------------
Zhou et al., "Fast ODE-based sampling for diffusion models in around 5 steps" (CVPR 2024),
sec. 3.3. In the sigma form, xbar = x0 + sigma eps (docs/math.md E6, E9), and the ODE's
right-hand side is the posterior mean eps(xbar, sigma) = E[eps | xbar] (E29). For data of
unit variance per coordinate and zero mean, E[eps | xbar] = sigma xbar / (1 + sigma^2);
AFS takes the value the noise itself would have if x_T were pure noise at the start level:
xbar = sqrt(1 + sigma^2) x_T (VP), so

    eps_AFS(xbar, sigma_0) = xbar / sqrt(1 + sigma_0^2)        (= x_T for a VP model),

which differs from the Gaussian posterior mean by a relative O(1 / sigma_0^2) (6e-5 at
sigma_0 = 157, the DDPM linear schedule's top) and from the model's own eps by the data's
share x0 / sigma_0. It replaces the first model call at the grid's first sigma, so every
solver can use it: :class:`AFSODE` wraps the ODE and answers that one call analytically
(D = xbar - sigma eps, E9), which saves one model call. It is exact only in the limit
sigma_0 -> inf; the search keeps it only where it lowers the error at the same NFE.

Reproducibility: same inputs, same torch build and thread count -> the same recipe, bit
for bit (the search is deterministic: no random restarts; ties broken by order).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .counting import count_calls, is_adaptive, steps_for_nfe
from .recipe import (  # noqa: F401
    AFSODE,
    Recipe,
    RecipeError,
    RecipeODE,
    guidance_fingerprint,
    run_parts,
    run_recipe,
    schedule_fingerprint,
)
from .sampling import list_grids, list_solvers, make_grid, make_solver
from .tuning_learn import learn_coefficients
from .validation import suggest
from .wrapper import DiffusionODE, NonFiniteError

__all__ = [
    "tune",
    "Recipe",
    "run_recipe",
    "AFSODE",
    "RecipeODE",
    "schedule_fingerprint",
    "best_fixed",
    "VARIANTS",
    "RecipeError",
    "INFEASIBLE",
]

_F64 = torch.float64
#: the largest NFE tune() searches (the Nelder-Mead refinement has NFE - 1 parameters)
MAX_NFE = 100
#: the errors a candidate run may legitimately raise, scored "not feasible" (infinite error): the arithmetic
#: of an extreme grid (coefficients overflowing or dividing by a vanishing step) and non-finite samples.
#: Anything else (a model that refuses x_T, a solver bug) propagates. Grids that are not strictly decreasing
#: are screened out before a run (:func:`_grid_ok`).
INFEASIBLE = (NonFiniteError, OverflowError, ZeroDivisionError)
#: the looser teacher that measures the teacher's error is this many times less strict
TEACHER_CHECK_FACTOR = 1000.0
#: the teacher's error must stay below this share of the best candidate's error (else a warning)
TEACHER_SHARE = 0.1
#: the tail of the objective (:func:`_objective`, ``tune(tail_weight=...)``): the share of x_T counted as the worst
TAIL_SHARE = 0.02
#: the held-out check's report: a paired difference within this many standard errors of 0 is "within noise"
NOISE_SE = 2.0

#: solvers the default sweep leaves out: ``usf`` at its defaults is dpmpp-3m (docs/math.md X7), the space of the
#: per-step search (``per_step=True``); ``learned-lms`` at its defaults is ddim, the space of ``learn=True``
SEARCH_ONLY = ("usf", "learned-lms")
#: coordinate-descent passes over the steps of the per-step search (each pass tries every step's choices)
PER_STEP_PASSES = 2
#: the sweep's screening round (:func:`_screen`): every candidate runs on this many x_T of the fit part first ...
SCREEN_SAMPLES = 32
#: ... and only the best this many by that score (plus :data:`SCREEN_KEEP_DEFAULT` plain ones) on every x_T
SCREEN_KEEP = 48
#: the best default-option, no-AFS candidates of the screening round scored in full as well (the report's
#: ``best_fixed`` baseline is the best of the plain candidates scored in full)
SCREEN_KEEP_DEFAULT = 16

#: option variants searched per solver besides its defaults (the free low-NFE rules:
#: order, lower-order final / denoise final step, the extrapolation variable)
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "deis": [
        {"solver_order": o, "variable": v, "final_step": f}
        for o in (2, 3)
        for v in ("t", "log-sigma")
        for f in ("denoise", "lower-order")
    ],
    "dpmpp-2m": [{"solver_type": "taylor"}],
    "dpm-solver-2m": [{"solver_type": "taylor"}],
    "dpmpp-3m": [{"final_step": "denoise"}, {"final_step": "lower-order"}],
    "dpm-solver-3m": [{"final_step": "denoise"}, {"final_step": "lower-order"}],
    "unipc": [
        {"solver_order": o, "variant": v, "final_step": f}
        for o in (2, 3)
        for v in ("bh1", "bh2")
        for f in ("denoise", "lower-order")
    ],
    "ipndm": [{"solver_order": o} for o in (2, 3)],
    "lms": [{"solver_order": o} for o in (2, 3)],
}
#: dpm-solver-v3's options searched on the user's statistics (``tune(statistics=...)``): the defaults and the
#: pseudo-order predictor (docs/math.md V7), each better on some of the benchmark's problems (docs/dpm-solver-v3.md)
V3_VARIANTS: list[dict[str, Any]] = [{}, {"pseudo": True}]


# -- configurations and candidates ----------------------------------------------------------------------
def _fixed_call_solvers(solvers: Sequence[str] | None) -> list[str]:
    """Deterministic solvers with a fixed number of calls per step (not adaptive: :func:`is_adaptive`)."""
    from .plugins.registry import get_registry

    reg = get_registry()
    if solvers is None:
        names = []
        for n in list_solvers():
            cls = reg.solver(n)
            if n in SEARCH_ONLY:
                continue
            if cls.stochastic or is_adaptive(cls) or getattr(cls, "calls_per_step", 1) < 1:
                continue
            if make_solver(n).stochastic:  # a default option that draws noise (e.g. an eta)
                continue
            names.append(n)
        return names
    if isinstance(solvers, str):
        solvers = [solvers]
    names = []
    for n in solvers:
        if n not in list_solvers():
            raise ValueError(
                f"solvers: unknown solver {n!r}{suggest(n, list_solvers())}; known: {', '.join(list_solvers())}"
            )
        cls = reg.solver(n)
        if cls.stochastic or make_solver(n).stochastic:
            raise ValueError(
                f"solvers: {n!r} is stochastic; tune() needs deterministic solvers (its error is "
                "measured against the exact ODE solution): e.g. ddim, dpmpp-2m, unipc, ipndm"
            )
        if is_adaptive(cls):
            raise ValueError(
                f"solvers: {n!r} is adaptive (its number of model calls is not fixed); tune() needs a fixed-call solver"
            )
        names.append(n)
    if not names:
        raise ValueError("solvers: empty list")
    return names


@dataclass(frozen=True)
class _Config:
    solver: str
    options: tuple
    afs: bool
    #: DPM-Solver-v3's model statistics (``tune(statistics=...)``), held apart from ``options``: they change the
    #: coefficients, never the number of model calls, so counting uses ``opts`` and only a run gets them
    statistics: Any = None
    #: the Gaussian first step's moments (:mod:`diffsolve.gaussian_step`; with ``afs``, the learn stage's only)
    gaussian: Any = None

    @property
    def opts(self) -> dict:
        return dict(self.options)

    @property
    def run_opts(self) -> dict:
        """The options a run gets: ``opts`` plus the statistics, if any."""
        return self.opts if self.statistics is None else {**self.opts, "statistics": self.statistics}

    @property
    def is_default(self) -> bool:
        """Default options, no AFS, no statistics: a plain fixed solver, the baseline."""
        return not self.options and not self.afs and self.statistics is None

    @property
    def recipe_options(self) -> dict:
        """The options as a recipe stores them: per-step tuples as lists (JSON)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.options}

    def label(self) -> str:
        o = ",".join(f"{k}={v}" for k, v in self.options)
        stats = "[statistics]" if self.statistics is not None else ""
        afs = ("+afs(gaussian)" if self.gaussian is not None else "+afs") if self.afs else ""
        return f"{self.solver}{stats}{'(' + o + ')' if o else ''}{afs}"


def _configs(names: list[str], statistics=None) -> list[_Config]:
    """Every solver with its :data:`VARIANTS`, AFS off and on; with ``statistics``, dpm-solver-v3 on them too
    (with :data:`V3_VARIANTS`), beside dpm-solver-v3 on the neutral statistics (= DPM-Solver++ with v3's
    corrector)."""
    out = []
    for n in names:
        for v in [{}] + VARIANTS.get(n, []):
            for afs in (False, True):
                out.append(_Config(n, tuple(sorted(v.items())), afs))
        if n == "dpm-solver-v3" and statistics is not None:
            for v in V3_VARIANTS:
                out.extend(_Config(n, tuple(sorted(v.items())), afs, statistics) for afs in (False, True))
    return out


@dataclass
class _Candidate:
    """One configuration on one grid: what it costs and how far it lands from the teacher."""

    config: _Config
    grid: str  # the registered grid it is (or was refined from)
    sigmas: list[float]
    calls: int
    fit_mse: float
    held_mse: float = math.inf
    compensation: list[float] | None = None
    fit_score: float = math.inf  # :func:`_objective` of the fit part's per-sample errors

    def key(self):
        """Order of preference: lowest fit objective (:func:`_objective`), ties broken by name (deterministic)."""
        return (self.fit_score, self.config.label(), self.grid)

    def summary(self) -> dict[str, Any]:
        return {
            "solver": self.config.solver,
            "options": self.config.opts,
            "statistics": self.config.statistics is not None,
            "afs": self.config.afs,
            "grid": self.grid,
            "nfe": self.calls,
            "steps": len(self.sigmas) - 1,
            "fit_rmse": math.sqrt(self.fit_mse),
            "heldout_rmse": math.sqrt(self.held_mse),
        }


# -- the teacher ----------------------------------------------------------------------------------------
_TEACHERS: dict[str, torch.Tensor] = {}


def _teacher_tol(x_T: torch.Tensor) -> float:
    return 1e-10 if x_T.dtype == _F64 else 1e-8


def _teacher(ode: DiffusionODE, x_T: torch.Tensor, sigma_max: float, tol: float | None = None) -> torch.Tensor:
    from .analytic import reference_solution

    tol = _teacher_tol(x_T) if tol is None else tol
    h = hashlib.sha1(x_T.detach().to("cpu", _F64).contiguous().numpy().tobytes())
    key = (
        f"{id(ode.model)}|{schedule_fingerprint(ode.schedule, ode.prediction)}|{sigma_max!r}|{tol}|{h.hexdigest()}"
        f"|{_conditioning_digest(ode)}"
    )
    if key not in _TEACHERS:
        # the model is called in its own dtype (a run view of the ODE); the state is float64
        view = ode.start_run(input_dtype=x_T.dtype)
        with torch.no_grad():
            ref = reference_solution(view, x_T.to(_F64), sigma_max, 0.0, rtol=tol, atol=tol)
        if len(_TEACHERS) >= 8:
            _TEACHERS.pop(next(iter(_TEACHERS)))
        _TEACHERS[key] = ref.detach().to("cpu", _F64)
    return _TEACHERS[key]


def _conditioning_digest(ode: DiffusionODE) -> str:
    """A digest of what besides the model and x_T decides the teacher's solution: the guidance (method, scale,
    options, the guiding model's identity) and the model's keyword arguments (cond, uncond, model_kwargs: the
    contents of their tensors). Two ODEs on one model with other labels get other teachers."""
    h = hashlib.sha1(repr(guidance_fingerprint(ode)).encode())
    h.update(repr(id(getattr(ode.guidance_method, "weak_model", None))).encode())

    def feed(kwargs, where):
        for key in sorted(kwargs, key=str):
            value = kwargs[key]
            h.update(f"{where}[{key!r}]".encode())
            if isinstance(value, dict):
                feed(value, f"{where}[{key!r}]")
            elif isinstance(value, torch.Tensor):
                v = value.detach().to("cpu").contiguous()
                h.update(f"{v.dtype}{tuple(v.shape)}".encode())
                h.update((v.to(_F64) if v.is_floating_point() else v.to(torch.int64)).numpy().tobytes())
            else:
                h.update(repr(value).encode())

    feed(ode.cond, "cond")
    feed(ode.uncond, "uncond")
    feed(ode.model_kwargs, "model_kwargs")
    return h.hexdigest()


def _check_teacher(ode, x_T, teacher) -> torch.Tensor | None:
    """The user's ``teacher=`` checked and in float64 on the CPU (None: tune solves its own). Refuses, before any
    expensive work, an ODE whose ``denoised_transform`` (clipping) the float64 teacher cannot integrate, and an
    ODE with renoising predictions (CFG++, a restorer's hooked ODE), which has no ODE solution to tune towards."""
    if getattr(ode, "renoise", False):
        raise ValueError(
            "this ODE's predictions are renoising (CFG++ or a restorer: the solver continues from denoised + sigma "
            "* eps, off the state's ray): its result depends on the step count and has no ODE limit for tune's "
            "teacher to integrate (docs/math.md#guidance-cfgpp). Tune the plain guided ODE (guidance=<float> or cfg, apg, "
            "...) and sample CFG++ with a fixed solver and steps"
        )
    if teacher is None:
        if ode.denoised_transform is not None:
            raise ValueError(
                "this ODE applies a denoised_transform (clipping or thresholding; from_diffusers follows a "
                "scheduler's clip_sample=True, the DDPM/DDIM default): tune's float64 teacher cannot integrate the "
                "clipped ODE (its right-hand side jumps where the clip engages). Tune the unclipped ODE, "
                "ds.from_diffusers(model, scheduler, follow_clipping=False), and run the recipe on it; or pass "
                "teacher= with precomputed end points of the clipped ODE (docs/tuning.md, 'Clipping')"
            )
        return None
    ref = torch.as_tensor(teacher)
    if ref.shape != x_T.shape:
        raise ValueError(f"teacher must have x_T's shape {tuple(x_T.shape)}, got {tuple(ref.shape)}")
    if not torch.isfinite(ref).all():
        raise ValueError("teacher contains NaN or inf")
    return ref.detach().to(_F64).cpu()


# -- scoring ----------------------------------------------------------------------------------------------
def _grid_ok(sigmas: list[float], sigma_min: float, sigma_max: float) -> bool:
    """Strictly decreasing in float64, positive until the final 0 and inside the model's range (the driver's
    tolerance, :data:`diffsolve.validation.RANGE_RTOL`): a grid a candidate can run on."""
    from .validation import RANGE_RTOL

    return (
        all(a > b for a, b in zip(sigmas, sigmas[1:]))
        and sigmas[-1] == 0.0
        and sigmas[-2] >= sigma_min * (1 - RANGE_RTOL)
        and sigmas[-2] > 0.0
        and sigmas[0] <= sigma_max * (1 + RANGE_RTOL)
    )


class _Scorer:
    """Per-sample squared errors of candidate runs against the teacher; counts the runs."""

    def __init__(self, ode, x, ref):
        self.ode, self.x, self.ref = ode, x, ref
        self.runs = 0
        self.range = (float(ode.schedule.sigma_min), float(ode.schedule.sigma_max))

    def grid_ok(self, sigmas: list[float]) -> bool:
        return _grid_ok(sigmas, *self.range)

    def errors(self, cfg: _Config, sigmas: list[float], compensation=None) -> torch.Tensor:
        """Per-sample mean squared error to the teacher (float64); inf for an infeasible candidate (a grid
        :func:`_grid_ok` refuses, one of :data:`INFEASIBLE`, non-finite samples)."""
        inf = torch.full((self.x.shape[0],), math.inf, dtype=_F64)
        if not self.grid_ok(sigmas):
            return inf
        self.runs += 1
        try:
            with torch.no_grad():
                out = run_parts(
                    self.ode,
                    self.x,
                    cfg.solver,
                    cfg.run_opts,
                    sigmas,
                    cfg.afs,
                    compensation,
                    gaussian=cfg.gaussian,
                    check_finite=False,
                )
        except INFEASIBLE:
            return inf
        e = (out.detach().to("cpu", _F64) - self.ref).reshape(self.x.shape[0], -1).pow(2).mean(1)
        return torch.where(torch.isfinite(e), e, torch.full_like(e, math.inf))


def _tail_mse(e: torch.Tensor, share: float = TAIL_SHARE) -> torch.Tensor:
    """Mean of the worst ``share`` of per-sample squared errors (at least one sample): the conditional value at
    risk of the per-sample error at level 1 - share."""
    k = max(1, math.ceil(share * e.numel()))
    return e.topk(k).values.mean()


def _objective(e: torch.Tensor, tail_weight: float = 0.0) -> float:
    """What the search minimises, from the per-sample squared errors ``e`` of a run against the teacher:
    ``(1 - w) log mean(e) + w log tail(e)``, w = ``tail_weight``, tail = :func:`_tail_mse` (the mean of the
    worst :data:`TAIL_SHARE` of the x_T); 1e3 for an infeasible run. In log form the two terms are scale-free:
    w is the exponent of a weighted geometric mean of the mean and the tail error.

    w = 0 (the default) is the plain mean squared error, the expected error the recipe is judged by. w > 0
    makes the search pay for the worst x_T it can see (the x_T near a boundary between the data's modes, whose
    error coarse early steps amplify: docs/tuning.md, "Why a recipe can lose on another draw"); measured on
    gmm64 it lowers the worst x_T's error at some NFE and raises the mean at others, so it is opt-in."""
    mse = float(e.mean())
    if not math.isfinite(mse):
        return 1e3
    if mse <= 0:
        return -1e3
    if tail_weight == 0:
        return math.log(mse)
    return (1 - tail_weight) * math.log(mse) + tail_weight * math.log(float(_tail_mse(e)))


def _simplex(z0, step: float):
    """Initial Nelder-Mead simplex: each coordinate moved by ``step`` (0.3 on a log-gap scales it by 1.35)."""
    import numpy as np

    z0 = np.asarray(z0, dtype=float)
    pts = [z0]
    for k in range(len(z0)):
        p = z0.copy()
        p[k] += step
        pts.append(p)
    return np.array(pts)


def _nelder_mead(f, x0: list[float], step: float, maxfev: int) -> tuple[list[float], float]:
    """Minimise ``f`` from ``x0`` (scipy's Nelder-Mead, deterministic: a fixed initial simplex of size ``step``);
    ``(x, f(x))`` of the result, or of ``x0`` where the search found nothing lower."""
    from scipy.optimize import minimize

    f0 = f(x0)
    options = {"maxfev": maxfev, "xatol": 1e-4, "fatol": 1e-6, "adaptive": len(x0) > 3}
    res = minimize(f, x0, method="Nelder-Mead", options={**options, "initial_simplex": _simplex(x0, step)})
    if res.fun <= f0:
        return [float(v) for v in res.x], float(res.fun)
    return list(x0), f0


def _sigmas_from(z, sigma_max: float) -> list[float]:
    s, out = math.log(sigma_max), [sigma_max]
    for v in z:
        s -= math.exp(min(float(v), 50.0))
        out.append(math.exp(s))
    return out + [0.0]


def _z_from(sigmas: list[float]) -> list[float]:
    ls = [math.log(s) for s in sigmas[:-1]]
    return [math.log(max(ls[k] - ls[k + 1], 1e-12)) for k in range(len(ls) - 1)]


def _check_inputs(ode, x_T, nfe, fit_fraction=None, tail_weight=0.0):
    if not isinstance(ode, DiffusionODE):
        raise TypeError(f"ode must be the ODE from diffsolve.wrap(...), got {type(ode).__name__}")
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point() or x_T.dim() < 1:
        raise TypeError("x_T must be a floating-point torch.Tensor with a batch dimension")
    if isinstance(nfe, bool) or not isinstance(nfe, int):
        raise ValueError(f"nfe must be an integer between 1 and {MAX_NFE}, got {nfe!r}")
    limit = min(MAX_NFE, getattr(ode.schedule, "num_steps", MAX_NFE))
    if not 1 <= nfe <= limit:
        why = (
            f"the schedule has {ode.schedule.num_steps} levels"
            if limit < MAX_NFE
            else "tuning targets low NFE; above it use a fixed grid"
        )
        raise ValueError(f"nfe must be between 1 and {limit} ({why}), got {nfe}")
    if not torch.isfinite(x_T).all():
        raise ValueError("x_T contains NaN or inf; pass finite start states")
    if fit_fraction is None:
        return 0
    if isinstance(tail_weight, bool) or not isinstance(tail_weight, (int, float)) or not 0 <= tail_weight < 1:
        raise ValueError(f"tail_weight must be a number in [0, 1) (0: the mean squared error), got {tail_weight!r}")
    if not isinstance(fit_fraction, (int, float)) or not 0 < fit_fraction < 1:
        raise ValueError(f"fit_fraction must be in (0, 1), got {fit_fraction!r}")
    n = x_T.shape[0]
    n_fit = int(round(n * fit_fraction))
    if n_fit < 1 or n - n_fit < 1:
        raise ValueError(
            f"x_T has {n} samples: fit_fraction={fit_fraction} leaves no fit or no held-out part; "
            "pass at least 2 samples (16 or more for a meaningful recipe)"
        )
    return n_fit


# -- the stages ---------------------------------------------------------------------------------------------
@dataclass
class _Tuning:
    """What every stage reads: the problem, the split, the scorers, the budget."""

    ode: DiffusionODE
    nfe: int
    fit_idx: torch.Tensor
    held_idx: torch.Tensor
    scorer: _Scorer  # every x_T
    fit_scorer: _Scorer  # the fit part only
    progress: bool
    max_evals: int | None
    grids: dict = field(default_factory=dict)
    tail_weight: float = 0.0  # of :func:`_objective`
    screen_scorer: _Scorer | None = None  # the sweep's screening round (None: every candidate on every x_T)
    sweep_info: dict = field(default_factory=dict)  # what the sweep ran, for the report

    def score(self, e: torch.Tensor) -> float:
        """:func:`_objective` of per-sample fit errors, with this tuning's ``tail_weight``."""
        return _objective(e, self.tail_weight)

    @property
    def sigma_max(self) -> float:
        return float(self.ode.schedule.sigma_max)

    @contextlib.contextmanager
    def bar(self, total: int, stage: str):
        if not self.progress:
            yield None
            return
        from tqdm.auto import tqdm

        with tqdm(total=total, desc=f"tune NFE {self.nfe}: {stage}", unit="config") as b:
            yield b

    def grid(self, name: str, steps: int) -> list[float] | None:
        """The registered grid ``name`` at ``steps`` steps, or None where it refuses them or does not start at
        sigma_max (where x_T lives)."""
        key = (name, steps)
        if key not in self.grids:
            try:
                sig = [float(s) for s in make_grid(name, self.ode.schedule, steps).tolist()]
            except (ValueError, TypeError):
                sig = None
            if sig is not None and abs(sig[0] - self.sigma_max) > 1e-9 * self.sigma_max:
                sig = None
            self.grids[key] = sig
        return self.grids[key]


def _usable_grids(t: _Tuning) -> list[str]:
    """Registered grids that accept the schedule and start at sigma_max."""
    return [g for g in list_grids() if any(t.grid(g, s) is not None for s in (2, 3, 5, 10))]


def _sweep(t: _Tuning, configs: list[_Config]) -> list[_Candidate]:
    """Stage 1: every configuration on every usable grid, at the most steps whose real call count fits the
    budget (:func:`diffsolve.steps_for_nfe` on that very grid). With a screening scorer (``tune``'s default) the
    candidates first run on a few fit x_T (:func:`_screen`) and only the survivors are scored on the fit and
    held-out parts; without one (:func:`best_fixed`) every candidate is. Returns the candidates scored in full."""
    plan, grids = [], _usable_grids(t)
    for cfg in configs:
        for g in grids:
            steps = steps_for_nfe(cfg.solver, t.nfe, grid=g, schedule=t.ode.schedule, afs=cfg.afs, **cfg.opts)
            sig = None if steps is None else t.grid(g, steps)
            if sig is not None:
                plan.append((cfg, g, sig))
    if t.screen_scorer is not None and len(plan) > SCREEN_KEEP + SCREEN_KEEP_DEFAULT:
        plan = _screen(t, plan)
    t.sweep_info["scored_in_full"] = len(plan)
    out = []
    with t.bar(len(plan), "fixed grids" if t.screen_scorer is None else "fixed grids, screened") as bar:
        for cfg, g, sig in plan:
            calls = count_calls(cfg.solver, sig, afs=cfg.afs, schedule=t.ode.schedule, **cfg.opts)
            e = t.scorer.errors(cfg, sig)
            fit = e[t.fit_idx]
            out.append(
                _Candidate(cfg, g, sig, calls, float(fit.mean()), float(e[t.held_idx].mean()), fit_score=t.score(fit))
            )
            if bar is not None:
                bar.update(1)
    return out


def _screen(t: _Tuning, plan: list[tuple]) -> list[tuple]:
    """The sweep's screening round: every candidate of ``plan`` (``(config, grid, sigmas)``) scored by the
    tuning's objective on the screening x_T (the first :data:`SCREEN_SAMPLES` of the fit part, a random subset);
    the survivors (:func:`_survivors`) in ``plan``'s order."""
    keep = _survivors(plan, _screen_scores(t, plan))
    t.sweep_info.update(candidates=len(plan), screen_samples=int(t.screen_scorer.x.shape[0]))
    return [p for i, p in enumerate(plan) if i in keep]


def _screen_scores(t: _Tuning, plan: list[tuple]) -> list[tuple]:
    """``(objective on the screening x_T, label, grid)`` of every candidate of ``plan``: the screening order."""
    scores = []
    with t.bar(len(plan), "screening") as bar:
        for cfg, g, sig in plan:
            scores.append((t.score(t.screen_scorer.errors(cfg, sig)), cfg.label(), g))
            if bar is not None:
                bar.update(1)
    return scores


def _survivors(plan: list[tuple], scores: list[tuple]) -> set[int]:
    """The indices of ``plan`` that the screening round keeps: the :data:`SCREEN_KEEP` best by ``scores`` and the
    :data:`SCREEN_KEEP_DEFAULT` best plain ones (default options, no AFS: the report's baseline); ties are broken
    by name (the scores carry label and grid), so the choice is deterministic."""
    order = sorted(range(len(plan)), key=scores.__getitem__)
    plain = [i for i in order if plan[i][0].is_default]
    return set(order[:SCREEN_KEEP]) | set(plain[:SCREEN_KEEP_DEFAULT])


def _refine_grid(t: _Tuning, c: _Candidate, budget: int | None = None) -> _Candidate:
    """Stage 2 for one candidate: its interior sigmas by Nelder-Mead on the log log-sigma gaps, scored by the
    global fit error of the very solver (with the candidate's compensation ratios, if any). A grid whose call
    count differs from the candidate's is not feasible (the NFE contract)."""
    if len(c.sigmas) <= 2:
        return c
    cfg, comp = c.config, c.compensation

    def f(z):
        sig = _sigmas_from(z, t.sigma_max)
        if (
            t.fit_scorer.grid_ok(sig)
            and count_calls(cfg.solver, sig, afs=cfg.afs, schedule=t.ode.schedule, **cfg.opts) != c.calls
        ):
            return 1e3
        return t.score(t.fit_scorer.errors(cfg, sig, comp))

    z0 = _z_from(c.sigmas)
    z, _ = _nelder_mead(f, z0, 0.3, budget or t.max_evals or (150 + 60 * len(z0)))
    sig = _sigmas_from(z, t.sigma_max) if z != z0 else c.sigmas
    e = t.fit_scorer.errors(cfg, sig, comp)
    return replace(c, sigmas=sig, fit_mse=float(e.mean()), fit_score=t.score(e))


def _refine_grids(t: _Tuning, swept: list[_Candidate], refine: int) -> _Candidate:
    """Stage 2: the ``refine`` best configurations (each on its best grid, ranked on the fit part) refined;
    the lowest fit error wins. With ``tune(statistics=...)`` the best dpm-solver-v3 configuration on them is
    refined in addition, never instead of one of those: the statistics can only add a candidate."""
    best: dict[_Config, _Candidate] = {}
    for c in sorted(swept, key=_Candidate.key):
        if math.isfinite(c.fit_mse) and c.config not in best:
            best[c.config] = c
    plain = [c for c in best.values() if c.config.statistics is None][: max(1, int(refine))]
    ranked = plain + [c for c in best.values() if c.config.statistics is not None][:1]
    results = []
    with t.bar(len(ranked), "grid refinement") as bar:
        for c in ranked:
            results.append(_refine_grid(t, c))
            if bar is not None:
                bar.update(1)
    return min(results, key=_Candidate.key)


def _usf_config(cfg: _Config, sigmas: list[float], afs: bool) -> _Config | None:
    """``cfg`` on the grid ``sigmas`` as a point of the ``usf`` family (docs/math.md X7), or None."""
    from .solvers.usf import usf_options

    opts = usf_options(cfg.solver, cfg.opts, sigmas)
    if opts is None:
        return None
    return _Config("usf", tuple(sorted((k, tuple(v)) for k, v in opts.items())), afs)


def _usf_starts(t: _Tuning, chosen: _Candidate, swept: list[_Candidate]) -> list[_Candidate]:
    """The per-step search's starting points: on the winner's (refined) grid with its AFS, every configuration of
    the sweep that is a point of the family, the lowest fit error kept (where usf's call count there is the
    winner's); and, with the other AFS setting, the lowest-fit member of the family in the sweep, on its grid."""
    out = []
    if chosen.compensation is None:
        cands = []
        for cfg in dict.fromkeys(c.config for c in sorted(swept, key=_Candidate.key)):
            u = _usf_config(cfg, chosen.sigmas, chosen.config.afs)
            if u is not None and u not in (c.config for c in cands):
                if count_calls("usf", chosen.sigmas, afs=u.afs, schedule=t.ode.schedule, **u.opts) == chosen.calls:
                    e = t.fit_scorer.errors(u, chosen.sigmas)
                    cands.append(replace(chosen, config=u, fit_mse=float(e.mean()), fit_score=t.score(e)))
        if cands:
            out.append(min(cands, key=_Candidate.key))
    for c in sorted(swept, key=_Candidate.key):
        if c.config.afs != chosen.config.afs and math.isfinite(c.fit_mse):
            u = _usf_config(c.config, c.sigmas, c.config.afs)
            if u is not None:
                out.append(replace(c, config=u))
                break
    return out


def _step_choices(i: int, n: int) -> list[tuple]:
    """Every ``(order, prediction, corrector, derivative)`` of step ``i`` of ``n`` (the last, into sigma = 0, is
    E27 and not searched), in a fixed order; the derivative estimate only where the step has a two-node system
    (X5), else None."""
    out = []
    for p in range(1, min(3, i + 1) + 1):
        for pred in ("data", "noise"):
            for corr in (False, True) if i + 2 < n else (False,):
                two_nodes = p == 2 or (p == 1 and corr)
                derivs = ("taylor", "midpoint", "bh1") if pred == "data" else ("taylor", "midpoint")
                for d in derivs if two_nodes else (None,):
                    out.append((p, pred, corr, d))
    return out


def _effective(opts: dict, i: int) -> tuple:
    """Step ``i``'s choice as :func:`_step_choices` writes it (the derivative estimate only where it is read)."""
    p, pred, corr = opts["step_orders"][i], opts["prediction"][i], opts["corrector"][i]
    return p, pred, corr, opts["derivative"][i] if p == 2 or (p == 1 and corr) else None


def _usf(opts: dict, afs: bool) -> _Config:
    return _Config("usf", tuple(sorted((k, tuple(v)) for k, v in opts.items())), afs)


def _descend(t: _Tuning, start: _Candidate) -> tuple[_Candidate, int]:
    """Coordinate descent over the steps of a ``usf`` candidate on its grid: ``(result, passes)``. Each step's
    choices (:func:`_step_choices`) are scored by the search's objective (:meth:`_Tuning.score` of the global fit
    errors); the lowest is kept where strictly lower
    than the current one (ties keep it); at most :data:`PER_STEP_PASSES` passes, fewer when one changes nothing."""
    opts = {k: list(v) for k, v in start.config.options}
    afs, sig, n = start.config.afs, start.sigmas, len(start.sigmas) - 1
    e = t.fit_scorer.errors(start.config, sig)
    cur, cur_mse = t.score(e), float(e.mean())
    passes = 0
    with t.bar(PER_STEP_PASSES * max(n - 1, 1), f"per-step search (afs={afs})") as bar:
        for _ in range(PER_STEP_PASSES):
            passes += 1
            changed = False
            for i in range(n - 1):
                best = None
                for choice in _step_choices(i, n):
                    if choice == _effective(opts, i):
                        continue
                    trial = {k: list(v) for k, v in opts.items()}
                    p, pred, corr, d = choice
                    keep = trial["derivative"][i]
                    trial["step_orders"][i], trial["prediction"][i], trial["corrector"][i] = p, pred, corr
                    trial["derivative"][i] = d or ("midpoint" if keep == "bh1" and pred == "noise" else keep)
                    e = t.fit_scorer.errors(_usf(trial, afs), sig)
                    score = t.score(e)
                    if score < cur and (best is None or score < best[0]):
                        best = (score, trial, float(e.mean()))
                if best is not None:
                    cur, opts, cur_mse, changed = best[0], best[1], best[2], True
                if bar is not None:
                    bar.update(1)
            if not changed:
                break
    return replace(start, config=_usf(opts, afs), fit_mse=cur_mse, fit_score=cur, compensation=None), passes


def _search_per_step(t: _Tuning, chosen: _Candidate, swept: list[_Candidate]) -> tuple[_Candidate, dict]:
    """Stage 2b (opt-in, ``per_step=True``): USF's per-step search (Liu et al., "A unified sampling framework for
    solver searching"; the space is solver ``usf``, docs/math.md X5-X7).

    Starts (:func:`_usf_starts`): the winner's refined grid and AFS with the best member of the family
    (:func:`diffsolve.solvers.usf.usf_options`) there, and the best member of the family with the other AFS
    setting on its swept grid. Coordinate descent: step by step, every
    choice of :func:`_step_choices` is scored by the global fit error of the run and the lowest kept where it is
    strictly lower (ties keep the current choice: deterministic); at most :data:`PER_STEP_PASSES` passes, fewer
    when a pass changes nothing. The better of the two is its grid refined once more (:func:`_refine_grid`).
    It replaces ``chosen`` where it lowers the fit error and is not worse on the held-out part. Cost: at most
    2 x PER_STEP_PASSES x (steps - 1) x 21 sampler runs, one per family configuration of the sweep (the
    starts) and one grid refinement."""
    starts = _usf_starts(t, chosen, swept)
    info: dict[str, Any] = {"starts": [f"{s.grid}, afs={s.config.afs}" for s in starts], "kept": False}
    if not starts:
        return chosen, info

    results = [_descend(t, start) for start in starts]
    best, passes = min(results, key=lambda r: r[0].key())
    searched = _refine_grid(t, best)  # the timesteps once more, for the searched choices
    info.update(
        passes=passes,
        fit_rmse_before=math.sqrt(chosen.fit_mse),
        fit_rmse_after=math.sqrt(searched.fit_mse),
    )
    if searched.fit_score >= chosen.fit_score:
        return chosen, info
    held = t.scorer.errors(searched.config, searched.sigmas)[t.held_idx].mean()
    held_before = t.scorer.errors(chosen.config, chosen.sigmas, chosen.compensation)[t.held_idx].mean()
    info.update(heldout_rmse_before=math.sqrt(float(held_before)), heldout_rmse_after=math.sqrt(float(held)))
    if held > held_before:
        return chosen, info
    info["kept"] = True
    return searched, info


def _fit_compensation(t: _Tuning, c: _Candidate) -> _Candidate:
    """Stage 3 (opt-in): DC-Solver's per-evaluation compensation ratios (Zhao et al., ECCV 2024) on the winner,
    then its grid once more with them; kept only where they lower the fit error.

    DC-Solver replaces a model output by a Lagrange interpolation of the recent outputs evaluated at a shifted
    time rho t_k + (1 - rho) t_{k-1}; with the two-point (linear) interpolation used here this is
    D_k + c_k (D_k - D_{k-1}), c_k = rho_k - 1, applied to every model evaluation of every solver
    (:class:`RecipeODE`). At c = 0 (the start) the run equals the base solver exactly (its order kept)."""
    n_c = c.calls + (1 if c.config.afs else 0) - 1
    if n_c < 1:
        return c

    def g(ratios):
        return t.score(t.fit_scorer.errors(c.config, c.sigmas, list(ratios)))

    ratios, _ = _nelder_mead(g, [0.0] * n_c, 0.1, t.max_evals or (100 + 40 * n_c))
    if not any(ratios):
        return c
    withc = replace(c, compensation=ratios)
    withc = _refine_grid(t, withc, budget=t.max_evals or (60 + 30 * (len(c.sigmas) - 2)))
    return withc if withc.fit_score < c.fit_score else c


def _held_out_check(t: _Tuning, chosen: _Candidate, swept: list[_Candidate], teacher_rmse):
    """``(recipe candidate, check)``: the tuned candidate's held-out error against the best fixed candidate
    of the sweep (any configuration on a registered grid that the sweep scored in full, i.e. survived its
    screening round, :func:`_screen`; scored on the same held-out x_T); where the fixed one is better, it is the
    recipe: a recipe is never worse on held-out x_T than a candidate scored in full. A candidate the screening
    round dropped was only scored on the screening x_T, never on the held-out part. Warns where the teacher's own
    error is not well below the candidates' (TEACHER_SHARE). ``check``: ``fell_back``, and the paired difference
    of the two per-x_T held-out errors (tuned - fixed) with its standard error: ``within_noise`` where it is
    within :data:`NOISE_SE` standard errors of 0, i.e. where the held-out x_T do not tell the two apart."""
    e_tuned = t.scorer.errors(chosen.config, chosen.sigmas, chosen.compensation)[t.held_idx]
    chosen.held_mse = float(e_tuned.mean())
    fixed = min(swept, key=lambda c: (c.held_mse, c.config.label(), c.grid))
    d = e_tuned - t.scorer.errors(fixed.config, fixed.sigmas, fixed.compensation)[t.held_idx]
    se = float(d.std() / math.sqrt(d.numel())) if d.numel() > 1 else math.inf
    check = {
        "fixed": f"{fixed.config.label()} on {fixed.grid}",
        "tuned_heldout_rmse": math.sqrt(chosen.held_mse),
        "fixed_heldout_rmse": math.sqrt(fixed.held_mse),
        "mse_difference": float(d.mean()),
        "standard_error": se,
        "within_noise": abs(float(d.mean())) <= NOISE_SE * se,
    }
    if teacher_rmse is not None and teacher_rmse > TEACHER_SHARE * math.sqrt(min(fixed.held_mse, chosen.held_mse)):
        warnings.warn(
            f"tune: the teacher's own error (~{teacher_rmse:.2e} RMSE) is not well below the candidates' "
            f"({math.sqrt(min(fixed.held_mse, chosen.held_mse)):.2e}): the ranking may be noise; pass a more "
            "accurate teacher=",
            RuntimeWarning,
            stacklevel=3,
        )
    check["fell_back"] = fixed.held_mse < chosen.held_mse
    return (fixed if check["fell_back"] else chosen), check


def _teacher_error(ode, x_T, ref, own_teacher: bool) -> float | None:
    """RMSE between the teacher and one TEACHER_CHECK_FACTOR times looser: an estimate (from above, as the
    error falls with the tolerance) of the teacher's own error. None with a user's ``teacher=``."""
    if not own_teacher:
        return None
    loose = _teacher(ode, x_T, float(ode.schedule.sigma_max), _teacher_tol(x_T) * TEACHER_CHECK_FACTOR)
    return float((loose - ref).pow(2).mean().sqrt())


def _report(t: _Tuning, chosen: _Candidate, swept: list[_Candidate], teacher_rmse, check: dict) -> dict:
    """Stage 4: the fit and held-out errors beside the best fixed candidates and the teacher's own error."""
    plain = [c for c in swept if c.config.is_default and math.isfinite(c.held_mse)]
    base = min(plain, key=lambda c: c.held_mse) if plain else None
    base_fit = min(plain, key=lambda c: c.fit_mse) if plain else None

    def tail(c):  # RMSE of the worst TAIL_SHARE of the held-out x_T
        e = t.scorer.errors(c.config, c.sigmas, c.compensation)[t.held_idx]
        return math.sqrt(float(_tail_mse(e)))

    return {
        "fit_rmse": math.sqrt(chosen.fit_mse),
        "heldout_rmse": math.sqrt(chosen.held_mse),
        "fit_samples": len(t.fit_idx),
        "heldout_samples": len(t.held_idx),
        "best_fixed": None if base is None else base.summary(),
        "best_fixed_on_fit": None if base_fit is None else base_fit.summary(),
        "teacher_rmse": teacher_rmse,
        # the worst TAIL_SHARE of the held-out x_T: the recipe's against the best fixed solver+grid's
        "heldout_tail_rmse": {"recipe": tail(chosen), "best_fixed": None if base is None else tail(base)},
        "tail_weight": t.tail_weight,
        "fallback_to_fixed": check["fell_back"],
        # the tuned candidate against that fixed one, paired per held-out x_T (_held_out_check)
        "heldout_check": {k: v for k, v in check.items() if k != "fell_back"},
        "start": {"config": chosen.config.label(), "grid": chosen.grid},
        "sampler_runs": t.scorer.runs + t.fit_scorer.runs + (t.screen_scorer.runs if t.screen_scorer else 0),
        # the sweep's candidates, how many x_T the screening round ran them on, and how many it scored in full (the
        # candidates the held-out check and best_fixed consider)
        "sweep": dict(t.sweep_info),
        "schedule": repr(t.ode.schedule),
        "prediction": t.ode.prediction,
    }


# -- the entry points ----------------------------------------------------------------------------------------
def best_fixed(
    ode: DiffusionODE,
    x_T: torch.Tensor,
    nfe: int,
    *,
    teacher: torch.Tensor | None = None,
    solvers: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The best fixed solver+grid (default options, no AFS) at ``nfe`` model calls on ``x_T``:
    ``{"solver", "grid", "steps", "nfe", "rmse"}``, searched over every deterministic fixed-call
    solver x registered grid."""
    _check_inputs(ode, x_T, nfe)
    ref = _check_teacher(ode, x_T, teacher)
    ref = _teacher(ode, x_T, float(ode.schedule.sigma_max)) if ref is None else ref
    idx = torch.arange(x_T.shape[0])
    scorer = _Scorer(ode, x_T, ref)
    t = _Tuning(ode, nfe, idx, idx, scorer, scorer, False, None)
    swept = _sweep(t, [_Config(n, (), False) for n in _fixed_call_solvers(solvers)])
    best = min(swept, key=lambda c: (c.fit_mse, c.config.label(), c.grid), default=None)
    if best is None:
        return None
    return {
        "solver": best.config.solver,
        "grid": best.grid,
        "steps": len(best.sigmas) - 1,
        "nfe": best.calls,
        "rmse": math.sqrt(best.fit_mse),
    }


def _check_statistics(ode, statistics, names: list[str]):
    """``tune(statistics=...)`` before any model call: None, True, or a :class:`~diffsolve.ModelStatistics` of this
    ODE's schedule and prediction covering its sigma range; dpm-solver-v3 must be among ``names``."""
    from .statistics import ModelStatistics

    if statistics is None or statistics is False:
        return None
    if "dpm-solver-v3" not in names:
        raise ValueError(f"statistics are DPM-Solver-v3's: solvers= must include 'dpm-solver-v3' (got {names})")
    if statistics is True:
        return True
    if not isinstance(statistics, ModelStatistics):
        raise TypeError(
            f"statistics must be None, True (computed from the fit x_T) or diffsolve.ModelStatistics, "
            f"got {type(statistics).__name__}"
        )
    statistics.check(ode)
    statistics.check_range([float(ode.schedule.sigma_max), float(ode.schedule.sigma_min)])
    return statistics


def _statistics(t: _Tuning, x_T: torch.Tensor, statistics):
    """The checked ``statistics``; True: computed here from the fit x_T only (:func:`diffsolve.model_statistics`,
    default settings), so the held-out x_T stay unseen. The fit error of v3 on statistics from the very x_T it is
    scored on is optimistic (docs/tuning.md measures it): statistics from another draw of x_T are better."""
    from .statistics import model_statistics

    if statistics is True:
        return model_statistics(t.fit_scorer.ode, x_T[t.fit_idx], progress=t.progress)
    return statistics


def _recipe(ode, chosen: _Candidate, report: dict) -> Recipe:
    """The winner as a :class:`Recipe` (its compensation ratios and statistics in ``params``)."""
    params = {} if chosen.compensation is None else {"compensation": chosen.compensation}
    if chosen.config.statistics is not None:
        params["statistics"] = chosen.config.statistics
    if chosen.config.gaussian is not None:
        params["gaussian"] = chosen.config.gaussian
    return Recipe(
        solver=chosen.config.solver,
        options=chosen.config.recipe_options,
        sigmas=chosen.sigmas,
        afs=chosen.config.afs,
        nfe=int(chosen.calls),
        fingerprint=schedule_fingerprint(ode.schedule, ode.prediction),
        params=params,
        report=report,
        guidance=guidance_fingerprint(ode),
    )


def _split(ode, x, ref, nfe, n_fit, seed, progress, max_evals, tail_weight) -> _Tuning:
    """The tuning's state: ``x`` split at random (``seed``) into ``n_fit`` fit and the rest held out, a scorer over
    every x_T, one over the fit part, whose ODE is ``ode.rows(fit)`` (per-sample conditioning, e.g. labels,
    restricted to the same rows as x_T), and the sweep's screening scorer over the first :data:`SCREEN_SAMPLES`
    fit x_T (a random subset: the split is)."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(int(seed)))
    fit_idx, held_idx = perm[:n_fit].sort().values, perm[n_fit:].sort().values
    fit_scorer = _Scorer(ode.rows(fit_idx, x.shape[0]), x[fit_idx], ref[fit_idx])
    screen_idx = fit_idx[:SCREEN_SAMPLES]
    screen_scorer = _Scorer(ode.rows(screen_idx, x.shape[0]), x[screen_idx], ref[screen_idx])
    scorers = (_Scorer(ode, x, ref), fit_scorer)
    return _Tuning(
        ode, nfe, fit_idx, held_idx, *scorers, progress, max_evals, tail_weight=tail_weight, screen_scorer=screen_scorer
    )


def tune(
    ode: DiffusionODE,
    x_T: torch.Tensor,
    nfe: int = 5,
    *,
    solvers: Sequence[str] | None = None,
    teacher: torch.Tensor | None = None,
    fit_fraction: float = 0.5,
    seed: int = 0,
    progress: bool = True,
    refine: int = 3,
    max_evals: int | None = None,
    scalars: bool = False,
    per_step: bool = False,
    tail_weight: float = 0.0,
    statistics=None,
    learn: bool = False,
) -> Recipe:
    """Tune a sampling recipe for ``ode`` at ``nfe`` model calls; see the module docstring.

    Args:
        ode: the model, from :func:`diffsolve.wrap`; without ``teacher=``, one without a ``denoised_transform``
            (clipping is refused at once: see docs/tuning.md, "Clipping").
        x_T: start states (model space, at the schedule's sigma_max): a sample of the
            distribution the recipe will be used on; split into fit and held-out parts.
        nfe: the budget of model calls (the recipe uses at most this many; ``recipe.nfe`` is exact).
        solvers: registered deterministic fixed-call solvers to search (default: all of them).
        teacher: precomputed exact ends for ``x_T`` (model space, sigma = 0), same shape.
        fit_fraction: the share of ``x_T`` fitted on; the rest is held out.
        seed: the fit / held-out split.
        progress: show progress (tqdm).
        refine: how many of the best configurations get their grid refined.
        max_evals: Nelder-Mead evaluations per refined configuration (default 150 + 60 per free sigma).
        scalars: also fit DC-Solver's per-evaluation compensation ratios (opt-in; :func:`_fit_compensation`),
            stored as ``recipe.params["compensation"]``.
        per_step: also search USF's per-step choices (order, prediction, derivative estimate, corrector; solver
            ``usf``) from the best grid, then refine it once more (opt-in; :func:`_search_per_step`).
        tail_weight: in [0, 1): the weight of the worst x_T's error in the search's objective (:func:`_objective`;
            0, the default: the mean squared error).
        statistics: DPM-Solver-v3's model statistics (:func:`diffsolve.model_statistics`) to search dpm-solver-v3
            on, or True to compute them from the fit x_T (:func:`_statistics`); a v3 recipe carries them.
        learn: fit per-step multistep coefficients by gradient, solver ``learned-lms`` (opt-in; tuning_learn).

    Stages: :func:`_sweep`, :func:`_refine_grids`, :func:`_fit_compensation`, :func:`_held_out_check` (falls back to
    the sweep's best fixed candidate where better on held-out x_T), :func:`_report`. ValueError: see ``ode``.
    """
    t0 = time.perf_counter()
    n_fit = _check_inputs(ode, x_T, nfe, fit_fraction, tail_weight)
    names = _fixed_call_solvers(solvers)
    statistics = _check_statistics(ode, statistics, names)
    ref = _check_teacher(ode, x_T, teacher)
    calls0 = ode.nfe
    own_teacher = ref is None
    ref = _teacher(ode, x_T, float(ode.schedule.sigma_max)) if own_teacher else ref
    teacher_rmse = _teacher_error(ode, x_T, ref, own_teacher)
    teacher_calls = ode.nfe - calls0
    t = _split(ode, x_T.detach(), ref, nfe, n_fit, seed, progress, max_evals, float(tail_weight))
    swept = _sweep(t, _configs(names, _statistics(t, x_T, statistics)))
    if not any(math.isfinite(c.fit_mse) for c in swept):
        raise ValueError(f"no solver among {names} runs with at most {nfe} model calls on this model")
    chosen = _refine_grids(t, swept, refine)
    chosen, per_step_info = _search_per_step(t, chosen, swept) if per_step else (chosen, None)
    chosen = _fit_compensation(t, chosen) if scalars else chosen
    chosen, learn_info = learn_coefficients(t, chosen, TAIL_SHARE) if learn else (chosen, None)
    chosen, check = _held_out_check(t, chosen, swept, teacher_rmse)
    report = _report(t, chosen, swept, teacher_rmse, check)
    report.update(
        seed=int(seed),
        seconds=time.perf_counter() - t0,
        teacher_model_calls=int(teacher_calls),
        tuning_model_calls=int(ode.nfe - calls0),
        **{k: v for k, v in (("per_step", per_step_info), ("learn", learn_info)) if v is not None},
    )
    return _recipe(ode, chosen, report)
