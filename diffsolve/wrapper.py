"""The model wrapper: any diffusion model as the one sigma-form ODE (docs/math.md E29)

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

import copy
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .guidance.base import Guidance
from .schedules import Schedule
from .validation import check_finite_number, suggest

__all__ = ["DiffusionODE", "Run", "wrap", "PREDICTIONS", "TIME_CONVENTIONS", "NonFiniteError"]

PREDICTIONS = ("eps", "x0", "sample", "v", "score", "flow")
#: other spellings accepted for ``prediction`` (diffusers' ``prediction_type`` names among them)
PREDICTION_ALIASES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
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

    #: whether this ODE's predictions are renoising (CFG++, DDNM: (denoised, eps) off the state's ray);
    #: a solver then continues from :meth:`renoised` (docs/math.md, "Renoising predictions")
    renoise = False

    def __init__(
        self,
        model: Callable[..., torch.Tensor],
        schedule: Schedule,
        prediction: str = "eps",
        time: str | Callable[[float], float] | None = None,
        guidance: float | Guidance | None = None,
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
        if not isinstance(prediction, str):
            raise TypeError(f"prediction must be a string, one of {', '.join(PREDICTIONS)}; got {prediction!r}")
        prediction = PREDICTION_ALIASES.get(prediction, prediction)
        if prediction not in PREDICTIONS:
            raise ValueError(
                f"prediction={prediction!r} is not known{suggest(prediction, [*PREDICTIONS, *PREDICTION_ALIASES])}; "
                f"allowed: {', '.join(PREDICTIONS)} (aliases: {', '.join(PREDICTION_ALIASES)})"
            )
        time = schedule.default_time if time is None else time
        if not callable(time) and time not in TIME_CONVENTIONS:
            raise ValueError(
                f"time={time!r} is not known{suggest(time, TIME_CONVENTIONS)}; allowed: {', '.join(TIME_CONVENTIONS)} "
                "or a callable sigma -> t"
            )
        if time == "index" and not hasattr(schedule, "num_steps"):
            raise ValueError("time='index' needs a DiscreteSchedule; use time='t' or 'sigma' for continuous schedules")
        method = guidance if isinstance(guidance, Guidance) else None
        if method is not None:
            guidance = None
            if method.second == "weak":  # autoguidance: both models see the condition; uncond is not used
                if uncond is not None:
                    raise ValueError(
                        f"guidance {method.name!r} calls the model and its weak_model both with cond=; uncond= "
                        "would be ignored: drop it"
                    )
                uncond = cond
                if cond is None:
                    raise ValueError(f"guidance {method.name!r} needs cond= (a dict of model keyword arguments)")
            elif cond is None or uncond is None:
                raise ValueError(f"guidance {method.name!r} needs both cond= and uncond= keyword dictionaries")
            interval = getattr(method, "sigma_interval", None)
            lo_s, hi_s = float(schedule.sigma_min), float(schedule.sigma_max)
            if interval is not None and (interval[0] >= hi_s or interval[1] < lo_s):
                raise ValueError(
                    f"guidance {method.name!r}: sigma_interval={interval} does not meet the model's sigma range "
                    f"[{lo_s:.6g}, {hi_s:.6g}], so the guidance would never apply: pick (lo, hi] inside that range"
                )
            if guidance_rescale:
                raise ValueError(
                    "guidance_rescale= applies to a float guidance scale; with a guidance method use "
                    "make_guidance('cfg-rescale', scale=..., phi=...)"
                )
        if isinstance(guidance, str):
            raise TypeError(
                f"guidance must be a number (the CFG scale) or a method from ds.make_guidance, got {guidance!r}: "
                f"use guidance=ds.make_guidance({guidance!r}, scale=...)"
            )
        if guidance is not None:
            guidance = check_finite_number(guidance, "guidance")
            if cond is None or uncond is None:
                raise ValueError("guidance needs both cond= and uncond= keyword dictionaries")
        if guidance is not None or method is not None:
            for label, kw in (("cond", cond), ("uncond", uncond)):
                if not isinstance(kw, Mapping):
                    raise TypeError(f"{label} must be a dict of model keyword arguments, got {type(kw).__name__}")
            if set(cond) != set(uncond):
                raise ValueError(f"cond and uncond must have the same keys, got {sorted(cond)} and {sorted(uncond)}")
        elif cond is not None or uncond is not None:
            raise ValueError(
                "cond=/uncond= are for classifier-free guidance: also pass guidance=<scale or ds.make_guidance(...)>"
            )
        if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
            raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}")
        if not isinstance(time_dtype, torch.dtype):
            raise TypeError(f"time_dtype must be a torch.dtype (e.g. torch.float32), got {time_dtype!r}")
        guidance_rescale = check_finite_number(guidance_rescale, "guidance_rescale")
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}")
        if guidance_rescale and guidance is None and method is None:
            raise ValueError(
                f"guidance_rescale={guidance_rescale} rescales classifier-free guidance, but no guidance= was given, "
                "so it would be ignored: also pass guidance=<scale> with cond= and uncond=, or drop guidance_rescale"
            )
        if denoised_transform is not None and not callable(denoised_transform):
            raise TypeError("denoised_transform must be a callable (denoised, sigma) -> denoised")
        self.model = model
        self.schedule = schedule
        self.prediction = "x0" if prediction == "sample" else prediction
        self.time = time
        self.guidance = None if guidance is None else float(guidance)
        #: the guidance method (docs/guidance.md), or None (no guidance, or a float ``guidance``)
        self.guidance_method: Guidance | None = method
        if method is not None and method.renoise:
            self.renoise = True  # RENOISE_SPEC: solvers continue from denoised + sigma * eps
        self.cond = dict(cond or {})
        self.uncond = dict(uncond or {})
        self.model_kwargs = dict(model_kwargs or {})
        self.time_dtype = time_dtype
        self.guidance_rescale = float(guidance_rescale)
        self.denoised_transform = denoised_transform
        # caches shared by every run (and thread), each bounded by _CACHE_LIMIT entries. The float
        # caches are plain dicts of immutable values (a single get or set is atomic; a clear only
        # costs a recomputation, which gives the same bits). A time tensor is taken out of its
        # cache for the length of one model call (see _time_tensor), so no two calls hold it.
        # time tensors, shared by the ODEs on one schedule with one time convention and dtype
        self._t_cache: dict[tuple, torch.Tensor] = schedule_memo(schedule, "time-tensors")
        # t(sigma) of the schedule, shared by every ODE on it: a user who wraps anew pays it once
        self._time_value: dict[float, float] = schedule_memo(schedule, "t")
        self._level_cache: dict[float, tuple[float, float, torch.Tensor]] = schedule_memo(schedule, "level")
        # the guided call's kwargs (cond and uncond concatenated), built once here and never changed
        self._guided_kwargs: dict[str, Any] | None = (
            self._batched_guidance_kwargs() if guidance is not None or method is not None else None
        )
        # the model's sigma range, read once (a schedule's properties may index tensors)
        self._sigma_range = (float(schedule.sigma_min), float(schedule.sigma_max))
        self._counter = _CallCounter()
        #: the run this view belongs to (see :meth:`start_run`); None on the ODE ``wrap`` returns
        self._run: Run | None = None

    def rows(self, idx: torch.Tensor | Sequence[int], n: int) -> DiffusionODE:
        """This ODE restricted to the samples ``idx`` of a batch of ``n``: what sampling ``x_T[idx]`` needs when
        the model's keyword arguments hold per-sample conditioning (``cond``, ``uncond``, ``model_kwargs``:
        class labels, text embeddings), e.g. ``ds.tune``'s fit part of x_T.

        Every keyword value is sliced by one rule (nested dicts, such as diffusers' ``added_cond_kwargs``,
        alike): a tensor whose leading dimension is ``n`` is per-sample and becomes ``value[idx]``; a
        0-dimensional tensor, a tensor with leading dimension 1 (broadcast over the batch) and a non-tensor
        value are shared and kept. Anything else is refused with a ``ValueError`` naming the keyword: a tensor
        with another leading dimension, a list or tuple of ``n`` items (per-sample or not: the rule cannot
        tell). The guidance method and the ``denoised_transform`` are restricted through their own
        ``rows(idx, n)`` (built-in ones hold no per-sample state and return themselves); one without it is
        refused, as is a subclass of DiffusionODE that does not define its own ``rows`` and a run's view.
        Model calls through the result count on this ODE's ``nfe``; the model itself is shared.

        Args:
            idx: indices into the batch of ``n`` (a LongTensor or a sequence of ints in ``[0, n)``).
            n: the number of samples the per-sample conditioning was made for (``x_T.shape[0]``).
        """
        if type(self).rows is DiffusionODE.rows and type(self) is not DiffusionODE:
            raise TypeError(
                f"{type(self).__name__} does not define rows(idx, n): it may hold per-sample state the base rule "
                "cannot see; restrict the plain ODE it was made from instead"
            )
        if self._run is not None:
            raise ValueError("rows() of a run's view: restrict the ODE itself (ode.rows), not a view inside a run")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be the batch size, a positive int, got {n!r}")
        idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= n:
            raise ValueError(f"idx must be a non-empty set of indices in [0, {n}), got {idx.tolist()!r}")
        view = copy.copy(self)
        view.cond = _rows_of(self.cond, idx, n, "cond")
        view.uncond = _rows_of(self.uncond, idx, n, "uncond")
        view.model_kwargs = _rows_of(self.model_kwargs, idx, n, "model_kwargs")
        if self.guidance_method is not None:
            view.guidance_method = _rows_by_protocol(self.guidance_method, idx, n, "guidance")
        if self.denoised_transform is not None:
            view.denoised_transform = _rows_by_protocol(self.denoised_transform, idx, n, "denoised_transform")
        if self._guided_kwargs is not None:
            view._guided_kwargs = view._batched_guidance_kwargs()
        return view

    def renoised(self, x: torch.Tensor, denoised: torch.Tensor, eps: torch.Tensor, sigma: float) -> torch.Tensor:
        """The state a solver continues from after ``predict(x, sigma)``: ``x`` itself, or, when this ODE's
        predictions are renoising (``self.renoise``: CFG++, DDNM), ``denoised + sigma * eps`` (docs/math.md,
        "Renoising predictions")."""
        if not self.renoise or sigma == 0:
            return x
        return torch.add(denoised, eps, alpha=float(sigma))

    @property
    def nfe(self) -> int:
        """Model calls made through this ODE so far, by every run (a guided call is one NFE)."""
        return self._counter.value

    @nfe.setter
    def nfe(self, value: int) -> None:
        self._counter.value = int(value)

    @property
    def run(self) -> Run | None:
        """The run this view serves (None for the ODE itself)."""
        return self._run

    @property
    def wants_denoised(self) -> bool:
        """Whether someone outside the solver (a callback) reads the denoised estimate a step
        returns. Only a run's view can say no; :meth:`evaluate` uses it to skip forming D."""
        return self._run is None or self._run.wants_denoised

    # -- runs ------------------------------------------------------------------------
    def start_run(
        self,
        *,
        input_dtype: torch.dtype | None = None,
        record: bool = False,
        wants_denoised: bool = True,
        sigmas: Sequence[float] | None = None,
    ) -> DiffusionODE:
        """A view of this ODE for one run: same model, schedule and caches, its own run state.

        The driver (:func:`diffsolve.sample`, :func:`diffsolve.invert`, exact inversion, the
        diffusers scheduler) makes one per run and hands it to the solver, so nothing of a run
        stays on the ODE the user holds: the ODE can be shared by threads and reused.

        Args:
            input_dtype: dtype the model is called in (x_T's; None: the state's).
            record: record a sum of every model output (in the state's dtype), to name the step where NaN/inf
                first appeared (:meth:`Run.first_nonfinite`).
            wants_denoised: whether a callback reads each step's denoised estimate.
            sigmas: the run's grid: the model's times for all its levels are computed at once.
        """
        view = copy.copy(self)
        view._run = Run(input_dtype=input_dtype, record=record, wants_denoised=wants_denoised)
        if sigmas is not None:
            self._prepare_times(sigmas)
        return view

    def _prepare_times(self, sigmas: Sequence[float]) -> None:
        """The model's time at every given sigma, in one vectorized schedule call."""
        if callable(self.time) or self.time not in ("index", "t"):
            return  # closed forms (sigma, edm, log-sigma) or a user callable: nothing to batch
        todo = [s for s in dict.fromkeys(sigmas) if s not in self._time_value and s != math.inf][:_CACHE_LIMIT]
        if not todo:
            return
        lo, hi = self._sigma_range
        clamped = torch.tensor([min(max(s, lo), hi) for s in todo], dtype=torch.float64)
        if len(self._time_value) + len(todo) > _CACHE_LIMIT:
            self._time_value.clear()
        self._time_value.update(zip(todo, self.schedule.t(clamped).tolist()))

    # -- time ------------------------------------------------------------------------
    def model_time(self, sigma: float) -> float:
        """The value fed to the model as its time at noise level ``sigma``."""
        if sigma == math.inf:  # the pure-noise level (t = 1 of a flow model): see predict_at_infinity
            return self._time_at_infinity()
        if not callable(self.time) and self.time in ("index", "t"):
            hit = self._time_value.get(sigma)  # the schedule's t, shared by the ODEs on it
            if hit is not None:
                return hit
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

    def model_times(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The model's times at a tensor of finite sigmas (one per sample, say), float64: the
        per-element :meth:`model_time`, vectorized for the schedule's own time (``index``, ``t``)
        and the closed forms; a user's time callable is called once per distinct sigma."""
        s = sigmas.to(torch.float64).clamp(*self._sigma_range)
        if callable(self.time):
            values = s.tolist()
            once = {v: float(self.time(v)) for v in dict.fromkeys(values)}
            return torch.tensor([once[v] for v in values], dtype=torch.float64)
        if self.time in ("index", "t"):
            return self.schedule.t(s).to(torch.float64)
        if self.time == "sigma":
            return s
        if self.time == "edm":  # EDM's c_noise = ln(sigma) / 4
            return torch.log(s) / 4
        return torch.log(s)  # "log-sigma"

    def _time_tensor(self, sigma: float, batch: int, device) -> tuple[tuple, torch.Tensor, int]:
        """The model's time tensor at ``sigma``, taken out of the shared cache (or new), with its
        cache key and version: :meth:`_return_time` puts it back after the model call unless the
        model wrote into it. Taken out, it is held by one model call at a time, so a model that
        modifies its time input in place cannot change another thread's call or a later run."""
        key = (sigma, batch, device, self.time, self.time_dtype)
        if device != _CPU and device.type == "cuda":  # filled on this thread's stream: read it only there
            key += (torch.cuda.current_stream(device).cuda_stream,)
        t = self._t_cache.pop(key, None)
        if t is None:
            value = self.model_time(sigma)
            if not self.time_dtype.is_floating_point:
                value = self._integer_time(value, sigma)
            t = _cacheable(torch.full, (batch,), value, dtype=self.time_dtype, device=device)
        return key, t, t._version

    def _integer_time(self, value: float, sigma: float) -> int:
        """The model time for an integer ``time_dtype``: the nearest integer when ``value`` is one up to
        rounding (the schedule's own levels), else an error (a cast would truncate, e.g. 998.9999 -> 998)."""
        n = round(value)
        if abs(value - n) > 1e-6 * max(1.0, abs(value)):
            raise ValueError(
                f"the model's time at sigma = {sigma:.6g} is {value:.6g}, not an integer, and time_dtype={self.time_dtype} "
                "would truncate it: use a grid on the schedule's own levels (trailing, leading, linspace, ...) or a "
                "floating-point time_dtype"
            )
        return n

    def _return_time(self, key: tuple, t: torch.Tensor, version: int) -> None:
        if t._version != version:
            return  # the model wrote into it: a new one is made next time
        if len(self._t_cache) >= _CACHE_LIMIT:
            self._t_cache.clear()
        self._t_cache[key] = t

    # -- model call --------------------------------------------------------------------
    def _call(
        self, x: torch.Tensor, sigma: float, model=None, kwargs=None, count: bool = True, times=None
    ) -> torch.Tensor:
        """One model evaluation at (x, sigma), output in the state's dtype, counted and recorded for the run.

        Without ``model``: ``self.model``, with the float CFG combine (both halves in one batched call, combined
        in the model's dtype before the cast). With ``model`` and ``kwargs``: one call of a guidance method
        (:meth:`_predict_guided`) on ``x`` (the batch, or the conditional and unconditional halves stacked);
        ``count``: one NFE per guided evaluation, whatever the number of calls it makes (the weak model's is
        not counted). ``times``: the model's time per sample instead of sigma's (a ``(batch,)`` tensor,
        :meth:`model_times`), for per-sample levels (time shift, docs/math.md 3.8); ``sigma`` then only labels
        the call in the run's record."""
        state_dtype = x.dtype
        run = self._run
        if run is not None and run.input_dtype is not None and state_dtype != run.input_dtype:
            x = x.to(run.input_dtype)
        batch = x.shape[0] if x.dim() > 0 else 1
        key = None
        if times is not None:
            if times.shape != (batch,):
                raise ValueError(f"times must have one entry per sample, shape ({batch},); got {tuple(times.shape)}")
            if not self.time_dtype.is_floating_point:
                times = torch.tensor([self._integer_time(v, sigma) for v in times.tolist()], dtype=torch.float64)
            t = times.to(dtype=self.time_dtype, device=x.device)
        if model is not None:
            if times is None:
                key, t, version = self._time_tensor(sigma, batch, x.device)
            out = model(x, t, **kwargs, **self.model_kwargs)
            if key is not None:
                self._return_time(key, t, version)
        elif self.guidance is None:
            if times is None:
                key, t, version = self._time_tensor(sigma, batch, x.device)
            out = self.model(x, t, **self.model_kwargs)
            if key is not None:
                self._return_time(key, t, version)
        else:
            if times is None:
                key, t, version = self._time_tensor(sigma, 2 * batch, x.device)
            else:
                t = torch.cat([t, t])
            both = self.model(torch.cat([x, x]), t, **self._guided_kwargs, **self.model_kwargs)
            if key is not None:
                self._return_time(key, t, version)
            _check_output(both, (2 * batch, *x.shape[1:]))
            out_c, out_u = both[:batch], both[batch:]
            out = out_u + self.guidance * (out_c - out_u)
            if self.guidance_rescale > 0:
                out = _rescale_guidance(out, out_c, self.guidance_rescale)
        if count:
            self._counter.add()
        _check_output(out, x.shape)
        if out.dtype != state_dtype:
            out = out.to(state_dtype)
        if run is not None:
            run.nfe += count
            if run.record:
                # out is in the state's dtype (float32 or float64): its own sum is enough to see NaN/inf
                run.sums.append(torch.sum(out.detach() if out.requires_grad else out))
                run.where.append((run.step, sigma))
        return out

    def _batched_guidance_kwargs(self) -> dict[str, Any]:
        kw = {}
        for k in self.cond:
            c, u = self.cond[k], self.uncond[k]
            if isinstance(c, torch.Tensor):
                kw[k] = torch.cat([c, u])
            elif c == u:
                kw[k] = c
            else:
                raise ValueError(f"guidance kwarg {k!r}: non-tensor values must be equal in cond and uncond")
        return kw

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
        pair stays on one ray (docs/math.md pitfall 1).
        """
        denoised, eps = self._predict(xbar, float(sigma), True)
        if self.denoised_transform is None:
            return denoised, eps
        denoised = self.denoised_transform(denoised, float(sigma))
        if sigma == 0 or self.renoise:  # a renoising pair keeps its eps (docs/math.md#guidance-cfgpp)
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
            raise ValueError(
                f"sigmas start at sigma = inf, which needs a VP or flow schedule (its state stays finite "
                f"there); this one is {self.schedule.space!r}: start the grid at a finite sigma"
            )
        if p not in ("flow", "v", "x0"):
            raise ValueError(
                f"sigmas start at sigma = inf, which needs a flow, v or x0 prediction; this model predicts "
                f"{p!r}, whose x0 is undefined at the pure-noise level: start the grid at a finite sigma"
            )
        if self.guidance_method is not None:
            raise ValueError(
                f"guidance method {self.guidance_method.name!r} with a grid that starts at sigma = inf is not "
                "supported: start the grid at a finite sigma (or use a float guidance scale)"
            )
        out = self._call(x, math.inf)
        denoised = x - out if p == "flow" else (-out if p == "v" else out)
        if self.denoised_transform is not None:
            denoised = self.denoised_transform(denoised, math.inf)
        return denoised, x

    def _time_at_infinity(self) -> float:
        """The model's time at sigma = inf (t = 1 of a flow model)."""
        if callable(self.time):
            t = float(self.time(math.inf))
        elif self.time in ("index", "t"):
            t = float(self.schedule.t(math.inf))
        else:
            raise ValueError(f"time={self.time!r} has no value at sigma = inf: start the grid at a finite sigma")
        if not math.isfinite(t):
            raise ValueError("the model's time at sigma = inf is not finite: start the grid at a finite sigma")
        return t

    def _predict_guided(self, xbar: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(denoised, eps)`` of a guidance method at (xbar, sigma): both predictions converted to
        (D, eps) at sigma (E9-E17, with the out-of-range rule of :meth:`_predict`), then combined by
        the method; outside its ``sigma_interval`` the conditional prediction alone (one call)."""
        method = self.guidance_method
        s, a, a_t = self._level(sigma)
        x = xbar * a_t if a != 1.0 else xbar
        if not method.active(sigma):
            return self._pair(self._call(x, s, self.model, self.cond), xbar, s, a, sigma)
        if method.second == "weak":
            out = self._call(x, s, method.weak_model, self.cond, count=False)
            cond = self._pair(self._call(x, s, self.model, self.cond), xbar, s, a, sigma)
            other = self._pair(out, xbar, s, a, sigma)
        else:
            both = self._call(torch.cat([x, x]), s, self.model, self._guided_kwargs)
            batch = x.shape[0]
            cond = self._pair(both[:batch], xbar, s, a, sigma)
            other = self._pair(both[batch:], xbar, s, a, sigma)
        run = self._run
        state = None
        if run is not None:
            state = run.guidance_state
            state["step"] = run.step
            state["scale"] = a  # scale(sigma): x = scale * xbar (E6)
        return method.combine(xbar, sigma, cond, other, state)

    def _pair(self, out, xbar, s, a, sigma):
        denoised, eps = self._convert(out, xbar, s, a)
        if s != sigma:
            denoised = torch.add(xbar, eps, alpha=-sigma) if sigma != 0 else xbar
        return denoised, eps

    def _predict(self, xbar: torch.Tensor, sigma: float, need_denoised: bool):
        if self.guidance_method is not None:
            return self._predict_guided(xbar, sigma)
        # the model is evaluated inside its own range [sigma_min, sigma_max]; outside it, eps is
        # held at its value at the nearest level and D stays on the ray D = xbar - sigma eps (E9),
        # so no conversion divides by a sigma the model was not evaluated at
        s, a, a_t = self._level(sigma)
        # x = scale(s) xbar (E6); a float64 0-dim tensor multiplies in x's dtype like a Python float
        # does, with less per-call overhead
        out = self._call(xbar * a_t if a != 1.0 else xbar, s)
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
                raise ValueError(
                    "an x0-prediction model gives no eps at sigma = 0 (its schedule's sigma_min is 0); "
                    "use a schedule with sigma_min > 0 or a grid that does not evaluate sigma = 0"
                )
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

    def evaluate(self, xbar: torch.Tensor, sigma: float, need_denoised: bool = False):
        """``(denoised, eps)`` from one model call, where ``denoised`` is None unless the caller
        (``need_denoised``) or the run's callback (:attr:`wants_denoised`) reads it: an eps
        model's D is then never formed. For solvers whose step only needs eps (DDIM, LMS)."""
        if need_denoised or self.wants_denoised:
            return self.predict(xbar, sigma)
        return None, self.eps(xbar, sigma)

    def _level(self, sigma: float) -> tuple[float, float, torch.Tensor]:
        """``(s, scale(s), scale(s) as a float64 0-dim tensor)`` with s = sigma clamped to the
        model's range; cached per sigma (the driver evaluates the same few grid levels on every run)."""
        hit = self._level_cache.get(sigma)
        if hit is None:
            lo, hi = self._sigma_range
            s = min(max(sigma, lo), hi)
            a = self.schedule.scale(s)
            hit = (s, a, _cacheable(torch.tensor, a, dtype=torch.float64))
            if len(self._level_cache) >= _CACHE_LIMIT:
                self._level_cache.clear()
            self._level_cache[sigma] = hit
        return hit

    # -- spaces ------------------------------------------------------------------------
    def to_xbar(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """Model space -> sigma-form state: xbar = x / scale(sigma) (E6)."""
        a = self.schedule.scale(float(sigma))
        return x / a if a != 1.0 else x

    def from_xbar(self, xbar: torch.Tensor, sigma: float) -> torch.Tensor:
        """Sigma-form state -> model space: x = scale(sigma) xbar (E6)."""
        a = self.schedule.scale(float(sigma))
        return xbar * a if a != 1.0 else xbar

    def __repr__(self) -> str:
        run = "" if self._run is None else ", run view"
        return (
            f"DiffusionODE(prediction={self.prediction!r}, time={self.time!r}, schedule={self.schedule!r}, "
            f"nfe={self.nfe}{run})"
        )


def _rows_of(kwargs: Mapping[str, Any], idx: torch.Tensor, n: int, where: str) -> dict[str, Any]:
    """The keyword arguments ``kwargs`` for the rows ``idx`` of a batch of ``n`` (the rule of
    :meth:`DiffusionODE.rows`)."""
    out = {}
    for key, value in kwargs.items():
        name = f"{where}[{key!r}]"
        if isinstance(value, Mapping):
            out[key] = _rows_of(value, idx, n, name)
        elif isinstance(value, torch.Tensor):
            if value.dim() >= 1 and value.shape[0] == n:
                out[key] = value[idx.to(value.device)]
            elif value.dim() == 0 or value.shape[0] == 1:
                out[key] = value
            else:
                raise ValueError(
                    f"{name} has leading dimension {value.shape[0]} for a batch of {n} samples: cannot tell which "
                    f"of its rows belong to which sample (per-sample tensors have leading dimension {n}; shared "
                    "ones 1 or none)"
                )
        elif isinstance(value, (list, tuple)) and len(value) == n and n > 1:
            raise ValueError(
                f"{name} is a {type(value).__name__} of {n} items, as many as the samples: cannot tell whether it "
                "is per-sample; pass per-sample conditioning as a tensor with leading dimension n"
            )
        else:
            out[key] = value
    return out


def _rows_by_protocol(obj: Any, idx: torch.Tensor, n: int, name: str) -> Any:
    """``obj.rows(idx, n)`` (a guidance method or denoised_transform restricted to rows), or an error naming
    ``name`` where ``obj`` does not say how."""
    rows = getattr(obj, "rows", None)
    if not callable(rows):
        raise TypeError(
            f"{name} {obj!r} has no rows(idx, n) method: cannot tell whether it holds per-sample state; give it "
            "one (returning itself when it acts on each sample alone, as Clipping and DynamicThresholding do)"
        )
    return rows(idx, n)


#: memos of schedules with a content key (Schedule.memo_key), shared by equal schedules made apart
_SHARED_MEMOS: dict[tuple, dict] = {}
_SHARED_LIMIT = 16


#: memos of the tensors a run is handed (batch-sized time tensors, grids): kept on the schedule object
#: alone, so they go with it and a run on a new schedule allocates (and is measured with) its own
_PER_OBJECT = frozenset({"time-tensors", "grids"})


def schedule_memo(schedule: Schedule, what: str) -> dict:
    """A memo dict kept on ``schedule`` (schedules are immutable once made), shared by every ODE
    and run on it and, but for :data:`_PER_OBJECT`, by every schedule of equal content
    (``schedule.memo_key()``): a schedule made anew per call from the same alphas_cumprod (what
    ``from_diffusers`` does) finds the model times and scales of the previous ones. Emptied when it
    passes :data:`_CACHE_LIMIT` entries."""
    slot = "_diffsolve_own_memo" if what in _PER_OBJECT else "_diffsolve_memo"
    memos = schedule.__dict__.get(slot)
    if memos is None:
        key = schedule.memo_key() if slot == "_diffsolve_memo" and hasattr(schedule, "memo_key") else None
        if key is None:
            memos = {}
        else:
            key = (type(schedule), *key)
            memos = _SHARED_MEMOS.get(key)
            if memos is None:
                if len(_SHARED_MEMOS) >= _SHARED_LIMIT:
                    _SHARED_MEMOS.clear()
                memos = _SHARED_MEMOS.setdefault(key, {})
        memos = schedule.__dict__.setdefault(slot, memos)
    memo = memos.setdefault(what, {})
    if len(memo) > _CACHE_LIMIT:
        memo.clear()
    return memo


class Run:
    """The state of one run, owned by the driver: what used to live on the ODE between runs.

    Attributes:
        input_dtype: dtype the model is called in (None: the state's).
        record: whether model outputs are summed for the finite check.
        wants_denoised: whether a callback reads each step's denoised estimate.
        step: the driver's step the next model calls belong to (for NaN reports).
        nfe: model calls made in this run.
        sums, where: per model call, the output's sum in the state's dtype (on the device) and (step, sigma).
    """

    __slots__ = ("input_dtype", "record", "wants_denoised", "step", "nfe", "sums", "where", "guidance_state")

    def __init__(self, input_dtype=None, record=False, wants_denoised=True):
        self.input_dtype, self.record, self.wants_denoised = input_dtype, record, wants_denoised
        self.step, self.nfe = 0, 0
        self.sums: list[torch.Tensor] = []
        self.where: list[tuple[int, float]] = []
        #: what a guidance method carries between evaluations of this run (APG's momentum), and the step
        self.guidance_state: dict = {}

    def first_nonfinite(self) -> tuple[int, float] | None:
        """``(step, sigma)`` of the first model call whose output was not finite (one host sync)."""
        if not self.sums:
            return None
        bad = ~torch.isfinite(torch.stack(self.sums))
        if not bool(bad.any()):
            return None
        return self.where[int(bad.nonzero()[0, 0])]


class _CallCounter:
    """A call counter shared by an ODE and its run views; exact under threads."""

    __slots__ = ("value", "_lock")

    def __init__(self):
        self.value = 0
        self._lock = threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n


_CPU = torch.device("cpu")


def _cacheable(make: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
    """``make(*args, **kwargs)`` as a normal tensor even under ``torch.inference_mode()``: a cached
    tensor outlives the run that made it, and a later run may need it in autograd (an inference
    tensor cannot be saved for backward) or need its version counter (an inference tensor has none)."""
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False):
            return make(*args, **kwargs)
    return make(*args, **kwargs)


#: entries each per-ODE cache (model times, noise levels, time tensors) may hold before it is
#: emptied: bounds an ODE's memory in a long-lived process however many grids it serves
#: (documented in docs/serving.md)
_CACHE_LIMIT = 4096


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
        hint = ""
        if isinstance(getattr(out, "sample", None), torch.Tensor):  # a diffusers model's output object
            hint = (
                " with a .sample tensor (a diffusers model): use ds.from_diffusers(model, scheduler), or wrap "
                "lambda x, t, **kw: model(x, t, **kw).sample"
            )
        raise TypeError(f"the model must return a torch.Tensor, got {type(out).__name__}{hint}")
    if not out.is_floating_point():
        raise TypeError(f"the model must return a floating-point tensor, got {out.dtype}")
    if out.shape != shape:
        raise ValueError(f"the model returned shape {tuple(out.shape)}; expected the input's shape {tuple(shape)}")


def wrap(
    model: Callable[..., torch.Tensor],
    schedule: Schedule,
    prediction: str = "eps",
    time: str | Callable[[float], float] | None = None,
    guidance: float | Guidance | None = None,
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
            (one NFE per guided evaluation). Or a guidance method from
            :func:`diffsolve.make_guidance` (``cfg``, ``cfg++``, ``apg``, ... docs/guidance.md),
            which combines the two predictions' (D, eps) pairs (docs/math.md#guidance).
        options: ``cond=``, ``uncond=`` (dicts of model kwargs), ``model_kwargs=`` (passed
            to every call), ``time_dtype=`` (default float32), ``guidance_rescale=`` (phi of
            Lin et al. 2024, default 0), ``denoised_transform=`` (a callable (D, sigma) -> D,
            e.g. clipping or dynamic thresholding; eps is recomputed to stay consistent).
    """
    return DiffusionODE(model, schedule, prediction=prediction, time=time, guidance=guidance, **options)
