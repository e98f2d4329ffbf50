"""The restorer contract (a method of :func:`diffsolve.restore`) and what the methods share.

A restorer is a class with a registry ``name`` and keyword-only options in ``__init__``; it implements
:meth:`Restorer.restore` ``(task) -> x0``. :class:`Task` carries the checked problem: the ODE, the
measurement, the operator, the grid, the start noise, the solver choice. Two ways to build a method:

* **a prediction hook** (DPS, PiGDM, DDNM): the method changes the model's ``(denoised, eps)`` and any
  registered solver takes the step: :func:`hooked` makes an ODE view whose ``predict`` applies the
  hook, and :meth:`Task.sample` runs it through :func:`diffsolve.sample`. A hook whose prediction is
  *renoising* (DDNM, DPS: the solver continues from ``denoised + sigma * eps``, RENOISE_SPEC) needs a
  solver with ``renoise_ok``; one that keeps the pair on the state's ray (PiGDM) works with all.
* **its own loop** (DDRM, RED-diff, DAPS), calling ``task.ode.predict`` / :func:`diffsolve.sample`.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..wrapper import DiffusionODE
from .operators import LinearOperator, Operator

__all__ = ["Restorer", "Task", "hooked"]


class Restorer:
    """Base class of an inverse-problem method (built-in or plugin).

    Class attributes: ``name`` (registry name), ``linear_only`` (needs a :class:`LinearOperator`:
    its SVD or pseudo-inverse), ``uses_solver`` (``solver=`` picks the solver of its unconditional
    steps or inner ODE solves; False: the method is its own sampler and refuses ``solver=``),
    ``default_solver`` (name and options used when ``solver=None``), ``renoising`` (its predictions
    are renoising: the solver must have ``renoise_ok``), ``paper``.
    """

    name: ClassVar[str] = ""
    linear_only: ClassVar[bool] = False
    uses_solver: ClassVar[bool] = True
    default_solver: ClassVar[tuple[str, dict[str, Any]]] = ("ddim", {})
    #: its hook's predictions are renoising (RENOISE_SPEC): the solver must have ``renoise_ok``
    renoising: ClassVar[bool] = False
    paper: ClassVar[str] = ""

    def restore(self, task: Task) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def options(cls) -> list[str]:
        """The method's option names (its keyword-only ``__init__`` parameters)."""
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


@dataclass
class Task:
    """One restoration problem, checked by :func:`diffsolve.restore` before the first model call.

    Attributes:
        ode: the model's ODE. y: the measurement (model space). operator: A. noise_std: sigma_y.
        sigmas: the grid (Python floats, strictly decreasing, ending at 0). x_T: the start state in
        model space at ``sigmas[0]``. x_shape: one sample's shape. solver: what ``solver=`` resolved
        to (a name, class or instance; None for methods that are their own sampler).
        noise: ``noise(like)``, standard normal noise from the user's generator.
    """

    ode: DiffusionODE
    y: torch.Tensor
    operator: Operator
    noise_std: float
    sigmas: list[float]
    x_T: torch.Tensor
    x_shape: tuple[int, ...]
    solver: Any
    solver_options: dict[str, Any]
    generator: Any
    noise: Callable[[torch.Tensor], torch.Tensor]
    progress: bool = False
    #: :func:`diffsolve.sample`, handed in by :func:`diffsolve.restore` (this module stays below the driver)
    sampler: Callable[..., torch.Tensor] | None = None

    @property
    def linear(self) -> LinearOperator:
        return self.operator  # type: ignore[return-value]

    def levels(self, items, desc: str):
        """``items`` with a progress bar when the user asked for one (for methods with their own loop)."""
        if not self.progress:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc)

    def sample(
        self, ode: DiffusionODE, x: torch.Tensor, sigmas: list[float] | None = None, progress: bool | None = None
    ) -> torch.Tensor:
        """Run the chosen solver on ``ode`` from ``x`` (model space) down ``sigmas`` (default: the task's grid)."""
        if self.sampler is None:
            raise RuntimeError("this Task has no sampler: make tasks through diffsolve.restore")
        return self.sampler(
            ode,
            x,
            self.solver,
            sigmas=self.sigmas if sigmas is None else sigmas,
            generator=self.generator,
            progress=self.progress if progress is None else progress,
            **self.solver_options,
        )


# -- prediction hooks: an ODE view whose predict() applies a method's rule -----------------------------
Hook = Callable[[DiffusionODE, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


class _Hooked:
    """Mixin: ``predict`` returns ``hook(base_predict, xbar, sigma)``; ``eps``/``evaluate`` go through it."""

    _hook: Hook

    def base_predict(self, xbar: torch.Tensor, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The unmodified model prediction (one model call)."""
        return super().predict(xbar, sigma)

    def predict(self, xbar, sigma):
        return self._hook(self, xbar, float(sigma))

    def eps(self, xbar, sigma):
        return self.predict(xbar, sigma)[1]

    def __call__(self, xbar, sigma):
        return self.predict(xbar, sigma)[1]

    def evaluate(self, xbar, sigma, need_denoised=False):
        return self.predict(xbar, sigma)

    def predict_at_infinity(self, x):
        raise ValueError("restoration methods run on a finite grid: start the grid at a finite sigma")


_hooked_classes: dict[type, type] = {}


def hooked(ode: DiffusionODE, hook: Hook, renoise: bool) -> DiffusionODE:
    """A view of ``ode`` whose ``predict(xbar, sigma)`` returns ``hook(view, xbar, sigma)``; the hook
    reaches the model through ``view.base_predict``. ``renoise``: the hook's pairs are renoising
    (RENOISE_SPEC: the solver continues from ``denoised + sigma * eps``)."""
    base = type(ode)
    cls = _hooked_classes.get(base)
    if cls is None:
        cls = _hooked_classes[base] = type(f"Restoring{base.__name__}", (_Hooked, base), {})
    view = copy.copy(ode)
    view.__class__ = cls
    view._hook = hook
    view.renoise = bool(renoise)
    return view


def per_sample_norm(r: torch.Tensor) -> torch.Tensor:
    """||r||_2 of each sample of a batch, shape (B,)."""
    return r.reshape(r.shape[0], -1).norm(dim=1)


def bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample vector (B,) shaped to broadcast against ``like`` (B, ...)."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def next_level(sigmas: list[float], sigma: float) -> float:
    """The largest level of the decreasing grid ``sigmas`` below ``sigma`` (0 past the end)."""
    for s in sigmas:
        if s < sigma:
            return s
    return 0.0
