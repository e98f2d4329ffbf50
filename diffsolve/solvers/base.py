"""The Solver contract: what a plugin author implements.

A solver advances the sigma-form ODE (docs/math.md E29), ``d xbar / d sigma = eps``, from one
grid sigma to the next. The driver (:mod:`diffsolve.driver`, behind :func:`diffsolve.sample`)
owns everything else: the grid, the noise generator, callbacks, progress, NaN checks,
trajectories and the conversion between the model's space and xbar.

A solver *instance* is immutable configuration: its options, set in ``__init__``. Everything of
one run lives in a :class:`RunState` that the solver makes and the driver holds, so one instance
serves any number of runs at once (threads, a callback that samples, a diffusers scheduler).

A subclass declares, as class attributes:

* ``name``: its registry name;
* ``order``: convergence order of the deterministic method;
* ``calls_per_step``: model calls per step;
* ``stochastic``: whether it draws noise;
* ``invertible``: whether it may run on an increasing grid (encoding, :func:`diffsolve.invert`);
* ``adaptive``: whether it chooses its own steps (then it overrides :meth:`Solver.run`);
* ``renoise_ok``: whether it continues from ``state.ode.renoised(...)`` after every model
  evaluation, so that renoising predictions (CFG++, DDNM; docs/math.md "Renoising predictions")
  may drive it.

and implements two methods:

* :meth:`Solver.init` ``(ode, sigmas, noise) -> state``: a :class:`RunState` for one run, with
  the float64 coefficients for the grid and an empty history (start with
  ``state = super().init(ode, sigmas, noise)``);
* :meth:`Solver.step` ``(i, x, state)``: one grid step from ``sigmas[i]`` to ``sigmas[i + 1]``,
  written as a *generator*: each model evaluation is a ``yield`` of the request
  ``(x, sigma, need_denoised)`` that receives ``(denoised, eps)``; the step ends with
  ``return x_next, denoised``::

      def step(self, i, x, state):
          s, s_next = state.sigmas[i], state.sigmas[i + 1]
          denoised, eps = yield x, s, True
          x = state.ode.renoised(x, denoised, eps, s)
          return x + (s_next - s) * eps, denoised

  ``need_denoised=False`` lets an eps model skip forming D (``denoised`` may then be None). Who
  answers the request is the driver's business: :func:`diffsolve.sample` calls the model through
  ``state.ode``; :class:`diffsolve.DiffsolveScheduler` answers with the output the pipeline
  computed, one pipeline ``step()`` per model call. That is why a step never calls
  ``state.ode.predict`` itself. The step must not modify ``x`` (or a received tensor) in place.

Options are keyword-only arguments of ``__init__``, checked there with the helpers below
(:func:`check_choice`, :func:`check_real`, :func:`check_int`), so a bad value is a
``ValueError`` naming the option and what is allowed. An option may set an instance attribute of
the contract (an instance with ``eta > 0`` sets ``self.stochastic = True``) but is never *named*
like one: ``order`` as an option would hide the class's declared order, so it is refused when the
class is defined (use e.g. ``solver_order``). Noise comes from ``state.noise(like)``.

Two optional extensions:

* a solver that must choose its own steps (adaptive step size) sets ``adaptive = True`` and
  overrides :meth:`Solver.run` ``(x, after_step, state)``, calling ``state.ode`` directly;
* :class:`ReversibleSolver` adds ``unstep``, the exact inverse of ``step``, for
  :func:`diffsolve.invert_exact`.

Solvers written against the first contract (``setup(ode, sigmas, noise)`` binding the run on
``self`` and ``step(i, x)`` calling ``self.ode``) still run through :class:`LegacyAdapter`, with
a ``DeprecationWarning``; docs/plugins.md ("Porting a solver") gives the port.
"""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Callable, Generator, Sequence
from typing import ClassVar

import torch

from ..wrapper import DiffusionODE

