"""Checks of a run's arguments, made before the first model call.

Every public entry point (:func:`diffsolve.sample`, :func:`diffsolve.invert`, exact inversion,
:func:`diffsolve.k_sampler`) checks what it was given here, so a wrong argument is a ``ValueError``
or ``TypeError`` that names the argument and says what is allowed, never an error from deep inside
torch or a model, and never a silent wrong answer:

* the start state: a floating-point tensor with a batch dimension, a non-empty batch, finite
  (NaN in ``x_T`` is not blamed on the model at step 0);
* the grid against the model's range: the model is trained on ``[sigma_min, sigma_max]``; a grid
  sigma outside it is an error naming the range unless ``allow_out_of_range=True`` (then the
  model is evaluated at the nearest end of its range and eps held there, docs/math.md E29 with
  the wrapper's rule). A relative tolerance :data:`RANGE_RTOL` absorbs rounding (a grid computed
  in float32, or ``(sigma_max^(1/rho))^rho``);
* the generator: None, a ``torch.Generator``, or a list of them as long as the batch, checked for
  every solver (a deterministic one draws nothing, but a wrong list is still a mistake);
* guidance: every tensor in ``cond``/``uncond`` has the batch of ``x``.

Also :func:`suggest`, the "did you mean" of unknown names.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from collections.abc import Iterable, Sequence

import torch

__all__ = [
    "RANGE_RTOL",
    "check_state",
    "check_sigma_range",
    "check_generator",
    "check_guidance_batch",
    "check_flag",
    "refuse_generator",
    "suggest",
    "closest",
]

#: relative tolerance of the range check: a grid's first sigma may exceed sigma_max by this much
#: (rounding) and still be evaluated at sigma_max without an error
RANGE_RTOL = 1e-5


def check_state(x, name: str = "x_T") -> None:
    """``x`` is a floating-point tensor with a non-empty batch dimension and finite entries."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, ...), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor (float16/bfloat16/float32/float64), got {x.dtype}")
    if x.dim() == 0:
        raise ValueError(
            f"{name} must have a batch dimension (shape (batch, ...)), got a 0-d tensor; "
            f"use {name}.reshape(1) or {name}[None]"
        )
    if x.numel() == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(x.shape)}): the batch and every sample dimension "
            "must have at least one entry"
        )
    # one reduction, no tensor of x's size: the float32 sum of finite entries is finite unless it
    # overflows (entries near 1e32), which the exact check below then clears
    if not math.isfinite(float(x.detach().sum(dtype=torch.float32))) and not bool(torch.isfinite(x).all()):
        n = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} has {n} non-finite entries (NaN or inf); the run would start from them")


def check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_sigma_range(ode, sigmas: Sequence[float], *, allow_out_of_range: bool, name: str = "sigmas") -> None:
    """Every positive grid sigma lies in the model's ``[sigma_min, sigma_max]`` (relative tolerance
    :data:`RANGE_RTOL`), unless ``allow_out_of_range``. sigma = 0 (the end of a sampling grid, the
    start of an inversion grid) is always allowed: no conversion divides by it (E27)."""
    if check_flag(allow_out_of_range, "allow_out_of_range"):
        return
    lo, hi = ode._sigma_range
    # sigma = inf may start a sampling grid (a flow model's t = 1): ODE.predict_at_infinity checks it
    positive = [s for s in sigmas if 0 < s < math.inf]
    if not positive:
        return
    top, bottom = max(positive), min(positive)
    if top > hi * (1 + RANGE_RTOL):
        raise ValueError(
            f"{name} reach sigma = {top:.6g}, above the model's range [{lo:.6g}, {hi:.6g}] "
            f"(its schedule's sigma_max); the model would be evaluated at sigma_max instead. Start the grid at "
            f"sigma <= {hi:.6g}, or pass allow_out_of_range=True to evaluate the model at the nearest end of "
            "its range (eps held there)"
        )
    if bottom < lo * (1 - RANGE_RTOL):
        raise ValueError(
            f"{name} reach sigma = {bottom:.6g}, below the model's range [{lo:.6g}, {hi:.6g}] "
            f"(its schedule's sigma_min) but above 0; the model would be evaluated at sigma_min instead. "
            f"Use levels >= {lo:.6g} (then 0), or pass allow_out_of_range=True to evaluate the model at the "
            "nearest end of its range (eps held there)"
        )


