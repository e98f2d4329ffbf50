"""The Gaussian first step: the analytical first step (AFS) with a Gaussian fitted to the model's own samples in place
of N(0, I) (docs/math.md section 3.11, G1-G3).

AFS answers a recipe's first model call, at the grid's first sigma, with the noise prediction of data ~ N(0, I). The
data of a real model are not centred at 0 with unit variance (the digits model's mean pixel is about -0.5, its mean
variance 0.28), so that step already lands off the trajectory. For data ~ N(mu, Sigma) the flow has a closed form
(G1, the "hidden linear structure" of Wang & Vastola 2023): each principal direction of Sigma scales by
sqrt((lambda_k + sigma^2) / (lambda_k + sigma_0^2)) about the mean. :class:`GaussianMoments` holds mu and Sigma of
the model's samples (the teacher's ends in :func:`diffsolve.tune`; G2) in a compact form, r principal directions
and one variance for every other direction, and gives the first step's eps: the slope that carries the Gaussian
flow from the grid's first sigma to its second (G3). No model call; a recipe stores the moments in
``params["gaussian"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

__all__ = ["GaussianMoments", "RANK"]

_F64 = torch.float64
#: principal directions kept (G2): on the digits model, 8 give the first step of the full covariance to 1e-4
RANK = 8
#: components must be orthonormal to this (float64 rounding of an eigendecomposition, after a JSON round trip)
ORTHONORMAL_ATOL = 1e-8


@dataclass(frozen=True, eq=False)
class GaussianMoments:
    """Mean and covariance of a model's samples (docs/math.md G2): Sigma = V diag(variances) V^T + residual (I - V V^T)
    with V's rows ``components`` (orthonormal, r of them); ``shape`` is one sample's shape. Plain floats, so a recipe
    stores them exactly; :meth:`fit` makes them from samples, :meth:`from_dict` checks a stored copy."""

    mean: tuple[float, ...]
    components: tuple[tuple[float, ...], ...]
    variances: tuple[float, ...]
    residual: float
    shape: tuple[int, ...]

    @classmethod
    def fit(cls, samples: torch.Tensor, rank: int = RANK) -> GaussianMoments:
        """The moments of ``samples`` (N samples along dim 0, N >= 2): the sample mean, the ``rank`` leading
        principal directions of the sample covariance (at most N - 1 and the dimension) with their variances, and
        the mean variance of the other directions."""
        if samples.ndim < 2 or samples.shape[0] < 2:
            raise ValueError(
                f"GaussianMoments.fit needs at least 2 samples along dim 0, got shape {tuple(samples.shape)}"
            )
        y = samples.detach().to("cpu", _F64).reshape(samples.shape[0], -1)
        if not torch.isfinite(y).all():
            raise ValueError("GaussianMoments.fit: the samples are not all finite")
        d = y.shape[1]
        mean = y.mean(0)
        z = y - mean
        # the covariance's eigenvectors from the SVD of the centred samples (no D x D matrix for large samples)
        _, s, vh = torch.linalg.svd(z, full_matrices=False)
        var = s.pow(2) / (y.shape[0] - 1)
        r = max(0, min(int(rank), y.shape[0] - 1, d))
        total = float(z.pow(2).sum()) / (y.shape[0] - 1)
        residual = max(0.0, (total - float(var[:r].sum())) / (d - r)) if d > r else 0.0
        return cls(
            tuple(mean.tolist()),
            tuple(tuple(v) for v in vh[:r].tolist()),
            tuple(var[:r].tolist()),
            residual,
            tuple(int(k) for k in samples.shape[1:]),
        )

    # -- the flow (G1) and the first step (G3) -------------------------------------------------------
    @cached_property
    def _tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = len(self.mean)
        v = torch.tensor(self.components, dtype=_F64).reshape(len(self.components), d)
        return torch.tensor(self.mean, dtype=_F64), v, torch.tensor(self.variances, dtype=_F64)

    def check_shape(self, xbar: torch.Tensor) -> None:
        if tuple(xbar.shape[1:]) != self.shape:
            from .recipe_ode import RecipeError

            raise RecipeError(
                f"the Gaussian first step was fitted to samples of shape {self.shape}; this run's samples have shape "
                f"{tuple(xbar.shape[1:])}: tune a recipe for this shape"
            )

    def flow(self, xbar: torch.Tensor, sigma0: float, sigma1) -> torch.Tensor:
        """G1: the Gaussian's ODE solution from ``xbar`` at ``sigma0`` to ``sigma1`` (a float, or a 0-dim float64
        tensor when the caller differentiates in it). Coefficients in float64, applied in ``xbar``'s dtype."""
        self.check_shape(xbar)
        mean, v, lam = self._tensors
        dev, dt = xbar.device, xbar.dtype
        s1sq = sigma1 * sigma1
        f = ((lam + s1sq) / (lam + sigma0 * sigma0)).sqrt()  # per principal direction
        f_rest = ((self.residual + s1sq) / (self.residual + sigma0 * sigma0)) ** 0.5  # every other direction
        y = xbar.reshape(xbar.shape[0], -1) - mean.to(dev, dt)
        vd = v.to(dev, dt)
        along = y @ vd.T  # coordinates on the principal directions
        out = f_rest * y + (along * (f - f_rest).to(dev, dt)) @ vd
        return (out + mean.to(dev, dt)).reshape(xbar.shape)

    def first_eps(self, xbar: torch.Tensor, sigma0: float, sigma1) -> torch.Tensor:
        """G3: the eps a recipe's first model call is answered with, (flow(xbar) - xbar) / (sigma1 - sigma0), so that
        one Euler (DDIM) step from ``sigma0`` to ``sigma1`` lands on the Gaussian flow exactly."""
        return (self.flow(xbar, sigma0, sigma1) - xbar) / (sigma1 - sigma0)

    # -- files ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": list(self.mean),
            "components": [list(v) for v in self.components],
            "variances": list(self.variances),
            "residual": self.residual,
            "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "gaussian moments") -> GaussianMoments:
        """Moments from :meth:`to_dict`'s dict; ValueError naming the entry where one is missing or inconsistent."""

        def numbers(key, value):
            if not isinstance(value, list) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
            ):
                raise ValueError(f"{source}: {key!r} must be a list of finite numbers")
            return tuple(float(v) for v in value)

        if not isinstance(d, dict) or set(d) != {"mean", "components", "variances", "residual", "shape"}:
            raise ValueError(f"{source} must be a dict with 'mean', 'components', 'variances', 'residual', 'shape'")
        shape = d["shape"]
        if not isinstance(shape, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) and k > 0 for k in shape
        ):
            raise ValueError(f"{source}: 'shape' must be a list of positive integers")
        mean = numbers("mean", d["mean"])
        if len(mean) != math.prod(shape):
            raise ValueError(f"{source}: 'mean' has {len(mean)} numbers for samples of shape {shape}")
        if not isinstance(d["components"], list):
            raise ValueError(f"{source}: 'components' must be a list of directions")
        comps = tuple(numbers("components", v) for v in d["components"])
        var = numbers("variances", d["variances"])
        if any(len(v) != len(mean) for v in comps) or len(var) != len(comps):
            raise ValueError(f"{source}: {len(comps)} components of {len(mean)} numbers need {len(comps)} variances")
        res = d["residual"]
        if isinstance(res, bool) or not isinstance(res, (int, float)) or not math.isfinite(res) or res < 0:
            raise ValueError(f"{source}: 'residual' must be a finite number >= 0, got {res!r:.40}")
        if any(v < 0 for v in var):
            raise ValueError(f"{source}: 'variances' must be >= 0")
        if comps:
            v = torch.tensor(comps, dtype=_F64)
            if not torch.allclose(v @ v.T, torch.eye(len(comps), dtype=_F64), rtol=0, atol=ORTHONORMAL_ATOL):
                raise ValueError(f"{source}: 'components' are not orthonormal")
        return cls(mean, comps, var, float(res), tuple(shape))
