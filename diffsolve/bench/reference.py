"""High-accuracy reference solutions, checked for convergence and cached on disk.

The reference of a cell is the exact ODE solution (E29) from the cell's x_T, started
at the grid's first sigma and stopped at its end point: adaptive dopri5 in float64
(:func:`diffsolve.analytic.reference_solution`) at tolerance ``tol``. Convergence is
checked by solving again at ``tol / 2``: the RMS difference of the two is the
reference's error estimate ``ref_err``; while it exceeds ``target`` the tolerance is
halved again (at most ``max_halvings`` times). Results are cached in ``folder`` keyed by
the problem's fingerprint, the start and end sigma, the seed, the batch and ``tol``.
A problem may set its own ``ref_tol`` and ``ref_target`` (the shipped network uses 1e-8 and
1e-6: its cells run in float32, and dopri5 at 1e-10 on a network is slow).
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import torch

from ..analytic import reference_solution
from .store import atomic_write_bytes

__all__ = ["ReferenceCache"]

_F64 = torch.float64


class ReferenceCache:
    def __init__(self, folder: str | Path, tol: float = 1e-10, target: float = 1e-7, max_halvings: int = 3):
        self.folder = Path(folder)
        self.tol, self.target, self.max_halvings = float(tol), float(target), int(max_halvings)
        self._mem: dict[str, tuple[torch.Tensor, float]] = {}
        self.computed = 0  # how many references this process solved (not loaded)

    def key(self, problem, sigma_start: float, sigma_end: float, seed: int, n: int) -> str:
        # sigmas to 12 digits: grids that start at the same level up to rounding share a reference
        raw = (
            f"{problem.fingerprint()}|{sigma_start:.12g}|{sigma_end:.12g}|{seed}|{n}|{self._tol(problem)!r}|"
            f"{self._target(problem)!r}"
        )
        return f"{problem.name.replace('/', '-').replace(':', '-')}__{hashlib.sha1(raw.encode()).hexdigest()[:16]}"

    def get(self, problem, x_T: torch.Tensor, sigma_start: float, sigma_end: float, seed: int):
        """``(reference in model space, float64; ref_err)`` for this start state and end points."""
        key = self.key(problem, sigma_start, sigma_end, seed, x_T.shape[0])
        if key in self._mem:
            return self._mem[key]
        path = self.folder / f"{key}.pt"
        if path.exists():
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
                self._mem[key] = (blob["x"], float(blob["err"]))
                return self._mem[key]
            except Exception:  # a damaged cache file is recomputed
                pass
        ref, err = self._solve(problem, x_T, sigma_start, sigma_end)
        buf = io.BytesIO()
        torch.save({"x": ref, "err": err, "tol": self.tol}, buf)
        atomic_write_bytes(path, buf.getvalue())
        self._mem[key] = (ref, err)
        return ref, err

    def _target(self, problem) -> float:
        return float(getattr(problem, "ref_target", None) or self.target)

    def _tol(self, problem) -> float:
        """The problem's own tolerance (``ref_tol``, e.g. looser for a network) or the cache's."""
        return float(getattr(problem, "ref_tol", None) or self.tol)

    def _solve(self, problem, x_T, sigma_start, sigma_end):
        ode = problem.reference_ode()
        x = x_T.to(_F64).cpu()
        tol = self._tol(problem)
        prev = reference_solution(ode, x, sigma_start, sigma_end, rtol=tol, atol=tol)
        err = float("inf")
        for _ in range(self.max_halvings + 1):
            tol /= 2
            cur = reference_solution(ode, x, sigma_start, sigma_end, rtol=tol, atol=tol)
            err = float((cur - prev).pow(2).mean().sqrt())
            prev = cur
            if err <= self._target(problem):
                break
        else:
            warnings.warn(
                f"reference for {problem.name!r} did not converge to {self._target(problem):g} "
                f"(last change {err:.3g} at tol {tol:g}); RMSE below that is not meaningful",
                stacklevel=2,
            )
        self.computed += 1
        return prev, err