__all__ = [
    "Solver",
    "ReversibleSolver",
    "RunState",
    "LegacyAdapter",
    "NoiseSampler",
    "Request",
    "advance",
    "answer",
    "as_protocol",
    "check_choice",
    "check_real",
    "check_int",
    "CONTRACT_ATTRIBUTES",
    "bind_and_setup",
]

NoiseSampler = Callable[[torch.Tensor], torch.Tensor]
"""``noise(like)`` returns standard normal noise shaped like ``like`` (per-sample generators honoured)."""

Request = tuple
"""What a step yields for one model evaluation: ``(x, sigma, need_denoised)``; it receives ``(denoised, eps)``."""

#: class attributes of the contract; no option may take one of these names
CONTRACT_ATTRIBUTES = ("name", "order", "calls_per_step", "stochastic", "invertible", "adaptive", "renoise_ok")


class RunState:
    """One run of a solver: the ODE view the run calls, the grid (Python floats), the noise
    sampler, and whatever the solver's :meth:`Solver.init` adds (float64 coefficients, history).

    The driver holds it for the length of the run; the solver instance keeps nothing of it.
    """

    def __init__(self, ode: DiffusionODE, sigmas: list[float], noise: NoiseSampler):
        self.ode = ode
        self.sigmas = sigmas
        self.noise = noise

    def __repr__(self) -> str:
        extra = ", ".join(k for k in vars(self) if k not in ("ode", "sigmas", "noise"))
        return f"<RunState {len(self.sigmas) - 1} steps{'; ' + extra if extra else ''}>"


def _is_legacy(cls: type) -> bool:
    """Whether ``cls`` is written against the first contract: a ``setup`` of its own, or a
    ``step(i, x)`` / ``run(x, after_step)`` without the state argument."""
    for klass in cls.__mro__:
        if klass.__module__ == __name__:  # Solver, ReversibleSolver: the contract itself
            return False
        own = vars(klass)
        if "setup" in own:
            return True
        for method, n_args in (("step", 2), ("run", 2), ("unstep", 3)):
            fn = own.get(method)
            if fn is not None and callable(fn):
                params = [
                    p
                    for p in list(inspect.signature(fn).parameters.values())[1:]
                    if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                ]
                if len(params) == n_args:
                    return True
    return False


