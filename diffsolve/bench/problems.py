"""Benchmark problems: an ODE to sample, a start state x_T, and a way to judge the samples.

* :class:`AnalyticProblem`: the Gaussian mixtures of :mod:`diffsolve.analytic` (exact eps);
  distribution metric: NLL under the exact p0, relative to true samples.
* :class:`ModelProblem`: any eps/x0/v-network (the shipped spiral MLP, or a user model
  given as ``pkg.mod:factory``); distribution metric: sliced Wasserstein distance to
  held-out data when the problem has data. The shipped digits UNet
  (:class:`diffsolve.bench.digits.DigitsProblem`) adds FDD and class coverage.

Both give the ODE in a run dtype (:meth:`ode`), the same ODE in float64 for references
(:meth:`reference_ode`), the raw model for peer libraries (:meth:`raw_model`) and x_T.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Callable

import torch

from .. import analytic
from ..schedules import DiscreteSchedule, Schedule
from ..wrapper import DiffusionODE
from .errors import BenchError

__all__ = ["BenchProblem", "AnalyticProblem", "ModelProblem", "SCHEDULES"]

_F64 = torch.float64
#: default batch per problem (samples per cell)
DEFAULT_SAMPLES = {"gaussian": 256, "gmm2d": 512, "gmm64": 128, "gmm-image": 16}

SCHEDULES: dict[str, Callable[[], Schedule]] = {
    "linear": lambda: DiscreteSchedule.linear(1000, 1e-4, 0.02),
    "scaled_linear": lambda: DiscreteSchedule.scaled_linear(),
    "squaredcos_cap_v2": lambda: DiscreteSchedule.squaredcos_cap_v2(),
}


class BenchProblem:
    """Common interface. Subclasses set ``name``, ``shape``, ``schedule``, ``samples``, ``dtype``."""

    name: str
    shape: tuple[int, ...]
    schedule: Schedule
    samples: int
    dtype: torch.dtype
    description: str = ""
    #: name of the distribution metric shown in tables ("nll_gap" or "sw")
    dist_metric: str = "sw"
    #: reference tolerance and convergence target; None: the harness's (1e-10, 1e-7)
    ref_tol: float | None = None
    ref_target: float | None = None

    def ode(self, dtype: torch.dtype, device: str = "cpu") -> DiffusionODE:
        raise NotImplementedError

    def reference_ode(self) -> DiffusionODE:
        raise NotImplementedError

    def raw_model(self, dtype: torch.dtype, device: str = "cpu"):
        """``(model(x, t), prediction, time)`` in the model's own convention (for peers)."""
        ode = self.ode(dtype, device)
        return ode.model, ode.prediction, ode.time

    def fingerprint(self) -> str:
        """Identifies the problem in reference cache keys."""
        return self.name

    def x_T(self, seed: int, n: int) -> torch.Tensor:
        """Standard normal start states (model space, float64 values exactly representable in float32)."""
        g = torch.Generator().manual_seed(int(seed))
        x = torch.randn(n, *self.shape, generator=g, dtype=_F64)
        return x.to(torch.float32).to(_F64)

    def x_T_scale(self, sigma_max: float) -> float:
        """Std of x_T in the model's space: 1 for VP, sqrt(1 + sigma^2) xbar-scaled otherwise."""
        return 1.0 if self.schedule.space == "vp" else self.schedule.scale(sigma_max) * math.sqrt(1 + sigma_max**2)

    def metrics(self, x0: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError


class AnalyticProblem(BenchProblem):
    """A Gaussian mixture of :data:`diffsolve.analytic.PROBLEMS` with its exact eps."""

    dist_metric = "nll_gap"

    def __init__(self, name: str, samples: int | None = None):
        self.name = name
        self.mixture = analytic.get_problem(name)
        self.schedule = analytic.default_schedule()
        self.shape = tuple(self.mixture.shape)
        self.samples = samples or DEFAULT_SAMPLES.get(name, 256)
        self.dtype = _F64
        self.description = (
            f"analytic Gaussian mixture '{name}' ({self.mixture.means.shape[0]} components, D={self.mixture.dim})"
        )
        self._ode = self.mixture.ode(self.schedule)
        self._true: torch.Tensor | None = None
        self._true_nll: float | None = None

    def ode(self, dtype, device="cpu"):
        if str(device) != "cpu":
            raise BenchError(f"analytic problem {self.name!r} runs on the CPU only (device={device!r})")
        return self.mixture.ode(self.schedule)

    def reference_ode(self):
        return self._ode

    def _true_samples(self) -> torch.Tensor:
        if self._true is None:
            self._true = self.mixture.sample(4096, torch.Generator().manual_seed(2**20 + 7))
            self._true_nll = float(-self.mixture.log_prob(self._true).mean())
        return self._true

    def metrics(self, x0):
        true = self._true_samples()
        nll = float(-self.mixture.log_prob(x0.to(_F64).cpu()).mean())
        return {"nll_gap": nll - self._true_nll, "sw": sliced_wasserstein(x0, true)}


class ModelProblem(BenchProblem):
    """A network as a benchmark problem.

    Args:
        name: shown in tables.
        model: ``model(x, t) -> prediction`` (an ``nn.Module`` is cast to the run dtype).
        schedule: its noise schedule.
        shape: the shape of one sample.
        prediction, time: as in :func:`diffsolve.wrap`.
        data: held-out data (N, *shape) for the sliced Wasserstein metric (optional).
        samples: default batch per cell; dtype: default run dtype.
        ref_tol, ref_target: tolerance of its reference solutions and the change under halving
            accepted as converged (default 1e-8 and 1e-6; None: the harness's).
    """

    dist_metric = "sw"

    def __init__(
        self,
        name: str,
        model,
        schedule: Schedule,
        shape,
        *,
        prediction: str = "eps",
        time=None,
        data: torch.Tensor | None = None,
        samples: int = 256,
        dtype: torch.dtype = torch.float32,
        description: str = "",
        fingerprint: str | None = None,
        ref_tol: float | None = 1e-8,
        ref_target: float | None = 1e-6,
    ):
        self.name = name
        self.model = model
        self.schedule = schedule
        self.shape = tuple(int(s) for s in shape)
        self.prediction = prediction
        self.time = time
        self.data = None if data is None else torch.as_tensor(data, dtype=_F64)
        self.samples = int(samples)
        self.dtype = dtype
        self.description = description or f"model {name}"
        self._fingerprint = fingerprint
        self._odes: dict = {}
        self.ref_tol, self.ref_target = ref_tol, ref_target

    def _model_in(self, dtype, device):
        m = self.model
        if isinstance(m, torch.nn.Module):
            return copy.deepcopy(m).to(device=device, dtype=dtype)
        return m

    def ode(self, dtype, device="cpu"):
        key = (dtype, str(device))
        if key not in self._odes:
            time_dtype = _F64 if dtype == _F64 else torch.float32
            self._odes[key] = DiffusionODE(
                self._model_in(dtype, device),
                self.schedule,
                prediction=self.prediction,
                time=self.time,
                time_dtype=time_dtype,
            )
        return self._odes[key]

    def reference_ode(self):
        return self.ode(_F64, "cpu")

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            h = hashlib.sha1(self.name.encode())
            if isinstance(self.model, torch.nn.Module):
                for k, v in sorted(self.model.state_dict().items()):
                    h.update(k.encode())
                    h.update(v.detach().cpu().to(_F64).numpy().tobytes())
            self._fingerprint = f"{self.name}-{h.hexdigest()[:12]}"
        return self._fingerprint

    def metrics(self, x0):
        if self.data is None:
            return {"nll_gap": float("nan"), "sw": float("nan")}
        return {"nll_gap": float("nan"), "sw": sliced_wasserstein(x0, self.data)}


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, projections: int = 128, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two sample sets (flattened), fixed random directions.

    Each 1-D distance compares quantiles at min(N, M) levels, so the sets may differ in size.
    """
    x = x.detach().to(_F64).cpu().reshape(x.shape[0], -1)
    y = y.detach().to(_F64).cpu().reshape(y.shape[0], -1)
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(x.shape[1], projections, generator=g, dtype=_F64)
    dirs = dirs / dirs.norm(dim=0, keepdim=True)
    px, py = (x @ dirs).sort(0).values, (y @ dirs).sort(0).values
    n = min(px.shape[0], py.shape[0])
    q = (torch.arange(n, dtype=_F64) + 0.5) / n
    qx = torch.quantile(px, q, dim=0, interpolation="linear") if px.shape[0] != n else px
    qy = torch.quantile(py, q, dim=0, interpolation="linear") if py.shape[0] != n else py
    return float(((qx - qy) ** 2).mean().sqrt())
