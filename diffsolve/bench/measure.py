"""Wall time, peak memory and the zero-cost model used to measure framework overhead."""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import torch

__all__ = ["PeakMemory", "ZeroModel", "sync", "timed"]

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def sync(device) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def timed(fn, device="cpu"):
    """``(result, seconds)`` of ``fn()``, synchronised on CUDA."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def _status_kb(field: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of a block, in bytes above what was in use when it started.

    * CUDA: ``torch.cuda.max_memory_allocated`` (reset at the start); source ``"cuda"``.
    * CPU on Linux: the process's peak resident set (VmHWM), reset at the start through
      ``/proc/self/clear_refs``; it sees tensor memory, which tracemalloc does not; source ``"rss"``.
    * elsewhere: ``tracemalloc``'s peak (Python allocations only); source ``"tracemalloc"``.

    Usage: ``with PeakMemory(device) as mem: ...`` then ``mem.bytes``, ``mem.source``.
    """

    def __init__(self, device="cpu"):
        self.device = str(device)
        self.bytes: int | None = None
        self.source = ""

    def __enter__(self):
        if self.device.startswith("cuda"):
            self.source = "cuda"
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        try:
            _CLEAR_REFS.write_text("5")
            base = _status_kb("VmRSS")
            if base is None:
                raise OSError
            self.source, self._base = "rss", base
        except OSError:
            self.source = "tracemalloc"
            self._was_tracing = tracemalloc.is_tracing()
            if not self._was_tracing:
                tracemalloc.start()
            tracemalloc.reset_peak()
            self._base = tracemalloc.get_traced_memory()[0]
        return self

    def __exit__(self, *exc):
        if self.source == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device) - self._base)
        elif self.source == "rss":
            peak = _status_kb("VmHWM")
            self.bytes = None if peak is None else max(0, (peak - self._base) * 1024)
        else:
            self.bytes = max(0, tracemalloc.get_traced_memory()[1] - self._base)
            if not self._was_tracing:
                tracemalloc.stop()
        return False


class ZeroModel:
    """A model that costs nothing: it returns one preallocated zero tensor shaped like its input.

    Sampling with it measures the framework's own per-step cost (driver, wrapper, solver).
    """

    def __init__(self):
        self._out: torch.Tensor | None = None
        self.calls = 0

    def __call__(self, x, t, **_):
        out = self._out
        if out is None or out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
            out = self._out = torch.zeros_like(x)
        self.calls += 1
        return out
