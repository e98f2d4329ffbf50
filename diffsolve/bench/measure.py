"""Wall time, peak memory and the zero-cost model used to measure framework overhead."""

from __future__ import annotations

import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ..counting import ZeroModel  # the package's one zero model, re-exported for the overhead benchmark

__all__ = ["PeakMemory", "ZeroModel", "peak_memory", "sync", "timed"]


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


class _TensorMeter(TorchDispatchMode):
    """Counts the bytes of tensor storages created inside the block and alive at each moment.

    Every aten op passes through ``__torch_dispatch__``; an output whose storage is not one of the
    op's inputs' (a new allocation, not a view or an in-place result) is counted with its storage's
    size until the last tensor holding it (the output and every view of it made inside the block)
    is freed. Storages that existed before the block are never counted.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage pointer -> [bytes, live tensors]
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            entry = self.live.get(ptr)
            if entry is None:
                if ptr in inputs or storage.nbytes() == 0:
                    continue  # a view or in-place result of a storage from before the block
                entry = self.live[ptr] = [storage.nbytes(), 0]
                self.current += entry[0]
                self.peak = max(self.peak, self.current)
            entry[1] += 1
            weakref.finalize(t, self._release, ptr)
        return out

    def _release(self, ptr: int) -> None:
        entry = self.live.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self.live[ptr]


class PeakMemory:
    """Peak memory of a block's tensors, in bytes above what was in use when it started.

    * CUDA: ``torch.cuda.max_memory_allocated`` (reset at the start); source ``"cuda"``.
    * CPU: the peak total size of the tensor storages allocated inside the block and alive at the
      same time, counted op by op (:class:`_TensorMeter`, a ``TorchDispatchMode``); source
      ``"tensors"``. The process's resident set is not a measure of a run: the first run grows the
      heap and every later run reuses the freed pages, so it reads large for the first cell of a
      sweep and 0 for the rest (the 1988 KiB of ddim and the 0 of the other solvers in earlier
      tables). The meter costs Python time per op: time a run outside it.

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
        self.source = "tensors"
        self._meter = _TensorMeter()
        self._meter.__enter__()
        return self

    def __exit__(self, *exc):
        if self.source == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device) - self._base)
        else:
            self._meter.__exit__(*exc)
            self.bytes = int(self._meter.peak)
        return False


def peak_memory(fn, device="cpu") -> tuple[int | None, str]:
    """``(bytes, source)``: the peak memory of one call of ``fn()`` (see :class:`PeakMemory`)."""
    with PeakMemory(device) as mem:
        fn()
    return mem.bytes, mem.source
