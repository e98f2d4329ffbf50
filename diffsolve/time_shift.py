"""Time-shifted model calls against exposure bias (TS-DDIM / TS-DPM; docs/math.md 3.8, docs/modifiers.md).

Li, Qu, Yao, Sun & Moens, "Alleviating exposure bias in diffusion models through sampling with
shifted time steps" (ICLR 2024, arXiv 2305.15583). Per sample, the model is told the training step
tau whose marginal variance best matches the sample's own variance (S1-S3):

    v     = Var(x) over the sample's entries (x = scale(sigma) xbar, the model's input; unbiased)
    tau   = argmin over tau in {t + k : |k| <= window // 2, 0 <= t + k <= T - 1} of (v - m(tau))^2
    m(tau) = (1 - alpha_bar(tau)) + alpha_bar(tau) data_var

with t the grid level's (fractional) index, only while t > cutoff; x itself is unchanged, and the
solver's step keeps the grid's sigma (eps is the model's at tau, D = xbar - sigma eps, E9).
``data_var = 0`` is the official code's target 1 - alpha_bar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from .schedules import DiscreteSchedule, Schedule

__all__ = ["TimeShift", "shifted_indices"]


@dataclass(frozen=True)
class TimeShift:
    """The settings of the time-shift modifier (``ds.modify(ode, time_shift=TimeShift(...))``).

    Args:
        window: the paper's window w: candidate steps t - w//2 .. t + w//2 (0 or 1: no shift).
        cutoff: shift only while the grid's index t > cutoff (training-step units, 0..T-1).
        data_var: the per-entry variance of the data in the expected variance m(tau) (S2); 0 is the
            official code's 1 - alpha_bar.
    """

    window: int
    cutoff: float
    data_var: float = 0.0

    def __post_init__(self):
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 0:
            raise ValueError(
                f"time_shift window must be an int >= 0 (the window w, in training steps), got {self.window!r}"
            )
        for name in ("cutoff", "data_var"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"time_shift {name} must be a finite number >= 0, got {v!r}")
        object.__setattr__(self, "cutoff", float(self.cutoff))
        object.__setattr__(self, "data_var", float(self.data_var))

    @classmethod
    def of(cls, value) -> TimeShift:
        """``value`` as a :class:`TimeShift`: one already, or a dict of its fields."""
        if isinstance(value, TimeShift):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {"window", "cutoff", "data_var"})
            if unknown or not {"window", "cutoff"} <= set(value):
                raise ValueError(f"time_shift takes the keys window, cutoff (and data_var); got {sorted(value)}")
            return cls(**value)
        raise TypeError(
            f"time_shift must be None, ds.TimeShift(window=..., cutoff=...) or a dict with those keys, "
            f"got {type(value).__name__}"
        )


def check_schedule(schedule: Schedule) -> None:
    """The rule counts its window in training steps: a :class:`DiscreteSchedule` only."""
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(
            f"time_shift searches the training steps of a DiscreteSchedule (its window and cutoff count "
            f"them); this ODE's schedule is {type(schedule).__name__}, which has none: wrap the model "
            f"with its DiscreteSchedule, or do not use time_shift"
        )


def shifted_indices(x: torch.Tensor, t: float, schedule: DiscreteSchedule, shift: TimeShift) -> torch.Tensor | None:
    """The per-sample training-step index tau (S3) for the model input ``x`` at the grid's index ``t``,
    float64 of shape ``(batch,)``; None where the rule does not apply (window // 2 = 0, or t <= cutoff)."""
    half = shift.window // 2
    if half == 0 or not t > shift.cutoff:
        return None
    if x[0].numel() < 2:
        raise ValueError(
            f"time_shift needs samples of at least 2 entries (their variance, S1); got shape {tuple(x.shape)}"
        )
    last = schedule.num_steps - 1
    k = torch.arange(-half, half + 1, dtype=torch.float64)
    cand = t + k
    cand = cand[(cand >= 0) & (cand <= last)]
    sig2 = schedule.sigma(cand) ** 2
    abar = 1.0 / (1.0 + sig2)  # E4; 1 - abar = sigma^2 abar without cancellation
    expected = sig2 * abar + abar * shift.data_var  # (S2)
    v = x.reshape(x.shape[0], -1).var(dim=1).to(torch.float64)  # (S1), unbiased
    best = torch.argmin((v[:, None] - expected[None, :]) ** 2, dim=1)  # first minimum: the smallest tau
    return cand[best]
