"""diffsolve: sample diffusion models with any solver, on the sigma-form ODE of DDIM.

    d xbar / d sigma = eps(xbar / sqrt(1 + sigma^2), t(sigma)),   xbar = x / sqrt(alpha_bar)

(ddim-math.md E29). DDIM is the Euler method on it (E30).
"""

from . import problems
from .grids import validate_sigmas
from .plugins import DuplicateNameError, PluginWarning, UnknownNameError, hookimpl
from .sampling import grid, grids, invert, make_noise_sampler, make_solver, sample, solvers
from .schedules import (
    DiscreteSchedule,
    EDMSchedule,
    FlowSchedule,
    Schedule,
    SigmaSchedule,
    VPCosineSchedule,
    VPLinearSchedule,
)
from .solvers.base import Solver
from .wrapper import DiffusionODE, NonFiniteError, wrap

__version__ = "0.1.0"

__all__ = [
    "problems",
    "sample",
    "invert",
    "grid",
    "grids",
    "solvers",
    "wrap",
    "make_solver",
    "make_noise_sampler",
    "validate_sigmas",
    "DiffusionODE",
    "Solver",
    "Schedule",
    "DiscreteSchedule",
    "VPLinearSchedule",
    "VPCosineSchedule",
    "SigmaSchedule",
    "EDMSchedule",
    "FlowSchedule",
    "NonFiniteError",
    "PluginWarning",
    "DuplicateNameError",
    "UnknownNameError",
    "hookimpl",
    "__version__",
]
