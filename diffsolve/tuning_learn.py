"""Tune's opt-in stage ``learn=True``: the recipe's per-step multistep coefficients fitted by gradient.

Every solver that makes one model call per step and combines the model's eps linearly is a point of the
family of solver ``learned-lms`` (docs/math.md section 3.10, M1-M2): xbar_{i+1} = xbar_i + sum_{j<=i} c_ij eps_j.
The stage reads the table c of the tuned candidate (its solver, options, grid, AFS and compensation ratios) off
a probe run (:func:`multistep_coefficients`, M2), so it starts exactly at the tuned recipe, then fits c and the
interior sigmas (the noise levels the model is called at) to the teacher on the fit x_T by L-BFGS through the
model (M3: the parameterisation; autograd in c, a central difference in log sigma). AFS and the step count stay
the candidate's, so the recipe's nfe does too. Every
:data:`CHECK_EVERY` iterations the table is scored by the real solver on every x_T; the table with the lowest
held-out error is kept (early stopping) where it lowers both the fit and the held-out error of the start. Where the
candidate uses AFS and the Gaussian first step (docs/math.md section 3.11: the flow of the Gaussian with the mean
and covariance of the teacher's fit ends) fits better, the stage starts from that step instead.
Deterministic: a fixed start, full-batch L-BFGS, no random draws.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

import torch

from .gaussian_step import RANK, GaussianMoments
from .recipe_ode import afs_eps, run_parts
from .wrapper import DiffusionODE

__all__ = ["multistep_coefficients", "learn_coefficients", "LEARN_ITERATIONS", "CHECK_EVERY"]

_F64 = torch.float64
#: L-BFGS iterations of the stage (each: one or a few runs through the model and back on the fit x_T)
LEARN_ITERATIONS = 120
#: the table is scored on every x_T (held-out error for early stopping) after this many iterations
CHECK_EVERY = 10
#: L-BFGS's budget of runs (line-search evaluations) per iteration, on average over CHECK_EVERY iterations
MAX_EVALS_PER_ITERATION = 4
#: the central difference in log sigma of the gradient in the sigmas (M3)
FD_STEP = 1e-3
#: the probe's linearity check: relative deviation allowed (float64 rounding of a few dozen operations)
LINEARITY_RTOL = 1e-9


class _Probe:
    """A model (eps prediction) whose output at its k-th call is row k of ``values``, whatever its input;
    it records the inputs (model space)."""

    def __init__(self, values: torch.Tensor):
        self.values, self.inputs = values, []

    def __call__(self, x, t, **_):
        k = len(self.inputs)
        self.inputs.append(x.detach().clone())
        return self.values[k].reshape(x.shape).to(x.dtype)


def _probe_run(solver, options, sigmas, compensation, schedule, xbar0: torch.Tensor, values: torch.Tensor):
    """``(states, calls)``: xbar at each model call and the result, with the model answering ``values``."""
    probe = _Probe(values)
    ode = DiffusionODE(probe, schedule, prediction="eps")
    x0 = ode.from_xbar(xbar0, sigmas[0])
    out = run_parts(ode, x0, solver, options, sigmas, False, compensation, budget=values.shape[0], check_finite=False)
    states = [ode.to_xbar(x, s) for x, s in zip(probe.inputs, sigmas)] + [out]
    return states, len(probe.inputs)


def multistep_coefficients(solver, options, sigmas, *, compensation=None, schedule) -> list[float] | None:
    """The table c of M1 (``learned-lms``'s ``coefficients``: the lower triangle, row by row) of ``solver`` with
    ``options`` and DC-Solver's ``compensation`` ratios on the grid ``sigmas`` (docs/math.md M2), read off a
    probe run whose model answers the unit vectors e_0, e_1, ... from xbar_0 = 0; None where the solver is not a
    point of the family (not one model call per step, or not linear in the eps: a second probe with random
    outputs from a random xbar_0 must match the table to :data:`LINEARITY_RTOL`).

    AFS needs nothing here: it only says where eps_0 comes from (M2)."""
    n = len(sigmas) - 1
    try:
        states, calls = _probe_run(
            solver, options, sigmas, compensation, schedule, torch.zeros(1, n, dtype=_F64), torch.eye(n, dtype=_F64)
        )
    except Exception:  # noqa: BLE001 - the RecipeError of a budget overrun, or a solver that needs more
        return None
    if calls != n:
        return None
    a = torch.stack([s.reshape(n) for s in states[1:]])  # row i: xbar_{i+1} in the eps basis
    if a.triu(1).abs().max() > 0:  # a state read an eps not yet computed: not a causal one-call-per-step table
        return None
    c = a - torch.cat([torch.zeros(1, n, dtype=_F64), a[:-1]])
    g = torch.Generator().manual_seed(0)
    xbar0, vals = torch.randn(1, 3, generator=g, dtype=_F64), torch.randn(n, 3, generator=g, dtype=_F64)
    states, _ = _probe_run(solver, options, sigmas, compensation, schedule, xbar0, vals)
    want = xbar0 + a[-1] @ vals
    if (states[-1] - want).abs().max() > LINEARITY_RTOL * (1 + want.abs().max()):
        return None
    return [float(c[i, j]) for i in range(n) for j in range(i + 1)]


def _scales(sigmas: list[float]) -> torch.Tensor:
    """s_ij = sqrt(1 + sigma_{i+1}^2) for every entry of the table (M3): the size of xbar_{i+1}."""
    n = len(sigmas) - 1
    return torch.tensor([math.sqrt(1 + sigmas[i + 1] ** 2) for i in range(n) for _ in range(i + 1)], dtype=_F64)


class _Eps(torch.autograd.Function):
    """eps(xbar, sigma = exp(log_sigma)) of one model call, differentiable in both (M3): in xbar by autograd through
    the model (recomputed in the backward pass), in log sigma by a central difference of :data:`FD_STEP` (two more
    calls in the backward pass; the model's time input need not be differentiable)."""

    @staticmethod
    def forward(ctx, xbar, log_sigma, view, dtype):
        ctx.view, ctx.dtype, ctx.log_sigma = view, dtype, float(log_sigma)
        ctx.save_for_backward(xbar)
        with torch.no_grad():
            return view.eps(xbar.to(dtype), math.exp(ctx.log_sigma)).to(_F64)

    @staticmethod
    def backward(ctx, g):
        (xbar,) = ctx.saved_tensors
        view, dtype, ls = ctx.view, ctx.dtype, ctx.log_sigma
        gx = gs = None
        if ctx.needs_input_grad[0]:
            with torch.enable_grad():
                x = xbar.detach().requires_grad_(True)
                e = view.eps(x.to(dtype), math.exp(ls)).to(_F64)
                if not e.requires_grad:
                    raise ValueError(
                        "learn=True fits the coefficients by gradient through the model, but this model's output "
                        "does not depend differentiably on its input (it runs under torch.no_grad or leaves torch); "
                        "tune without learn= or pass a differentiable model"
                    )
                (gx,) = torch.autograd.grad(e, x, g)
        if ctx.needs_input_grad[1]:
            with torch.no_grad():
                up = view.eps(xbar.to(dtype), math.exp(ls + FD_STEP)).to(_F64)
                down = view.eps(xbar.to(dtype), math.exp(ls - FD_STEP)).to(_F64)
                gs = (g * (up - down)).sum() / (2 * FD_STEP)
        return gx, gs, None, None


def _run_table(xbar: torch.Tensor, steps: int, c, eps_of) -> torch.Tensor:
    """M1 from ``xbar`` over ``steps`` steps: eps_i = ``eps_of(i, xbar_i)``, xbar_{i+1} = xbar_i + sum_{j<=i} c_ij
    eps_j, with ``c`` the lower triangle row by row. Returns xbar after the last step."""
    eps, k = [], 0
    for i in range(steps):
        eps.append(eps_of(i, xbar))
        for j in range(i + 1):
            xbar = xbar + c[k] * eps[j]
            k += 1
    return xbar


def _sample(
    view: DiffusionODE, x: torch.Tensor, log_sigmas: torch.Tensor, sigmas0: list[float], afs: bool, c, gaussian
):
    """The run of M1 with the table ``c`` (float64, the lower triangle row by row) and the model called at
    exp(``log_sigmas``) (the interior sigmas; the first and the final 0 are ``sigmas0``'s), differentiable in both
    and through the model; the state in float64, the model in its own dtype; the first step the Gaussian one (G3)
    with ``gaussian`` moments. Returns the sample (model space)."""

    def eps_of(i, xbar):
        if i == 0 and afs and gaussian is not None:  # G3, differentiable in the second sigma
            return gaussian.first_eps(xbar, sigmas0[0], log_sigmas[0].exp() if len(log_sigmas) else sigmas0[1])
        if i == 0 and afs:  # the analytical first step (diffsolve.tuning, "AFS")
            return afs_eps(xbar, sigmas0[0])
        if i == 0:
            with torch.no_grad():
                return view.eps(xbar.to(x.dtype), sigmas0[0]).to(_F64)
        return _Eps.apply(xbar, log_sigmas[i - 1], view, x.dtype)

    return _run_table(view.to_xbar(x.to(_F64), sigmas0[0]), len(sigmas0) - 1, c, eps_of)


def _objective(e: torch.Tensor, tail_weight: float, tail_share: float) -> torch.Tensor:
    """:func:`diffsolve.tuning._objective` on a tensor, differentiable: (1 - w) log mean(e) + w log tail(e), the tail
    the mean of the worst ``tail_share`` of the x_T."""
    loss = (1 - tail_weight) * e.mean().log()
    if tail_weight:
        loss = loss + tail_weight * e.topk(max(1, math.ceil(tail_share * e.numel()))).values.mean().log()
    return loss


def _gaussian_moments(t, chosen, info: dict):
    """The Gaussian first step's moments (docs/math.md G2-G3) where the stage should also fit from it: the candidate
    uses AFS and its run with the Gaussian step in AFS's place has a lower fit objective; else None. The moments are
    those of the teacher's ends on the fit x_T (samples of the model's own ODE: no data, no held-out x_T)."""
    if not chosen.config.afs:
        return None
    moments = GaussianMoments.fit(t.fit_scorer.ref, RANK)
    e_gauss = t.fit_scorer.errors(replace(chosen.config, gaussian=moments), chosen.sigmas, chosen.compensation)
    use = t.score(e_gauss) < chosen.fit_score
    info["gaussian_first_step"] = {
        "fit_rmse_afs": math.sqrt(chosen.fit_mse),
        "fit_rmse_gaussian": math.sqrt(float(e_gauss.mean())),
        "fitted": bool(use),
        "kept": False,
    }
    return moments if use else None


def _fit_table(t, chosen, c0: list[float], gaussian, tail_share: float, start: tuple[float, float] | None = None):
    """One fit of M3 from the candidate's table ``c0`` (AFS's first step, or the Gaussian one with ``gaussian``):
    ``(best, iterations, checkpoints, start)``, ``best`` = (held-out mse, fit mse, config, grid) of the checkpoint
    with the lowest held-out error among those below ``start`` (the candidate's fit and held-out mse) on both parts,
    or None. Without ``start`` the fit's own first point is it: with AFS that is the candidate (M2)."""
    cfg, sig = chosen.config, chosen.sigmas
    c0_t, s = torch.tensor(c0, dtype=_F64), _scales(sig)
    delta = torch.zeros_like(c0_t, requires_grad=True)  # M3: c = c0 + s * delta, delta = 0 is the start
    log_sigmas = torch.tensor([math.log(v) for v in sig[1:-1]], dtype=_F64, requires_grad=True)
    fit = t.fit_scorer
    view = fit.ode.start_run(input_dtype=fit.x.dtype)
    ref = fit.ref.to(_F64)

    def scored() -> tuple[float, float, Any, list[float]]:
        table = tuple(float(v) for v in (c0_t + s * delta.detach()).tolist())
        conf = type(cfg)("learned-lms", (("coefficients", table),), cfg.afs, gaussian=gaussian)  # a tuning config
        grid = [sig[0]] + [math.exp(v) for v in log_sigmas.detach().tolist()] + [0.0]
        e = t.scorer.errors(conf, grid)
        return float(e[t.fit_idx].mean()), float(e[t.held_idx].mean()), conf, grid

    def closure():
        opt.zero_grad()
        out = _sample(view, fit.x, log_sigmas, sig, cfg.afs, c0_t + s * delta, gaussian)
        e = (out - ref).reshape(out.shape[0], -1).pow(2).mean(1)
        loss = _objective(e, t.tail_weight, tail_share)
        loss.backward()
        return loss

    start = scored()[:2] if start is None else start
    best = None
    opt = torch.optim.LBFGS(
        [delta, log_sigmas],
        lr=1.0,
        max_iter=CHECK_EVERY,
        max_eval=MAX_EVALS_PER_ITERATION * CHECK_EVERY,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    done, history = 0, []  # [iterations, fit RMSE, held-out RMSE] per checkpoint (None: infeasible)
    what = "learned coefficients" + (" (Gaussian first step)" if gaussian is not None else "")
    with t.bar(LEARN_ITERATIONS, what) as bar:
        while done < LEARN_ITERATIONS:
            opt.step(closure)
            ran = opt.state[delta].get("n_iter", 0) - done  # < CHECK_EVERY: converged, or out of evaluations
            done += ran
            fit_mse, held_mse, conf, grid = scored()
            history.append([done] + [math.sqrt(v) if math.isfinite(v) else None for v in (fit_mse, held_mse)])
            if fit_mse < start[0] and held_mse < start[1] and (best is None or held_mse < best[0]):
                best = (held_mse, fit_mse, conf, grid)
            if bar is not None:
                bar.update(ran)
            if ran < CHECK_EVERY or not (math.isfinite(fit_mse) and math.isfinite(held_mse)):
                break
    return best, done, history, start


def learn_coefficients(t, chosen, tail_share: float) -> tuple[Any, dict]:
    """Stage ``learn=True`` of :func:`diffsolve.tune` (see the module docstring): ``(candidate, report)``. ``t`` and
    ``chosen`` are the tuning's state and candidate (this module does not import :mod:`diffsolve.tuning`: no import
    circle); ``tail_share`` is its :data:`~diffsolve.tuning.TAIL_SHARE`."""
    t0 = time.perf_counter()
    ode = t.ode
    if ode.denoised_transform is not None:
        raise ValueError("learn=True: an ODE with a denoised_transform (clipping) is not a linear multistep run")
    cfg, sig = chosen.config, chosen.sigmas
    info: dict[str, Any] = {"start": cfg.label(), "kept": False, "fit_rmse_candidate": math.sqrt(chosen.fit_mse)}
    c0 = multistep_coefficients(cfg.solver, cfg.opts, sig, compensation=chosen.compensation, schedule=ode.schedule)
    if c0 is None:
        info["skipped"] = f"{cfg.label()} is not a linear multistep method with one model call per step"
        return chosen, info
    # (fit0, held0): the candidate's errors as the learned-lms table replays them; a kept table must beat both
    best, done, history, (fit0, held0) = _fit_table(t, chosen, c0, None, tail_share)
    moments = _gaussian_moments(t, chosen, info)
    if moments is not None:  # a second fit from the Gaussian first step; the lower held-out error of the two is kept
        best_g, done_g, history_g, _ = _fit_table(t, chosen, c0, moments, tail_share, (fit0, held0))
        info["gaussian_first_step"].update(iterations=done_g, checkpoints=history_g)
        if best_g is not None and (best is None or best_g[0] < best[0]):
            best = best_g
            info["gaussian_first_step"]["kept"] = True
    info.update(
        iterations=done,
        fit_rmse_before=math.sqrt(fit0),
        heldout_rmse_before=math.sqrt(held0),
        fit_rmse_after=math.sqrt(best[1] if best else fit0),
        heldout_rmse_after=math.sqrt(best[0] if best else held0),
        seconds=time.perf_counter() - t0,
        checkpoints=history,
    )
    if best is None:
        return chosen, info
    info["kept"] = True
    e = t.fit_scorer.errors(best[2], best[3])
    info["sigmas_before"] = sig
    out = replace(
        chosen, config=best[2], sigmas=best[3], compensation=None, fit_mse=float(e.mean()), fit_score=t.score(e)
    )
    return out, info
