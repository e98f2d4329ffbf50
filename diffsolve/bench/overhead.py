"""Per-step framework overhead side by side, with a zero-cost model, in one run.

For each shape (default 1 x 64 and 256 x 3 x 32 x 32, float32, CPU) this times, per step:

* ``floor``: one fused ``torch.add(x, eps, alpha=c)`` over the tensor, the memory-bound
  least any first-order step must do;
* every diffsolve solver: :func:`diffsolve.sample` on the trailing grid with a model that
  returns a preallocated zero tensor (driver, wrapper, solver and NaN check included);
  DDIM also without the NaN check, to show its cost;
* diffusers' DDIM, Euler, DPM-Solver++ (2M) and UniPC schedulers' ``step`` loops, and k-diffusion's
  ``sample_euler`` with its ``DiscreteEpsDDPMDenoiser``, when installed.

Each entry is the best of ``repeats`` runs of ``steps`` steps, divided by ``steps``.
"""

from __future__ import annotations

import io
import math
import time

import torch

from ..sampling import grid as make_grid
from ..sampling import make_solver, sample
from ..schedules import DiscreteSchedule
from ..wrapper import DiffusionODE
from . import peers
from .measure import ZeroModel

__all__ = ["measure_overhead", "overhead_markdown", "overhead_plot", "SHAPES"]

SHAPES = [(1, 64), (256, 3, 32, 32)]


def _best(fn, repeats: int) -> float:
    fn()  # warm-up
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_overhead(solvers=None, shapes=SHAPES, steps: int = 20, repeats: int = 7,
                     dtype: torch.dtype = torch.float32, log=print) -> list[dict]:
    """Rows ``{shape, who, us_per_step, vs_floor}``; see the module docstring."""
    from .harness import parse_solver
    from ..sampling import solvers as solver_names

    specs = [parse_solver(s) for s in (solvers if solvers is not None else solver_names())]
    sched = DiscreteSchedule.linear(1000, 1e-4, 0.02)
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
        # best of many repeats: on CPU a fresh output buffer may page-fault, which makes single
        # runs of this memory-bound loop vary by several times
        entries = [("floor: x + c*eps (one fused op)", _best(floor_loop, 5 * repeats) / inner)]

        sig = make_grid("trailing", sched, steps)
        for spec in specs:
            ode = DiffusionODE(ZeroModel(), sched, prediction="eps", time="index", time_dtype=torch.float32)

            def run(spec=spec, ode=ode, check=True):
                sample(ode, x, spec.instance(), sigmas=sig, generator=torch.Generator().manual_seed(0),
                       check_finite=check)
            try:
                entries.append((f"diffsolve:{spec.label}", _best(run, repeats) / steps))
                if spec.label == "ddim":
                    entries.append(("diffsolve:ddim (check_finite=False)",
                                    _best(lambda: run(check=False), repeats) / steps))
            except Exception as exc:  # a solver that cannot run on a zero model
                log(f"overhead: {spec.label} skipped ({type(exc).__name__}: {exc})")
        avail = peers.available_peers()
        for peer in ("diffusers:ddim", "diffusers:euler", "diffusers:dpmpp-2m", "diffusers:unipc"):
            if peer in avail:
                entries.append((peer, _diffusers_step_time(peer, sched, x, steps, repeats)))
        if "k-diffusion:euler" in avail:
            entries.append(("k-diffusion:euler", _kdiff_euler_time(sched, x, sig, repeats) / steps))
        floor = entries[0][1]
        for who, t in entries:
            rows.append({"shape": label, "who": who, "us_per_step": t * 1e6, "vs_floor": t / floor})
    return rows


def _diffusers_step_time(label, sched, x, steps, repeats) -> float:
    old = torch.get_default_dtype()
    torch.set_default_dtype(x.dtype)  # diffusers makes its tensors in the default dtype
    try:
        return _diffusers_loop_time(label, sched, x, steps, repeats)
    finally:
        torch.set_default_dtype(old)


def _diffusers_loop_time(label, sched, x, steps, repeats) -> float:
    s = peers.diffusers_scheduler(label, sched)
    s.set_timesteps(steps)
    zero = ZeroModel()
    ve = peers.PEERS[label].ve_state

    def loop():
        s.set_timesteps(steps)  # resets the step index; cheap next to the steps
        y = x
        for t in s.timesteps:
            inp = s.scale_model_input(y, t) if ve else y
            y = s.step(zero(inp, t), t, y).prev_sample
    t_set = _best(lambda: s.set_timesteps(steps), repeats)
    return max(_best(loop, repeats) - t_set, 0.0) / len(s.timesteps)


def _kdiff_euler_time(sched, x, sig, repeats) -> float:
    import k_diffusion as K

    den = K.external.DiscreteEpsDDPMDenoiser(ZeroModel(), sched.alphas_cumprod.float(), quantize=False)
    sig32 = sig.to(x.dtype)
    return _best(lambda: K.sampling.sample_euler(den, x, sig32, disable=True), repeats)


def overhead_markdown(rows: list[dict]) -> str:
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    whos = list(dict.fromkeys(r["who"] for r in rows))
    val = {(r["shape"], r["who"]): r for r in rows}
    out = ["| per step, zero-cost model, " + f"{'float32'} CPU | " + " | ".join(f"{s}: µs (x floor)" for s in shapes) + " |",
           "|---|" + "---:|" * len(shapes)]
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
    fig, axes = plt.subplots(1, len(shapes), figsize=(6.0 * len(shapes), 0.8 + 0.32 * len(rows) / len(shapes)),
                             squeeze=False)
    for ax, s in zip(axes[0], shapes):
        rs = [r for r in rows if r["shape"] == s]
        colors = ["tab:gray" if r["who"].startswith("floor") else
                  "tab:blue" if r["who"].startswith("diffsolve") else "tab:orange" for r in rs]
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
