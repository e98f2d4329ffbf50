"""The registry, classified at collection time: which solver goes into which parametrised suite.

Every registered solver (built-in or plugin) is made with its default options and sorted by what the
instance says about itself (``stochastic``, ``invertible``, ``adaptive``). ``test_meta.py`` checks
that every registered solver lands in every suite that applies to it.
"""

from __future__ import annotations

import pytest

import diffsolve as ds
from diffsolve.plugins import get_registry


def _instance(name: str, **options):
    return ds.make_solver(name, **options)


def is_adaptive(name: str) -> bool:
    return bool(getattr(get_registry().solver(name), "adaptive", False))


def classify(names=None) -> dict[str, list[str]]:
    """Suite name -> registered solver names (default options)."""
    reg = get_registry()
    names = sorted(reg.solvers) if names is None else sorted(names)
    out = {"all": names, "deterministic": [], "fixed_step": [], "adaptive": [], "invertible": [], "stochastic": []}
    for name in names:
        solver = _instance(name)
        if solver.stochastic:
            out["stochastic"].append(name)
            continue
        out["deterministic"].append(name)
        out["adaptive" if is_adaptive(name) else "fixed_step"].append(name)
        if solver.invertible:
            out["invertible"].append(name)
    return out


SUITES = classify()

#: option sets that make a registered solver stochastic, beyond the solvers stochastic by default
#: (the issue asks for ddim with eta = 0.5 in particular); absent solvers or options are ignored
STOCHASTIC_OPTIONS = {
    "ddim": [{"eta": 0.5}, {"eta": 1.0}, {"variance": "large"}],
    "heun": [{"s_churn": 2.0}],
    "euler-ancestral": [{"eta": 0.5}],
    "dpmpp-2m-sde": [{"eta": 0.5}],
    "dpmpp-sde": [{"eta": 0.5}],
    "dpm-2": [{"s_churn": 2.0}],
    "dpm-2-ancestral": [{"eta": 0.5}],
    "dpmpp-2s-ancestral": [{"eta": 0.5}],
    "dpmpp-3m-sde": [{"eta": 0.5}],
}


def stochastic_cases() -> list[tuple[str, dict]]:
    """(name, options) of every stochastic configuration tested: default-stochastic solvers plus the
    option sets above that exist and really make the instance stochastic."""
    cases = [(name, {}) for name in SUITES["stochastic"]]
    reg = get_registry()
    for name, option_sets in STOCHASTIC_OPTIONS.items():
        if name not in reg.solvers:
            continue
        for opts in option_sets:
            try:
                solver = _instance(name, **opts)
            except (TypeError, ValueError):
                continue
            if solver.stochastic and (name, opts) not in cases:
                cases.append((name, opts))
    return cases


STOCHASTIC_CASES = stochastic_cases()


def case_id(name: str, opts: dict) -> str:
    return name + ("" if not opts else "[" + ",".join(f"{k}={v}" for k, v in sorted(opts.items())) + "]")


def params(cases):
    return [pytest.param(n, o, id=case_id(n, o)) for n, o in cases]
