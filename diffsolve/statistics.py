"""Empirical model statistics for DPM-Solver-v3 (Zheng et al. 2023): ``l``, ``s``, ``b`` on a logSNR grid.

docs/math.md section 3.7 (DPM-Solver-v3) derives everything here; in short, with lambda = -log sigma (E7),
xbar the sigma-form state and D the denoised estimate:

* f = (1 - l) xbar - D is the part of the ODE d xbar / d lambda = D - xbar (V1) left after taking out
  the linear term -l xbar; l = 1 - E[diag dD/dxbar] makes f as flat in xbar as a diagonal can (V4);
* s, b: the least-squares fit df/dlambda ~ s f + b along the ODE's trajectories (V5); after them
  g = exp(-int s) f - int exp(-int s) b varies slowly in lambda, and the solver interpolates g (V3).

:func:`model_statistics` estimates them from a model and start states; :class:`ModelStatistics` holds
them (float64, one value per dimension of a sample), saves and loads them (JSON or ``.pt``),
fingerprinted to the schedule and prediction type like a recipe, and gives a solver the float64
coefficients of a step between any two lambdas (:meth:`ModelStatistics.step_coefficients`).
l = 1, s = b = 0 (:meth:`ModelStatistics.neutral`) reduce the step to DPM-Solver++ (X2, X3).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .recipe_ode import schedule_fingerprint
from .solvers._exponential import moments, poly_weights
from .wrapper import DiffusionODE

__all__ = ["ModelStatistics", "StatisticsError", "model_statistics", "DERIVATIVES"]

FORMAT = "diffsolve-model-statistics"
VERSION = 1
_F64 = torch.float64
#: how the total derivative df/dlambda along the ODE is formed (:func:`model_statistics`)
DERIVATIVES = ("jvp", "finite-difference")
#: Gauss-Legendre nodes per piece of a step's integrals (pieces end at statistics grid points, where
#: the integrands are smooth: l, s, b are piecewise linear in lambda)
_GL_NODES = 12
_GL_X, _GL_W = (torch.tensor(v, dtype=_F64) for v in np.polynomial.legendre.leggauss(_GL_NODES))


class StatisticsError(ValueError):
    """Statistics that cannot be used here: another schedule or prediction, a grid outside their
    lambda range, or a damaged or foreign file."""


class ModelStatistics:
    """DPM-Solver-v3's empirical model statistics (docs/math.md section 3.7).

    Args:
        lambdas: the logSNR grid lambda_0 < ... < lambda_N (lambda = -log sigma, E7), float64.
        l, s, b: shape ``(N + 1, *sample_shape)`` (or ``(N + 1,)``: one value for every dimension).
        fingerprint: :func:`diffsolve.recipe.schedule_fingerprint` of the schedule and prediction they
            were computed on (None: usable with any ODE, as the neutral statistics are).
        info: what was measured (samples, model calls, JVPs, seconds), kept in the file.
    """

    def __init__(self, lambdas, l, s, b, fingerprint: str | None = None, info: dict[str, Any] | None = None):  # noqa: E741
        lam = torch.as_tensor(lambdas, dtype=_F64).flatten()
        if lam.numel() < 2 or not bool(torch.all(lam[1:] > lam[:-1])) or not bool(torch.isfinite(lam).all()):
            raise StatisticsError("lambdas must be a finite, strictly increasing grid of at least 2 points")
        vals = [torch.as_tensor(v, dtype=_F64) for v in (l, s, b)]
        for name, v in zip("lsb", vals):
            if v.shape[:1] != lam.shape or v.shape != vals[0].shape:
                raise StatisticsError(
                    f"statistic {name!r} has shape {tuple(v.shape)}; l, s and b must all have shape "
                    f"({lam.numel()}, *sample_shape), one row per lambda"
                )
            if not bool(torch.isfinite(v).all()):
                raise StatisticsError(f"statistic {name!r} has non-finite values")
        self.lambdas = lam
        self.l, self.s, self.b = vals
        self.fingerprint = fingerprint
        self.info = dict(info or {})
        # cumulative integrals from lambda_0 (trapezoid rule: exact for piecewise linear l, s)
        self._L = self._cumulative(self.l)
        self._S = self._cumulative(self.s)
        # B(lambda) = int_{lambda_0}^{lambda} exp(-S_u) b_u du at the grid points (Gauss-Legendre per interval)
        self._B = torch.cat(
            [torch.zeros_like(self.l[:1]), torch.cumsum(self._b_integral(self.lambdas[:-1], self.lambdas[1:]), 0)]
        )

    @classmethod
    def neutral(cls, lambda_min: float, lambda_max: float) -> ModelStatistics:
        """l = 1, s = b = 0 on [lambda_min, lambda_max]: DPM-Solver-v3 is then DPM-Solver++ (X2, X3)."""
        lam = torch.tensor([float(lambda_min), float(lambda_max)], dtype=_F64)
        return cls(lam, torch.ones(2, dtype=_F64), torch.zeros(2, dtype=_F64), torch.zeros(2, dtype=_F64))

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.l.shape[1:])

    def __repr__(self) -> str:
        lo, hi = float(self.lambdas[0]), float(self.lambdas[-1])
        return (
            f"ModelStatistics({self.lambdas.numel()} lambdas in [{lo:.4g}, {hi:.4g}], sample shape "
            f"{self.sample_shape}, fingerprint={self.fingerprint!r})"
        )

    # -- checks ------------------------------------------------------------------------------
    def check(self, ode: DiffusionODE) -> None:
        """Raise :class:`StatisticsError` unless ``ode`` has the schedule and prediction these were computed on."""
        if self.fingerprint is None:
            return
        fp = schedule_fingerprint(ode.schedule, ode.prediction)
        if fp != self.fingerprint:
            raise StatisticsError(
                f"these statistics were computed for another schedule or prediction type (fingerprint "
                f"{self.fingerprint}); this ODE has {ode.schedule!r}, prediction {ode.prediction!r} "
                f"(fingerprint {fp}): compute them for it with diffsolve.model_statistics(ode, x_T)"
            )

    def check_range(self, sigmas: Sequence[float]) -> None:
        """Every positive sigma of a grid must lie in the statistics' lambda range, up to the rounding the schedule's
        own range check tolerates (a relative :data:`diffsolve.validation.RANGE_RTOL` in sigma, the same in
        lambda = -log sigma; l, s, b are held at their end values over that sliver): statistics computed over the
        schedule's range serve every grid the schedule accepts."""
        from .validation import RANGE_RTOL

        lo, hi = float(self.lambdas[0]), float(self.lambdas[-1])
        tol = RANGE_RTOL
        for sigma in sigmas:
            if 0 < sigma < math.inf and not lo - tol <= -math.log(sigma) <= hi + tol:
                raise StatisticsError(
                    f"the grid's sigma = {sigma:.6g} lies outside the statistics' range sigma in "
                    f"[{math.exp(-hi):.6g}, {math.exp(-lo):.6g}]: compute statistics over the grid's range"
                )

    # -- interpolation (piecewise linear in lambda) ----------------------------------------------
    def _cumulative(self, v: torch.Tensor) -> torch.Tensor:
        dlam = (self.lambdas[1:] - self.lambdas[:-1]).reshape(-1, *[1] * (v.dim() - 1))
        steps = 0.5 * dlam * (v[1:] + v[:-1])
        return torch.cat([torch.zeros_like(v[:1]), torch.cumsum(steps, 0)])

    def _at(self, v: torch.Tensor, cum: torch.Tensor | None, lam: torch.Tensor):
        """Values of the piecewise-linear v at lambdas ``lam`` (1-D), and its integral from lambda_0."""
        grid = self.lambdas
        lam = lam.clamp(float(grid[0]), float(grid[-1]))
        k = (torch.searchsorted(grid, lam, right=True) - 1).clamp(0, grid.numel() - 2)
        w = ((lam - grid[k]) / (grid[k + 1] - grid[k])).reshape(-1, *[1] * (v.dim() - 1))
        val = (1 - w) * v[k] + w * v[k + 1]
        if cum is None:
            return val
        d = (lam - grid[k]).reshape(w.shape)
        return val, cum[k] + 0.5 * d * (v[k] + val)

    def value(self, name: str, lam: float) -> torch.Tensor:
        """One statistic (``"l"``, ``"s"`` or ``"b"``) at ``lam``, float64, shape ``sample_shape``."""
        return self._at(getattr(self, name), None, torch.tensor([float(lam)], dtype=_F64))[0]

    def _quadrature(self, a: float, b: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gauss-Legendre nodes and weights for integrals over [a, b] (or [b, a], weights negative),
        one panel per statistics interval, so that every integrand is smooth on each panel."""
        lo, hi = min(a, b), max(a, b)
        inner = self.lambdas[(self.lambdas > lo) & (self.lambdas < hi)].tolist()
        ends = [lo, *inner, hi]
        nodes, weights = [], []
        for p, q in zip(ends[:-1], ends[1:]):
            nodes.append(0.5 * (q - p) * _GL_X + 0.5 * (q + p))
            weights.append(0.5 * (q - p) * _GL_W)
        sign = 1.0 if b >= a else -1.0
        return torch.cat(nodes), sign * torch.cat(weights)

    def _b_integral(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """int_a^b exp(-S_u) b_u du for each pair (a_m, b_m) inside one statistics interval: shape (M, *sample_shape)."""
        u = 0.5 * (b - a)[:, None] * _GL_X[None, :] + 0.5 * (b + a)[:, None]  # (M, nodes)
        flat = u.reshape(-1)
        S_u = self._at(self.s, self._S, flat)[1]
        vals = (torch.exp(-S_u) * self._at(self.b, None, flat)).reshape(*u.shape, *self.sample_shape)
        return torch.einsum("mq,mq...->m...", 0.5 * (b - a)[:, None] * _GL_W[None, :], vals)

    def _B_at(self, lam: torch.Tensor) -> torch.Tensor:
        """B(lam) = int_{lambda_0}^{lam} exp(-S_u) b_u du at each of ``lam`` (1-D)."""
        grid = self.lambdas
        lam = lam.clamp(float(grid[0]), float(grid[-1]))
        k = (torch.searchsorted(grid, lam, right=True) - 1).clamp(0, grid.numel() - 2)
        return self._B[k] + self._b_integral(grid[k], lam)

    def _beta(self, lam_s: float, lam: torch.Tensor) -> torch.Tensor:
        """beta(lam) = int_{lam_s}^{lam} exp(-(S_r - S_s)) b_r dr (V3) at each of ``lam`` (1-D)."""
        ends = torch.cat([torch.tensor([lam_s], dtype=_F64), lam])
        B = self._B_at(ends)
        S_s = self._at(self.s, self._S, ends[:1])[1][0]
        return torch.exp(S_s) * (B[1:] - B[:1])

    # -- a step's coefficients -----------------------------------------------------------------------
    def step_coefficients(
        self, lam_s: float, lam_t: float, lam_nodes: Sequence[float], pseudo: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """``(a, W, c)`` of the step lambda_s -> lambda_t (V6): xbar_t = a xbar_s - sum_j W_j f_j + c,
        with f_j = (1 - l) xbar - D at ``lam_nodes[j]`` (``lam_nodes[0]`` = lam_s). Float64 tensors of
        shape ``sample_shape``. ``pseudo``: DPM-Solver-v3's pseudo-order derivatives (V7)."""
        h = lam_t - lam_s
        c = [(lj - lam_s) / h for lj in lam_nodes]
        n = len(c)
        nodes, w = self._quadrature(lam_s, lam_t)
        ends = torch.tensor([lam_s, lam_t], dtype=_F64)
        (_, L_e), (_, S_e) = self._at(self.l, self._L, ends), self._at(self.s, self._S, ends)
        _, L_n = self._at(self.l, self._L, nodes)
        _, S_n = self._at(self.s, self._S, nodes)
        kernel = w.reshape(-1, *[1] * len(self.sample_shape)) * torch.exp(L_n - L_e[1] + S_n - S_e[0])
        u = ((nodes - lam_s) / h).reshape(kernel.shape[:1] + (1,) * len(self.sample_shape))
        moments = [torch.sum(kernel * u**k, 0) for k in range(n)]
        # b's part: int K(lam) beta(lam) dlam, beta(lam) on each node by its own quadrature
        b_part = torch.sum(kernel * self._beta(lam_s, nodes), 0)
        a = torch.exp(L_e[0] - L_e[1])
        E = derivative_matrix(c, pseudo)
        W, const = [], -b_part
        beta_nodes = self._beta(lam_s, torch.tensor([float(v) for v in lam_nodes], dtype=_F64))
        for j, lj in enumerate(lam_nodes):
            wj = sum(E[k][j] * moments[k] for k in range(n))
            S_j = self._at(self.s, self._S, torch.tensor([float(lj)], dtype=_F64))[1][0]
            W.append(wj * torch.exp(S_e[0] - S_j))
            const = const + wj * beta_nodes[j]
        return a, W, const

    # -- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "fingerprint": self.fingerprint,
            "lambdas": self.lambdas.tolist(),
            "l": self.l.tolist(),
            "s": self.s.tolist(),
            "b": self.b.tolist(),
            "info": dict(self.info),
        }

    def save(self, path: str | Path) -> Path:
        """Write JSON (floats exact: Python's repr round-trips float64), or a torch file if ``path`` ends in ``.pt``."""
        path = Path(path)
        d = self.to_dict()
        if path.suffix == ".pt":
            buf = io.BytesIO()
            torch.save({**d, "l": self.l, "s": self.s, "b": self.b, "lambdas": self.lambdas}, buf)
            path.write_bytes(buf.getvalue())
        else:
            path.write_text(json.dumps(d, allow_nan=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "statistics") -> ModelStatistics:
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise StatisticsError(f"{source} is not diffsolve model statistics (no 'format': {FORMAT!r} entry)")
        if d.get("version") != VERSION:
            raise StatisticsError(f"{source} has version {d.get('version')!r}; this diffsolve reads {VERSION}")
        if not (d.get("fingerprint") is None or isinstance(d.get("fingerprint"), str)):
            raise StatisticsError(f"{source} is damaged: 'fingerprint' must be a string or null")
        try:
            return cls(d["lambdas"], d["l"], d["s"], d["b"], d["fingerprint"], dict(d.get("info") or {}))
        except StatisticsError as exc:
            raise StatisticsError(f"{source} is damaged: {exc}") from None
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise StatisticsError(f"{source} is damaged: {type(exc).__name__}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> ModelStatistics:
        """Read statistics written by :meth:`save`; a damaged or foreign file raises :class:`StatisticsError`."""
        path = Path(path)
        source = f"statistics file {str(path)!r}"
        if path.suffix == ".pt":
            try:
                d = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises many types for a foreign or truncated file
                raise StatisticsError(f"{source} is corrupt (not a torch file: {exc})") from None
        else:
            try:
                d = json.loads(path.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise StatisticsError(f"{source} is corrupt (not valid JSON: {exc})") from None
        return cls.from_dict(d, source=source)


def derivative_matrix(c: Sequence[float], pseudo: bool) -> list[list[float]]:
    """E[k][j]: h^k g^(k)(lambda_s) / k! ~ sum_j E[k][j] g_j from values g_j at nodes c_j (units of h, c_0 = 0).

    ``pseudo=False``: the Taylor coefficients of the interpolating polynomial (so sum_k M_k E[k] are the
    weights of (X3)); ``pseudo=True``: the Newton divided differences g[c_0..c_k] (V7)."""
    n = len(c)
    if not pseudo:
        return [poly_weights(c, [1.0 if q == k else 0.0 for q in range(n)]) for k in range(n)]
    out = []
    for k in range(n):
        row = [0.0] * n
        for j in range(k + 1):
            row[j] = 1.0 / math.prod(c[j] - c[m] for m in range(k + 1) if m != j)
        out.append(row)
    return out


# -- estimating the statistics from a model ------------------------------------------------------
def model_statistics(
    ode: DiffusionODE,
    x_T: torch.Tensor,
    *,
    points: int = 100,
    sigma_max: float | None = None,
    sigma_min: float | None = None,
    delta: float = 1e-2,
    batch_size: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> ModelStatistics:
    """DPM-Solver-v3's statistics l, s, b of ``ode``'s model (docs/math.md section 3.7, V4 and V5).

    The ODE is integrated from every start state in ``x_T`` (model space at ``sigma_max``, as for
    :func:`diffsolve.sample`) over ``points + 1`` lambdas uniform in [-log sigma_max, -log sigma_min]
    (default: the schedule's range) by DPM-Solver++(2M) steps on that grid; at each lambda, from the
    model's D at the state and four more calls (central finite differences of step ``delta``):

    * diag dD/dxbar by a Rademacher probe z: z * (D(xbar + e z) - D(xbar - e z)) / (2 e), e = delta sqrt(1 + sigma^2),
      so l = 1 - E[diag dD/dxbar] (V4);
    * dD/dlambda along the ODE: (D(xbar + delta v, lambda + delta) - D(xbar - delta v, lambda - delta)) / (2 delta),
      v = D - xbar = d xbar / d lambda (V1), which gives df/dlambda and the fit of s, b (V5).

    Finite differences replace the paper's JVPs: no autograd through the model, and a model that
    is not differentiable works too (cost: 5 model calls per lambda and batch instead of 1 call and 2 JVPs).

    Args:
        ode: from :func:`diffsolve.wrap`.
        x_T: start states (a few hundred to thousands); their batch is split into ``batch_size`` chunks.
        points: intervals of the lambda grid.
        delta: the finite-difference step (relative; see above).
        seed: seed of the Rademacher probes.
        progress: show a tqdm bar over the lambdas.

    Returns:
        :class:`ModelStatistics`, fingerprinted to the schedule and prediction type; ``info`` states the
        samples, points, model calls and seconds it took.
    """
    import time

    from .validation import check_sigma_range, check_state

    if not isinstance(ode, DiffusionODE):
        raise TypeError(f"ode must be the DiffusionODE from diffsolve.wrap(...), got {type(ode).__name__}")
    check_state(x_T, "x_T")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an integer >= 2, got {points!r}")
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"delta must be a number in (0, 1), got {delta!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
    s_max = float(ode.schedule.sigma_max if sigma_max is None else sigma_max)
    s_min = float(ode.schedule.sigma_min if sigma_min is None else sigma_min)
    if not 0 < s_min < s_max < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={s_min}, sigma_max={s_max}")
    check_sigma_range(ode, [s_max, s_min], allow_out_of_range=False, name="sigma_max / sigma_min")
    lambdas = torch.linspace(-math.log(s_max), -math.log(s_min), points + 1, dtype=_F64)
    lam = lambdas.tolist()
    shape = tuple(x_T.shape[1:])
    # the sums of V5's regression per lambda: x, d, dp, xx, xd, dd, x dp, d dp; and z * J z
    sums = torch.zeros(9, points + 1, *shape, dtype=_F64)
    n_total, calls0, t0 = x_T.shape[0], ode.nfe, time.perf_counter()
    chunks = list(torch.split(x_T, batch_size or n_total))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(chunks) * (points + 1), desc="model statistics", unit="lambda")
    gen = torch.Generator().manual_seed(int(seed))
    run = ode.start_run(sigmas=[math.exp(-v) for v in lam])
    try:
        with torch.no_grad():
            for chunk in chunks:
                xbar = run.to_xbar(chunk, s_max)
                prev = None
                for j, lj in enumerate(lam):
                    sigma = math.exp(-lj)
                    d = run.predict(xbar, sigma)[0]
                    z = (torch.randint(0, 2, xbar.shape, generator=gen, dtype=_F64) * 2 - 1).to(xbar)
                    e = delta * math.sqrt(1 + sigma * sigma)
                    jz = (run.predict(xbar + e * z, sigma)[0] - run.predict(xbar - e * z, sigma)[0]) / (2 * e)
                    v = d - xbar
                    # central differences inside the range, one-sided (second order) at its two ends
                    k1, k2 = (-1, 1) if 0 < j < points else ((1, 2) if j == 0 else (-1, -2))
                    d1, d2 = (run.predict(xbar + (k * delta) * v, math.exp(-lj - k * delta))[0] for k in (k1, k2))
                    if 0 < j < points:
                        dp = (d2 - d1) / (2 * delta)
                    else:
                        dp = (4 * d1 - 3 * d - d2) / (2 * delta * k1)
                    x64, d64, dp64 = (t.to(_F64).cpu() for t in (xbar, d, dp))
                    for k, term in enumerate(
                        (
                            x64,
                            d64,
                            dp64,
                            x64 * x64,
                            x64 * d64,
                            d64 * d64,
                            x64 * dp64,
                            d64 * dp64,
                            (z * jz).to(_F64).cpu(),
                        )
                    ):
                        sums[k, j] += term.sum(0)
                    if j < points:  # DPM-Solver++(2M) step to the next lambda (X2, X3; Taylor weights)
                        h = lam[j + 1] - lj
                        if prev is None:
                            w = poly_weights([0.0], moments(h, 1, "data"))
                            xbar = math.exp(-h) * xbar + w[0] * d
                        else:
                            w = poly_weights([0.0, (lam[j - 1] - lj) / h], moments(h, 2, "data"))
                            xbar = math.exp(-h) * xbar + w[0] * d + w[1] * prev
                        prev = d
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    l, s, b = _fit(sums / n_total, lambdas)  # noqa: E741 (the paper's names)
    info = {
        "samples": n_total,
        "points": points,
        "sigma_range": [s_min, s_max],
        "model_calls": ode.nfe - calls0,
        "model_calls_per_lambda_and_batch": 5,
        "jvps": 0,
        "derivatives": f"central finite differences, delta={delta}",
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return ModelStatistics(lambdas, l, s, b, schedule_fingerprint(ode.schedule, ode.prediction), info)


def _fit(mean: torch.Tensor, lambdas: torch.Tensor):
    """l (V4), then s, b by least squares (V5), from the per-lambda means of the sums above."""
    x, d, dp, xx, xd, dd, xdp, ddp, zjz = mean
    l = 1.0 - zjz  # noqa: E741
    lp = torch.gradient(l, spacing=(lambdas,), dim=0, edge_order=2)[0]
    # f = al x - d, f' = ga x + et d - dp (V2, V5): al = 1 - l, ga = -l' - (1 - l), et = 1 - l
    al, ga, et = 1.0 - l, -lp - (1.0 - l), 1.0 - l
    ef = al * x - d
    efp = ga * x + et * d - dp
    eff = al * al * xx - 2 * al * xd + dd
    effp = al * ga * xx + al * et * xd - al * xdp - ga * xd - et * dd + ddp
    var = eff - ef * ef
    cov = effp - ef * efp
    tiny = 1e-12 * (1.0 + eff.abs())
    s = torch.where(var > tiny, cov / var.clamp_min(1e-300), torch.zeros_like(var))
    b = efp - s * ef
    return l, s, b
