"""The Solver interface.

A solver advances the sigma-form ODE (ddim-math.md E29), ``d xbar / d sigma = eps``,
from one grid sigma to the next. The driver (:mod:`diffsolve.sampling`) owns
everything else: the grid, the noise generator, callbacks, progress, NaN checks,
trajectories and the conversion between the model's space and xbar.

Contract, for a subclass:

* class attributes ``name`` (registry name), ``order`` (convergence order of the
  deterministic method), ``calls_per_step`` (model calls per step), ``stochastic``
  (draws noise), ``invertible`` (may run on an increasing grid, see :func:`diffsolve.invert`);
* keyword-only options in ``__init__``, validated there (bad value -> ``ValueError``
  naming the option and what is allowed);
* :meth:`setup` to precompute float64 coefficients for the grid and reset history;
* :meth:`step` for one grid step, returning ``(xbar_next, denoised)``.

A solver instance is made fresh for every run, so multistep history may live on ``self``.
A solver that must control its own integration overrides :meth:`run`.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Sequence

import torch

from ..wrapper import DiffusionODE

__all__ = ["Solver", "NoiseSampler"]

NoiseSampler = Callable[[torch.Tensor], torch.Tensor]
"""``noise(like)`` returns standard normal noise shaped like ``like`` (per-sample generators honoured)."""


class Solver:
    """Base class of every diffsolve solver (built-in or plugin)."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    calls_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    invertible: ClassVar[bool] = True

    ode: DiffusionODE
    sigmas: list[float]
    noise: NoiseSampler
    #: set by the driver: whether anyone (a callback) reads the ``denoised`` a step returns;
    #: when False a solver may return None for it and save the work of forming it
    report_denoised: bool = True
    #: set by the driver: True when no one else holds the state tensors a step receives (no
    #: callback, no trajectory, not the caller's x_T). A solver may then update a state in place
    #: once the model has been called on it, if the model was handed a scaled copy and not the
    #: state itself (:meth:`DiffusionODE.model_sees_state`). Direct callers leave it False.
    owns_state: bool = False

    def __init__(self, **options):
        if options:
            raise TypeError(
                f"solver {self.name!r} got unknown option(s) {sorted(options)}; it takes none"
            )

    # -- the contract ----------------------------------------------------------------------
    def setup(self, ode: DiffusionODE, sigmas: Sequence[float], noise: NoiseSampler) -> None:
        """Bind the run: the ODE, the grid (Python floats, float64) and the noise sampler.

        Subclasses extend this to precompute per-step coefficients and reset history.
        """
        self.ode = ode
        self.sigmas = list(sigmas)
        self.noise = noise
        #: per step: whether the model call at sigmas[i] is handed a scaled copy of the state (so
        #: a solver that owns the state may update it in place after that call); None otherwise
        self.model_gets_copy = [not ode.model_sees_state(s) for s in self.sigmas[:-1]] if self.owns_state else None

    def step(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Advance ``x`` (xbar at ``sigmas[i]``) to ``sigmas[i + 1]``; return ``(x_next, denoised)``."""
        raise NotImplementedError(f"solver {type(self).__name__} does not implement step()")

    def run(self, x: torch.Tensor, after_step: Callable[[int, torch.Tensor, torch.Tensor], None]) -> torch.Tensor:
        """Integrate over the whole grid. ``after_step(i, x, denoised)`` is the driver's hook."""
        for i in range(len(self.sigmas) - 1):
            self.ode.step_index = i
            x, denoised = self.step(i, x)
            after_step(i, x, denoised)
        return x

    # -- helpers ----------------------------------------------------------------------------
    def evaluate(self, x: torch.Tensor, sigma: float, need_denoised: bool = False):
        """``(denoised, eps)`` from one model call; ``denoised`` is None when neither the step
        (``need_denoised``) nor a callback (``report_denoised``) reads it, which saves forming it."""
        if need_denoised or self.report_denoised:
            return self.ode.predict(x, sigma)
        return None, self.ode.eps(x, sigma)

    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else cls.__name__

    def __repr__(self) -> str:
        return f"<solver {self.name!r} order={self.order} stochastic={self.stochastic}>"
