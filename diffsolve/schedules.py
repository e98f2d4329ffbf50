"""Noise schedules: alpha_bar and sigma as functions of a model's own time.

Every schedule maps its time variable ``t`` to the VE noise level (docs/math.md E4)

    sigma(t) = sqrt((1 - alpha_bar(t)) / alpha_bar(t)),

and back (``t(sigma)``). It also says how the model's own state relates to the
sigma-form state ``xbar`` of the ODE (E6): ``x = scale(sigma) * xbar`` with

* VP models (DDPM, score-SDE VP):  scale = 1 / sqrt(1 + sigma^2)   (E5, E6)
* VE models (EDM, score-SDE VE):   scale = 1
* rectified flow (E17):            scale = 1 / (1 + sigma)

All arithmetic here is float64. Precision rules of docs/math.md section 8 are
kept: sigma is never recovered from a rounded alpha_bar (pitfall 5), and
``1 - alpha_bar`` is formed without cancellation (``-expm1(sum log1p(-beta))``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch

from .validation import check_count

__all__ = [
    "Schedule",
    "DiscreteSchedule",
    "VPLinearSchedule",
    "VPCosineSchedule",
    "SigmaSchedule",
    "EDMSchedule",
    "FlowSchedule",
]

_F64 = torch.float64

# Zero-terminal-SNR schedules end at alpha_bar = 0, i.e. sigma = infinity, which
# the sigma-form ODE cannot start from. As in diffusers' Euler schedulers, the
# last alpha_bar is then raised to 2**-24 (sigma ~ 4096).
ZERO_SNR_ALPHA_BAR = 2.0**-24


def _as_f64(value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=_F64)


def _tensor_arg(name: str, value) -> torch.Tensor:
    """``value`` as a float64 tensor, or a TypeError naming the argument."""
    if value is None or isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a 1-D sequence or tensor of floats, got {type(value).__name__}")
    try:
        return torch.as_tensor(value, dtype=_F64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be a 1-D sequence or tensor of floats: {exc}") from None


def _number(name: str, value) -> float:
    """``float(value)`` for a real, non-NaN number, else an error naming the argument."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        and not (isinstance(value, torch.Tensor) and value.numel() == 1 and value.is_floating_point())
    ):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} must be a number, got nan")
    return v


class Schedule(ABC):
    """A map between a model's time ``t`` and the sigma of the sigma-form ODE.

    Subclasses define :meth:`sigma`, :meth:`t`, the space (``"vp"``, ``"ve"`` or
    ``"flow"``) and the range ``[sigma_min, sigma_max]`` the model was trained on.
    """

    space: str = "vp"
    #: time convention :func:`diffsolve.wrap` uses when none is given
    default_time: str = "t"
    #: grid :func:`diffsolve.sample` uses when only ``steps`` is given
    default_grid: str = "karras"

    @property
    @abstractmethod
    def sigma_min(self) -> float:
        """Smallest positive sigma the model knows."""

    @property
    @abstractmethod
    def sigma_max(self) -> float:
        """Largest sigma the model knows (where sampling starts)."""

    @property
    def t_min(self) -> float:
        return float(self.t(self.sigma_min))

    @property
    def t_max(self) -> float:
        return float(self.t(self.sigma_max))

    @abstractmethod
    def sigma(self, t) -> torch.Tensor:
        """sigma(t) in float64 (E4)."""

    @abstractmethod
    def t(self, sigma) -> torch.Tensor:
        """The inverse of :meth:`sigma`, in float64."""

    def alpha_bar(self, t) -> torch.Tensor:
        """alpha_bar(t) = 1 / (1 + sigma(t)^2)  (E5)."""
        return 1.0 / (1.0 + self.sigma(t) ** 2)

    def scale(self, sigma: float) -> float:
        """The factor with ``x = scale * xbar`` for this schedule's space (E6, E17)."""
        if self.space == "vp":
            return 1.0 / math.sqrt(1.0 + sigma * sigma) if math.isfinite(sigma) else 0.0
        if self.space == "ve":
            return 1.0
        if self.space == "flow":
            return 1.0 / (1.0 + sigma)
        raise ValueError(f"unknown space {self.space!r}; allowed: 'vp', 've', 'flow'")

    def memo_key(self) -> tuple | None:
        """A key of the schedule's content under which equal schedules share their memos (None: the
        memos live on this object alone)."""
        return None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(space={self.space!r}, sigma_min={self.sigma_min:.6g}, "
            f"sigma_max={self.sigma_max:.6g})"
        )


