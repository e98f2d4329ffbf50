"""Guidance methods as plugins (docs/guidance.md, docs/math.md#guidance).

    ode = ds.wrap(model, schedule, cond={"y": labels}, uncond={"y": null},
                  guidance=ds.make_guidance("apg", scale=8.0, eta=0.0, sigma_interval=(0.3, 20.0)))

``ds.list_guidance()`` names the registered methods; plugins add methods through the
``register_guidance`` hook (entry-point group ``diffsolve``), exactly as solvers.
"""

from __future__ import annotations

import inspect

from .apg import APG
from .autoguidance import Autoguidance
from .base import Guidance, Prediction, check_sigma_interval
from .builtins import BUILTIN_GUIDANCE
from .cfg import CFG
from .cfg_pp import CFGPlusPlus
from .cfg_rescale import CFGRescale
from .cfg_zero_star import CFGZeroStar

__all__ = [
    "Guidance",
    "Prediction",
    "make_guidance",
    "list_guidance",
    "check_sigma_interval",
    "CFG",
    "CFGPlusPlus",
    "APG",
    "CFGRescale",
    "CFGZeroStar",
    "Autoguidance",
    "BUILTIN_GUIDANCE",
]


def list_guidance() -> list[str]:
    """Names of the registered guidance methods (built-in and plugins), sorted."""
    from ..plugins.registry import get_registry

    return get_registry().guidance_names()


def make_guidance(name: str | type | Guidance, scale: float | None = None, **options) -> Guidance:
    """A guidance method from its registry name (or class) with ``scale`` and its options.

    Every method takes ``sigma_interval=(lo, hi)``; see each method's docstring for the rest. An
    unknown name lists the known ones with a did-you-mean; an unknown option lists the method's.
    """
    from ..plugins.registry import get_registry
    from ..validation import suggest

    if isinstance(name, Guidance):
        if scale is not None or options:
            raise ValueError("make_guidance: scale/options given with a Guidance instance; set them on the instance")
        return name
    if isinstance(name, str):
        cls = get_registry().guidance_method(name)
    elif isinstance(name, type) and issubclass(name, Guidance):
        cls = name
    else:
        raise TypeError(f"make_guidance: name must be a registered name or a Guidance subclass, got {name!r}")
    if scale is None:
        raise TypeError(f"make_guidance({cls.name!r}): scale= is required (the guidance scale)")
    params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "scale")]
    unknown = [k for k in options if k not in params]
    if unknown:
        raise ValueError(
            f"guidance {cls.name!r}: unknown option(s) {sorted(unknown)}{suggest(unknown[0], params)}; "
            f"its options are: {', '.join(params)}"
        )
    return cls(scale, **options)
