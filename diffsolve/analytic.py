"""Analytic test problems: data distributions whose eps is exact at every sigma.

A Gaussian mixture with isotropic components, p0 = sum_k w_k N(m_k, s_k^2 I), stays a
mixture under the forward process in sigma form (E8): xbar ~ sum_k w_k N(m_k, (s_k^2 +
sigma^2) I). Its exact denoiser and eps are (docs/math.md E38, per component)

    r_k(xbar, sigma)  posterior weights (softmax of log N(xbar; m_k, (s_k^2 + sigma^2) I) + log w_k)
    eps*(xbar, sigma) = sum_k r_k sigma (xbar - m_k) / (s_k^2 + sigma^2)
    D(xbar, sigma)    = xbar - sigma eps*

written so that nothing divides by sigma. A Gaussian is K = 1 (with the exact flow
E38); a point mass is K = 1, s = 0 (claim 9). Each problem serves as a model under
every prediction type and time convention (:meth:`Problem.model`), so the wrapper's
conversions are tested against exact values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .schedules import DiscreteSchedule, Schedule
from .wrapper import DiffusionODE

__all__ = ["GaussianMixture", "Gaussian", "PointMass", "get_problem", "PROBLEMS", "reference_solution"]

_F64 = torch.float64


class GaussianMixture:
    """p0 = sum_k w_k N(m_k, s_k^2 I) in ``shape`` (the mixture lives on the flattened vector).

    Args:
        means: (K, D) component means (D = prod(shape)).
        stds: (K,) or scalar component standard deviations (>= 0).
        weights: (K,) mixture weights (normalised here); default uniform.
        shape: the shape of one sample; default ``(D,)``.
    """

    def __init__(self, means, stds, weights=None, shape: Sequence[int] | None = None):
        self.means = torch.as_tensor(means, dtype=_F64)
        if self.means.dim() == 1:
            self.means = self.means[None]
        K, D = self.means.shape
        self.stds = torch.as_tensor(stds, dtype=_F64).expand(K).clone()
        if (self.stds < 0).any():
            raise ValueError("stds must be >= 0")
        w = torch.ones(K, dtype=_F64) if weights is None else torch.as_tensor(weights, dtype=_F64)
        if w.shape != (K,) or (w <= 0).any():
            raise ValueError(f"weights must be {K} positive numbers")
        self.log_weights = torch.log(w / w.sum())
        self.shape = tuple(shape) if shape is not None else (D,)
        if math.prod(self.shape) != D:
            raise ValueError(f"shape {self.shape} has {math.prod(self.shape)} entries, means have {D}")

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    # -- exact quantities (any dtype; sigma a float or a per-sample tensor) -----------------------
    def _flat(self, xbar):
        return xbar.reshape(xbar.shape[0], -1)

    def _sigma_col(self, sigma, n, dtype, device):
        s = torch.as_tensor(sigma, dtype=dtype, device=device)
        return s.reshape(-1, 1).expand(n, 1) if s.dim() > 0 else s.expand(n, 1)

    def eps(self, xbar: torch.Tensor, sigma) -> torch.Tensor:
        """Exact eps*(xbar, sigma) (E38 per component), with no division by sigma."""
        x = self._flat(xbar)
        dtype, dev = x.dtype, x.device
        s = self._sigma_col(sigma, x.shape[0], dtype, dev)  # (N, 1)
        m = self.means.to(dtype=dtype, device=dev)  # (K, D)
        var = self.stds.to(dtype=dtype, device=dev) ** 2 + s**2  # (N, K)
        diff = x[:, None, :] - m[None]  # (N, K, D)
        sq = (diff**2).sum(-1)  # (N, K)
        safe_var = torch.where(var > 0, var, torch.ones_like(var))
        logits = (
            self.log_weights.to(dtype=dtype, device=dev) - 0.5 * self.dim * torch.log(safe_var) - 0.5 * sq / safe_var
        )
        r = torch.softmax(logits, dim=-1)  # (N, K)
        coef = torch.where(var > 0, r * s / safe_var, torch.zeros_like(var))  # r_k sigma/(s_k^2 + sigma^2)
        out = (coef[..., None] * diff).sum(1)
        return out.reshape(xbar.shape)

    def denoised(self, xbar: torch.Tensor, sigma) -> torch.Tensor:
        """Exact posterior mean E[x0 | xbar] = xbar - sigma eps*."""
        s = torch.as_tensor(sigma, dtype=xbar.dtype, device=xbar.device)
        s = s.reshape(-1, *([1] * (xbar.dim() - 1))) if s.dim() > 0 else s
        return xbar - s * self.eps(xbar, sigma)

    def sample(self, n: int, generator: torch.Generator | None = None, dtype=_F64) -> torch.Tensor:
        """``n`` exact draws from p0."""
        k = torch.multinomial(torch.exp(self.log_weights), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=_F64)
        x = self.means[k] + self.stds[k, None] * z
        return x.reshape(n, *self.shape).to(dtype)

    def log_prob(self, x0: torch.Tensor) -> torch.Tensor:
        """Exact log p0(x0) per sample (components with s_k > 0 only)."""
        x = self._flat(x0).to(_F64)
        if (self.stds == 0).any():
            raise ValueError("log_prob needs every component std > 0")
        var = self.stds**2
        sq = ((x[:, None, :] - self.means[None]) ** 2).sum(-1)
        comp = -0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        return torch.logsumexp(self.log_weights + comp, dim=-1)

    # -- as a model ----------------------------------------------------------------------------
    def model(self, schedule: Schedule, prediction: str = "eps", time: str | None = None):
        """This problem's exact model in a given convention: ``model(x, t) -> prediction``.

        ``x`` is in the schedule's space (x = scale(sigma) xbar) and ``t`` follows ``time``
        (the schedule's default if None); the output is the exact eps, x0, v, score or
        flow velocity (the inverses of the wrapper's conversions, E9-E17).
        """
        time = schedule.default_time if time is None else time

        def sigma_of(t: torch.Tensor) -> torch.Tensor:
            t = t.to(_F64)
            if time in ("index", "t"):
                return schedule.sigma(t)
            if time == "sigma":
                return t
            if time == "edm":
                return torch.exp(4 * t)
            if time == "log-sigma":
                return torch.exp(t)
            raise ValueError(f"time={time!r} is not supported by the analytic model")

        def model(x: torch.Tensor, t: torch.Tensor, **_):
            sigma = sigma_of(t).to(x.device)  # (N,)
            view = (-1, *([1] * (x.dim() - 1)))
            s = sigma.reshape(view)
            # the scale of each distinct sigma once (a batch usually shares one level): the same floats as per sample
            levels, which = torch.unique(sigma.detach().to("cpu", _F64), return_inverse=True)
            scales = torch.tensor([schedule.scale(v) for v in levels.tolist()], dtype=_F64)
            a = scales[which].to(x.device).reshape(view)
            xbar = x.to(_F64) / a
            eps = self.eps(xbar, sigma)
            if prediction == "eps":
                out = eps
            elif prediction in ("x0", "sample"):
                out = xbar - s * eps
            elif prediction == "v":
                out = (eps - s * (xbar - s * eps)) / torch.sqrt(1 + s**2)  # E11
            elif prediction == "score":
                out = -eps / (a * s)  # E14 in the model's space
            elif prediction == "flow":
                out = eps - (xbar - s * eps)  # E17: u = eps - x0
            else:
                raise ValueError(f"unknown prediction {prediction!r}")
            return out.to(x.dtype)

        return model

    def ode(self, schedule: Schedule | None = None, prediction: str = "eps", time: str | None = None) -> DiffusionODE:
        """The exact ODE of this problem (float64 time input, so the model sees sigma exactly)."""
        schedule = schedule if schedule is not None else default_schedule()
        return DiffusionODE(
            self.model(schedule, prediction, time), schedule, prediction=prediction, time=time, time_dtype=_F64
        )


class Gaussian(GaussianMixture):
    """N(m, s^2 I): one component, with the exact flow of E38."""

    def __init__(self, mean, std: float, shape: Sequence[int] | None = None):
        mean = torch.as_tensor(mean, dtype=_F64).flatten()
        super().__init__(mean[None], [float(std)], shape=shape)
        self.mean, self.std = mean, float(std)

    def exact_flow(self, xbar: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
        """E38: xbar(sigma_to) = m + (xbar(sigma_from) - m) sqrt((s^2 + sigma_to^2)/(s^2 + sigma_from^2))."""
        m = self.mean.to(xbar.dtype).reshape(xbar.shape[1:])
        ratio = math.sqrt((self.std**2 + sigma_to**2) / (self.std**2 + sigma_from**2))
        return m + (xbar - m) * ratio


class PointMass(GaussianMixture):
    """All mass at c (claim 9): eps* = (xbar - c)/sigma."""

    def __init__(self, c, shape: Sequence[int] | None = None):
        c = torch.as_tensor(c, dtype=_F64).flatten()
        super().__init__(c[None], [0.0], shape=shape)
        self.c = c


def default_schedule() -> DiscreteSchedule:
    """DDPM's linear schedule (E1): the built-in problems' default."""
    return DiscreteSchedule.linear(1000, 1e-4, 0.02)


def _ring(k: int, radius: float, dim: int = 2) -> torch.Tensor:
    angles = torch.arange(k, dtype=_F64) * 2 * math.pi / k
    m = torch.zeros(k, dim, dtype=_F64)
    m[:, 0], m[:, 1] = radius * torch.cos(angles), radius * torch.sin(angles)
    return m


def _random_means(k: int, dim: int, seed: int, scale: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(k, dim, generator=g, dtype=_F64) / math.sqrt(dim)


PROBLEMS = {
    "gaussian": lambda: Gaussian(torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=_F64), 0.5),
    "gmm2d": lambda: GaussianMixture(_ring(8, 1.0), 0.08),
    "gmm64": lambda: GaussianMixture(_random_means(6, 64, 0, 1.5), 0.2),
    "gmm-image": lambda: GaussianMixture(_random_means(4, 3 * 32 * 32, 1, 1.2), 0.3, shape=(3, 32, 32)),
}


def get_problem(name: str) -> GaussianMixture:
    """A built-in analytic problem by name (see :data:`PROBLEMS`)."""
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; known problems: {', '.join(sorted(PROBLEMS))}")
    return PROBLEMS[name]()


def reference_solution(
    ode: DiffusionODE,
    x_T: torch.Tensor,
    sigma_max: float,
    sigma_end: float = 0.0,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    method: str = "dopri5",
) -> torch.Tensor:
    """High-accuracy solution of the ODE (E29) from ``x_T`` (model space, at ``sigma_max``) to ``sigma_end``.

    Integrates in float64 with an adaptive torchdiffeq method: in log-sigma down to
    sigma_c = max(sigma_end, 1e-2) (the ODE is smooth there: d xbar / d log sigma = sigma eps),
    then in sigma down to ``sigma_end`` (sigma = 0 included: eps is bounded there).
    """
    from torchdiffeq import odeint

    xbar = ode.to_xbar(x_T.to(_F64), sigma_max)
    sigma_c = max(sigma_end, 1e-2)

    def f_log(u, y):
        s = float(torch.exp(u))
        return s * ode.eps(y, s)

    if sigma_max > sigma_c:
        u = torch.tensor([math.log(sigma_max), math.log(sigma_c)], dtype=_F64)
        xbar = odeint(f_log, xbar, u, rtol=rtol, atol=atol, method=method, options=_land(u, method))[-1]
    if sigma_c > sigma_end:
        t = torch.tensor([sigma_c, sigma_end], dtype=_F64)
        xbar = odeint(
            lambda s, y: ode.eps(y, float(s)), xbar, t, rtol=rtol, atol=atol, method=method, options=_land(t, method)
        )[-1]
    return ode.from_xbar(xbar, sigma_end)


def _land(t: torch.Tensor, method: str) -> dict | None:
    # adaptive torchdiffeq methods interpolate the end point unless told to step onto it
    return {"step_t": t[1:]} if method in ("dopri5", "dopri8", "bosh3", "adaptive_heun") else None
