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
    from ..validation import check_options, resolve_plugin

    given = options if scale is None else dict(options, scale=scale)
    instance, cls = resolve_plugin(name, Guidance, get_registry().guidance_method, "guidance", given)
    if instance is not None:
        return instance
    if scale is None:
        raise TypeError(f"make_guidance({cls.name!r}): scale= is required (the guidance scale)")
    check_options(
        "guidance",
        cls.name,
        options,
        [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "scale")],
    )
    return cls(scale, **options)
