"""Hook specifications of diffsolve's plugin system (pluggy).

A plugin is a module or object with functions marked ``@diffsolve.plugins.hookimpl``.
Third-party distributions expose it through the entry-point group ``diffsolve``::

    [project.entry-points.diffsolve]
    my_solvers = "my_package.diffsolve_plugin"

The built-in solvers and grids register through these same hooks
(:mod:`diffsolve.plugins.builtin`).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "diffsolve"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_solvers(register: Callable[[type], None]) -> None:
    """Register solver classes.

    :param register: call ``register(SolverSubclass)`` once per solver; the class's
        ``name`` attribute is its registry name. A name already taken raises
        :class:`~diffsolve.plugins.registry.DuplicateNameError` naming both owners.
    :returns: nothing; every plugin's implementation is called.
    """


@hookspec
def register_grids(register: Callable[..., None]) -> None:
    """Register timestep grids.

    :param register: call ``register(name, fn)`` once per grid, where
        ``fn(schedule, steps, **options)`` returns a strictly decreasing 1-D float64
        tensor of sigmas ending at 0. Duplicate names raise
        :class:`~diffsolve.plugins.registry.DuplicateNameError`.
    :returns: nothing; every plugin's implementation is called.
    """


# -- restorers (inverse problems: diffsolve.restore) ----------------------------------------------
@hookspec
def register_restorers(register: Callable[[type], None]) -> None:
    """Register inverse-problem methods (restorers) for :func:`diffsolve.restore`.

    :param register: call ``register(RestorerSubclass)`` once per method; the class's ``name``
        attribute is its registry name (:class:`diffsolve.inverse.Restorer`). Duplicate names raise
        :class:`~diffsolve.plugins.registry.DuplicateNameError`.
    :returns: nothing; every plugin's implementation is called.
    """


# -- guidance methods (docs/guidance.md) ----------------------------------------------------------
@hookspec
def register_guidance(register: Callable[[type], None]) -> None:
    """Register guidance methods (classes deriving from :class:`diffsolve.guidance.Guidance`).

    :param register: call ``register(GuidanceSubclass)`` once per method; the class's ``name``
        attribute is its registry name (``ds.make_guidance(name, scale=...)``). Duplicate names raise
        :class:`~diffsolve.plugins.registry.DuplicateNameError`.
    :returns: nothing; every plugin's implementation is called.
    """
