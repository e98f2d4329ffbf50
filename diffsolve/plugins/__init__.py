"""diffsolve's plugin system: pluggy hooks, entry points and the solver/grid registry."""

from .hookspecs import hookimpl, hookspec
from .registry import (
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    DuplicateNameError,
    PluginWarning,
    Registry,
    UnknownNameError,
    get_registry,
    reset_registry,
)

__all__ = [
    "hookimpl",
    "hookspec",
    "Registry",
    "PluginWarning",
    "DuplicateNameError",
    "UnknownNameError",
    "get_registry",
    "reset_registry",
    "ENTRY_POINT_GROUP",
    "DISABLE_ENV",
]
