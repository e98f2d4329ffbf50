"""Meta-tests: docs/properties.md and the suites stay in sync with the claims and the registry.

* every row of docs/properties.md names tests that exist (file and module-level function);
* every claim of docs/math.md section 10 (1-19), Proposition 1 and the solver laws has a row;
* every ``test_claimNN_*`` in tests/properties is documented, under claim NN;
* every registered solver (a fresh registry, classified here independently of solver_cases.py)
  is collected in every parametrised suite that applies to it (checked on a real ``pytest
  --collect-only`` of the suite files).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import diffsolve as ds
from diffsolve.plugins import Registry

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "properties.md"
PROPERTIES = ROOT / "tests" / "properties"
REF = re.compile(r"`(tests/properties/[\w/]+\.py)::(\w+)`")
LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")
REQUIRED_CLAIMS = [str(k) for k in range(1, 20)] + ["P1"] + [f"L{k}" for k in range(1, 9)]


def doc_rows() -> dict[str, list[tuple[str, str]]]:
    """claim id -> [(path, test name)] from the tables of docs/properties.md."""
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in DOC.read_text().splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not cells or cells[0] in ("claim", ""):
            continue
        claim = LINK.sub(r"\1", cells[0])  # "[12](math.md#claim-12)" -> "12"
        rows.setdefault(claim, []).extend(REF.findall(line))
    return rows


def module_tests(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_documented_test_exists():
    rows = doc_rows()
    assert rows, "docs/properties.md has no claim rows"
    for claim, refs in rows.items():
        assert refs, f"claim {claim} in docs/properties.md names no test"
        for path, name in refs:
            file = ROOT / path
            assert file.is_file(), f"claim {claim}: {path} does not exist"
            assert name in module_tests(file), f"claim {claim}: {path} has no test {name}"


def test_every_claim_has_a_documented_test():
    rows = doc_rows()
    missing = [c for c in REQUIRED_CLAIMS if not rows.get(c)]
    assert not missing, f"claims without a test in docs/properties.md: {missing}"


def test_every_claim_test_is_documented_under_its_claim():
    rows = doc_rows()
    documented = {(Path(p).name, n): c for c, refs in rows.items() for p, n in refs}
    for file in sorted(PROPERTIES.glob("test_*.py")):
        for name in module_tests(file):
            m = re.match(r"test_claim(\d\d)_", name)
            if m:
                claim = str(int(m.group(1)))
                assert (file.name, name) in documented, f"{file.name}::{name} is not in docs/properties.md"
                assert documented[(file.name, name)] == claim, (
                    f"{name} is documented under claim {documented[(file.name, name)]}"
                )


# -- the registry is covered ------------------------------------------------------------------------
def _collected_ids(files: list[str]) -> dict[str, set[str]]:
    """test function -> parameter ids, from a real collection of the given files."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}  # a plain, serial collection
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ids: dict[str, set[str]] = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^[\w/.]+\.py::(\w+)\[(.*)\]$", line.strip())
        if m:
            ids.setdefault(m.group(1), set()).add(m.group(2))
    return ids


def _fresh_classification() -> dict[str, set[str]]:
    reg = Registry().load()  # same plugin policy as the process (DIFFSOLVE_DISABLE_PLUGINS)
    out = {k: set() for k in ("all", "deterministic", "adaptive", "fixed_step", "invertible", "stochastic")}
    for name, (cls, _) in reg.solvers.items():
        solver = ds.make_solver(cls)
        out["all"].add(name)
        if solver.stochastic:
            out["stochastic"].add(name)
            continue
        out["deterministic"].add(name)
        out["adaptive" if getattr(cls, "adaptive", False) else "fixed_step"].add(name)
        if solver.invertible:
            out["invertible"].add(name)
    return out


def test_every_registered_solver_is_in_every_suite_that_applies():
    expect = _fresh_classification()
    assert expect["all"] == set(ds.list_solvers())
    ids = _collected_ids(["tests/properties/test_solver_laws.py", "tests/properties/test_marginals.py"])
    exact = {  # suite -> the solvers it must parametrise, exactly
        "test_observed_order_matches_the_declared_order": expect["fixed_step"],
        "test_adaptive_solver_meets_its_tolerance_on_the_exact_gaussian_flow": expect["adaptive"],
        "test_invert_then_sample_round_trip_converges": expect["invertible"],
        "test_every_deterministic_solver_follows_the_exact_flow_of_a_point_mass": expect["deterministic"],
        "test_claim17_deterministic_output_is_bit_identical_across_rng_states": expect["deterministic"],
    }
    for suite, names in exact.items():
        got = ids.get(suite, set())
        assert got == names, f"{suite}: missing {sorted(names - got)}, unexpected {sorted(got - names)}"
    dtypes = ("float32", "float16", "bfloat16")
    got = ids.get("test_low_precision_run_is_finite_and_close_to_float64", set())
    for dtype in dtypes:
        names = {i[: -len(dtype) - 1] for i in got if i.endswith("-" + dtype)}
        assert names == expect["all"], f"low precision {dtype}: missing {sorted(expect['all'] - names)}"
    stochastic_suites = [
        "test_every_stochastic_solver_returns_the_point_mass",
        "test_stochastic_sample_does_not_depend_on_its_batch",
        "test_one_step_of_every_stochastic_solver_keeps_the_point_mass_marginal",
    ]
    for suite in stochastic_suites:
        got = ids.get(suite, set())
        names = {i.split("[")[0] for i in got}
        assert expect["stochastic"] <= names, f"{suite}: missing {sorted(expect['stochastic'] - names)}"
        assert "ddim[eta=0.5]" in got, f"{suite}: ddim with eta = 0.5 is not tested"
    # every solver is classified: deterministic or stochastic, and each deterministic one is
    # either fixed-step (order) or adaptive (tolerance)
    assert expect["deterministic"] | expect["stochastic"] == expect["all"]
    assert expect["fixed_step"] | expect["adaptive"] == expect["deterministic"]