def check_generator(generator, batch: int) -> None:
    """None, a ``torch.Generator``, or a list/tuple with one generator per sample."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, (list, tuple)):
        raise TypeError(
            f"generator must be None, a torch.Generator or a list of them (one per sample), "
            f"got {type(generator).__name__}; e.g. generator=torch.Generator().manual_seed(0)"
        )
    bad = [type(g).__name__ for g in generator if not isinstance(g, torch.Generator)]
    if bad:
        raise TypeError(f"generator must be a list of torch.Generator (one per sample), got one holding {bad[0]}")
    if len(generator) != batch:
        raise ValueError(
            f"generator: got a list of {len(generator)} generators for a batch of {batch}; "
            "pass one per sample, or a single torch.Generator"
        )


def check_guidance_batch(ode, batch: int) -> None:
    """With guidance, every tensor in ``cond``/``uncond`` has the batch of ``x`` (the guided call is
    one model call on ``cat([x, x])`` with ``cat([cond, uncond])``)."""
    if getattr(ode, "guidance", None) is None:
        return
    for label, kw in (("cond", ode.cond), ("uncond", ode.uncond)):
        for key, value in kw.items():
            if isinstance(value, torch.Tensor) and (value.dim() == 0 or value.shape[0] != batch):
                got = "a 0-d tensor" if value.dim() == 0 else f"batch {value.shape[0]}"
                raise ValueError(
                    f"{label}[{key!r}] has {got}, but x has batch {batch}: guidance calls the "
                    f"model on cat([x, x]) with cat([cond, uncond]); give {label}[{key!r}] "
                    f"one entry per sample (e.g. .expand({batch}, ...))"
                )


def _spelling(name: str) -> str:
    """``name`` with case and punctuation normalised: lower case, ``+`` read as ``p`` (the field spells
    DPM-Solver++ "dpmpp" and CFG++ "cfgpp"), every other character but letters and digits dropped."""
    return re.sub(r"[^a-z0-9]", "", name.strip().lower().replace("+", "p"))


def closest(name, choices: Iterable[str]) -> str | None:
    """The choice closest to ``name``, or None: first one equal up to case and ``_`` versus ``-``, then one
    equal up to case and punctuation (:func:`_spelling`: "cfgpp" is "cfg++", "dpmpp2m" is "dpmpp-2m"),
    then difflib's closest on those normalised spellings, then on the names as given."""
    choices = list(choices)
    if not isinstance(name, str):
        return None
    canon = name.strip().lower().replace("_", "-")
    for c in choices:
        if c.lower().replace("_", "-") == canon:
            return c
    spelled = {}
    for c in choices:
        spelled.setdefault(_spelling(c), c)
    key = _spelling(name)
    if key in spelled:
        return spelled[key]
    hits = difflib.get_close_matches(key, list(spelled), n=1, cutoff=0.6) if key else []
    if hits:
        return spelled[hits[0]]
    hits = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return hits[0] if hits else None


def suggest(name, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    hit = closest(name, choices)
    return f" (did you mean {hit!r}?)" if hit is not None and hit != name else ""


def resolve_plugin(value, base: type, lookup, kind: str, options) -> tuple[object | None, type | None]:
    """How a solver, guidance method or restorer is given: an instance of ``base`` (returned as ``(value,
    None)``; ``options`` are refused, they belong on the instance), or a registry name (``lookup(name)``) or a
    subclass (``(None, cls)``); anything else is a TypeError naming what ``kind`` may be."""
    if isinstance(value, base):
        if options:
            raise ValueError(f"options {sorted(options)} given with a {kind} instance; set them on the instance")
        return value, None
    cls = lookup(value) if isinstance(value, str) else value
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise TypeError(f"{kind} must be a registered name, a {base.__name__} subclass or an instance, got {value!r}")
    return None, cls


def check_options(kind: str, name: str, options, known: Sequence[str]) -> None:
    """A ValueError for the ``options`` of ``kind`` ``name`` not in ``known``: the unknown ones, a did-you-mean and
    the known ones (the one wording of solvers, guidance methods and restorers)."""
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        raise ValueError(
            f"{kind} {name!r}: unknown option(s) {unknown}{suggest(unknown[0], known)}; "
            + (f"its options are: {', '.join(known)}" if known else "it takes no options")
        )


def check_count(value, name: str, low: int = 1) -> int:
    """``int(value)`` for an integer (not a bool) >= ``low``, else a ValueError naming ``name`` (step counts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_finite_number(value, name: str) -> float:
    """``float(value)`` for a real, finite number (not a bool), else a ValueError naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        and not (isinstance(value, torch.Tensor) and value.numel() == 1)
    ):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


def refuse_generator(options, what: str) -> None:
    """``generator=`` given to a deterministic run (``invert``, ``sample_reversible``) would reach the solver's
    options and be reported as an unknown solver option: say what is wrong instead."""
    if "generator" in options:
        raise TypeError(
            f"{what} takes no generator=: it runs a deterministic solver (no noise is drawn); drop generator="
        )
