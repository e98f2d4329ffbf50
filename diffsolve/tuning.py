"""Sampling recipes tuned to the user's model: the lowest error at a few model calls.

:func:`tune` searches, for one model, one start distribution and one budget of model calls
(NFE), the solver, its options, the free low-NFE rules and the timestep grid that bring a
few-step sample closest to the exact ODE solution (E29) from the same x_T. The result is a
:class:`Recipe`: a solver name and options, an explicit float64 grid ending at 0, whether
the analytical first step is used, the exact number of model calls, and a report of the
held-out error beside that of the best fixed grid.

What is searched
----------------
1. Every deterministic fixed-call solver of the registry (with the option variants of
   :data:`VARIANTS`: order, ``final_step`` = denoise / lower-order final, UniPC's variant,
   DEIS' variable) x every registered grid that accepts the schedule x AFS on/off. Each
   configuration gets the largest step count whose real number of model calls fits the
   budget (counted by a dry run with a zero model, so a 2-call solver gets half the steps).
   This is also the baseline: the best fixed solver+grid, scored on the held-out part.
2. Solver-aware timestep calibration: for the best configurations of step 1 (ranked on the
   fit part only), the interior sigmas are refined by Nelder-Mead on the log of the
   log-sigma gaps, ``sigma_k = sigma_max exp(-(g_1 + ... + g_k))``, ``g_j = exp(z_j)``,
   scoring the *global* error of the very solver that will run (its own states,
   multistep history included) against the teacher: the mean squared difference of the
   final samples (the OSS/LD3 objective, here derivative-free; GITS' Euler local cost is
   not used because it is blind to the solver). The first sigma stays sigma_max (x_T lives
   there) and the last is 0; the last non-zero sigma is free.
3. The recipe with the lowest *fit* error wins; its held-out error is then measured, so
   overfitting shows in ``recipe.report``.
4. Opt-in (``scalars=True``): DC-Solver's per-step compensation ratios on the winner (see
   :func:`tune`), neutral at their initial value 0, then one more grid refinement with them.

The teacher
-----------
The exact solution from each x_T: adaptive dopri5 in a float64 state
(:func:`diffsolve.analytic.reference_solution`, rtol = atol = 1e-10 for a float64 x_T,
1e-8 otherwise), computed once per (ODE, x_T) and cached in memory. Pass ``teacher=``
with precomputed ends (model space, sigma = 0) to skip it.

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

import hashlib
import inspect
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .recipe import AFSODE, Recipe, RecipeError, RecipeODE, run_parts, run_recipe, schedule_fingerprint  # noqa: F401
from .sampling import grid as make_grid
from .sampling import list_grids, list_solvers, make_solver
from .wrapper import DiffusionODE

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
]

_F64 = torch.float64
#: the largest NFE tune() searches (the Nelder-Mead refinement has NFE - 1 parameters)
MAX_NFE = 100

#: option variants searched per solver besides its defaults (the free low-NFE rules:
#: order, lower-order final / denoise final step, the extrapolation variable)
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "deis": [
        {"solver_order": o, "variable": v, "final_step": f}
        for o in (2, 3)
        for v in ("t", "log-sigma")
        for f in ("denoise", "lower-order")
    ],
    "dpmpp-2m": [{"solver_type": "heun"}],
    "dpm-solver-2m": [{"solver_type": "heun"}],
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


# -- counting calls ----------------------------------------------------------------------------------
def _zero_model(x, t, **_):
    return torch.zeros_like(x)


class _Counter:
    """Real model calls of (solver, options, afs, steps), by a dry run with a zero model."""

    def __init__(self, schedule, prediction):
        self.ode = DiffusionODE(_zero_model, schedule, prediction=prediction)
        self.schedule = schedule
        self._memo: dict = {}

    def calls(self, solver: str, options: dict, afs: bool, steps: int) -> int:
        key = (solver, tuple(sorted(options.items())), afs, steps)
        if key not in self._memo:
            hi, lo = self.schedule.sigma_max, self.schedule.sigma_min
            sig = [hi * (lo / hi) ** (k / max(steps - 1, 1)) for k in range(steps)] + [0.0]
            self.ode.nfe = 0
            run_parts(self.ode, torch.zeros(1, 1, dtype=_F64), solver, options, sig, afs, check_finite=False)
            self._memo[key] = self.ode.nfe
        return self._memo[key]

    def steps_for(self, solver: str, options: dict, afs: bool, nfe: int, calls_per_step: int):
        """``(steps, calls)``: the most steps whose calls fit ``nfe``, or None."""
        steps = max(1, (nfe + (1 if afs else 0)) // calls_per_step)
        try:
            calls = self.calls(solver, options, afs, steps)
            while calls > nfe and steps > 1:
                steps -= 1
                calls = self.calls(solver, options, afs, steps)
            if calls > nfe:
                return None
            for _ in range(3):  # solvers with fewer calls than steps x calls_per_step (the final step)
                more = self.calls(solver, options, afs, steps + 1)
                if more > nfe:
                    break
                steps, calls = steps + 1, more
        except (ValueError, TypeError, RuntimeError):
            return None
        return steps, calls


# -- configurations -------------------------------------------------------------------------------------
def _fixed_call_solvers(solvers: Sequence[str] | None) -> list[str]:
    """Deterministic solvers with a fixed number of calls per step (adaptive ones have rtol/atol)."""
    from .plugins.registry import get_registry

    reg = get_registry()
    if solvers is None:
        names = []
        for n in list_solvers():
            cls = reg.solver(n)
            params = inspect.signature(cls.__init__).parameters
            if cls.stochastic or "rtol" in params or getattr(cls, "calls_per_step", 1) < 1:
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
            raise ValueError(f"solvers: unknown solver {n!r}; known: {', '.join(list_solvers())}")
        cls = reg.solver(n)
        if cls.stochastic or make_solver(n).stochastic:
            raise ValueError(
                f"solvers: {n!r} is stochastic; tune() needs deterministic solvers (its error is "
                "measured against the exact ODE solution): e.g. ddim, dpmpp-2m, unipc, ipndm"
            )
        if "rtol" in inspect.signature(cls.__init__).parameters:
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

    @property
    def opts(self) -> dict:
        return dict(self.options)

    def label(self) -> str:
        o = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.solver}{'(' + o + ')' if o else ''}{'+afs' if self.afs else ''}"


def _configs(names: list[str]) -> list[_Config]:
    out = []
    for n in names:
        variants = [{}] + VARIANTS.get(n, [])
        for v in variants:
            for afs in (False, True):
                out.append(_Config(n, tuple(sorted(v.items())), afs))
    return out


# -- the teacher ----------------------------------------------------------------------------------------
_TEACHERS: dict[str, torch.Tensor] = {}


def _teacher(ode: DiffusionODE, x_T: torch.Tensor, sigma_max: float) -> torch.Tensor:
    from .analytic import reference_solution

    h = hashlib.sha1(x_T.detach().to("cpu", _F64).contiguous().numpy().tobytes())
    tol = 1e-10 if x_T.dtype == _F64 else 1e-8
    key = f"{id(ode.model)}|{schedule_fingerprint(ode.schedule, ode.prediction)}|{sigma_max!r}|{tol}|{h.hexdigest()}"
    if key not in _TEACHERS:
        # the model is called in its own dtype (a run view of the ODE); the state is float64
        view = ode.start_run(input_dtype=x_T.dtype)
        with torch.no_grad():
            ref = reference_solution(view, x_T.to(_F64), sigma_max, 0.0, rtol=tol, atol=tol)
        if len(_TEACHERS) >= 8:
            _TEACHERS.pop(next(iter(_TEACHERS)))
        _TEACHERS[key] = ref.detach().to("cpu", _F64)
    return _TEACHERS[key]


# -- scoring ----------------------------------------------------------------------------------------------
class _Scorer:
    def __init__(self, ode, x, ref):
        self.ode, self.x, self.ref = ode, x, ref
        self.runs = 0

    def errors(self, cfg: _Config, sigmas: list[float], compensation=None) -> torch.Tensor:
        """Per-sample mean squared error to the teacher (float64); inf where the run fails."""
        self.runs += 1
        try:
            with torch.no_grad():
                out = run_parts(
                    self.ode, self.x, cfg.solver, cfg.opts, sigmas, cfg.afs, compensation, check_finite=False
                )
        except (ValueError, RuntimeError, FloatingPointError, ZeroDivisionError):
            return torch.full((self.x.shape[0],), math.inf, dtype=_F64)
        e = (out.detach().to("cpu", _F64) - self.ref).reshape(self.x.shape[0], -1).pow(2).mean(1)
        return torch.where(torch.isfinite(e), e, torch.full_like(e, math.inf))


def _grids_for(schedule, steps: int) -> dict[str, list[float]]:
    out = {}
    for g in list_grids():
        try:
            sig = make_grid(g, schedule, steps)
        except (ValueError, TypeError):
            continue
        if abs(float(sig[0]) - schedule.sigma_max) > 1e-9 * schedule.sigma_max:
            continue  # a grid that does not start where x_T lives
        out[g] = [float(s) for s in sig.tolist()]
    return out


def _sigmas_from(z, sigma_max: float) -> list[float]:
    s, out = math.log(sigma_max), [sigma_max]
    for v in z:
        s -= math.exp(min(float(v), 50.0))
        out.append(math.exp(s))
    return out + [0.0]


def _z_from(sigmas: list[float]) -> list[float]:
    ls = [math.log(s) for s in sigmas[:-1]]
    return [math.log(max(ls[k] - ls[k + 1], 1e-12)) for k in range(len(ls) - 1)]


def _check_inputs(ode, x_T, nfe, fit_fraction=None):
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
    ref = teacher if teacher is not None else _teacher(ode, x_T, float(ode.schedule.sigma_max))
    counter = _Counter(ode.schedule, ode.prediction)
    scorer = _Scorer(ode, x_T, ref.detach().to("cpu", _F64))
    best = None
    for name in _fixed_call_solvers(solvers):
        cfg = _Config(name, (), False)
        fit = counter.steps_for(name, {}, False, nfe, make_solver(name).calls_per_step)
        if fit is None:
            continue
        for g, sig in _grids_for(ode.schedule, fit[0]).items():
            rmse = float(scorer.errors(cfg, sig).mean().sqrt())
            if best is None or rmse < best["rmse"]:
                best = {"solver": name, "grid": g, "steps": fit[0], "nfe": fit[1], "rmse": rmse}
    return best


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
) -> Recipe:
    """Tune a sampling recipe for ``ode`` at ``nfe`` model calls; see the module docstring.

    Args:
        ode: the model, from :func:`diffsolve.wrap`.
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
        scalars: also fit the per-evaluation compensation ratios of DC-Solver (Zhao et al., ECCV 2024)
            on the chosen solver and grid, then refine the grid once more with them (opt-in).
            DC-Solver replaces a model output by a Lagrange interpolation of the recent outputs
            evaluated at a shifted time rho t_k + (1 - rho) t_{k-1}; with the two-point (linear)
            interpolation used here this is D_k + c_k (D_k - D_{k-1}), c_k = rho_k - 1, applied to
            every model evaluation of every solver (:class:`RecipeODE`). At c = 0 the run equals
            the base solver exactly (its order kept); a fitted c changes the O(h) term, so it is
            kept only where it lowers the fit error. Stored as ``recipe.params["compensation"]``.
    """
    from scipy.optimize import minimize

    t0 = time.perf_counter()
    n_fit = _check_inputs(ode, x_T, nfe, fit_fraction)
    names = _fixed_call_solvers(solvers)
    sigma_max = float(ode.schedule.sigma_max)
    calls0 = ode.nfe
    if teacher is None:
        ref = _teacher(ode, x_T, sigma_max)
    else:
        ref = torch.as_tensor(teacher)
        if ref.shape != x_T.shape:
            raise ValueError(f"teacher must have x_T's shape {tuple(x_T.shape)}, got {tuple(ref.shape)}")
        if not torch.isfinite(ref).all():
            raise ValueError("teacher contains NaN or inf")
        ref = ref.detach().to(_F64).cpu()
    teacher_calls = ode.nfe - calls0
    perm = torch.randperm(x_T.shape[0], generator=torch.Generator().manual_seed(int(seed)))
    fit_idx, held_idx = perm[:n_fit].sort().values, perm[n_fit:].sort().values
    x_all = x_T.detach()
    scorer = _Scorer(ode, x_all, ref)
    counter = _Counter(ode.schedule, ode.prediction)

    # 1. every configuration on every registered grid: the baseline and the starting points
    configs = _configs(names)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(configs), desc=f"tune NFE {nfe}: fixed grids", unit="config")
    rows = []  # (fit mse, held mse, cfg, grid name, sigmas, calls)
    grid_cache: dict[int, dict[str, list[float]]] = {}
    for cfg in configs:
        cps = make_solver(cfg.solver).calls_per_step
        fit = counter.steps_for(cfg.solver, cfg.opts, cfg.afs, nfe, cps)
        if fit is not None:
            steps, calls = fit
            if steps not in grid_cache:
                grid_cache[steps] = _grids_for(ode.schedule, steps)
            for g, sig in grid_cache[steps].items():
                e = scorer.errors(cfg, sig)
                rows.append((float(e[fit_idx].mean()), float(e[held_idx].mean()), cfg, g, sig, calls))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not rows:
        raise ValueError(f"no solver among {names} runs with at most {nfe} model calls")
    base_rows = [r for r in rows if not r[2].options and not r[2].afs and math.isfinite(r[1])]
    base = min(base_rows, key=lambda r: r[1]) if base_rows else None  # best on the held-out part: the bar
    base_fit = min(base_rows, key=lambda r: r[0]) if base_rows else None

    # 2. refine the grids of the best configurations (ranked on the fit part)
    best_per_cfg: dict[_Config, tuple] = {}
    for r in sorted(rows, key=lambda r: (r[0], r[2].label(), r[3])):
        if math.isfinite(r[0]) and r[2] not in best_per_cfg:
            best_per_cfg[r[2]] = r
    ranked = list(best_per_cfg.values())[: max(1, int(refine))]
    x_fit, ref_fit = x_all[fit_idx], ref[fit_idx]
    fit_scorer = _Scorer(ode, x_fit, ref_fit)
    results = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(ranked), desc=f"tune NFE {nfe}: grid refinement", unit="config")

    def refine_sigmas(cfg, sig0, comp=None, budget=None):
        if len(sig0) <= 2:
            return float(fit_scorer.errors(cfg, sig0, comp).mean()), sig0

        def f(z):
            return _log_mse(fit_scorer.errors(cfg, _sigmas_from(z, sigma_max), comp))

        z0 = _z_from(sig0)
        res = minimize(
            f,
            z0,
            method="Nelder-Mead",
            options={
                "maxfev": budget or max_evals or (150 + 60 * len(z0)),
                "xatol": 1e-4,
                "fatol": 1e-6,
                "adaptive": len(z0) > 3,
                "initial_simplex": _simplex(z0, 0.3),
            },
        )
        sig = _sigmas_from(res.x, sigma_max) if res.fun <= f(z0) else sig0
        return float(fit_scorer.errors(cfg, sig, comp).mean()), sig

    for r in ranked:
        cfg = r[2]
        mse, sig = refine_sigmas(cfg, r[4])
        results.append((mse, cfg, sig, r[5]))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    fit_mse, cfg, sig, calls = min(results, key=lambda t: (t[0], t[1].label()))
    comp = None
    if scalars:
        # 3. (opt-in) per-evaluation compensation ratios, then the grid again with them (one alternation)
        n_c = calls + (1 if cfg.afs else 0) - 1
        if n_c >= 1:

            def g(c):
                return _log_mse(fit_scorer.errors(cfg, sig, list(c)))

            c0 = [0.0] * n_c
            res = minimize(
                g,
                c0,
                method="Nelder-Mead",
                options={
                    "maxfev": max_evals or (100 + 40 * n_c),
                    "xatol": 1e-4,
                    "fatol": 1e-6,
                    "adaptive": n_c > 3,
                    "initial_simplex": _simplex(c0, 0.1),
                },
            )
            if res.fun < g(c0):
                c = [float(v) for v in res.x]
                mse_c, sig_c = refine_sigmas(cfg, sig, c, budget=max_evals or (60 + 30 * (len(sig) - 2)))
                if mse_c < fit_mse:
                    fit_mse, sig, comp = mse_c, sig_c, c
    e_all = scorer.errors(cfg, sig, comp)
    held_rmse = float(e_all[held_idx].mean().sqrt())
    report = {
        "fit_rmse": math.sqrt(fit_mse),
        "heldout_rmse": held_rmse,
        "fit_samples": int(n_fit),
        "heldout_samples": int(x_T.shape[0] - n_fit),
        "seed": int(seed),
        "best_fixed": None
        if base is None
        else {
            "solver": base[2].solver,
            "grid": base[3],
            "nfe": base[5],
            "steps": len(base[4]) - 1,
            "heldout_rmse": math.sqrt(base[1]),
            "fit_rmse": math.sqrt(base[0]),
        },
        "best_fixed_on_fit": None
        if base_fit is None
        else {
            "solver": base_fit[2].solver,
            "grid": base_fit[3],
            "fit_rmse": math.sqrt(base_fit[0]),
            "heldout_rmse": math.sqrt(base_fit[1]),
        },
        "start": {"config": cfg.label(), "grid": next((r[3] for r in ranked if r[2] == cfg), None)},
        "tuning_model_calls": int(ode.nfe - calls0),
        "teacher_model_calls": int(teacher_calls),
        "sampler_runs": scorer.runs + fit_scorer.runs,
        "seconds": time.perf_counter() - t0,
        "schedule": repr(ode.schedule),
        "prediction": ode.prediction,
    }
    params = {"compensation": comp} if comp is not None else {}
    return Recipe(
        solver=cfg.solver,
        options=cfg.opts,
        sigmas=sig,
        afs=cfg.afs,
        nfe=int(calls),
        fingerprint=schedule_fingerprint(ode.schedule, ode.prediction),
        params=params,
        report=report,
    )


def _log_mse(e: torch.Tensor) -> float:
    mse = float(e.mean())
    if not math.isfinite(mse):
        return 1e3
    return math.log(mse) if mse > 0 else -1e3


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