class Solver:
    """Base class of every diffsolve solver (built-in or plugin): immutable options; the run lives
    in the :class:`RunState` that :meth:`init` returns."""

    name: ClassVar[str] = ""
    order: ClassVar[int] = 1
    calls_per_step: ClassVar[int] = 1
    stochastic: ClassVar[bool] = False
    invertible: ClassVar[bool] = True
    #: chooses its own steps (overrides :meth:`run`); its calls per grid step are not fixed
    adaptive: ClassVar[bool] = False
    #: applies ``state.ode.renoised(...)`` after each model evaluation (RENOISE: docs/math.md)
    renoise_ok: ClassVar[bool] = False
    #: written against the first contract (setup + step(i, x)); runs through :class:`LegacyAdapter`
    legacy: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        clash = [p for p in inspect.signature(cls.__init__).parameters if p in CONTRACT_ATTRIBUTES]
        if clash:
            raise TypeError(
                f"solver class {cls.__qualname__}: option(s) {clash} take the name of a contract attribute "
                f"({', '.join(CONTRACT_ATTRIBUTES)}); rename them (e.g. 'solver_order' for an order option)"
            )
        cls.legacy = _is_legacy(cls)

    def __init__(self, **options):
        if options:
            raise TypeError(f"solver {self.name!r} got unknown option(s) {sorted(options)}; it takes none")

    # -- the contract ----------------------------------------------------------------------
    def init(self, ode: DiffusionODE, sigmas: Sequence[float], noise: NoiseSampler) -> RunState:
        """The state of one run: the ODE view, the grid (Python floats, float64) and the noise sampler.

        Subclasses extend this (``state = super().init(...)`` first) to add per-step float64
        coefficients and an empty history to the state, and return it.
        """
        return RunState(ode, list(sigmas), noise)

    def step(self, i: int, x: torch.Tensor, state: RunState) -> Generator[Request, tuple, tuple]:
        """Advance ``x`` (xbar at ``state.sigmas[i]``) to ``state.sigmas[i + 1]``: a generator that
        yields ``(x, sigma, need_denoised)`` per model evaluation, receives ``(denoised, eps)``, and
        returns ``(x_next, denoised)``.

        ``denoised`` may be None when ``state.ode.wants_denoised`` is False (no one reads it).
        """
        raise NotImplementedError(f"solver {type(self).__name__} does not implement step()")

    def run(
        self, x: torch.Tensor, after_step: Callable[[int, torch.Tensor, torch.Tensor], None], state: RunState
    ) -> torch.Tensor:
        """Integrate over the whole grid, calling ``after_step(i, x_next, denoised)`` after step i.

        The default steps through the grid, answering the model requests from ``state.ode``;
        override only to choose steps yourself (``adaptive = True``).
        """
        for i in range(len(state.sigmas) - 1):
            x, denoised = advance(self.step(i, x, state), state.ode)
            after_step(i, x, denoised)
        return x

    def step_from_infinity(
        self, x: torch.Tensor, denoised: torch.Tensor, eps: torch.Tensor, sigma_1: float, state: RunState
    ) -> torch.Tensor | None | Generator:
        """Optional: the first step of a grid that starts at sigma = inf (a flow model's t = 1).

        The driver has made one model call there (``denoised``, and ``eps`` = the pure-noise state
        ``x``); return xbar at ``sigma_1``, or None for the limit of DDIM's step, D + sigma_1 eps.
        It may be a generator yielding model requests as :meth:`step` does.
        """
        return None

    # -- the first contract, kept for the adapter ------------------------------------------
    def setup(self, ode: DiffusionODE, sigmas: Sequence[float], noise: NoiseSampler) -> None:
        """Deprecated (the first contract): bind the run on ``self``. Only a solver written
        against it calls this (``super().setup(...)``); it runs through :class:`LegacyAdapter`."""
        self.ode = ode
        self.sigmas = list(sigmas)
        self.noise = noise

    # -- description ---------------------------------------------------------------------------
    @classmethod
    def describe(cls) -> str:
        doc = (cls.__doc__ or "").strip().splitlines()
        return doc[0] if doc else cls.__name__

    def __repr__(self) -> str:
        return f"<solver {self.name!r} order={self.order} stochastic={self.stochastic}>"


class ReversibleSolver(Solver):
    """A solver with an exact inverse: :meth:`unstep` undoes :meth:`step`.

    Its update may need the two last states (BDIA does), so its run state keeps them
    (``state.prev``, ``state.last``), :func:`diffsolve.sample_reversible` returns them and
    :func:`diffsolve.invert_exact` walks back with ``unstep``.
    """

    def unstep(
        self, i: int, x_i: torch.Tensor, x_next: torch.Tensor, state: RunState
    ) -> Generator[Request, tuple, torch.Tensor]:
        """Given xbar at ``sigmas[i]`` and ``sigmas[i + 1]``, return xbar at ``sigmas[i - 1]``
        (a generator, as :meth:`Solver.step`)."""
        raise NotImplementedError(f"solver {type(self).__name__} does not implement unstep()")


# -- answering a step's model requests ------------------------------------------------------------
def answer(ode: DiffusionODE, x: torch.Tensor, sigma: float, need_denoised: bool):
    """``(denoised, eps)`` for the request ``(x, sigma, need_denoised)`` from one call of ``ode``:
    D is formed when the request, the run's callback or renoising needs it (:meth:`DiffusionODE.evaluate`)."""
    if need_denoised or ode.renoise:
        return ode.predict(x, sigma)
    return ode.evaluate(x, sigma)


