"""Peers: other libraries' samplers run on the same problem, x_T and end point (``--peers``).

* diffusers schedulers (optional extra ``diffsolve[peers]``), each configured explicitly:
  the schedule's own betas (``trained_betas``), ``timestep_spacing="trailing"`` (the
  same levels as diffsolve's ``trailing`` grid), ``clip_sample=False``, and the final
  sigma 0 where the scheduler offers it (``set_alpha_to_one=True`` for DDIM,
  ``final_sigmas_type="zero"``). DEIS offers no zero end point: it stops at the
  schedule's smallest level, and its RMSE is taken against the reference at that
  end point (the table marks it). diffusers' DDIM steps to ``t - T // S``, so when S
  does not divide T its levels (and end point) differ from the trailing grid's.
* k-diffusion samplers, when k-diffusion is installed: they take an explicit sigma
  list, so they run on every diffsolve grid, with k-diffusion's own
  ``DiscreteEpsDDPMDenoiser`` wrapper (no quantisation). Its files are run unchanged; see
  :func:`kdiffusion` for how they are imported when its package ``__init__`` cannot be.

Every peer's model calls are counted by a wrapper around the raw model.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..schedules import DiscreteSchedule

__all__ = ["PEERS", "available_peers", "run_peer", "PeerRun", "diffusers_scheduler", "kdiffusion"]

_PREDICTION_TYPE = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


@dataclass
class PeerRun:
    x0: torch.Tensor  # final state, model space
    nfe: int
    steps: int
    sigma_start: float
    sigma_end: float


@dataclass(frozen=True)
class Peer:
    label: str
    library: str  # "diffusers" or "k-diffusion"
    target: str  # class or function name in that library
    #: True for schedulers whose state is xbar (the VE form): Euler, Heun
    ve_state: bool = False
    #: model calls for S steps (k-diffusion samplers; diffusers' are counted from its timesteps)
    calls: Callable[[int], int] = lambda s: s
    #: run in this dtype whatever the problem's (diffusers' UniPC mixes float32 coefficients
    #: into its float64 linear solve and fails in float64)
    force_dtype: torch.dtype | None = None


def _heun_calls(s: int) -> int:
    return 2 * s - 1


PEERS: dict[str, Peer] = {
    p.label: p
    for p in [
        Peer("diffusers:ddim", "diffusers", "DDIMScheduler"),
        Peer("diffusers:dpmpp-2m", "diffusers", "DPMSolverMultistepScheduler"),
        Peer("diffusers:unipc", "diffusers", "UniPCMultistepScheduler", force_dtype=torch.float32),
        Peer("diffusers:euler", "diffusers", "EulerDiscreteScheduler", ve_state=True),
        Peer("diffusers:heun", "diffusers", "HeunDiscreteScheduler", ve_state=True),
        Peer("diffusers:deis", "diffusers", "DEISMultistepScheduler"),
        Peer("k-diffusion:euler", "k-diffusion", "sample_euler"),
        Peer("k-diffusion:heun", "k-diffusion", "sample_heun", calls=_heun_calls),
        Peer("k-diffusion:dpmpp-2m", "k-diffusion", "sample_dpmpp_2m"),
        Peer("k-diffusion:lms", "k-diffusion", "sample_lms"),
    ]
}


def _importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def available_peers() -> list[str]:
    """Labels of the peers whose library is installed (and, for k-diffusion, whose samplers load)."""
    have = {"diffusers": _importable("diffusers"), "k-diffusion": _kdiffusion_or_none() is not None}
    return [label for label, p in PEERS.items() if have[p.library]]


_KDIFFUSION: list = []  # [namespace or None], filled on first use
_KDIFFUSION_ERROR: list[str] = [""]  # why it is None


def kdiffusion() -> types.SimpleNamespace:
    """k-diffusion's ``sampling`` and ``external`` modules, as installed (raises ImportError if absent).

    ``import k_diffusion`` runs its package ``__init__``, which imports the training stack
    (torchvision, kornia, clean-fid, ...) that the samplers never use. Where that import fails
    (on this project's machines no torchvision wheel matches the installed torch), the two
    modules and the ``utils`` they import are loaded from the installed files, unchanged,
    under the private package name ``_diffsolve_k_diffusion``. ``utils`` imports
    ``torchvision.transforms.functional`` at the top for image helpers the samplers do not
    call; only when torchvision cannot be imported, an empty stand-in is put in
    ``sys.modules`` for the duration of that import and removed after it. The namespace's
    ``how`` says which way was taken.
    """
    ns = _kdiffusion_or_none()
    if ns is None:
        raise ImportError(f"k-diffusion's samplers cannot be loaded: {_KDIFFUSION_ERROR[0]}")
    return ns


def _kdiffusion_or_none():
    if not _KDIFFUSION:
        try:
            _KDIFFUSION.append(_load_kdiffusion())
        except Exception as exc:  # not installed, or a dependency of its samplers missing
            _KDIFFUSION_ERROR[0] = f"{type(exc).__name__}: {exc}"
            _KDIFFUSION.append(None)
    return _KDIFFUSION[0]


def _load_kdiffusion() -> types.SimpleNamespace:
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion torchsde trampoline)")
    try:
        import k_diffusion as K

        return types.SimpleNamespace(sampling=K.sampling, external=K.external, how="import k_diffusion")
    except Exception as exc:  # its __init__ imports the training stack
        init_error = f"{type(exc).__name__}: {exc}"
    root = Path(next(iter(spec.submodule_search_locations)))
    pkg_name = "_diffsolve_k_diffusion"
    pkg = types.ModuleType(pkg_name)
    pkg.__path__ = [str(root)]
    stub_names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    saved = {n: sys.modules.get(n) for n in stub_names}
    stubbed = False
    try:
        importlib.import_module("torchvision.transforms.functional")
    except Exception:
        stubbed = True
        for n in stub_names:
            sys.modules[n] = types.ModuleType(n)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
        sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    sys.modules[pkg_name] = pkg
    try:
        for name in ("utils", "sampling", "external"):
            full = f"{pkg_name}.{name}"
            mspec = importlib.util.spec_from_file_location(full, root / f"{name}.py")
            mod = importlib.util.module_from_spec(mspec)
            sys.modules[full] = mod
            mspec.loader.exec_module(mod)
            setattr(pkg, name, mod)
    except Exception:
        for name in ("utils", "sampling", "external"):
            sys.modules.pop(f"{pkg_name}.{name}", None)
        sys.modules.pop(pkg_name, None)
        raise
    finally:
        if stubbed:
            for n, m in saved.items():
                if m is None:
                    sys.modules.pop(n, None)
                else:
                    sys.modules[n] = m
    how = f"files loaded without the package __init__ ({init_error})" + (
        "; torchvision stubbed during the import" if stubbed else ""
    )
    return types.SimpleNamespace(sampling=pkg.sampling, external=pkg.external, how=how)


def peer_grids(label: str, grids: list[str]) -> list[str]:
    """The grids of a peer's cells: every requested grid. A diffusers peer runs its own trailing spacing
    only, so its cells on other grids are rows that say so (:func:`unsupported_grid`), not dropped."""
    return list(grids)


def unsupported_grid(label: str, grid: str) -> str | None:
    """Why peer ``label`` cannot run on ``grid`` (None when it can)."""
    if PEERS[label].library == "diffusers" and grid != "trailing":
        return (
            f"{label} runs diffusers' own timestep spacing, set to 'trailing' here; grid {grid!r} is not run "
            "for it (diffusers' use_karras_sigmas etc. would be another scheduler configuration)"
        )
    return None


def _check_problem(problem) -> tuple[DiscreteSchedule, Callable, str, torch.dtype]:
    sched = problem.schedule
    model, prediction, time = problem.raw_model(problem.dtype)
    if not isinstance(sched, DiscreteSchedule) or time != "index" or prediction not in _PREDICTION_TYPE:
        raise ValueError(
            f"peers need a discrete-index model predicting eps, x0 or v; {problem.name!r} has "
            f"schedule {type(sched).__name__}, time={time!r}, prediction={prediction!r}"
        )
    return sched, model, prediction, problem.ode(problem.dtype).time_dtype


def diffusers_scheduler(label: str, sched: DiscreteSchedule, prediction: str = "eps"):
    """A diffusers scheduler configured explicitly for the same schedule and end point."""
    import diffusers

    peer = PEERS[label]
    abar = sched.alphas_cumprod
    betas = torch.cat([1 - abar[:1], 1 - abar[1:] / abar[:-1]])
    common = dict(
        num_train_timesteps=sched.num_steps,
        trained_betas=betas.tolist(),
        prediction_type=_PREDICTION_TYPE[prediction],
        timestep_spacing="trailing",
        steps_offset=0,
    )
    extra = {
        "DDIMScheduler": dict(clip_sample=False, set_alpha_to_one=True, thresholding=False),
        "DPMSolverMultistepScheduler": dict(
            algorithm_type="dpmsolver++",
            solver_order=2,
            lower_order_final=True,
            final_sigmas_type="zero",
            thresholding=False,
        ),
        "UniPCMultistepScheduler": dict(solver_order=2, final_sigmas_type="zero", thresholding=False),
        "EulerDiscreteScheduler": dict(final_sigmas_type="zero"),
        "HeunDiscreteScheduler": dict(clip_sample=False),
        "DEISMultistepScheduler": dict(solver_order=2, thresholding=False),
    }[peer.target]
    return getattr(diffusers, peer.target)(**common, **extra)


def _nearest_level(sched: DiscreteSchedule, sigma: float) -> float:
    """The float64 level of ``sched`` closest to a (float32) sigma a peer reports; 0 stays 0."""
    if sigma == 0:
        return 0.0
    i = int(torch.argmin((sched.log_sigmas - math.log(sigma)).abs()))
    return float(sched.sigmas[i])


class _CountingModel:
    def __init__(self, model, batch, time_dtype):
        self.model, self.batch, self.time_dtype, self.calls = model, batch, time_dtype, 0

    def __call__(self, x, t, **kw):
        self.calls += 1
        t = torch.as_tensor(t).to(device=x.device, dtype=self.time_dtype).reshape(-1)
        if t.numel() == 1:
            t = t.expand(x.shape[0])
        return self.model(x, t, **kw)


def _diffusers_steps(scheduler, nfe: int) -> int:
    """Largest step count whose timestep list (one model call each) fits in ``nfe``."""
    steps = nfe
    while steps >= 1:
        scheduler.set_timesteps(steps)
        if len(scheduler.timesteps) <= nfe:
            return steps
        steps -= 1
    return 0


def run_peer(
    label: str, problem, x_T: torch.Tensor, grid: str, nfe: int, dtype: torch.dtype, model=None
) -> PeerRun | None:
    """Run peer ``label`` from ``x_T`` (model space) with at most ``nfe`` model calls.

    Returns None when ``nfe`` is too small for the peer. ``model`` replaces the problem's
    raw model (the overhead benchmark passes a zero-cost one). torch's default dtype is
    set to ``dtype`` meanwhile: peers make internal tensors in the default dtype.
    """
    dtype = PEERS[label].force_dtype or dtype
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 notices inside diffusers
            return _run_peer(label, problem, x_T, grid, nfe, dtype, model)
    finally:
        torch.set_default_dtype(old)


def _run_peer(label, problem, x_T, grid, nfe, dtype, model):
    peer = PEERS[label]
    sched, raw, prediction, time_dtype = _check_problem(problem)
    counter = _CountingModel(model if model is not None else raw, x_T.shape[0], time_dtype)
    x_T = x_T.to(dtype)
    why = unsupported_grid(label, grid)
    if why is not None:
        raise ValueError(why)
    if peer.library == "diffusers":
        s = diffusers_scheduler(label, sched, prediction)
        steps = _diffusers_steps(s, nfe)
        if steps < 1:
            return None
        s.set_timesteps(steps)
        timesteps = s.timesteps
        sigma_start = float(sched.sigma(float(timesteps[0])))
        if hasattr(s, "sigmas") and s.sigmas is not None and peer.target != "DDIMScheduler":
            sigma_end = _nearest_level(sched, float(s.sigmas[-1]))
        else:  # DDIM's last step goes to t - T // S (alpha_bar = 1 below index 0)
            prev = int(timesteps[-1]) - sched.num_steps // steps
            sigma_end = 0.0 if prev < 0 else float(sched.sigmas[prev])
        x = x_T * math.sqrt(1 + sigma_start**2) if peer.ve_state else x_T
        with torch.no_grad():
            for t in timesteps:
                out = counter(s.scale_model_input(x, t), t)
                x = s.step(out, t, x).prev_sample
        if peer.ve_state:
            x = x / math.sqrt(1 + sigma_end**2)
        return PeerRun(x, counter.calls, steps, sigma_start, sigma_end)

    # k-diffusion: explicit sigmas from the diffsolve grid
    K = kdiffusion()

    from ..sampling import make_grid

    steps = nfe
    while steps >= 1 and peer.calls(steps) > nfe:
        steps -= 1
    if steps < 1:
        return None
    sig = make_grid(grid, sched, steps)
    denoiser = (
        K.external.DiscreteEpsDDPMDenoiser(counter, sched.alphas_cumprod, quantize=False)
        if prediction == "eps"
        else K.external.DiscreteVDDPMDenoiser(counter, sched.alphas_cumprod, quantize=False)
    )
    sigma_start = float(sig[0])
    x = x_T * math.sqrt(1 + sigma_start**2)
    sampler = getattr(K.sampling, peer.target)
    with torch.no_grad():
        x = sampler(denoiser, x, sig.to(dtype), disable=True)
    return PeerRun(x, counter.calls, steps, sigma_start, 0.0)