class DiscreteSchedule(Schedule):
    """A DDPM schedule of ``T`` discrete levels, indexed ``i = 0..T-1`` as in DDPM code.

    Level ``i`` is the paper's ``t = i + 1`` (docs/math.md 1.2). ``t(sigma)`` is the
    (fractional) index: exact at the schedule's own sigmas and linear in log-sigma
    between them (the rule k-diffusion uses; a library choice, see E17 note).
    """

    space = "vp"
    default_time = "index"
    default_grid = "trailing"

    def __init__(self, alphas_cumprod=None, *, one_minus_alphas_cumprod=None):
        if alphas_cumprod is None:
            raise ValueError("alphas_cumprod is required")
        abar = _tensor_arg("alphas_cumprod", alphas_cumprod).flatten()
        if abar.numel() < 2:
            raise ValueError(f"alphas_cumprod needs at least 2 entries, got {abar.numel()}")
        if one_minus_alphas_cumprod is None:
            one_minus = 1.0 - abar
        else:
            one_minus = _as_f64(one_minus_alphas_cumprod).flatten()
        sigmas = torch.sqrt(one_minus / abar)  # E4, increasing with the index
        # every check in one reduction (a comparison with NaN is False), the reason only on failure
        ok = torch.stack(
            [((abar > 0) & (abar <= 1)).all(), (abar[1:] < abar[:-1]).all(), (sigmas[1:] > sigmas[:-1]).all()]
        )
        if not (bool(ok.all()) and sigmas[0] > 0):
            if not bool(ok[0]):
                raise ValueError("alphas_cumprod must be finite and in (0, 1]")
            if not bool(ok[1]):
                raise ValueError("alphas_cumprod must be strictly decreasing")
            raise ValueError("alphas_cumprod gives sigmas that are not strictly increasing and positive")
        self.alphas_cumprod = abar
        self.sigmas = sigmas
        self.log_sigmas = torch.log(sigmas)

    def memo_key(self) -> tuple | None:
        """The schedule's content (its float64 levels), under which the memos of every equal
        schedule are shared (:func:`diffsolve.wrapper.schedule_memo`): a schedule made anew from the
        same alphas_cumprod per call finds the model times and scales of the previous ones."""
        if type(self) is not DiscreteSchedule or self.alphas_cumprod.device.type != "cpu":
            return None  # a subclass may change the map: its memos stay its own
        return (self.alphas_cumprod.numpy().tobytes(), self.sigmas.numpy().tobytes())

    # -- constructors -----------------------------------------------------------------
    @classmethod
    def from_betas(cls, betas: Sequence[float] | torch.Tensor, *, rescale_zero_terminal_snr: bool = False):
        """From per-step betas: ``alpha_bar_t = prod (1 - beta_k)`` (E2), in float64."""
        betas = _tensor_arg("betas", betas).flatten()
        if not bool(torch.isfinite(betas).all()) or ((betas <= 0) | (betas > 1)).any():
            raise ValueError("betas must lie in (0, 1] (and be finite)")
        log_abar = torch.cumsum(torch.log1p(-betas), 0)
        if rescale_zero_terminal_snr:
            return cls._zero_snr(torch.exp(log_abar))
        # 1 - abar without cancellation (pitfall 5)
        return cls(torch.exp(log_abar), one_minus_alphas_cumprod=-torch.expm1(log_abar))

    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod, *, rescale_zero_terminal_snr: bool = False):
        abar = _as_f64(alphas_cumprod)
        if rescale_zero_terminal_snr:
            return cls._zero_snr(abar)
        return cls(abar)

    @classmethod
    def linear(cls, num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02, **kw):
        """DDPM's linear betas (E1): ``beta_t = beta_start + (beta_end - beta_start)(t-1)/(T-1)``."""
        check_count(num_steps, "num_steps", 2)
        beta_start, beta_end = _check_betas(beta_start, beta_end)
        return cls.from_betas(torch.linspace(beta_start, beta_end, num_steps, dtype=_F64), **kw)

    @classmethod
    def scaled_linear(cls, num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012, **kw):
        """Latent Diffusion's schedule: linear in sqrt(beta)."""
        check_count(num_steps, "num_steps", 2)
        beta_start, beta_end = _check_betas(beta_start, beta_end)
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=_F64) ** 2
        return cls.from_betas(betas, **kw)

    @classmethod
    def squaredcos_cap_v2(cls, num_steps: int = 1000, max_beta: float = 0.999, s: float = 0.008, **kw):
        """Nichol & Dhariwal (2021) cosine schedule, betas capped at ``max_beta``."""
        check_count(num_steps, "num_steps", 2)
        i = torch.arange(num_steps + 1, dtype=_F64) / num_steps
        f = torch.cos((i + s) / (1 + s) * math.pi / 2) ** 2
        betas = torch.clamp(1 - f[1:] / f[:-1], max=max_beta)
        return cls.from_betas(betas, **kw)

    @classmethod
    def _zero_snr(cls, abar: torch.Tensor) -> DiscreteSchedule:
        """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so the last level has SNR 0.

        The terminal alpha_bar is then raised to ``ZERO_SNR_ALPHA_BAR`` (sigma must be finite).
        """
        root = torch.sqrt(abar)
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * first / (first - last)
        abar = root**2
        abar[-1] = min(ZERO_SNR_ALPHA_BAR, float(abar[-2]) / 2)
        return cls(abar)

    # -- the map ----------------------------------------------------------------------
    @property
    def num_steps(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma(self, t) -> torch.Tensor:
        """sigma at a (possibly fractional) index, log-linear between levels."""
        t = _as_f64(t)
        t = t.clamp(0, self.num_steps - 1)
        lo = t.floor().long().clamp(max=self.num_steps - 2)
        w = t - lo
        return torch.exp((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[lo + 1])

    def t(self, sigma) -> torch.Tensor:
        """Fractional index of ``sigma``; exact integers at the schedule's own sigmas.

        sigma outside ``[sigma_min, sigma_max]`` is clamped to the end levels.
        """
        sigma = _as_f64(sigma)
        log_sigma = torch.log(sigma.clamp(min=self.sigma_min, max=self.sigma_max))
        hi = torch.searchsorted(self.log_sigmas, log_sigma).clamp(1, self.num_steps - 1)
        lo = hi - 1
        w = (log_sigma - self.log_sigmas[lo]) / (self.log_sigmas[hi] - self.log_sigmas[lo])
        return lo.to(_F64) + w.clamp(0, 1)

    def alpha_bar(self, t) -> torch.Tensor:
        t = _as_f64(t)
        if t.dtype == _F64 and torch.equal(t, t.round()):
            return self.alphas_cumprod[t.long().clamp(0, self.num_steps - 1)]
        return super().alpha_bar(t)


class _TimeRange(Schedule):
    """A continuous schedule used on t in [t_eps, t_end]: its sigma range follows from that."""

    t_eps: float
    t_end: float

    @property
    def sigma_min(self):
        return float(self.sigma(self.t_eps))

    @property
    def sigma_max(self):
        return float(self.sigma(self.t_end))


class VPLinearSchedule(_TimeRange):
    """Score-SDE's VP SDE with linear beta(t) = beta_min + t (beta_max - beta_min), t in [t_eps, 1].

    log alpha_bar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2), so
    sigma(t)^2 = expm1(beta_min t + (beta_max - beta_min) t^2 / 2).
    """

    space = "vp"
    default_time = "t"
    default_grid = "logsnr"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_eps: float = 1e-3, t_end: float = 1.0):
        beta_min, beta_max = _number("beta_min", beta_min), _number("beta_max", beta_max)
        t_eps, t_end = _number("t_eps", t_eps), _number("t_end", t_end)
        if not (0 <= beta_min <= beta_max < math.inf and beta_max > 0):
            raise ValueError(
                f"need 0 <= beta_min <= beta_max < inf and beta_max > 0, got beta_min={beta_min}, beta_max={beta_max}"
            )
        if not 0 < t_eps < t_end:
            raise ValueError(f"need 0 < t_eps < t_end, got t_eps={t_eps}, t_end={t_end}")
        self.beta_min, self.beta_max, self.t_eps, self.t_end = float(beta_min), float(beta_max), t_eps, t_end

    def _integral(self, t):
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def sigma(self, t):
        return torch.sqrt(torch.expm1(self._integral(_as_f64(t))))

    def t(self, sigma):
        sigma = _as_f64(sigma)
        d = self.beta_max - self.beta_min
        rhs = torch.log1p(sigma**2)
        if d == 0:
            return rhs / self.beta_min
        return 2 * rhs / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * rhs))