def advance(gen, ode: DiffusionODE):
    """Run one step (or any generator of model requests) to its end, answering each request from
    ``ode`` (:func:`answer`); returns what the generator returns (``(x_next, denoised)`` for a step)."""
    try:
        request = gen.send(None)
        while True:
            request = gen.send(answer(ode, *request))
    except StopIteration as stop:
        return stop.value


# -- the first contract ---------------------------------------------------------------------------
def bind_and_setup(solver: Solver, ode: DiffusionODE, sigmas: Sequence[float], noise: NoiseSampler) -> None:
    """How a first-contract solver starts its run: bind ``ode``, ``sigmas`` (a list of Python floats)
    and ``noise`` on it, then call its ``setup``. A ``setup`` override that forgets
    ``super().setup(...)`` therefore still finds ``self.ode``, ``self.sigmas`` and ``self.noise``."""
    solver.ode, solver.sigmas, solver.noise = ode, list(sigmas), noise
    solver.setup(ode, solver.sigmas, noise)


class LegacyAdapter:
    """A first-contract solver (``setup`` + ``step(i, x)`` with the run on ``self``) seen through
    the current protocol: each run gets a shallow copy of the instance, set up on the run, held in
    the :class:`RunState` (``state.solver``). Its model calls go straight to ``state.ode``, so it
    runs wherever the driver calls the model (:func:`diffsolve.sample`, ``invert``), not in the
    diffusers scheduler, which must feed each call from the pipeline."""

    def __init__(self, solver: Solver):
        self.solver = solver

    def __getattr__(self, name):  # name, order, stochastic, ... of the wrapped instance
        if name == "solver":  # not set yet (copy, unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.solver, name)

    def init(self, ode, sigmas, noise) -> RunState:
        state = RunState(ode, list(sigmas), noise)
        state.solver = copy.copy(self.solver)
        bind_and_setup(state.solver, ode, state.sigmas, noise)
        return state

    def step(self, i, x, state):
        return state.solver.step(i, x)
        yield  # pragma: no cover - makes this a generator that asks for no model call

    def run(self, x, after_step, state):
        if type(state.solver).run is Solver.run:
            return _legacy_run(state.solver, x, after_step)
        return state.solver.run(x, after_step)

    def step_from_infinity(self, x, denoised, eps, sigma_1, state):
        if type(state.solver).step_from_infinity is Solver.step_from_infinity:
            return None
        return state.solver.step_from_infinity(state.ode, x, denoised, eps, sigma_1)

    def unstep(self, i, x_i, x_next, state):
        return state.solver.unstep(i, x_i, x_next)
        yield  # pragma: no cover

    def __repr__(self) -> str:
        return f"<legacy {self.solver!r}>"


def _legacy_run(self, x, after_step):
    """The first contract's whole-run loop (a legacy class that does not override ``run``)."""
    for i in range(len(self.sigmas) - 1):
        x, denoised = self.step(i, x)
        after_step(i, x, denoised)
    return x


def as_protocol(solver: Solver):
    """``solver`` itself, or for a first-contract solver a :class:`LegacyAdapter` around it, with a
    ``DeprecationWarning`` naming the current form."""
    if isinstance(solver, LegacyAdapter) or not type(solver).legacy:
        return solver
    warnings.warn(
        f"solver class {type(solver).__qualname__} ({solver.name!r}) uses the first Solver contract "
        "(setup(ode, sigmas, noise) + step(i, x) with the run on self); it runs through an adapter. "
        "Port it to init(ode, sigmas, noise) -> state and the generator step(i, x, state) that yields "
        "(x, sigma, need_denoised) per model call: docs/plugins.md, 'Porting a solver'",
        DeprecationWarning,
        stacklevel=3,
    )
    return LegacyAdapter(solver)


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
