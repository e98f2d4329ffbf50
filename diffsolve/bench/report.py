"""Reports of a sweep: CSV and JSON of every cell, markdown tables, PNG plots, a printed summary.

Tables and plots average over seeds. In the tables the best value of each NFE column is
bold (and any within 1e-6 relative of it: ties); ``*`` marks a cell whose real NFE differs
from the column's (shown in brackets), ``†`` a peer that could not end at sigma = 0 (its RMSE
is against the reference at its own end point), ``—`` an NFE the solver cannot reach, ``err``
a failed cell (see the CSV).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from statistics import median

from .store import atomic_write_bytes, atomic_write_text, to_jsonable

__all__ = ["write_reports", "summary", "markdown_tables", "aggregate"]


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.2e}" if abs(v) < 1e-2 or abs(v) >= 1e3 else f"{v:.4f}"


def _mean(values):
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def aggregate(rows: list[dict]) -> dict:
    """``{(problem, solver, grid, nfe_target): summary}`` averaged over seeds."""
    groups = defaultdict(list)
    for r in rows:
        groups[(r["problem"], r["solver"], r["grid"], r["nfe_target"])].append(r)
    agg = {}
    for k, rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        status = "ok" if ok else rs[0]["status"]
        agg[k] = {
            "status": status,
            "rmse": _mean(r["rmse"] for r in ok),
            "nll_gap": _mean(r["nll_gap"] for r in ok),
            "sw": _mean(r["sw"] for r in ok),
            "fdd": _mean(r.get("fdd") for r in ok),
            "coverage": _mean(r.get("coverage") for r in ok),
            "nfe": max((r["nfe"] for r in ok), default=None),
            "exact": all(r["nfe_exact"] for r in ok) if ok else False,
            "stochastic": any(r["stochastic"] for r in ok),
            "peer": bool(rs[0].get("peer")),
            "sigma_end": ok[0]["sigma_end"] if ok else None,
            "overhead": _mean(r["overhead_us_per_step"] for r in ok),
            "wall": _mean(r["wall_s"] for r in ok),
            "mem": max((r["peak_mem_bytes"] or 0 for r in ok), default=None),
            "message": "; ".join(sorted({r["message"] for r in rs if r.get("message")})),
        }
    return agg


def _series(rows):
    """Ordered problems, (solver, grid) lines and NFE columns of the rows."""
    problems, lines, nfes = [], defaultdict(list), set()
    for r in rows:
        if r["problem"] not in problems:
            problems.append(r["problem"])
        if (r["solver"], r["grid"]) not in lines[r["problem"]]:
            lines[r["problem"]].append((r["solver"], r["grid"]))
        nfes.add(r["nfe_target"])
    return problems, lines, sorted(nfes)


def _dist_metric(problem_obj) -> str:
    return getattr(problem_obj, "dist_metric", "sw")


def _table(agg, problem, lines, nfes, metric: str, use_abs: bool) -> str:
    head = "| solver | grid | " + " | ".join(f"NFE {n}" for n in nfes) + " |"
    sep = "|---|---|" + "---:|" * len(nfes)
    best = {}
    for n in nfes:
        cands = []
        for s, g in lines:
            a = agg.get((problem, s, g, n))
            if a and a["status"] == "ok" and a["exact"] and a[metric] is not None:
                cands.append(abs(a[metric]) if use_abs else a[metric])
        best[n] = min(cands) if cands else None
    out = [head, sep]
    for s, g in lines:
        cells = []
        for n in nfes:
            a = agg.get((problem, s, g, n))
            if a is None:
                cells.append("")
                continue
            if a["status"] == "unreachable":
                cells.append("—")
                continue
            if a["status"] != "ok":
                cells.append("err")
                continue
            v = a[metric]
            if v is None:
                cells.append("n/a")
                continue
            key = abs(v) if use_abs else v
            text = _fmt(v)
            # ties (within 1e-6 relative: a peer equal to a diffsolve solver up to rounding) are all bold
            if best[n] is not None and a["exact"] and key <= best[n] + 1e-6 * abs(best[n]):
                text = f"**{text}**"
            if not a["exact"]:
                text += f"* ({a['nfe']})"
            if a["sigma_end"]:
                text += "†"
            cells.append(text)
        out.append(f"| {s} | {g} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _cost_table(agg, problem, lines, nfes) -> str:
    out = [
        f"| solver | grid | overhead µs/step (zero-cost model) | wall ms at NFE {nfes[-1]} | peak memory KiB |",
        "|---|---|---:|---:|---:|",
    ]
    for s, g in lines:
        ovs = [agg[(problem, s, g, n)]["overhead"] for n in nfes if (problem, s, g, n) in agg]
        ovs = [v for v in ovs if v is not None]
        last = agg.get((problem, s, g, nfes[-1]))
        mems = [agg[(problem, s, g, n)]["mem"] for n in nfes if (problem, s, g, n) in agg]
        mems = [m for m in mems if m is not None]
        wall = f"{last['wall'] * 1e3:.2f}" if last and last["wall"] is not None else "n/a"
        out.append(
            f"| {s} | {g} | {median(ovs):.1f} | {wall} | {max(mems) / 1024:.0f} |"
            if ovs
            else f"| {s} | {g} | n/a | {wall} | n/a |"
        )
    return "\n".join(out)


def markdown_tables(rows: list[dict], problems: dict) -> str:
    agg = aggregate(rows)
    plist, lines, nfes = _series(rows)
    parts = []
    for p in plist:
        obj = problems.get(p)
        desc = getattr(obj, "description", "") if obj is not None else ""
        metric = _dist_metric(obj)
        mname = {
            "nll_gap": "NLL under the exact p0 minus that of true samples (nats; under-dispersed samples go "
            "negative; bold: smallest |gap|)",
            "fdd": "FDD, the Frechet distance of the digit classifier's features to the held-out digits "
            "(this data set's FID; biased upward at small sample counts)",
        }.get(metric, "sliced Wasserstein-2 distance to held-out data")
        parts.append(f"### {p}" + (f": {desc}" if desc else ""))
        parts.append("RMSE of the final samples to the reference ODE solution (deterministic solvers):\n")
        parts.append(_table(agg, p, lines[p], nfes, "rmse", False))
        parts.append(f"\nDistribution metric, every solver: {mname}:\n")
        parts.append(_table(agg, p, lines[p], nfes, metric, True))
        parts.append("\nCost:\n")
        parts.append(_cost_table(agg, p, lines[p], nfes))
        parts.append("")
    parts.append(
        "Bold: best of the column. `*`: the real NFE (in brackets) differs from the column's. "
        "`†`: the peer ends at sigma > 0. `—`: NFE not reachable. `n/a`: not defined (RMSE of a "
        "stochastic solver). Values are means over seeds. Peak memory: the largest total of one run's "
        "tensors alive at once (CPU: counted op by op in a separate, untimed run; CUDA: the allocator's "
        "peak), the largest over the NFE columns."
    )
    return "\n".join(parts) + "\n"


def _write_csv(rows, path, fields):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    atomic_write_text(path, buf.getvalue())


# -- plots -----------------------------------------------------------------------------------------------
def _color_key(label: str, labels) -> str:
    """A peer shares the colour of the diffsolve solver of the same name (diffusers:ddim ~ ddim)."""
    lib, _, base = label.partition(":")
    return base if lib in ("diffusers", "k-diffusion") and base in labels else label


def _colors(labels):
    import matplotlib

    keys = list(dict.fromkeys(_color_key(s, labels) for s in labels))
    if len(keys) <= 10:
        palette = [matplotlib.colormaps["tab10"](i) for i in range(10)]
    else:  # tab20's strong shades first, then the light ones
        tab20 = matplotlib.colormaps["tab20"]
        palette = [tab20(i) for i in range(0, 20, 2)] + [tab20(i) for i in range(1, 20, 2)]
    col = {k: palette[i % len(palette)] for i, k in enumerate(keys)}
    return {s: col[_color_key(s, labels)] for s in labels}


_MARKERS = "osD^v<>pPX*h"


def _line_plots(rows, problems, metric_of, ylabel_of, title, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    plist, lines, nfes = _series(rows)
    grids = []
    for p in plist:
        for _, g in lines[p]:
            if g not in grids:
                grids.append(g)
    solvers = []
    for p in plist:
        for s, _ in lines[p]:
            if s not in solvers:
                solvers.append(s)
    colors = _colors(solvers)
    fig, axes = plt.subplots(
        len(plist),
        len(grids),
        figsize=(4.2 * len(grids) + 2.0, 3.4 * len(plist) + 0.6),
        squeeze=False,
        sharex=True,
        layout="constrained",
    )
    handles = {}
    for i, p in enumerate(plist):
        metric = metric_of(problems.get(p))
        for j, g in enumerate(grids):
            ax = axes[i][j]
            for s, gg in lines[p]:
                if gg != g:
                    continue
                pts = []
                for n in nfes:
                    a = agg.get((p, s, g, n))
                    if a and a["status"] == "ok" and a[metric] is not None and a[metric] != 0:
                        pts.append((a["nfe"], abs(a[metric])))
                if not pts:
                    continue
                pts.sort()
                k = solvers.index(s)
                (h,) = ax.plot(
                    [x for x, _ in pts],
                    [y for _, y in pts],
                    color=colors[s],
                    linestyle="--" if ":" in s and s.split(":")[0] in ("diffusers", "k-diffusion") else "-",
                    marker=_MARKERS[k % len(_MARKERS)],
                    markersize=4,
                    linewidth=1.5,
                    label=s,
                )
                handles.setdefault(s, h)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xticks(nfes)
            ax.set_xticklabels([str(n) for n in nfes])
            ax.minorticks_off()
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(f"{p} · {g} grid", fontsize=10)
            if j == 0:
                ax.set_ylabel(ylabel_of(metric))
            if i == len(plist) - 1:
                ax.set_xlabel("NFE (model calls)")
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside right center", fontsize=8, frameon=False)
    if any(s.partition(":")[0] in ("diffusers", "k-diffusion") for s in solvers):
        title += " (dashed: peers)"
    fig.suptitle(title, fontsize=11)
    _save(fig, path)
    plt.close(fig)


def _save(fig, path):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _overhead_plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    plist, lines, nfes = _series(rows)
    fig, axes = plt.subplots(
        1, len(plist), figsize=(5.0 * len(plist), 0.5 + 0.28 * max(len(v) for v in lines.values())), squeeze=False
    )
    for i, p in enumerate(plist):
        ax = axes[0][i]
        labels, vals = [], []
        for s, g in lines[p]:
            ov = [agg[(p, s, g, n)]["overhead"] for n in nfes if (p, s, g, n) in agg]
            ov = [v for v in ov if v is not None]
            if ov:
                labels.append(f"{s} · {g}")
                vals.append(median(ov))
        ax.barh(range(len(vals)), vals, color="tab:blue")
        ax.set_yticks(range(len(vals)))
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("µs per step, zero-cost model (median over NFE)")
        ax.set_title(f"{p}: framework overhead", fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_reports(result, problems: dict, plots: bool = True, log=print) -> dict[str, Path]:
    """results.csv / results.json / results.md and the PNG plots in ``result.out``."""
    from .spec import ROW_FIELDS

    out = Path(result.out)
    rows = [r for r in result.rows if r is not None]
    files = {"csv": out / "results.csv", "json": out / "results.json", "markdown": out / "results.md"}
    _write_csv(rows, files["csv"], ROW_FIELDS)
    atomic_write_text(files["json"], json.dumps(to_jsonable({"cells": rows, "overhead": result.overhead}), indent=1))
    md = "# diffsolve bench results\n\n" + markdown_tables(rows, problems)
    if result.overhead:
        from .overhead import overhead_markdown

        md += "\n## Per-step overhead side by side\n\n" + overhead_markdown(result.overhead) + "\n"
        _write_csv(result.overhead, out / "overhead.csv", list(result.overhead[0]))
        files["overhead_csv"] = out / "overhead.csv"
    atomic_write_text(files["markdown"], md)
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            log("matplotlib is not installed: no plots (pip install 'diffsolve[bench]')")
            return files
        ok = [r for r in rows if r["status"] == "ok"]
        if ok:
            files["error_plot"] = out / "error_vs_nfe.png"
            _line_plots(
                ok,
                problems,
                lambda p: "rmse",
                lambda m: "RMSE to reference",
                "RMSE to the reference ODE solution vs NFE (log-log)",
                files["error_plot"],
            )
            files["dist_plot"] = out / "distribution_vs_nfe.png"
            _line_plots(
                ok,
                problems,
                _dist_metric,
                lambda m: {"nll_gap": "|NLL gap| (nats)", "fdd": "FDD to held-out digits"}.get(
                    m, "sliced W2 to held-out data"
                ),
                "Distribution metric vs NFE (every solver)",
                files["dist_plot"],
            )
            files["overhead_plot"] = out / "overhead.png"
            _overhead_plot(ok, files["overhead_plot"])
        if result.overhead:
            from .overhead import overhead_plot

            files["overhead_side_by_side"] = out / "overhead_side_by_side.png"
            overhead_plot(result.overhead, files["overhead_side_by_side"])
    return files


def summary(result, problems: dict, seconds: float) -> str:
    rows = [r for r in result.rows if r is not None]
    agg = aggregate(rows)
    plist, lines, nfes = _series(rows)
    by_status = defaultdict(int)
    for r in rows:
        by_status[r["status"]] += 1
    lines_out = [
        f"bench: {len(rows)} cells ({result.computed} computed, {result.skipped} already done) in "
        f"{seconds:.1f} s; " + ", ".join(f"{v} {k}" for k, v in sorted(by_status.items()))
    ]
    for p in plist:
        best = []
        for n in nfes:
            cands = [
                (a["rmse"], s, g)
                for (pp, s, g, nn), a in agg.items()
                if pp == p and nn == n and a["status"] == "ok" and a["exact"] and a["rmse"] is not None
            ]
            if cands:
                v, s, g = min(cands)
                best.append(f"NFE {n}: {s}/{g} {v:.2e}")
        if best:
            lines_out.append(f"  {p}: best RMSE  " + ";  ".join(best))
    errors = [r for r in rows if r["status"] == "error"]
    for r in errors[:5]:
        lines_out.append(f"  error: {r['problem']} {r['solver']} {r['grid']} NFE {r['nfe_target']}: {r['message']}")
    if len(errors) > 5:
        lines_out.append(f"  ... {len(errors) - 5} more errors in results.csv")
    if result.files:
        lines_out.append("  wrote " + ", ".join(str(p) for p in result.files.values()))
    return "\n".join(lines_out)
