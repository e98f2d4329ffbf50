"""Install one of the example plugin distributions (examples/) with pip into a scratch folder.

Imported by test modules as ``from example_install import pip_install_example`` (tests/ is on sys.path for them).
"""

import contextlib
import importlib
import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@contextlib.contextmanager
def pip_install_example(name: str, target: Path, module: str):
    """``pip install`` ``examples/<name>`` into ``target`` (no dependencies, no build isolation), put ``target``
    on sys.path and yield the distribution's ``diffsolve`` entry points; on exit take ``target`` off sys.path
    again and forget the imported ``module``."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--target", str(target), str(EXAMPLES / name)],
        check=True,
    )
    sys.path.insert(0, str(target))
    importlib.invalidate_caches()
    try:
        yield [
            ep
            for dist in metadata.distributions(path=[str(target)])
            for ep in dist.entry_points
            if ep.group == "diffsolve"
        ]
    finally:
        sys.path.remove(str(target))
        sys.modules.pop(module, None)
