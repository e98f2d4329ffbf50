"""The registry of solvers and grids, filled by pluggy hooks from entry points.

Loading is lazy and happens once per :class:`Registry`, under a lock: threads that use a
registry while it loads wait for it and then see it complete. The environment variable
``DIFFSOLVE_DISABLE_PLUGINS`` blocks third-party plugins: a comma list of
entry-point or distribution names, or ``all`` for every external plugin (the
built-ins always load). Names match case-insensitively, with ``-`` and ``_`` alike
(as package names do); a name that matches no installed plugin gets a
:class:`PluginWarning`. A plugin that fails to import or register, or whose hooks
register nothing, is reported with a :class:`PluginWarning` naming it and skipped;
two plugins claiming one name is a :class:`DuplicateNameError` naming both owners
and the exact ``DIFFSOLVE_DISABLE_PLUGINS`` value that resolves it (a Registry made
with ``on_duplicate="record"`` records the clash in :attr:`Registry.clashes` instead,
keeping the first owner: ``diffsolve list`` shows clashes that way).
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import threading
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pluggy

from . import builtin, hookspecs

__all__ = [
    "Registry",
    "PluginWarning",
    "DuplicateNameError",
    "UnknownNameError",
    "get_registry",
    "ENTRY_POINT_GROUP",
    "DISABLE_ENV",
]

ENTRY_POINT_GROUP = "diffsolve"
DISABLE_ENV = "DIFFSOLVE_DISABLE_PLUGINS"
BUILTIN_OWNER = "diffsolve"


class PluginWarning(UserWarning):
    """A third-party plugin could not be loaded or registered and was skipped."""


class DuplicateNameError(ValueError):
    """Two plugins registered the same solver or grid name."""


class UnknownNameError(ValueError):
    """A solver or grid name that no plugin registered."""


def _canon(name: str) -> str:
    """A plugin name as matched by DIFFSOLVE_DISABLE_PLUGINS: lower case, ``_`` read as ``-``."""
    return str(name).strip().lower().replace("_", "-")


def _disabled_from_env() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {part.strip() for part in raw.split(",") if part.strip()}


class Registry:
    """Solvers and grids by name, with the plugin (owner) that registered each.

    Args:
        entry_points: the entry points to load; default: those installed in the
            group ``diffsolve``.
        disabled: names to block (entry-point or distribution names, or ``"all"``);
            default: read from ``DIFFSOLVE_DISABLE_PLUGINS`` when loading.
    """

    def __init__(
        self,
        entry_points: Iterable[Any] | None = None,
        disabled: Iterable[str] | None = None,
        on_duplicate: str = "raise",
    ):
        if on_duplicate not in ("raise", "record"):
            raise ValueError(f"on_duplicate={on_duplicate!r} is not allowed; allowed: 'raise', 'record'")
        self._entry_points = entry_points
        self._disabled = None if disabled is None else set(disabled)
        self._on_duplicate = on_duplicate
        self._loaded = False
        self._loading = False
        self._error: Exception | None = None
        self._lock = threading.RLock()
        self.solvers: dict[str, tuple[type, str]] = {}
        self.grids: dict[str, tuple[Callable, str]] = {}
        self.restorers: dict[str, tuple[type, str]] = {}  # inverse-problem methods (diffsolve.restore)
        self.guidance: dict[str, tuple[type, str]] = {}  # guidance methods (docs/guidance.md)
        self.skipped: list[tuple[str, str]] = []  # (plugin, reason)
        #: name clashes recorded with on_duplicate="record": (kind, name, kept owner, refused owner)
        self.clashes: list[tuple[str, str, str, str]] = []
        #: owner ("dist:entry-point") -> the entry-point name that DIFFSOLVE_DISABLE_PLUGINS takes
        self._disable_name: dict[str, str] = {}

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> Registry:
        """Load the plugins, once. Thread-safe: concurrent first users wait for one load and see
        the complete registry; a plugin that fails is reported once. An error that stops the load
        (two plugins claiming one name) is raised again to every later user; an interrupt
        (KeyboardInterrupt) leaves the registry unloaded, to be loaded again on next use."""
        if self._loaded:
            if self._error is not None:
                raise self._error
            return self
        with self._lock:
            if self._loading:  # a plugin using the registry while it loads (same thread): as it is
                return self
            if not self._loaded:
                self._loading = True
                try:
                    self._load()
                except Exception as exc:
                    self._error = exc
                    self._loaded = True
                except BaseException:
                    self.solvers, self.grids, self.skipped = {}, {}, []
                    self.restorers = {}
                    self.guidance = {}
                    raise
                else:
                    self._loaded = True
                finally:
                    self._loading = False
        if self._error is not None:
            raise self._error
        return self

    def _load(self) -> None:
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        pm.register(builtin, name=BUILTIN_OWNER)
        disabled = _disabled_from_env() if self._disabled is None else self._disabled
        wanted = {_canon(d): d for d in disabled}
        matched: set[str] = set()
        eps = self._entry_points
        if eps is None:
            eps = metadata.entry_points(group=ENTRY_POINT_GROUP)
        loaded: list[str] = []
        for ep in eps:
            dist = getattr(getattr(ep, "dist", None), "name", None) or "?"
            owner = f"{dist}:{ep.name}"
            self._disable_name[owner] = ep.name
            hits = {_canon(ep.name), _canon(dist)} & set(wanted)
            matched |= hits
            if "all" in wanted or hits:
                self.skipped.append((owner, f"disabled by {DISABLE_ENV}"))
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=owner)
                loaded.append(owner)
            except Exception as exc:  # a broken plugin must not break the library
                self._report(owner, f"failed to load ({type(exc).__name__}: {exc})")
        unknown = sorted(wanted[c] for c in set(wanted) - matched - {"all"})
        if unknown:
            names = sorted({n for owner, n in self._disable_name.items()})
            warnings.warn(
                f"{DISABLE_ENV} names {unknown}, which match no installed diffsolve plugin "
                f"(installed: {', '.join(names) or 'none'}); names match case-insensitively, "
                "with - and _ alike",
                PluginWarning,
                stacklevel=4,
            )
        # a clash (DuplicateNameError) stops the load; load() raises it again to every later user
        self._collect(pm.hook.register_solvers, self.solvers, self._check_solver, "solver")
        self._collect(pm.hook.register_grids, self.grids, self._check_grid, "grid")
        self._collect(pm.hook.register_restorers, self.restorers, self._check_restorer, "restorer")
        self._collect(pm.hook.register_guidance, self.guidance, self._check_guidance, "guidance")
        self._report_empty(loaded)

    def _report_empty(self, loaded: list[str]) -> None:
        """A loaded plugin whose hooks registered no solver and no grid gets a PluginWarning."""
        failed = {owner for owner, _ in self.skipped}
        owners = {owner for _, owner in self.solvers.values()} | {owner for _, owner in self.grids.values()}
        owners |= {owner for _, owner in self.restorers.values()}
        owners |= {owner for _, owner in self.guidance.values()}
        owners |= {c[3] for c in self.clashes}
        for owner in loaded:
            if owner not in owners and owner not in failed:
                self._report(
                    owner,
                    "registered no solver and no grid (nor a guidance method: does it implement register_solvers / "
                    "register_grids / register_guidance, marked with @diffsolve.hookimpl?)",
                    skipped=False,
                )

    def _disable_hint(self, *owners: str) -> str:
        """The exact DIFFSOLVE_DISABLE_PLUGINS value that blocks one of ``owners``."""
        current = sorted(_disabled_from_env()) if self._disabled is None else sorted(self._disabled)
        options = []
        for owner in owners:
            if owner == BUILTIN_OWNER:
                continue
            name = self._disable_name.get(owner, owner.split(":")[-1])
            options.append(f"{DISABLE_ENV}={','.join([*current, name])}")
        return " or ".join(options)

    def _report(self, owner: str, reason: str, skipped: bool = True) -> None:
        if skipped:
            self.skipped.append((owner, reason))
        tail = "; it was skipped" if skipped else ""
        warnings.warn(f"diffsolve plugin {owner!r} {reason}{tail}", PluginWarning, stacklevel=3)

    def _collect(self, hook, table: dict, check: Callable, kind: str) -> None:
        # registration order: the built-ins first, then plugins in entry-point order
        for impl in hook.get_hookimpls():
            owner = impl.plugin_name
            staged: dict[str, tuple[Any, str]] = {}

            def register(*args, _staged=staged, _owner=owner):
                name, obj = check(*args)
                for where in (table, _staged):
                    if name in where:
                        first = where[name][1]
                        if self._on_duplicate == "record":
                            self.clashes.append((kind, name, first, _owner))
                            return
                        hint = self._disable_hint(_owner, first) if first != _owner else ""
                        raise DuplicateNameError(
                            f"{kind} name {name!r} is registered by both {first!r} and {_owner!r}; "
                            + (
                                f"block one of them: set {hint}"
                                if hint
                                else f"a plugin registers a name twice: fix {_owner!r}"
                            )
                        )
                _staged[name] = (obj, _owner)

            try:
                impl.function(register=register)
            except DuplicateNameError:
                raise
            except Exception as exc:
                if owner == BUILTIN_OWNER:
                    raise
                self._report(owner, f"failed in register_{kind}s ({type(exc).__name__}: {exc})")
                continue
            table.update(staged)

    @staticmethod
    def _check_named_class(cls, extra: tuple, base: type, kind: str, what: str) -> None:
        """What every class-valued kind requires: the class alone, a subclass of ``base``, a non-empty ``name``."""
        if extra:
            raise TypeError(f"register({kind.capitalize()}Class) takes the class only; its name is cls.name")
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise TypeError(f"register() expects a {what} subclass, got {cls!r}")
        if not isinstance(cls.name, str) or not cls.name:
            raise TypeError(f"{kind} class {cls.__name__} has no name (set the class attribute 'name')")

    @staticmethod
    def _check_solver(cls, *extra):
        from ..solvers.base import Solver

        Registry._check_named_class(cls, extra, Solver, "solver", "diffsolve Solver")
        for attr in ("order", "calls_per_step"):
            value = getattr(cls, attr)
            if not isinstance(value, int) or value < 1:
                raise TypeError(f"solver {cls.name!r}: {attr} must be an integer >= 1, got {value!r}")
        return cls.name, cls

    @staticmethod
    def _check_grid(name, fn):
        if not isinstance(name, str) or not name:
            raise TypeError(f"grid name must be a non-empty string, got {name!r}")
        if not callable(fn):
            raise TypeError(f"grid {name!r}: expected a callable fn(schedule, steps, **options), got {fn!r}")
        return name, fn

    @staticmethod
    def _check_restorer(cls, *extra):
        from ..inverse.base import Restorer

        Registry._check_named_class(cls, extra, Restorer, "restorer", "diffsolve.inverse.Restorer")
        return cls.name, cls

    def restorer(self, name: str) -> type:
        return self._lookup("restorer", self.load().restorers, name)

    def restorer_names(self) -> list[str]:
        return sorted(self.load().restorers)

    # -- guidance methods (docs/guidance.md) -------------------------------------------------
    @staticmethod
    def _check_guidance(cls, *extra):
        from ..guidance.base import Guidance

        Registry._check_named_class(cls, extra, Guidance, "guidance", "diffsolve.guidance.Guidance")
        if cls.second not in ("uncond", "weak"):
            raise TypeError(f"guidance {cls.name!r}: second must be 'uncond' or 'weak', got {cls.second!r}")
        return cls.name, cls

    def guidance_method(self, name: str) -> type:
        return self._lookup("guidance method", self.load().guidance, name)

    def guidance_names(self) -> list[str]:
        return sorted(self.load().guidance)

    # -- lookup ----------------------------------------------------------------------------
    def solver(self, name: str) -> type:
        return self._lookup("solver", self.load().solvers, name)

    def grid(self, name: str) -> Callable:
        return self._lookup("grid", self.load().grids, name)

    def _lookup(self, kind: str, table: dict, name):
        """The registered class (or grid function) ``name`` of one kind; UnknownNameError names the known ones."""
        if name not in table:
            raise UnknownNameError(self._unknown(kind, name, table))
        return table[name][0]

    def _unknown(self, kind: str, name, table) -> str:
        from ..validation import suggest

        msg = f"unknown {kind} {name!r}{suggest(name, table)}; known {kind}s: {', '.join(sorted(table))}"
        off = [owner for owner, why in self.skipped if why.startswith("disabled")]
        if off:
            # a disabled plugin is never imported, so which names it would register is unknown
            msg += (
                f". Plugin(s) {', '.join(off)} are disabled by {DISABLE_ENV}: if the {kind} comes from "
                f"one of them, remove it from {DISABLE_ENV}"
            )
        return msg

    def solver_names(self) -> list[str]:
        return sorted(self.load().solvers)

    def grid_names(self) -> list[str]:
        return sorted(self.load().grids)


_default: Registry | None = None
_default_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry (loaded on first use; one registry even when many threads
    make that first use at once)."""
    global _default
    reg = _default
    if reg is None:
        with _default_lock:
            if _default is None:
                _default = Registry()
            reg = _default
    return reg.load()


def reset_registry() -> None:
    """Forget the process-wide registry; the next lookup loads plugins again."""
    global _default
    with _default_lock:
        _default = None
