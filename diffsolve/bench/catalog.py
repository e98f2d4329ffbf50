"""The benchmark's problems by name: the analytic mixtures, the shipped models (spiral MLP, digits
UNet) and user models from an import path. Kept apart from :mod:`.problems` (the problem classes),
so the model modules can build on those classes without an import circle."""

from __future__ import annotations

import importlib

import torch

from .. import analytic
from ..wrapper import DiffusionODE
from .errors import BenchError
from .problems import SCHEDULES, AnalyticProblem, BenchProblem, ModelProblem

__all__ = ["bench_problem_names", "get_bench_problem", "load_model_problem"]


# -- lookup ----------------------------------------------------------------------------------------
def bench_problem_names() -> list[str]:
    return sorted(analytic.PROBLEMS) + ["mlp-spiral", "digits"]


def get_bench_problem(name: str, samples: int | None = None) -> BenchProblem:
    """A built-in benchmark problem by name: the analytic mixtures, ``mlp-spiral`` and ``digits`` (shipped models);
    also ``digits-cond``, the class-conditional model for guided sampling (its own metrics and ``ode(labels=...)``:
    measured by benchmarks/bench_guidance.py, not by the harness)."""
    if name in analytic.PROBLEMS:
        return AnalyticProblem(name, samples)
    if name == "mlp-spiral":
        from .toy import spiral_problem

        return spiral_problem(samples or 256)
    if name == "digits":
        from .digits import digits_problem

        return digits_problem(samples or 128)
    if name == "digits-cond":  # class-conditional, for guided sampling (not a harness problem: see its class)
        from .digits_cond import digits_cond_problem

        return digits_cond_problem(samples or 297)
    raise BenchError(
        f"unknown problem {name!r}; known problems: {', '.join(bench_problem_names())} "
        "(or pass a model with --model pkg.module:factory)"
    )


def load_model_problem(
    path: str,
    *,
    schedule: str | None = None,
    prediction: str | None = None,
    time=None,
    shape=None,
    samples: int | None = None,
) -> BenchProblem:
    """A user model from an import path ``pkg.module:factory``.

    ``factory()`` may return a :class:`BenchProblem` (used as is), a
    :class:`~diffsolve.DiffusionODE` (``shape`` required; its model, schedule, prediction and time are
    used, so guidance, ``model_kwargs``, a ``denoised_transform`` or modifiers on it are refused) or a plain
    ``model(x, t)`` callable (wrapped with ``schedule`` (default linear) / ``prediction`` (default eps) /
    ``time``; ``shape`` required).
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise BenchError(f"--model {path!r}: expected an import path 'package.module:factory'")
    mod_name, attr = path.split(":")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise BenchError(f"--model {path!r}: cannot import module {mod_name!r} ({exc})") from None
    if not hasattr(module, attr):
        names = sorted(n for n in vars(module) if not n.startswith("_") and callable(getattr(module, n)))
        raise BenchError(
            f"--model {path!r}: module {mod_name!r} has no attribute {attr!r}; "
            f"its callables are: {', '.join(names) or 'none'}"
        )
    factory = getattr(module, attr)
    obj = factory() if callable(factory) and not isinstance(factory, (torch.nn.Module, DiffusionODE)) else factory
    if isinstance(obj, BenchProblem):
        if samples:
            obj.samples = samples
        return obj
    if shape is None:
        raise BenchError(
            f"--model {path!r} returned a {type(obj).__name__}: pass --shape (e.g. 3,32,32) "
            "or return a diffsolve.bench.ModelProblem"
        )
    name = path
    if isinstance(obj, DiffusionODE):
        dropped = [
            what
            for what, present in (
                ("--schedule", schedule is not None),
                ("--prediction", prediction is not None),
                ("guidance", obj.guidance is not None or obj.guidance_method is not None),
                ("model_kwargs", bool(obj.model_kwargs)),
                ("a denoised_transform", obj.denoised_transform is not None),
                (f"its {type(obj).__name__} changes (ds.modify)", type(obj) is not DiffusionODE),
            )
            if present
        ]
        if dropped:  # the problem rebuilds the ODE from (model, schedule, prediction, time) in each dtype
            raise BenchError(
                f"--model {path!r} returned a DiffusionODE: the benchmark runs its model, schedule, prediction and "
                f"time only, so {', '.join(dropped)} would be ignored; return the plain ODE of ds.wrap(model, "
                "schedule, prediction=..., time=...) (or a diffsolve.bench.ModelProblem)"
            )
        p = ModelProblem(
            name, obj.model, obj.schedule, shape, prediction=obj.prediction, time=obj.time, samples=samples or 64
        )
        return p
    if not callable(obj):
        raise BenchError(
            f"--model {path!r}: factory returned {type(obj).__name__}, expected a model, "
            "a DiffusionODE or a ModelProblem"
        )
    schedule = "linear" if schedule is None else schedule
    if schedule not in SCHEDULES:
        raise BenchError(f"unknown schedule {schedule!r}; known schedules: {', '.join(SCHEDULES)}")
    return ModelProblem(
        name, obj, SCHEDULES[schedule](), shape, prediction=prediction or "eps", time=time, samples=samples or 64
    )
