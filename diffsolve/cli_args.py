"""Argument types shared by ``diffsolve``'s subcommands (:mod:`diffsolve.cli`, :mod:`diffsolve.bench.cli`).

A count or seed outside its range is argparse's one-line error naming the flag (exit code 2), before any
work: a negative count would fail deep inside torch with a traceback, a huge one would try to allocate it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["MAX_SAMPLES", "MAX_STEPS", "MAX_NFE", "MAX_SEED", "MAX_THREADS", "int_in", "float_open", "int_list"]

#: bounds of the CLI's counts: beyond them a run cannot be meant (memory, time) and fails late and unclearly
MAX_SAMPLES = 2**24
MAX_STEPS = 100_000
MAX_SEED = 2**32 - 1
MAX_THREADS = 1024


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]``, else argparse's one-line error naming the flag."""

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}], got {value}")
        return value

    return integer


def float_open(lo: float, hi: float) -> Callable[[str], float]:
    """An argparse type: a number in the open interval ``(lo, hi)``."""

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not lo < value < hi:
            raise argparse.ArgumentTypeError(f"must be a number in ({lo:g}, {hi:g}), got {text}")
        return value

    return number


MAX_NFE = 10_000


def int_list(kind: str, lo: int, hi: int) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated integers or ranges (``5,10,20``, ``0-3``), each in ``[lo, hi]``."""

    def parse(text: str) -> list[int]:
        out: list[int] = []
        for part in (t.strip() for t in text.split(",") if t.strip()):
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1)
                    out.extend(range(int(a), int(b) + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{kind} must be integers like 5,10,20 or ranges like 0-3, got {text!r}"
                ) from None
        if not out:
            raise argparse.ArgumentTypeError(f"empty {kind} list")
        bad = [v for v in out if not lo <= v <= hi]
        if bad:
            raise argparse.ArgumentTypeError(f"{kind} must be integers in [{lo}, {hi}], got {bad[0]}")
        return out

    return parse
