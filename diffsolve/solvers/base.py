"""The Solver contract: what a plugin author implements.

A solver advances the sigma-form ODE (docs/math.md E29), ``d xbar / d sigma = eps``, from one
grid sigma to the next. The driver (:mod:`diffsolve.sampling`) owns everything else: the grid,
the noise generator, callbacks, progress, NaN checks, trajectories, the per-run state and the
conversion between the model's space and xbar.

A subclass declares, as class attributes:

* ``name``: its registry name;
* ``order``: convergence order of the deterministic method;
* ``calls_per_step``: model calls per step;
* ``stochastic``: whether it draws noise;
* ``invertible``: whether it may run on an increasing grid (encoding, :func:`diffsolve.invert`).

and implements two methods:

* :meth:`Solver.setup` ``(ode, sigmas, noise)``: bind the run and precompute float64
  coefficients for the grid (call ``super().setup(...)`` first);
* :meth:`Solver.step` ``(i, x) -> (x_next, denoised)``: one grid step from ``sigmas[i]`` to
  ``sigmas[i + 1]``.

Options are keyword-only arguments of ``__init__``, checked there with the helpers below
(:func:`check_choice`, :func:`check_real`, :func:`check_int`), so a bad value is a
``ValueError`` naming the option and what is allowed. An option may set an instance attribute of
the contract (an instance with ``eta > 0`` sets ``self.stochastic = True``) but is never *named*
like one: ``order`` as an option would hide the class's declared order, so it is refused when the
class is defined (use e.g. ``solver_order``).

Inside :meth:`step` the model is reached only through the ODE: ``self.ode.predict(x, sigma)``
returns ``(denoised, eps)`` from one model call, ``self.ode.eps(x, sigma)`` eps alone,
``self.ode.evaluate(x, sigma, need_denoised)`` forms D only when someone reads it. Noise comes
from ``self.noise(like)``. A solver instance is made fresh for every run, so history may live on
``self``.

Two optional extensions:

* a solver that must choose its own steps (adaptive step size) overrides :meth:`Solver.run`;
* :class:`ReversibleSolver` adds ``unstep``, the exact inverse of ``step``, for
  :func:`diffsolve.invert_exact`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch

from ..wrapper import DiffusionODE

__all__ = [
    "Solver",
    "ReversibleSolver",
    "NoiseSampler",
    "check_choice",
    "check_real",
    "check_int",
    "CONTRACT_ATTRIBUTES",
    "bind_and_setup",
]

NoiseSampler = Callable[[torch.Tensor], torch.Tensor]
"""``noise(like)`` returns standard normal noise shaped like ``like`` (per-sample generators honoured)."""

#: class attributes of the contract; no option may take one of these names
CONTRACT_ATTRIBUTES = ("name", "order", "calls_per_step", "stochastic", "invertible")


class Solver:
    """Base class of every diffsolve solver (built-in or plugin)."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    calls_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    invertible: ClassVar[bool] = True
    #: RENOISE_SPEC: True when the solver applies ``x = ode.renoised(x, denoised, eps, sigma)`` after each
    #: model evaluation, so it can run renoising predictions (CFG++, DDNM)
    renoise_ok: ClassVar[bool] = False

    ode: DiffusionODE
    sigmas: list[float]
    noise: NoiseSampler

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        clash = [p for p in inspect.signature(cls.__init__).parameters if p in CONTRACT_ATTRIBUTES]
        if clash:
            raise TypeError(
                f"solver class {cls.__qualname__}: option(s) {clash} take the name of a contract attribute "
                f"({', '.join(CONTRACT_ATTRIBUTES)}); rename them (e.g. 'solver_order' for an order option)"
            )

    def __init__(self, **options):
        if options:
            raise TypeError(f"solver {self.name!r} got unknown option(s) {sorted(options)}; it takes none")

    # -- the contract ----------------------------------------------------------------------
    def setup(self, ode: DiffusionODE, sigmas: Sequence[float], noise: NoiseSampler) -> None:
        """Bind the run: the ODE, the grid (Python floats, float64) and the noise sampler.

        Subclasses extend this (``super().setup(...)`` first) to precompute per-step
        coefficients and reset history.
        """
        self.ode = ode
        self.sigmas = list(sigmas)
        self.noise = noise

    def step(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Advance ``x`` (xbar at ``sigmas[i]``) to ``sigmas[i + 1]``; return ``(x_next, denoised)``.

        ``denoised`` may be None when ``self.ode.wants_denoised`` is False (no one reads it).
        """
        raise NotImplementedError(f"solver {type(self).__name__} does not implement step()")

    def run(self, x: torch.Tensor, after_step: Callable[[int, torch.Tensor, torch.Tensor], None]) -> torch.Tensor:
        """Integrate over the whole grid, calling ``after_step(i, x_next, denoised)`` after step i.

        The default steps through the grid; override only to choose steps yourself.
        """
        for i in range(len(self.sigmas) - 1):
            x, denoised = self.step(i, x)
            after_step(i, x, denoised)
        return x

    def step_from_infinity(
        self, ode: DiffusionODE, x: torch.Tensor, denoised: torch.Tensor, eps: torch.Tensor, sigma_1: float
    ) -> torch.Tensor | None:
        """Optional: the first step of a grid that starts at sigma = inf (a flow model's t = 1).

        The driver has made one model call there (``denoised``, and ``eps`` = the pure-noise state
        ``x``); return xbar at ``sigma_1``, or None for the limit of DDIM's step, D + sigma_1 eps.
        """
        return None

    # -- description ---------------------------------------------------------------------------
    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else cls.__name__

    def __repr__(self) -> str:
        return f"<solver {self.name!r} order={self.order} stochastic={self.stochastic}>"


class ReversibleSolver(Solver):
    """A solver with an exact inverse: :meth:`unstep` undoes :meth:`step`.

    Its update may need the two last states (BDIA does), so :func:`diffsolve.sample_reversible`
    keeps them (``self.last``, ``self.prev`` after a run) and :func:`diffsolve.invert_exact`
    walks back with ``unstep``.
    """

    def unstep(self, i: int, x_i: torch.Tensor, x_next: torch.Tensor) -> torch.Tensor:
        """Given xbar at ``sigmas[i]`` and ``sigmas[i + 1]``, return xbar at ``sigmas[i - 1]``."""
        raise NotImplementedError(f"solver {type(self).__name__} does not implement unstep()")


def bind_and_setup(solver: Solver, ode: DiffusionODE, sigmas: Sequence[float], noise: NoiseSampler) -> None:
    """How every driver starts a solver's run: bind ``ode``, ``sigmas`` (a list of Python floats)
    and ``noise`` on it, then call its :meth:`Solver.setup`. A ``setup`` override that forgets
    ``super().setup(...)`` therefore still finds ``self.ode``, ``self.sigmas`` and ``self.noise``."""
    solver.ode, solver.sigmas, solver.noise = ode, list(sigmas), noise
    solver.setup(ode, solver.sigmas, noise)


# -- option checks, shared by every solver --------------------------------------------------------
def check_choice(option: str, value, allowed: Sequence):
    """``value`` if it is one of ``allowed``, else a ValueError naming the option and the choices."""
    if not any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed):
        raise ValueError(f"{option}={value!r} is not allowed; allowed: {', '.join(map(repr, allowed))}")
    return value


def check_real(
    option: str,
    value,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """``float(value)`` if it is a number in ``[low, high]`` (``(low, high]`` with ``low_open``),
    finite unless ``allow_inf``; else a ValueError naming the option and the range."""
    try:
        if isinstance(value, (bool, str, bytes)):  # float("0.5") parses; an option is a number, not text
            raise TypeError
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{option} must be a number, got {value!r}") from None
    ok = (math.isfinite(v) or (allow_inf and not math.isnan(v))) and (v > low if low_open else v >= low) and v <= high
    if not ok:
        lo = "(" if low_open else "["
        raise ValueError(
            f"{option} must be a {'' if allow_inf else 'finite '}number in {lo}{low}, {high}], got {value!r}"
        )
    return v


def check_int(option: str, value, allowed: Sequence[int]) -> int:
    """``value`` if it is an int in ``allowed``, else a ValueError naming the option and the choices."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in allowed:
        raise ValueError(f"{option}={value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
    return value
