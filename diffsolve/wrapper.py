"""The model wrapper: any diffusion model as the one sigma-form ODE (ddim-math.md E29)

    d xbar / d sigma = eps(xbar, sigma),   xbar = x / scale(sigma).

:func:`wrap` takes a model in its own convention (what it predicts, which time it
is fed, which space its state lives in) and returns a :class:`DiffusionODE`, the
only object solvers see. One call of :meth:`DiffusionODE.predict` is one model
call (one NFE) and returns both the denoised estimate D (the x0-prediction) and
eps, converted with the exact identities E9-E17 in float64 scalars.

Conversions from the raw output ``out`` at (xbar, sigma), with r = sqrt(1 + sigma^2):

=========== ================================================ ==============================================
prediction   denoised D                                      eps
=========== ================================================ ==============================================
eps          xbar - sigma out                     (E9)       out
x0/sample    out                                             (xbar - D) / sigma                 (E10)
v            xbar / r^2 - sigma out / r           (E12)      sigma xbar / r^2 + out / r          (E13)
score        xbar + a sigma^2 out                 (E15)      -a sigma out                        (E14)
flow         (xbar - sigma out) / (1 + sigma)     (E17)      out + D                             (E17)
=========== ================================================ ==============================================

(``a`` = scale(sigma): the score is the gradient in the model's own space.) The
velocity of a flow model, u = eps - x0, and v (E11) are defined without reference
to the schedule's space, so every prediction works with every schedule.

At sigma = 0 no conversion divides by sigma (E27): D is what solvers use there.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch

from .schedules import Schedule

__all__ = ["DiffusionODE", "wrap", "PREDICTIONS", "TIME_CONVENTIONS", "NonFiniteError"]

PREDICTIONS = ("eps", "x0", "sample", "v", "score", "flow")
TIME_CONVENTIONS = ("index", "t", "sigma", "edm", "log-sigma")


class NonFiniteError(FloatingPointError):
    """Raised when a sampling run produced NaN or inf; names the step where it first appeared."""


class DiffusionODE:
    """A model seen as the sigma-form probability-flow ODE (E29).

    Attributes:
        model: the wrapped callable ``model(x, t, **kwargs)``.
        schedule: the :class:`~diffsolve.schedules.Schedule` mapping sigma to the model's time.
        prediction: one of :data:`PREDICTIONS`.
        nfe: number of model calls so far (a guided call is one batched call: one NFE).
    """

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        schedule: Schedule,
        prediction: str = "eps",
        time: str | Callable[[float], float] | None = None,
        guidance: float | None = None,
        cond: Mapping[str, Any] | None = None,
        uncond: Mapping[str, Any] | None = None,
        model_kwargs: Mapping[str, Any] | None = None,
        time_dtype: torch.dtype = torch.float32,
        guidance_rescale: float = 0.0,
        denoised_transform: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
    ):
        if not callable(model):
            raise TypeError(f"model must be callable as model(x, t, **kwargs), got {type(model).__name__}")
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a diffsolve Schedule, got {type(schedule).__name__}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction={prediction!r} is not known; allowed: {', '.join(PREDICTIONS)}")
        time = schedule.default_time if time is None else time
        if not callable(time) and time not in TIME_CONVENTIONS:
            raise ValueError(
                f"time={time!r} is not known; allowed: {', '.join(TIME_CONVENTIONS)} or a callable sigma -> t"
            )
        if time == "index" and not hasattr(schedule, "num_steps"):
            raise ValueError("time='index' needs a DiscreteSchedule; use time='t' or 'sigma' for continuous schedules")
        if guidance is not None:
            if cond is None or uncond is None:
                raise ValueError("guidance needs both cond= and uncond= keyword dictionaries")
            if set(cond) != set(uncond):
                raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
        elif cond is not None or uncond is not None:
            raise ValueError("cond=/uncond= are for classifier-free guidance: also pass guidance=<scale>")
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
        if denoised_transform is not None and not callable(denoised_transform):
            raise TypeError("denoised_transform must be a callable (denoised, sigma) -> denoised")
        self.model = model
        self.schedule = schedule
        self.prediction = "x0" if prediction == "sample" else prediction
        self.time = time
        self.guidance = None if guidance is None else float(guidance)
        self.cond = dict(cond or {})
        self.uncond = dict(uncond or {})
        self.model_kwargs = dict(model_kwargs or {})
        self.time_dtype = time_dtype
        self.guidance_rescale = float(guidance_rescale)
        self.denoised_transform = denoised_transform
        self.nfe = 0
        self._t_cache: dict[tuple, torch.Tensor] = {}
        self._level_cache: dict[float, tuple[float, float]] = {}
        self._guided_kwargs: dict[str, Any] | None = None
        # finite-ness record of each model output (device scalars; read once per run)
        self._out_sums: list[torch.Tensor] = []
        self._out_where: list[tuple[int, float]] = []
        self.step_index = -1
        # added to step_index in the records: the driver's steps taken before the solver's (invert)
        self.step_offset = 0
        # whether model outputs are recorded for the finite check: only inside a driver run
        # with check_finite (direct calls and check_finite=False skip the extra reduction)
        self._recording = False
        # the model's sigma range, read once (a schedule's properties may index tensors)
        self._sigma_range = (float(schedule.sigma_min), float(schedule.sigma_max))
        #: dtype the model is called in (set by the driver to x_T's dtype; None: the state's)
        self.input_dtype: torch.dtype | None = None

    # -- time ------------------------------------------------------------------------
    def model_time(self, sigma: float) -> float:
        """The value fed to the model as its time at noise level ``sigma``."""
        lo, hi = self._sigma_range
        s = min(max(sigma, lo), hi)
        if callable(self.time):
            return float(self.time(s))
        if self.time in ("index", "t"):
            return float(self.schedule.t(s))
        if self.time == "sigma":
            return s
        if self.time == "edm":  # EDM's c_noise = ln(sigma) / 4
            return math.log(s) / 4
        return math.log(s)  # "log-sigma"

    def _time_tensor(self, sigma: float, batch: int, device) -> torch.Tensor:
        key = (sigma, batch, device)
        t = self._t_cache.get(key)
        if t is None:
            if len(self._t_cache) > 4096:
                self._t_cache.clear()
            t = torch.full((batch,), self.model_time(sigma), dtype=self.time_dtype, device=device)
            self._t_cache[key] = t
        return t

    # -- model call --------------------------------------------------------------------
    def _call(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        state_dtype = x.dtype
        if self.input_dtype is not None and state_dtype != self.input_dtype:
            x = x.to(self.input_dtype)
        batch = x.shape[0] if x.dim() > 0 else 1
        if self.guidance is None:
            out = self.model(x, self._time_tensor(sigma, batch, x.device), **self.model_kwargs)
        else:
            kwargs = self._batched_guidance_kwargs()
            t = self._time_tensor(sigma, 2 * batch, x.device)
            both = self.model(torch.cat([x, x]), t, **kwargs, **self.model_kwargs)
            _check_output(both, (2 * batch, *x.shape[1:]))
            out_c, out_u = both[:batch], both[batch:]
            out = out_u + self.guidance * (out_c - out_u)
            if self.guidance_rescale > 0:
                out = _rescale_guidance(out, out_c, self.guidance_rescale)
        self.nfe += 1
        _check_output(out, x.shape)
        if out.dtype != state_dtype:
            out = out.to(state_dtype)
        if self._recording:
            self._out_sums.append((out.detach() if out.requires_grad else out).sum(dtype=torch.float32))
            self._out_where.append((self.step_index + self.step_offset, sigma))
        return out

    def _batched_guidance_kwargs(self) -> dict[str, Any]:
        if self._guided_kwargs is None:
            kw = {}
            for k in self.cond:
                c, u = self.cond[k], self.uncond[k]
                if isinstance(c, torch.Tensor):
                    kw[k] = torch.cat([c, u])
                elif c == u:
                    kw[k] = c
                else:
                    raise ValueError(f"guidance kwarg {k!r}: non-tensor values must be equal in cond and uncond")
            self._guided_kwargs = kw
        return self._guided_kwargs

    # -- the ODE -----------------------------------------------------------------------
    def predict(self, xbar: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """One model call at (xbar, sigma): returns ``(denoised, eps)`` (E9-E17).

        ``sigma`` is a Python float (float64); the coefficients are formed in float64
        and applied in the state's dtype. Outside the schedule's ``[sigma_min, sigma_max]``
        the model is evaluated at the nearest end of its range and eps is held there: at
        sigma = 0 (the first step of :func:`~diffsolve.invert`) that is the model's smallest
        level on the clean input.

        With a ``denoised_transform`` (clipping, dynamic thresholding) the transformed D
        is returned with the eps that is consistent with it, eps = (xbar - D)/sigma, so the
        pair stays on one ray (ddim-math.md pitfall 1).
        """
        denoised, eps = self._predict(xbar, float(sigma), True)
        if self.denoised_transform is None:
            return denoised, eps
        denoised = self.denoised_transform(denoised, float(sigma))
        if sigma == 0:
            return denoised, eps
        return denoised, (xbar - denoised) / float(sigma)

    def predict_at_infinity(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One model call at sigma = inf, the pure-noise level (t = 1 of a flow model, alpha_bar = 0
        of a zero-terminal-SNR VP model), on the model-space state ``x``: returns ``(denoised, eps)``.

        There scale(sigma) sigma -> 1, so the state is the noise itself: eps = x. D is the limit of
        the table above: flow x - out (E17 at t = 1), v -out (E12 at alpha_bar = 0), x0 out. An
        eps-prediction model gives no D there (E9 divides by alpha_bar = 0): an error.
        """
        p = self.prediction
        if self.schedule.space not in ("vp", "flow"):
            raise ValueError(f"a grid starting at sigma = inf needs a VP or flow schedule (its state stays finite "
                             f"there); this one is {self.schedule.space!r}: start the grid at a finite sigma")
        if p not in ("flow", "v", "x0"):
            raise ValueError(f"a grid starting at sigma = inf needs a flow, v or x0 prediction; this model predicts "
                             f"{p!r}, whose x0 is undefined at the pure-noise level: start the grid at a finite sigma")
        if callable(self.time):
            t = float(self.time(math.inf))
        elif self.time in ("index", "t"):
            t = float(self.schedule.t(math.inf))
        else:
            raise ValueError(f"time={self.time!r} has no value at sigma = inf: start the grid at a finite sigma")
        if not math.isfinite(t):
            raise ValueError("the model's time at sigma = inf is not finite: start the grid at a finite sigma")
        batch = x.shape[0] if x.dim() else 1
        for b in (batch, 2 * batch):  # the model's time at t = 1, also for a guided (doubled) batch
            self._t_cache[(math.inf, b, x.device)] = torch.full((b,), t, dtype=self.time_dtype, device=x.device)
        out = self._call(x, math.inf)
        denoised = x - out if p == "flow" else (-out if p == "v" else out)
        if self.denoised_transform is not None:
            denoised = self.denoised_transform(denoised, math.inf)
        return denoised, x

    def _predict(self, xbar: torch.Tensor, sigma: float, need_denoised: bool):
        # the model is evaluated inside its own range [sigma_min, sigma_max]; outside it, eps is
        # held at its value at the nearest level and D stays on the ray D = xbar - sigma eps (E9),
        # so no conversion divides by a sigma the model was not evaluated at
        s, a = self._level(sigma)
        out = self._call(xbar * a if a != 1.0 else xbar, s)
        if not need_denoised and self.prediction == "eps":
            return None, out
        denoised, eps = self._convert(out, xbar, s, a)
        if s != sigma and need_denoised:
            denoised = torch.add(xbar, eps, alpha=-sigma) if sigma != 0 else xbar
        return denoised, eps

    def _convert(self, out: torch.Tensor, xbar: torch.Tensor, sigma: float, a: float):
        """(denoised, eps) from the raw output at (xbar, sigma): the table of the module docstring."""
        p = self.prediction
        if p == "eps":
            return (torch.add(xbar, out, alpha=-sigma) if sigma != 0 else xbar), out
        if p == "x0":
            if sigma == 0:
                raise ValueError("an x0-prediction model gives no eps at sigma = 0 (its schedule's sigma_min is 0); "
                                 "use a schedule with sigma_min > 0 or a grid that does not evaluate sigma = 0")
            return out, (xbar - out) / sigma
        if p == "v":
            r2 = 1.0 + sigma * sigma
            r = math.sqrt(r2)
            return xbar / r2 - (sigma / r) * out, (sigma / r2) * xbar + out / r
        if p == "score":
            scaled = -(a * sigma) * out
            return xbar - sigma * scaled, scaled
        # flow velocity u = eps - x0
        denoised = (xbar - sigma * out) / (1.0 + sigma)
        return denoised, out + denoised

    def denoised(self, xbar: torch.Tensor, sigma: float) -> torch.Tensor:
        """The x0-prediction D(xbar; sigma) (one model call)."""
        return self.predict(xbar, sigma)[0]

    def eps(self, xbar: torch.Tensor, sigma: float) -> torch.Tensor:
        """The ODE's right-hand side d xbar / d sigma = eps (E29; one model call).

        Cheaper than :meth:`predict` when only eps is needed: an eps-model's D is not formed.
        """
        if self.denoised_transform is not None:
            return self.predict(xbar, sigma)[1]
        return self._predict(xbar, float(sigma), False)[1]

    __call__ = eps

    def _level(self, sigma: float) -> tuple[float, float]:
        """``(s, scale(s))`` with s = sigma clamped to the model's range; cached per sigma (the
        driver evaluates the same few grid levels on every run)."""
        hit = self._level_cache.get(sigma)
        if hit is None:
            lo, hi = self._sigma_range
            s = min(max(sigma, lo), hi)
            hit = (s, self.schedule.scale(s))
            if len(self._level_cache) > 4096:
                self._level_cache.clear()
            self._level_cache[sigma] = hit
        return hit

    def model_sees_state(self, sigma: float) -> bool:
        """Whether the model call at ``sigma`` may be handed the state tensor itself (True), or
        surely a new tensor: the scaled input x = scale(sigma) xbar of a VP model (False)."""
        return self._level(float(sigma))[1] == 1.0

    # -- spaces ------------------------------------------------------------------------
    def to_xbar(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Model space -> sigma-form state: xbar = x / scale(sigma) (E6)."""
        a = self.schedule.scale(float(sigma))
        return x / a if a != 1.0 else x

    def from_xbar(self, xbar: torch.Tensor, sigma: float) -> torch.Tensor:
        """Sigma-form state -> model space: x = scale(sigma) xbar (E6)."""
        a = self.schedule.scale(float(sigma))
        return xbar * a if a != 1.0 else xbar

    # -- bookkeeping used by the driver --------------------------------------------------
    def _start_run(self) -> None:
        self._out_sums.clear()
        self._out_where.clear()

    def _first_nonfinite_output(self) -> tuple[int, float] | None:
        if not self._out_sums:
            return None
        bad = ~torch.isfinite(torch.stack(self._out_sums))
        if not bool(bad.any()):
            return None
        return self._out_where[int(bad.nonzero()[0, 0])]

    def __repr__(self) -> str:
        return f"DiffusionODE(prediction={self.prediction!r}, time={self.time!r}, schedule={self.schedule!r}, nfe={self.nfe})"


def _rescale_guidance(guided: torch.Tensor, cond_out: torch.Tensor, phi: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2024, eqs. 15-16): match the guided output's per-sample std
    to the conditional output's, then blend with weight ``phi``."""
    dims = tuple(range(1, guided.dim()))
    std_cond = cond_out.std(dim=dims, keepdim=True)
    std_guided = guided.std(dim=dims, keepdim=True)
    rescaled = guided * (std_cond / std_guided)
    return phi * rescaled + (1 - phi) * guided


def _check_output(out, shape) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model must return a torch.Tensor, got {type(out).__name__}")
    if out.shape != shape:
        raise ValueError(f"the model returned shape {tuple(out.shape)}; expected the input's shape {tuple(shape)}")


def wrap(
    model: Callable[..., torch.Tensor],
    schedule: Schedule,
    prediction: str = "eps",
    time: str | Callable[[float], float] | None = None,
    guidance: float | None = None,
    **options: Any,
) -> DiffusionODE:
    """Wrap ``model(x, t, **kwargs)`` as the sigma-form ODE.

    Args:
        model: called as ``model(x, t, **kwargs)`` with ``x`` in the model's own space
            (``scale(sigma) * xbar``) and ``t`` a 1-D tensor of the batch size.
        schedule: the model's noise schedule.
        prediction: what the model returns: ``"eps"``, ``"x0"`` (alias ``"sample"``), ``"v"``,
            ``"score"`` (gradient of log-density in the model's space) or ``"flow"`` (u = eps - x0).
        time: what ``t`` the model is fed: ``"index"`` (fractional DDPM index, integer at the
            schedule's own levels), ``"t"`` (the schedule's continuous time), ``"sigma"``,
            ``"edm"`` (ln(sigma)/4), ``"log-sigma"`` or a callable ``sigma -> t``. Default: the
            schedule's own convention.
        guidance: classifier-free guidance scale w; the output is ``u + w (c - u)`` of one
            batched call on ``cat([x, x])`` with ``cond`` and ``uncond`` kwargs concatenated
            (one NFE per guided evaluation).
        options: ``cond=``, ``uncond=`` (dicts of model kwargs), ``model_kwargs=`` (passed
            to every call), ``time_dtype=`` (default float32), ``guidance_rescale=`` (phi of
            Lin et al. 2024, default 0), ``denoised_transform=`` (a callable (D, sigma) -> D,
            e.g. clipping or dynamic thresholding; eps is recomputed to stay consistent).
    """
    return DiffusionODE(model, schedule, prediction=prediction, time=time, guidance=guidance, **options)
