"""Per-step framework overhead side by side, with a zero-cost model, in one run.

For each shape (default 1 x 64 and 256 x 3 x 32 x 32, float32, CPU) this times, per step:

* ``floor``: one fused ``torch.add(x, eps, alpha=c)`` over the tensor, the memory-bound
  least any first-order step must do; and the VP floor: a VP model is handed
  x = sqrt(abar) xbar, a new tensor, so its step does that product as well (eager PyTorch has
  no kernel that fuses the two);
* every diffsolve solver: :func:`diffsolve.sample` on the trailing grid with a model that
  returns a preallocated zero tensor (driver, wrapper, solver and NaN check included);
  DDIM also without the NaN check, to show its cost, and on a sigma-form (VE, EDM) model,
  which is handed the state itself;
* diffusers' DDIM, Euler, DPM-Solver++ (2M) and UniPC schedulers' ``step`` loops, and k-diffusion's
  ``sample_euler`` and ``sample_dpmpp_2m`` with its ``DiscreteEpsDDPMDenoiser``, when installed.

Each entry is the best of ``repeats`` runs of ``steps`` steps, divided by ``steps``; the entries
are interleaved within each round (see :func:`_interleaved_best`).
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable

import torch

from ..sampling import make_grid, sample
from ..schedules import DiscreteSchedule, EDMSchedule
from ..wrapper import DiffusionODE
from . import peers
from .measure import ZeroModel

__all__ = ["measure_overhead", "overhead_markdown", "overhead_plot", "SHAPES"]

SHAPES = [(1, 64), (256, 3, 32, 32)]
#: the row of a fresh ``wrap`` + ``sample`` per run, defaults throughout (the targets of issue 12)
FRESH = "diffsolve:ddim (fresh wrap + sample, defaults)"
#: the rows of a new DiscreteSchedule per run (issue 19's cold path), compared with k-diffusion's sample_euler
COLD = "diffsolve:ddim (new DiscreteSchedule from alphas_cumprod + wrap + sample)"
COLD_DIFFUSERS = "diffsolve:ddim (from_diffusers + diffusers_grid + sample, per call)"


def _interleaved_best(timers: dict[str, Callable[[], None]], repeats: int, log) -> dict[str, float]:
    """Best time of each timer over ``repeats`` rounds, the timers interleaved within a round.

    On a shared CPU, memory-bound loops over fresh buffers vary by several times between phases
    of a run (page faults, other tenants); interleaving exposes every entry, the floors included,
    to the same phases, so the ratios in one table stay meaningful. Each timed call follows an
    untimed one of the same timer, so no entry pays for the caches the previous one cooled.
    Times are the process's CPU time (user + system, torch on one thread), not wall time: another
    tenant of the machine takes wall time from a run but not CPU time.
    """
    best: dict[str, float] = {}
    for who, fn in list(timers.items()):
        try:
            fn()  # warm-up; a solver that cannot run on a zero model is reported and dropped
            best[who] = math.inf
        except Exception as exc:
            log(f"overhead: {who} skipped ({type(exc).__name__}: {exc})")
    for _ in range(repeats):
        for who in best:
            timers[who]()  # untimed: the timed call below starts with warm caches
            t0 = time.process_time()
            timers[who]()
            best[who] = min(best[who], time.process_time() - t0)
    return best


def measure_overhead(
    solvers=None, shapes=SHAPES, steps: int = 20, repeats: int = 7, dtype: torch.dtype = torch.float32, log=print
) -> list[dict]:
    """Rows ``{shape, who, us_per_step, vs_floor}``; see the module docstring."""
    from ..sampling import list_solvers as solver_names
    from .spec import parse_solver

    specs = [parse_solver(s) for s in (solvers if solvers is not None else solver_names())]
    sched = DiscreteSchedule.linear(1000, 1e-4, 0.02)
    edm = EDMSchedule()
    acp = sched.alphas_cumprod.to(torch.float32)  # the training levels as a diffusers scheduler holds them
    rows = []
    for shape in shapes:
        label = "x".join(str(s) for s in shape)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(*shape, generator=g, dtype=dtype)
        eps = torch.randn(*shape, generator=g, dtype=dtype)
        inner = max(1, 200 if x.numel() < 10_000 else 20)

        def floor_loop():
            y = x
            for _ in range(inner):
                y = torch.add(y, eps, alpha=-0.01)

        def vp_floor_loop():
            y = x
            for _ in range(inner):
                _model_input = y * 0.5  # a VP model is handed x = sqrt(abar) xbar, a new tensor
                y = torch.add(y, eps, alpha=-0.01)

        FLOOR = "floor: x + c*eps (one fused op)"
        timers: dict[str, Callable[[], None]] = {
            FLOOR: floor_loop,
            "floor, VP model: x*a for the model, then x + c*eps": vp_floor_loop,
        }
        per = {FLOOR: inner, "floor, VP model: x*a for the model, then x + c*eps": inner}
        sig = make_grid("trailing", sched, steps)
        sig_ve = make_grid("karras", edm, steps)
        for spec in specs:
            ode = DiffusionODE(ZeroModel(), sched, prediction="eps", time="index", time_dtype=torch.float32)

            def run(spec=spec, ode=ode, check=True):
                sample(
                    ode, x, spec.instance(), sigmas=sig, generator=torch.Generator().manual_seed(0), check_finite=check
                )

            timers[f"diffsolve:{spec.label}"] = run
            if spec.label == "ddim":
                timers["diffsolve:ddim (check_finite=False)"] = lambda run=run: run(check=False)
                # a sigma-form (VE) model is handed the state itself: no input scaling
                ve = DiffusionODE(ZeroModel(), edm, prediction="eps", time="sigma", time_dtype=torch.float32)
                for check, tag in ((True, ""), (False, ", check_finite=False")):
                    timers[f"diffsolve:ddim (VE model{tag})"] = lambda check=check: sample(
                        ve, x, "ddim", sigmas=sig_ve, check_finite=check
                    )
                # what a user who wraps a model and samples once pays: wrap, grid, run, all defaults
                timers[FRESH] = lambda: sample(
                    DiffusionODE(ZeroModel(), sched, prediction="eps", time="index"),
                    x,
                    "ddim",
                    steps=steps,
                    grid="trailing",
                )
                # what a diffusers user pays per call: a new schedule from the training alphas_cumprod
                # (as from_diffusers makes per call), wrap, grid and run; and from_diffusers itself
                timers[COLD] = lambda: sample(
                    DiffusionODE(ZeroModel(), DiscreteSchedule(acp), prediction="eps", time="index"),
                    x,
                    "ddim",
                    steps=steps,
                    grid="trailing",
                )
                if "diffusers:ddim" in peers.available_peers():
                    timers[COLD_DIFFUSERS] = _from_diffusers_run(x, steps)
        avail = peers.available_peers()
        minus: dict[str, str] = {}
        for peer in ("diffusers:ddim", "diffusers:euler", "diffusers:dpmpp-2m", "diffusers:unipc"):
            if peer in avail:
                loop, set_only, n = _diffusers_loop(peer, sched, x, steps)
                timers[peer], timers[f"{peer} set_timesteps"], per[peer] = loop, set_only, n
                minus[peer] = f"{peer} set_timesteps"
        for peer in ("k-diffusion:euler", "k-diffusion:dpmpp-2m"):
            if peer in avail:
                timers[peer] = _kdiff_loop(peers.PEERS[peer].target, sched, x, sig)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 notices inside diffusers
            # small tensors: a run costs microseconds, so take the best of more rounds
            best = _interleaved_best(timers, repeats * (5 if x.numel() < 10_000 else 1), log)
        hidden = set(minus.values())
        floor = best[FLOOR] / per[FLOOR]
        for who, t in best.items():
            if who in hidden:
                continue
            t = (max(t - best[minus[who]], 0.0) if who in minus else t) / per.get(who, steps)
            rows.append({"shape": label, "who": who, "us_per_step": t * 1e6, "vs_floor": t / floor})
        euler = best.get("k-diffusion:euler")
        for who in (COLD, COLD_DIFFUSERS):
            if euler is not None and who in best:
                log(f"overhead {label}: {who} / k-diffusion:euler per step = {best[who] / euler:.2f}")
    return rows


def _from_diffusers_run(x, steps):
    """One sampling call as a diffusers user writes it: ``from_diffusers`` on a default DDIM config
    (DDPM's linear betas, the table's schedule; a new ODE each call), diffusers' own timesteps, a run."""
    import diffusers

    from ..interop.diffusers import diffusers_grid, from_diffusers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 notices inside diffusers
        config = dict(diffusers.DDIMScheduler(timestep_spacing="trailing", clip_sample=False).config)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    return lambda: sample(from_diffusers(ZeroModel(), config), x, "ddim", sigmas=diffusers_grid(config, steps))


