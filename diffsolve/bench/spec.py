"""What a sweep runs and what it records: solver specs (``ddim:eta=1``, a Solver class, a peer, the
``tuned`` entry) and the result columns. Shared by the harness, the overhead bench and the reports
without an import circle between them."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

from ..driver import list_solvers as solver_names
from ..driver import make_solver
from ..solvers.base import Solver
from . import peers
from .errors import BenchError

__all__ = ["ROW_FIELDS", "TIMING_FIELDS", "TUNED", "SolverSpec", "parse_solver"]

#: the solver entry that runs a recipe from :func:`diffsolve.tune` per problem and NFE
TUNED = "tuned"

#: columns of results.csv, in order
ROW_FIELDS = [
    "problem",
    "solver",
    "grid",
    "nfe_target",
    "seed",
    "status",
    "nfe",
    "steps",
    "nfe_exact",
    "stochastic",
    "peer",
    "rmse",
    "ref_err",
    "nll_gap",
    "sw",
    "fdd",
    "coverage",
    "wall_s",
    "overhead_us_per_step",
    "peak_mem_bytes",
    "mem_source",
    "sigma_start",
    "sigma_end",
    "samples",
    "dtype",
    "device",
    "message",
]
#: columns that depend on the machine's speed (left out when comparing runs)
TIMING_FIELDS = ("wall_s", "overhead_us_per_step", "peak_mem_bytes")


# -- solver specs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SolverSpec:
    """A solver of the sweep: a registered name with options (``ddim:eta=1``), a Solver class, or a peer."""

    label: str
    name: str | None = None
    cls: type | None = None
    options: tuple[tuple[str, Any], ...] = ()
    peer: str | None = None
    #: the ``tuned`` entry: a recipe from :func:`diffsolve.tune` per problem and NFE
    tuned: bool = False

    @property
    def solver(self):
        return self.cls if self.cls is not None else self.name

    @property
    def calls_per_step(self) -> int:
        if self.peer is not None:
            return 1
        return int(getattr(self.cls, "calls_per_step", 1))

    def instance(self) -> Solver:
        return make_solver(self.solver, **dict(self.options))


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_solver(spec) -> SolverSpec:
    """``"ddim"``, ``"ddim:eta=1"`` (options after colons), a Solver subclass, or a peer label."""
    if isinstance(spec, SolverSpec):
        return spec
    if spec == TUNED:
        return SolverSpec(label=TUNED, tuned=True)
    if isinstance(spec, type) and issubclass(spec, Solver):
        return SolverSpec(label=spec.name or spec.__name__, cls=spec)
    if not isinstance(spec, str) or not spec:
        raise BenchError(f"a solver must be a name or a Solver subclass, got {spec!r}")
    if spec in peers.PEERS:
        if spec not in peers.available_peers():
            lib = peers.PEERS[spec].library
            raise BenchError(
                f"peer {spec!r} needs {lib}, which is not installed "
                f"(pip install {'diffusers' if lib == 'diffusers' else 'k-diffusion'})"
            )
        return SolverSpec(label=spec, peer=spec)
    name, *opts = spec.split(":")
    known = solver_names()
    if name not in known:
        raise BenchError(f"unknown solver {name!r}; known solvers: {', '.join(known)}; peers: {', '.join(peers.PEERS)}")
    options = []
    for o in opts:
        if "=" not in o:
            raise BenchError(f"solver {spec!r}: option {o!r} must look like key=value (e.g. ddim:eta=1)")
        k, v = o.split("=", 1)
        options.append((k, _literal(v)))
    from ..plugins.registry import get_registry

    cls = get_registry().solver(name)
    s = SolverSpec(label=spec, name=name, cls=cls, options=tuple(options))
    try:
        s.instance()
    except (ValueError, TypeError) as exc:
        raise BenchError(f"solver {spec!r}: {exc}") from None
    return s
