"""Built-in solvers, one small module each. They register through the plugin hook
(:mod:`diffsolve.plugins.builtin`) like any third-party solver."""

from .base import NoiseSampler, Solver

__all__ = ["Solver", "NoiseSampler"]