class VPCosineSchedule(_TimeRange):
    """Continuous cosine schedule (Nichol & Dhariwal 2021): alpha_bar(t) = f(t)/f(0),
    f(t) = cos((t + s)/(1 + s) pi/2)^2, t in [t_eps, t_end] (t_end < 1 keeps sigma finite;
    0.9946 as in DPM-Solver)."""

    space = "vp"
    default_time = "t"
    default_grid = "logsnr"

    def __init__(self, s: float = 0.008, t_eps: float = 1e-3, t_end: float = 0.9946):
        s, t_eps, t_end = _number("s", s), _number("t_eps", t_eps), _number("t_end", t_end)
        if not 0 <= s < 1:
            raise ValueError(f"s (the cosine schedule's offset) must be in [0, 1), got s={s}")
        if not 0 < t_eps < t_end < 1:
            raise ValueError(f"need 0 < t_eps < t_end < 1, got t_eps={t_eps}, t_end={t_end}")
        self.s, self.t_eps, self.t_end = s, t_eps, t_end
        self._log_f0 = 2 * math.log(math.cos(s / (1 + s) * math.pi / 2))

    def sigma(self, t):
        t = _as_f64(t)
        log_abar = 2 * torch.log(torch.cos((t + self.s) / (1 + self.s) * math.pi / 2)) - self._log_f0
        return torch.sqrt(torch.expm1(-log_abar))

    def t(self, sigma):
        sigma = _as_f64(sigma)
        log_abar = -torch.log1p(sigma**2)
        c = torch.exp(0.5 * (log_abar + self._log_f0))
        return torch.arccos(c) * 2 * (1 + self.s) / math.pi - self.s