def _diffusers_loop(label, sched, x, steps):
    """``(loop, set_timesteps only, steps taken)`` for diffusers' scheduler ``label``; the loop
    runs in x's dtype (diffusers makes its tensors in torch's default dtype)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2 notices inside diffusers
        s = peers.diffusers_scheduler(label, sched)
        s.set_timesteps(steps)
    n = len(s.timesteps)
    zero = ZeroModel()
    ve = peers.PEERS[label].ve_state

    def in_dtype(fn):
        def wrapped():
            old = torch.get_default_dtype()
            torch.set_default_dtype(x.dtype)
            try:
                fn()
            finally:
                torch.set_default_dtype(old)

        return wrapped

    def loop():
        s.set_timesteps(steps)  # resets the step index; its time is measured apart and subtracted
        y = x
        for t in s.timesteps:
            inp = s.scale_model_input(y, t) if ve else y
            y = s.step(zero(inp, t), t, y).prev_sample

    return in_dtype(loop), in_dtype(lambda: s.set_timesteps(steps)), n


def _kdiff_loop(sampler: str, sched, x, sig):
    """A k-diffusion sampler over the whole grid with its ``DiscreteEpsDDPMDenoiser``."""
    K = peers.kdiffusion()
    den = K.external.DiscreteEpsDDPMDenoiser(ZeroModel(), sched.alphas_cumprod.to(x.dtype), quantize=False)
    sig_x = sig.to(x.dtype)
    fn = getattr(K.sampling, sampler)

    def loop():
        with torch.no_grad():
            fn(den, x, sig_x, disable=True)

    return loop


def overhead_markdown(rows: list[dict]) -> str:
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    whos = list(dict.fromkeys(r["who"] for r in rows))
    val = {(r["shape"], r["who"]): r for r in rows}
    out = [
        "| per step, zero-cost model, "
        + f"{'float32'} CPU | "
        + " | ".join(f"{s}: µs (x floor)" for s in shapes)
        + " |",
        "|---|" + "---:|" * len(shapes),
    ]
    for w in whos:
        cells = []
        for s in shapes:
            r = val.get((s, w))
            cells.append(f"{r['us_per_step']:.1f} ({r['vs_floor']:.2f}x)" if r else "")
        out.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def overhead_plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .store import atomic_write_bytes

    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    fig, axes = plt.subplots(
        1, len(shapes), figsize=(6.0 * len(shapes), 0.8 + 0.32 * len(rows) / len(shapes)), squeeze=False
    )
    for ax, s in zip(axes[0], shapes):
        rs = [r for r in rows if r["shape"] == s]
        colors = [
            "tab:gray"
            if r["who"].startswith("floor")
            else "tab:blue"
            if r["who"].startswith("diffsolve")
            else "tab:orange"
            for r in rs
        ]
        ax.barh(range(len(rs)), [r["us_per_step"] for r in rs], color=colors)
        ax.set_yticks(range(len(rs)))
        ax.set_yticklabels([r["who"] for r in rs], fontsize=8)
        ax.invert_yaxis()
        for i, r in enumerate(rs):
            ax.text(r["us_per_step"], i, f" {r['us_per_step']:.1f} µs", va="center", fontsize=7)
        ax.set_xlabel("µs per step (zero-cost model, float32, CPU)")
        ax.set_title(f"batch {s}", fontsize=10)
        ax.set_xlim(0, max(r["us_per_step"] for r in rs) * 1.25)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())
    plt.close(fig)
