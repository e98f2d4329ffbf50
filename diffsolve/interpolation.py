"""Latent interpolation (DDIM paper Sec. 5.3): slerp between two x_T, decoded with one solver.

slerp (docs/math.md E43), with the inner product and norms over a whole sample:

    theta = arccos(<z0, z1> / (|z0| |z1|)),
    z(a)  = sin((1 - a) theta)/sin(theta) z0 + sin(a theta)/sin(theta) z1.

When sin(theta) is tiny (z0, z1 nearly parallel or anti-parallel) the weights are 0/0-like, so
the straight line (1 - a) z0 + a z1 is used instead. For two independent d-dimensional Gaussians
theta is close to pi/2 and |z(a)| stays on the shell where x_T lives, which lerp would leave.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .sampling import sample
from .wrapper import DiffusionODE

__all__ = ["slerp", "lerp", "interpolate"]

#: below this sin(theta) the slerp weights lose their digits: fall back to lerp
PARALLEL_SIN = 1e-6


def lerp(z0: torch.Tensor, z1: torch.Tensor, alpha) -> torch.Tensor:
    """The straight line (1 - a) z0 + a z1 (``alpha`` a number, or 1-D: one result per value, stacked)."""
    _check_floating(z0, z1)
    a = _alphas(alpha, z0).to(z0.dtype)
    out = (1 - a) * z0 + a * z1
    return out[0] if _is_scalar(alpha) else out


def _check_floating(z0, z1) -> None:
    """The path is returned in z0's dtype: an integer one would truncate it."""
    for name, z in (("z0", z0), ("z1", z1)):
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(z, 'dtype', type(z).__name__)}")


def slerp(z0: torch.Tensor, z1: torch.Tensor, alpha, *, batched: bool = False) -> torch.Tensor:
    """Spherical interpolation (E43) between ``z0`` and ``z1`` (same shape).

    Args:
        alpha: a number in [0, 1], or a 1-D sequence/tensor of them: then the results are
            stacked along a new first dimension.
        batched: if True, the first dimension indexes samples and each pair (z0[k], z1[k]) has
            its own angle; otherwise the inner product runs over the whole tensor, as in the
            DDIM code.
    """
    if z0.shape != z1.shape:
        raise ValueError(f"z0 and z1 must have the same shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    _check_floating(z0, z1)
    a = _alphas(alpha, z0)  # (K, 1, ...)
    dims = tuple(range(1, z0.dim())) if batched else tuple(range(z0.dim()))
    work = torch.float64 if z0.dtype == torch.float64 else torch.float32
    u, v = z0.to(work), z1.to(work)
    dot = (u * v).sum(dim=dims, keepdim=True)
    norms = u.pow(2).sum(dim=dims, keepdim=True).sqrt() * v.pow(2).sum(dim=dims, keepdim=True).sqrt()
    cos = (dot / norms).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    sin = torch.sin(theta)
    a = a.to(work)
    parallel = (sin.abs() < PARALLEL_SIN) | (norms == 0)  # a zero z has no angle (0/0): the line, as parallel
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    w0 = torch.where(parallel, 1 - a, torch.sin((1 - a) * theta) / safe_sin)
    w1 = torch.where(parallel, a, torch.sin(a * theta) / safe_sin)
    out = (w0 * u + w1 * v).to(z0.dtype)
    return out[0] if _is_scalar(alpha) else out


def interpolate(
    ode: DiffusionODE,
    z0: torch.Tensor,
    z1: torch.Tensor,
    alphas: int | Sequence[float] | torch.Tensor = 11,
    solver: str = "ddim",
    steps: int | None = 50,
    *,
    method: str = "slerp",
    return_latents: bool = False,
    **sample_options: Any,
):
    """Decode a path of interpolated x_T with one solver (one batched :func:`diffsolve.sample` call).

    Args:
        z0, z1: two x_T of one sample each (the shape of one sample, no batch dimension).
        alphas: the interpolation weights, or a count n for ``linspace(0, 1, n)`` (the DDIM code
            uses 11: a = 0, 0.1, ..., 1).
        method: ``"slerp"`` (E43) or ``"lerp"``.
        sample_options: passed to :func:`diffsolve.sample` (``grid=``, ``sigmas=``, solver options).

    Returns:
        the decoded samples, one per alpha, stacked along the first dimension (and the latents
        with ``return_latents=True``).
    """
    if method not in ("slerp", "lerp"):
        raise ValueError(f"method={method!r} is not known; allowed: slerp, lerp")
    if isinstance(alphas, int):
        if alphas < 2:
            raise ValueError(f"alphas as a count must be >= 2, got {alphas}")
        alphas = torch.linspace(0.0, 1.0, alphas, dtype=torch.float64)
    if "sigmas" in sample_options:
        steps = None
    path = (slerp if method == "slerp" else lerp)(z0, z1, torch.as_tensor(alphas, dtype=torch.float64))
    out = sample(ode, path, solver, steps, **sample_options)
    return (out, path) if return_latents else out


def _is_scalar(alpha) -> bool:
    return isinstance(alpha, (int, float)) or (isinstance(alpha, torch.Tensor) and alpha.dim() == 0)


def _alphas(alpha, like: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
    if a.numel() == 0 or not torch.isfinite(a).all():
        raise ValueError(f"alpha must be finite numbers, got {alpha!r}")
    return a.reshape(-1, *([1] * like.dim())).to(like.device)
