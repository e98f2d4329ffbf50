"""diffusers' own scheduler tests, run against DiffsolveScheduler (a benchmark-like check, not `make test`).

The test files are loaded at run time from a checkout of the diffusers repository (tag v0.40.0, whose
scheduler sources equal the installed 0.42's): point ``DIFFUSERS_TESTS`` at its ``tests`` folder, e.g.

    git -C <diffusers clone> archive v0.40.0 tests | tar x -C /tmp/diffusers-v0.40.0
    DIFFUSERS_TESTS=/tmp/diffusers-v0.40.0/tests python -m pytest -p no:cacheprovider -n 0 -q \
        benchmarks/upstream_scheduler_tests.py

Each upstream class is subclassed with only ``scheduler_classes`` overridden: DiffsolveScheduler with
``emulate=`` defaulting to the class the test was written for (the config mapping: the upstream config
is read as that class's); the test bodies are diffusers' unchanged. Without the files every test here is skipped, with the reason.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from pathlib import Path

import pytest

from diffsolve.interop.diffusers_scheduler import DiffsolveScheduler

ROOT = os.environ.get("DIFFUSERS_TESTS")
PACKAGE = "diffusers_upstream_tests"
CLASSES = {
    "test_scheduler_ddim": ("DDIMSchedulerTest", "DDIMScheduler"),
    "test_scheduler_dpm_multi": ("DPMSolverMultistepSchedulerTest", "DPMSolverMultistepScheduler"),
    "test_scheduler_unipc": ("UniPCMultistepSchedulerTest", "UniPCMultistepScheduler"),
    "test_scheduler_euler": ("EulerDiscreteSchedulerTest", "EulerDiscreteScheduler"),
}


def _load():
    if not ROOT or not (Path(ROOT) / "schedulers" / "test_schedulers.py").is_file():
        return None
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            PACKAGE, Path(ROOT) / "__init__.py", submodule_search_locations=[ROOT]
        )
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = pkg
        spec.loader.exec_module(pkg)
    return {mod: importlib.import_module(f"{PACKAGE}.schedulers.{mod}") for mod in CLASSES}


_modules = _load()
if _modules is None:
    pytestmark = pytest.mark.skip(
        reason="diffusers' upstream tests not found: set DIFFUSERS_TESTS to the tests/ folder of a diffusers "
        "v0.40.0 checkout (see this file's docstring)"
    )

    def test_upstream_files_are_absent():
        pass
else:

    def _adapt(upstream, emulate):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("emulate", emulate)
            DiffsolveScheduler.__init__(self, *args, **kwargs)

        __init__.__signature__ = inspect.signature(DiffsolveScheduler.__init__)
        # DiffsolveScheduler whose emulate= defaults to the class the upstream test was written for
        scheduler = type(f"DiffsolveScheduler_{emulate}", (DiffsolveScheduler,), {"__init__": __init__})

        class Adapted(upstream):
            scheduler_classes = (scheduler,)

        Adapted.__name__ = Adapted.__qualname__ = f"Diffsolve_{upstream.__name__}"
        return Adapted

    for _mod, (_cls, _emulate) in CLASSES.items():
        _adapted = _adapt(getattr(_modules[_mod], _cls), _emulate)
        globals()[_adapted.__name__] = _adapted
    del _adapted
