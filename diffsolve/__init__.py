"""diffsolve: sample diffusion models with any solver, on the sigma-form ODE of DDIM.

    d xbar / d sigma = eps(xbar / sqrt(1 + sigma^2), t(sigma)),   xbar = x / sqrt(alpha_bar)

(docs/math.md E29). DDIM is the Euler method on it (E30).
"""

from . import analytic, inverse
from .counting import count_calls, steps_for_nfe
from .gaussian_step import GaussianMoments
from .grids import validate_sigmas
from .guidance import Guidance, list_guidance, make_guidance
from .interop.diffusers import diffusers_grid, from_diffusers
from .interop.k_diffusion import k_sampler
from .interpolation import interpolate, lerp, slerp
from .inverse import Restorer, list_restorers, restore
from .inversion import ReversibleSample, invert_exact, reconstruction_error, sample_reversible
from .modifiers import ModifiedODE, TimeShift, modify
from .plugins import DuplicateNameError, PluginWarning, UnknownNameError, hookimpl
from .sampling import grid, invert, list_grids, list_solvers, make_grid, make_noise_sampler, make_solver, sample
from .schedules import (
    DiscreteSchedule,
    EDMSchedule,
    FlowSchedule,
    Schedule,
    SigmaSchedule,
    VPCosineSchedule,
    VPLinearSchedule,
)
from .solvers.base import ReversibleSolver, RunState, Solver
from .statistics import ModelStatistics, StatisticsError, model_statistics
from .thresholding import Clipping, DynamicThresholding
from .tuning import Recipe, tune
from .wrapper import DiffusionODE, NonFiniteError, wrap

__version__ = "0.1.0"

__all__ = [
    "analytic",
    "sample",
    "invert",
    "make_grid",
    "grid",
    "list_grids",
    "list_solvers",
    "wrap",
    "make_solver",
    "make_noise_sampler",
    "validate_sigmas",
    "DiffusionODE",
    "Solver",
    "ReversibleSolver",
    "RunState",
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
    "ReversibleSample",
    "sample_reversible",
    "invert_exact",
    "reconstruction_error",
    "slerp",
    "lerp",
    "interpolate",
    "Clipping",
    "DynamicThresholding",
    "from_diffusers",
    "diffusers_grid",
    "k_sampler",
    "tune",
    "Recipe",
    "count_calls",
    "steps_for_nfe",
    "inverse",
    "restore",
    "list_restorers",
    "Restorer",
    "model_statistics",
    "ModelStatistics",
    "GaussianMoments",
    "StatisticsError",
    "modify",
    "ModifiedODE",
    "TimeShift",
    "Guidance",
    "make_guidance",
    "list_guidance",
]


def __getattr__(name):
    # DiffsolveScheduler imports diffusers (the optional extra): only when asked for, and
    # it stays out of __all__ so that `from diffsolve import *` works without diffusers
    if name == "DiffsolveScheduler":
        from .interop.diffusers_scheduler import DiffsolveScheduler

        return DiffsolveScheduler
    raise AttributeError(f"module 'diffsolve' has no attribute {name!r}")
