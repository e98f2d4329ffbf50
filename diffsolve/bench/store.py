"""On-disk storage: atomic writes, one JSON file per finished cell.

A cell's file is written to a temporary name in the same folder and moved into place
with ``os.replace`` (atomic on POSIX and Windows), so a reader sees either no file or a
complete one: an interrupted sweep loses at most the cell in flight, and a rerun skips
every cell whose file exists. Leftover temporary files of a killed run are ignored.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "CellStore", "cell_key", "to_jsonable"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(value: Any) -> Any:
    """Floats that JSON cannot hold (nan, inf) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def cell_key(fields: Iterable[Any]) -> str:
    """A file-name-safe key: readable prefix plus a hash of the exact fields."""
    parts = [str(f) for f in fields]
    digest = hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]
    readable = "_".join(parts)
    readable = "".join(c if c.isalnum() or c in "-." else "-" for c in readable)[:80]
    return f"{readable}__{digest}"


class CellStore:
    """The folder ``<out>/cells/<settings hash>/`` with one ``<cell key>.json`` per finished cell."""

    def __init__(self, root: str | Path, settings: dict[str, Any]):
        blob = json.dumps(settings, sort_keys=True, default=str)
        self.settings = settings
        self.folder = Path(root) / "cells" / hashlib.sha1(blob.encode()).hexdigest()[:12]
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / "settings.json", json.dumps(settings, sort_keys=True, indent=1, default=str))

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def done(self, key: str) -> bool:
        """A cell is done once written, unless it ended in an error: those are retried on resume
        (the error may have been fixed since; "unreachable" cells are final)."""
        row = self.load(key)
        return row is not None and row.get("status") != "error"

    def load(self, key: str) -> dict | None:
        try:
            return json.loads(self.path(key).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def save(self, key: str, row: dict) -> None:
        atomic_write_text(self.path(key), json.dumps(to_jsonable(row), sort_keys=True))

    def clear(self) -> None:
        for p in self.folder.glob("*.json"):
            if p.name != "settings.json":
                p.unlink()
