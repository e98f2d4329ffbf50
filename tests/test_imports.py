"""The package's modules import each other in one direction: no import circle, lazy imports
inside functions included (issue 12)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "diffsolve"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere in its file (a child never counts its
    own parent package, whose __init__ runs first anyway)."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")
            base = base[: len(base) - (node.level - 1)] if node.level else []
            mod = (
                ".".join(base + [node.module])
                if node.level and node.module
                else (".".join(base) if node.level else node.module or "")
            )
            for alias in node.names:
                full = f"{mod}.{alias.name}"
                out.add(full if full in mods else mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m in mods and m != name and not name.startswith(m + ".")}


def test_no_import_circles_inside_the_package():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                circles.append(path[path.index(n) :] + [n])
            elif n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)