class SigmaSchedule(Schedule):
    """A schedule whose time *is* sigma (t = sigma), in VP or VE space.

    ``SigmaSchedule(space="ve")`` is EDM / score-SDE VE; ``space="vp"`` is the
    natural home of the analytic problems (claims 10-12 use it with sigma_min = 0).
    """

    default_time = "sigma"
    default_grid = "karras"

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, space: str = "ve"):
        if space not in ("vp", "ve"):
            raise ValueError(f"space must be 'vp' or 've', got {space!r}")
        sigma_min, sigma_max = _number("sigma_min", sigma_min), _number("sigma_max", sigma_max)
        if not (0 <= sigma_min < sigma_max < math.inf):
            raise ValueError(f"need 0 <= sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
        self.space = space
        self._min, self._max = float(sigma_min), float(sigma_max)

    @property
    def sigma_min(self):
        return self._min

    @property
    def sigma_max(self):
        return self._max

    def sigma(self, t):
        return _as_f64(t)

    def t(self, sigma):
        return _as_f64(sigma)


def EDMSchedule(sigma_min: float = 0.002, sigma_max: float = 80.0) -> SigmaSchedule:
    """EDM (Karras et al. 2022): VE, sigma = t, defaults sigma in [0.002, 80]."""
    return SigmaSchedule(sigma_min, sigma_max, space="ve")


class FlowSchedule(_TimeRange):
    """Rectified flow: x_t = (1 - t) x0 + t eps, so sigma = t/(1 - t) and x = xbar/(1 + sigma) (E17).

    t = 1 (pure noise) has sigma = infinity; sampling starts at ``t_end`` < 1.
    """

    space = "flow"
    default_time = "t"
    default_grid = "time-uniform"

    def __init__(self, t_eps: float = 1e-3, t_end: float = 0.999):
        t_eps, t_end = _number("t_eps", t_eps), _number("t_end", t_end)
        if not 0 < t_eps < t_end < 1:
            raise ValueError(f"need 0 < t_eps < t_end < 1, got t_eps={t_eps}, t_end={t_end}")
        self.t_eps, self.t_end = t_eps, t_end

    def sigma(self, t):
        t = _as_f64(t)
        return t / (1 - t)

    def t(self, sigma):
        s = _as_f64(sigma)
        return torch.where(torch.isinf(s), torch.ones_like(s), s / (1 + s))  # t = 1 at sigma = inf


def _check_betas(beta_start, beta_end) -> tuple[float, float]:
    beta_start, beta_end = _number("beta_start", beta_start), _number("beta_end", beta_end)
    if not (0 < beta_start <= 1 and 0 < beta_end <= 1):
        raise ValueError(
            f"beta_start and beta_end must lie in (0, 1], got beta_start={beta_start}, beta_end={beta_end}"
        )
    return beta_start, beta_end
