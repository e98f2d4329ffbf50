"""Built-in solvers, one small module each. They register through the plugin hook
(:mod:`diffsolve.plugins.builtin`) like any third-party solver.

For plugin authors: the contract (:class:`Solver`, :class:`RunState`, :class:`ReversibleSolver`)
and the shared helpers of ancestral (SDE) steps, :func:`ancestral_split` and :func:`check_eta`."""

from ._ancestral import ancestral_split, check_eta
from .base import NoiseSampler, ReversibleSolver, RunState, Solver

__all__ = ["Solver", "ReversibleSolver", "RunState", "NoiseSampler", "ancestral_split", "check_eta"]
