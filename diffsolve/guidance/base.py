"""The base class of guidance methods (docs/math.md#guidance).

A guidance method turns the two predictions of one guided evaluation into the ``(denoised, eps)``
pair a solver receives. The wrapper (:class:`diffsolve.DiffusionODE`) makes the evaluation: one
batched model call on ``cat([x, x])`` with the ``cond`` and ``uncond`` keyword arguments (or, for a
method with ``second = "weak"``, the model and a weaker model, both conditional), converts both
outputs to ``(D, eps)`` pairs at the same state and noise level (E9-E17), and hands them to
:meth:`Guidance.combine`. Every method takes ``sigma_interval=(lo, hi)``: guidance only for sigma in
``(lo, hi]`` (Kynkaanniemi et al. 2024), the plain conditional prediction elsewhere (and then the
second prediction is not computed at all: that evaluation costs one conditional call).

Methods hold options only. What a method carries from one evaluation to the next (APG's momentum)
lives in the run (``state``, a dict owned by the run view the driver makes per run), so one method
object may serve many runs and threads.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ..validation import check_finite_number

__all__ = ["Guidance", "Prediction", "check_sigma_interval", "per_sample_dot"]

#: (denoised, eps) of one prediction at the evaluation's state and noise level
Prediction = tuple[torch.Tensor, torch.Tensor]


def check_sigma_interval(value: Any) -> tuple[float, float] | None:
    """``None`` or a pair ``(lo, hi)`` of numbers with ``0 <= lo < hi <= inf``, as floats."""
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"sigma_interval must be None or a pair (lo, hi) with 0 <= lo < hi, got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"sigma_interval must hold two real numbers, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if not (0.0 <= lo < hi) or math.isnan(hi):
        raise ValueError(f"sigma_interval must be a pair (lo, hi) with 0 <= lo < hi (hi may be inf), got {value!r}")
    return lo, hi


def per_sample_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a_n, b_n> over each sample's entries, shaped (N, 1, ..., 1) to broadcast against a."""
    dims = tuple(range(1, a.dim()))
    return (a * b).sum(dim=dims, keepdim=True) if dims else a * b


class Guidance:
    """A guidance method: combines the conditional prediction with the unconditional one (or a weaker
    model's) into the pair the solver uses.

    Subclasses set ``name`` (the registry name), may set ``second`` (``"uncond"``: the same model
    with the ``uncond`` keyword arguments; ``"weak"``: a second, weaker model called with ``cond``),
    ``renoise`` (True when the returned pair is not on the state's ray and solvers must continue
    from ``denoised + sigma * eps``: RENOISE, docs/math.md#guidance-cfgpp), ``scale_range`` (the allowed
    scales, closed) and implement :meth:`combine`.

    Args:
        scale: the method's guidance scale (w; lambda for CFG++).
        sigma_interval: ``(lo, hi)``: guide only for sigma in ``(lo, hi]``; None: everywhere.
    """

    name: ClassVar[str] = ""
    second: ClassVar[str] = "uncond"
    renoise: ClassVar[bool] = False
    scale_range: ClassVar[tuple[float, float]] = (0.0, math.inf)

    def __init__(self, scale: float, *, sigma_interval: tuple[float, float] | None = None):
        scale = check_finite_number(scale, "scale")
        lo, hi = self.scale_range
        if not lo <= scale <= hi:
            raise ValueError(f"guidance {self.name!r}: scale must be in [{lo:g}, {hi:g}], got {scale!r}")
        self.scale = float(scale)
        self.sigma_interval = check_sigma_interval(sigma_interval)

    def active(self, sigma: float) -> bool:
        """Whether this method guides at ``sigma`` (sigma in ``(lo, hi]`` of ``sigma_interval``)."""
        if self.sigma_interval is None:
            return True
        lo, hi = self.sigma_interval
        return lo < sigma <= hi

    def combine(
        self, xbar: torch.Tensor, sigma: float, cond: Prediction, other: Prediction, state: dict | None
    ) -> Prediction:
        """The ``(denoised, eps)`` pair of the guided evaluation at ``(xbar, sigma)``.

        ``cond`` is the conditional prediction, ``other`` the unconditional (or weak model's) one;
        ``state`` the run's dict for this method (None outside a run).
        """
        raise NotImplementedError(f"guidance {type(self).__name__} does not implement combine()")

    def rows(self, idx: torch.Tensor, n: int) -> Guidance:
        """The method for the samples ``idx`` of a batch of ``n`` (:meth:`diffsolve.DiffusionODE.rows`): itself,
        as methods hold options only; refused where an option is a tensor with a batch dimension (a method
        with per-sample options overrides this and slices them)."""
        for key, value in self.options().items():
            if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] != 1:
                raise TypeError(
                    f"guidance {self.name!r}: option {key!r} is a tensor of leading dimension {value.shape[0]}; "
                    f"{type(self).__name__} does not say how to restrict it to a subset of samples (override rows)"
                )
        return self

    def options(self) -> dict[str, Any]:
        """The method's options besides scale and sigma_interval (for repr and fingerprints)."""
        return {}

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options().items())
        interval = "" if self.sigma_interval is None else f", sigma_interval={self.sigma_interval}"
        return f"make_guidance({self.name!r}, scale={self.scale:g}{opts}{interval})"
