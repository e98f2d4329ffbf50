"""Sharding a sweep over processes started by ``torchrun`` (gloo on CPU, nccl on GPU).

Cells are dealt round-robin (rank r takes cells r, r + W, ...); each rank writes its own
cell files as it goes, and rank 0 gathers every rank's rows with ``gather_object`` (so
nodes need not share a filesystem) and puts them back in the sweep's order. Outside
torchrun (``WORLD_SIZE`` unset or 1) these functions do nothing.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist

__all__ = ["setup", "teardown", "gather_rows", "local_rank"]

_started_here = False


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup(device: str = "cpu") -> tuple[int, int]:
    """``(rank, world size)``; starts the process group under torchrun."""
    global _started_here
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not tdist.is_available():
        return 0, 1
    if not tdist.is_initialized():
        backend = "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        tdist.init_process_group(backend)
        _started_here = True
    return tdist.get_rank(), tdist.get_world_size()


def gather_rows(rows: list[dict], cells: list, rank: int, world: int) -> list[dict]:
    """All ranks' rows on rank 0, in the order of ``cells`` (rank r holds cells[r::world])."""
    if world <= 1:
        return rows
    bucket: list | None = [None] * world if rank == 0 else None
    tdist.gather_object(rows, bucket, dst=0)
    if rank != 0:
        return rows
    merged: list[dict] = [None] * len(cells)  # type: ignore[list-item]
    for r, part in enumerate(bucket):
        merged[r::world] = part
    return merged


def teardown() -> None:
    global _started_here
    if _started_here and tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()
        _started_here = False
