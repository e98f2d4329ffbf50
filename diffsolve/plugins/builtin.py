"""The built-in plugin: diffsolve's own solvers and grids, registered through the public hooks.

Every module in :mod:`diffsolve.solvers` whose name does not start with ``_`` is
imported, and every :class:`~diffsolve.solvers.base.Solver` subclass defined there
with a non-empty ``name`` is registered.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from .hookspecs import hookimpl


def builtin_solver_classes() -> list[type]:
    from ..solvers.base import Solver

    solvers = importlib.import_module("diffsolve.solvers")

    found = []
    for info in sorted(pkgutil.iter_modules(solvers.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{solvers.__name__}.{info.name}")
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, Solver) and obj.__module__ == module.__name__ and obj.name:
                found.append(obj)
    return found


@hookimpl
def register_solvers(register):
    for cls in builtin_solver_classes():
        register(cls)


@hookimpl
def register_grids(register):
    from ..grids import BUILTIN_GRIDS

    for name, fn in BUILTIN_GRIDS.items():
        register(name, fn)


# -- restorers (inverse problems) -----------------------------------------------------------------
@hookimpl
def register_restorers(register):
    from ..inverse.methods import BUILTIN_RESTORERS

    for cls in BUILTIN_RESTORERS:
        register(cls)


# -- guidance methods ------------------------------------------------------------------------------
@hookimpl
def register_guidance(register):
    from ..guidance.builtins import BUILTIN_GUIDANCE

    for cls in BUILTIN_GUIDANCE:
        register(cls)
