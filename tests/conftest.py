"""Test set-up shared by every test.

* Plugins installed on the machine are never autoloaded: DIFFSOLVE_DISABLE_PLUGINS=all
  is set before diffsolve is imported (tests that exercise plugins build their own Registry).
* float64 by default; one torch thread per worker (pytest-xdist runs two).
* Hypothesis profiles: 'quick' (default, derandomized: what `make test` and CI run) and
  'thorough' (DIFFSOLVE_HYPOTHESIS_PROFILE=thorough: 10x the examples, random seeds).
"""

import importlib.util
import os
from pathlib import Path

os.environ["DIFFSOLVE_DISABLE_PLUGINS"] = "all"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

torch.set_num_threads(1)
torch.set_default_dtype(torch.float64)

settings.register_profile(
    "quick",
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough",
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("DIFFSOLVE_HYPOTHESIS_PROFILE", "quick"))


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark(name)``: the module of benchmarks/<name>.py (the scripts are not a package)."""

    def load(name: str):
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
