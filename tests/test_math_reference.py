"""docs/math.md is the one math reference: every citation in the repository has a target there.

* every equation E<n> and exponential-integrator form X<n> cited in the package, docs, tests,
  benchmarks, examples and README is defined (anchor and label) in docs/math.md;
* every claim (``claim 12``, ``claims 3-8, 14, 16``, ``test_claim12_*``), pitfall, numbered section
  (``docs/math.md 3.4 b``) and link to an anchor (``math.md#e29``) cited anywhere has its target there;
* docs/math.md defines E1-E43 once each, in order;
* no file in the repository refers to math notes outside it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MATH = ROOT / "docs" / "math.md"
CITING = ["diffsolve", "docs", "tests", "benchmarks", "examples", "README.md"]
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".cfg", ".ini", ".yml", ".yaml", ".rst"}
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".hypothesis", ".venv", "build", "dist", "bench-results"}
# written in pieces so that this file does not cite what it forbids
OUTSIDE_NOTES = ["ddim-" + "math", "shared" + "/docs", "shared" + " notes"]

ANCHOR = re.compile(r'<a id="([^"]+)"></a>')
NOQA = re.compile(r"#\s*noqa\b.*$", re.MULTILINE)  # the lint codes of a noqa comment are not equations
EQUATION = re.compile(r"\b([EX])(\d+)\b")
CLAIMS = re.compile(r"\bclaims?\s+(\d+(?:\s*(?:-|,|/|and)\s*\d+)*)", re.IGNORECASE)
CLAIM_TEST = re.compile(r"\btest_claim(\d+)_")
PITFALL = re.compile(r"\bpitfalls?\s+(\d+)", re.IGNORECASE)
SECTION = re.compile(r"math\.md,?\s+(?:section\s+|sec\.\s*|§\s*)?(\d+(?:\.\d+)?)(?:\s?([a-e])\b)?", re.IGNORECASE)
LINK = re.compile(r"math\.md#([\w.-]+)")


def repo_files(roots=None):
    """Files under the repository root (or under ``roots``), without VCS, caches and build outputs."""
    starts = [ROOT / r for r in roots] if roots else [ROOT]
    for start in starts:
        if start.is_file():
            yield start
            continue
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
            for name in filenames:
                if name != ".git":
                    yield Path(dirpath) / name


def citing_texts():
    """(relative path, text without noqa comments) of every text file that may cite docs/math.md."""
    for path in repo_files(CITING):
        if path.suffix in TEXT_SUFFIXES:
            yield path.relative_to(ROOT).as_posix(), NOQA.sub("", path.read_text(encoding="utf-8"))


def anchors() -> set[str]:
    return set(ANCHOR.findall(MATH.read_text(encoding="utf-8")))


def expand(numbers: str) -> list[int]:
    """'3-8, 14 and 16' -> [3, 4, 5, 6, 7, 8, 14, 16]."""
    out = []
    for part in re.split(r"\s*(?:,|/|and)\s*", numbers):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def citations(kind: str) -> dict[str, set[str]]:
    """anchor id -> files citing it, for one kind of citation."""
    found: dict[str, set[str]] = {}
    for rel, text in citing_texts():
        ids: list[str] = []
        if kind == "equation":
            ids = [f"{letter.lower()}{int(n)}" for letter, n in EQUATION.findall(text)]
        elif kind == "claim":
            ids = [f"claim-{n}" for m in CLAIMS.findall(text) for n in expand(m)]
            ids += [f"claim-{int(n)}" for n in CLAIM_TEST.findall(text)]
            ids += ["p1"] if re.search(r"\bproposition\s*1\b", text, re.IGNORECASE) else []
        elif kind == "pitfall":
            ids = [f"pitfall-{int(n)}" for n in PITFALL.findall(text)]
        elif kind == "section":
            ids = [f"sec-{num}{sub.lower()}" for num, sub in SECTION.findall(text)]
        elif kind == "link":
            ids = LINK.findall(text)
        for i in ids:
            found.setdefault(i, set()).add(rel)
    return found


def _missing(kind: str) -> dict[str, list[str]]:
    have = anchors()
    return {i: sorted(files) for i, files in citations(kind).items() if i not in have}


def test_math_reference_defines_e1_to_e43_once_each_in_order():
    text = MATH.read_text(encoding="utf-8")
    labels = [int(n) for n in re.findall(r'<a id="e(\d+)"></a>\*\*\(E\1\)\*\*', text)]
    assert labels == list(range(1, 44)), f"E labels in docs/math.md: {labels}"
    ids = ANCHOR.findall(text)
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    assert not duplicates, f"anchors defined twice in docs/math.md: {duplicates}"
    for k in range(1, 5):
        assert f'<a id="x{k}"></a>**(X{k})**' in text, f"X{k} is not defined in docs/math.md"


def test_every_cited_equation_exists_in_the_math_reference():
    cited = citations("equation")
    assert {"e29", "e30", "e42", "x3"} <= set(cited), "the scan found none of the well-known citations"
    missing = _missing("equation")
    assert not missing, f"equations cited but not in docs/math.md: {missing}"


def test_every_cited_claim_exists_in_the_math_reference():
    cited = citations("claim")
    assert {"claim-12", "claim-19", "p1"} <= set(cited), "the scan found none of the well-known claims"
    # every claim a test proves is cited by a test and stated in docs/math.md
    by_tests = {i for i, files in cited.items() if any(f.startswith("tests/") for f in files)}
    assert {f"claim-{k}" for k in range(1, 20)} <= by_tests
    missing = _missing("claim")
    assert not missing, f"claims cited but not in docs/math.md: {missing}"


def test_every_cited_pitfall_and_section_exists_in_the_math_reference():
    assert {"pitfall-1", "pitfall-5"} <= set(citations("pitfall"))
    missing = {**_missing("pitfall"), **_missing("section")}
    assert not missing, f"pitfalls or sections cited but not in docs/math.md: {missing}"


def test_every_link_into_the_math_reference_has_a_target():
    assert "claim-12" in citations("link"), "docs/properties.md links no claim of docs/math.md"
    missing = _missing("link")
    assert not missing, f"links to docs/math.md anchors that do not exist: {missing}"


def test_no_file_refers_to_notes_outside_the_repository():
    offenders = {}
    for path in repo_files():
        data = path.read_bytes().lower()
        hits = [n for n in OUTSIDE_NOTES if n.encode() in data]
        if hits:
            offenders[path.relative_to(ROOT).as_posix()] = hits
    assert not offenders, f"files that cite notes outside the repository (cite docs/math.md): {offenders}"
