"""What limits the digits recipes at NFE 3 and 5 (issue 22's digits line): four measurements against the exact
ODE solution, on the 512 x_T of seed 0 that ``tune_digits.py --evaluate`` uses (no tune saw them).

1. ``proxy``: every zero-call first step carries x_T from sigma_max to a noise level sigma; its RMSE (in xbar) to
   the exact state there. AFS (one Euler step with its eps), the exact flow of data ~ N(0, I) (docs/math.md E38,
   whose large-sigma limit AFS's eps is), the Gaussian step (G2, rank 8 and full covariance, moments of the model's
   samples), the exact flow of the empirical mixture of those samples (the mixture denoiser under E38 with one
   component per sample, RK4 in log sigma), and the best affine map of xbar_0 (least squares on the exact states of
   the fit x_T: no first step that is affine in x_T does better on them).
2. ``oracle``: the learned multistep table (M1) refitted (M3) with its first interval integrated exactly (the
   state at sigma_1 from dopri5 on every x_T: a bound, not a sampler, as it costs an adaptive solve): how far a
   perfect zero-call first step would take each shipped recipe. Fitted on the fit x_T, scored on the evaluation ones.
3. ``first-call``: the family without AFS: the table fitted (M3) from iPNDM on a grid whose first call is a model
   call at sigma_max (the shipped interior sigmas less the largest, so the same number of calls), fitted on the fit
   x_T, scored on the evaluation ones: what spending a call where the network's own high-noise response is made
   gains against a zero-call first step.
4. ``bound``: the family the learn stage searches, widened (M1 with the Gaussian first step of full covariance, the
   interior sigmas, and a free scale of each model call's input, as in bespoke non-stationary solvers), fitted on
   the evaluation x_T themselves: no recipe of that family fitted elsewhere scores lower on them, up to L-BFGS's
   local optimum (two starts: the shipped recipe, and iPNDM on another grid).

    OMP_NUM_THREADS=1 python benchmarks/digits_limits.py --out bench-results/digits-limits

Results are appended to OUT/limits.jsonl as each finishes (a rerun skips those there); the exact states are cached
in OUT (one dopri5 solve per seed and sigma). The tables are printed and drawn (OUT/digits_limits.png) at the end;
``--table`` prints and draws them only.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import diffsolve as ds  # noqa: E402
from diffsolve.bench.catalog import get_bench_problem  # noqa: E402
from diffsolve.gaussian_step import GaussianMoments  # noqa: E402
from diffsolve.recipe_ode import afs_eps  # noqa: E402
from diffsolve.tuning_learn import _Eps, _run_table, _scales, multistep_coefficients  # noqa: E402 - M3's pieces, not redone

F64 = torch.float64
FIT_SEED, EVAL_SEED = 1000, 0
RECIPES = ROOT / "diffsolve" / "bench" / "recipes"
#: the noise levels of the proxy measurement besides the shipped recipes' sigma_1
PROXY_SIGMAS = (100.0, 50.0, 20.0, 5.0)
#: L-BFGS iterations at most, checked every 10 (the learn stage's CHECK_EVERY); stops when an outer step converges
ITERATIONS = 100
#: the bound's starts: the shipped recipe, and iPNDM's table on a grid with every interior sigma halved
STARTS = ("shipped", "ipndm")


class Setup:
    """The digits model, the two draws of x_T and their exact states (dopri5, rtol = atol = ``tol``), cached in
    ``out`` as reference-seed<seed>-<n>-sigma<sigma>.pt."""

    def __init__(self, out: Path, fit_samples: int, eval_samples: int, tol: float):
        self.out, self.tol = out, tol
        self.problem = get_bench_problem("digits")
        self.ode = self.problem.ode(self.problem.dtype)
        self.sigma_max = float(self.problem.schedule.sigma_max)
        self.view = self.ode.start_run(input_dtype=self.problem.dtype)
        self.n = {FIT_SEED: fit_samples, EVAL_SEED: eval_samples}

    def x_T(self, seed: int) -> torch.Tensor:
        return self.problem.x_T(seed, self.n[seed]).to(self.problem.dtype)

    def xbar0(self, seed: int) -> torch.Tensor:
        return self.view.to_xbar(self.x_T(seed).to(F64), self.sigma_max)

    def state(self, seed: int, sigma: float) -> torch.Tensor:
        """xbar at ``sigma`` of the exact solution from each x_T of ``seed`` (at sigma = 0 the sample itself)."""
        from diffsolve.analytic import reference_solution

        path = self.out / f"reference-seed{seed}-{self.n[seed]}-sigma{sigma:.6g}-tol{self.tol:g}.pt"
        if path.exists():
            return torch.load(path)
        print(
            f"exact states: seed {seed}, {self.n[seed]} x_T, sigma {sigma:.4g} (dopri5, tol {self.tol:g})", flush=True
        )
        with torch.no_grad():
            x = reference_solution(
                self.view, self.x_T(seed).double(), self.sigma_max, sigma, rtol=self.tol, atol=self.tol
            )
        xbar = self.view.to_xbar(x, sigma)
        torch.save(xbar, path)
        return xbar


def mixture_flow(xbar: torch.Tensor, samples: torch.Tensor, sigma0: float, sigma1: float, steps: int = 400):
    """The exact flow (docs/math.md E29) of the empirical mixture of ``samples`` from sigma0 to sigma1: the mixture
    rule under E38 with one zero-width component per sample, D = sum_k w_k y_k, w = softmax(-|xbar - y_k|^2 /
    2 sigma^2), eps = (xbar - D) / sigma; RK4 in log sigma, d xbar / d log sigma = sigma eps."""
    y = samples.reshape(samples.shape[0], -1).to(F64)
    z = xbar.reshape(xbar.shape[0], -1)

    def slope(z, log_sigma):
        sigma = math.exp(log_sigma)
        w = torch.softmax(-torch.cdist(z, y).pow(2) / (2 * sigma * sigma), dim=1)
        return z - w @ y  # sigma * eps

    a, h = math.log(sigma0), (math.log(sigma1) - math.log(sigma0)) / steps
    for k in range(steps):
        t = a + k * h
        k1 = slope(z, t)
        k2 = slope(z + h / 2 * k1, t + h / 2)
        k3 = slope(z + h / 2 * k2, t + h / 2)
        k4 = slope(z + h * k3, t + h)
        z = z + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return z.reshape(xbar.shape)


def affine_map(xbar0_fit, state_fit, xbar0):
    """The least-squares affine map xbar_0 -> state fitted on the fit x_T, applied to ``xbar0``."""
    feats = lambda v: torch.cat([v.reshape(v.shape[0], -1), torch.ones(v.shape[0], 1, dtype=F64)], 1)  # noqa: E731
    coef = torch.linalg.lstsq(feats(xbar0_fit), state_fit.reshape(state_fit.shape[0], -1)).solution
    return (feats(xbar0) @ coef).reshape(xbar0.shape)


def proxies(s: Setup, sigmas) -> list[dict]:
    ends = s.state(FIT_SEED, 0.0)  # the model's own samples (the teacher's ends of the fit x_T)
    moments = {
        "gaussian-rank8": GaussianMoments.fit(ends, 8),
        "gaussian-full": GaussianMoments.fit(ends, ends[0].numel()),
    }
    xb0, xb0_fit = s.xbar0(EVAL_SEED), s.xbar0(FIT_SEED)
    rows = []
    for sigma in sigmas:
        exact = s.state(EVAL_SEED, sigma)
        guess = {"afs": xb0 + (sigma - s.sigma_max) * afs_eps(xb0, s.sigma_max)}
        guess["afs-exact-flow"] = xb0 * math.sqrt((1 + sigma**2) / (1 + s.sigma_max**2))
        guess.update({k: m.flow(xb0, s.sigma_max, sigma) for k, m in moments.items()})
        guess["empirical-mixture"] = mixture_flow(xb0, ends, s.sigma_max, sigma)
        guess["best-affine"] = affine_map(xb0_fit, s.state(FIT_SEED, sigma), xb0)
        for k, v in guess.items():
            rows.append({"sigma": sigma, "proxy": k, "rmse": float((v - exact).pow(2).mean().sqrt())})
    return rows


def run_table(view, xbar0, first, c, log_sigmas, log_scales, dtype):
    """M1's run (:func:`diffsolve.tuning_learn._run_table`) from ``xbar0`` to sigma = 0 with the table ``c``, eps_0 =
    ``first(xbar0, sigma_1)``, the model called at exp(``log_sigmas``) on xbar * exp(``log_scales``) (zeros: the
    recipe's own run); differentiable in all of them (M3)."""

    def eps_of(i, xbar):
        if i == 0:
            return first(xbar, log_sigmas[0].exp())
        return _Eps.apply(xbar * log_scales[i - 1].exp(), log_sigmas[i - 1], view, dtype)

    return _run_table(xbar0, len(log_sigmas) + 1, c, eps_of)


def fit(s: Setup, sigmas, c0, fit_set, eval_set, *, learn_sigma1=True, learn_scales=True, label="", iterations=None):
    """L-BFGS (as the learn stage, M3: c = c0 + s delta, log sigmas, here also log input scales) on ``fit_set``
    = (xbar0, target, first); returns the eval RMSE at the start and at the checkpoint of lowest fit loss."""
    from tqdm import tqdm

    c0 = torch.tensor(c0, dtype=F64)
    scale = _scales(sigmas)
    delta = torch.zeros_like(c0, requires_grad=True)
    log_sigmas = torch.tensor([math.log(v) for v in sigmas[1:-1]], dtype=F64, requires_grad=True)
    log_scales = torch.zeros(len(sigmas) - 2, dtype=F64, requires_grad=learn_scales)
    dtype = s.problem.dtype

    def ls():
        return log_sigmas if learn_sigma1 else torch.cat([log_sigmas[:1].detach(), log_sigmas[1:]])

    def rmse(data):
        xbar0, target, first = data
        with torch.no_grad():
            out = run_table(s.view, xbar0, first, c0 + scale * delta, ls(), log_scales, dtype)
        return float((out - target).pow(2).mean().sqrt())

    params = [delta, log_sigmas] + ([log_scales] if learn_scales else [])
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=10, max_eval=40, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        xbar0, target, first = fit_set
        out = run_table(s.view, xbar0, first, c0 + scale * delta, ls(), log_scales, dtype)
        loss = (out - target).reshape(out.shape[0], -1).pow(2).mean(1).mean().log()
        loss.backward()
        return loss

    start = {"fit": rmse(fit_set), "eval": rmse(eval_set)}
    best = dict(start)
    done, iterations = 0, iterations or ITERATIONS
    with tqdm(total=iterations, desc=label, dynamic_ncols=True) as bar:
        while done < iterations:
            opt.step(closure)
            ran = opt.state[delta].get("n_iter", 0) - done
            done += ran
            bar.update(ran)
            now = {"fit": rmse(fit_set), "eval": rmse(eval_set)}
            if now["fit"] < best["fit"]:
                best = now
            if ran < 10:
                break
    grid = [sigmas[0]] + [math.exp(v) for v in ls().tolist()] + [0.0]
    return {
        "start_fit_rmse": start["fit"],
        "start_eval_rmse": start["eval"],
        "fit_rmse": best["fit"],
        "eval_rmse": best["eval"],
        "iterations": done,
        "sigmas": grid,
        "input_scales": [math.exp(v) for v in log_scales.tolist()],
    }


def shipped(nfe: int):
    recipe = ds.Recipe.load(RECIPES / f"digits-nfe{nfe}.json")
    if recipe.solver != "learned-lms" or not recipe.afs:
        raise SystemExit(f"digits-nfe{nfe}.json is {recipe!r}: this script measures the learned-lms + AFS family")
    return recipe, list(recipe.sigmas), list(recipe.options["coefficients"])


def oracle(s: Setup, nfe: int) -> dict:
    recipe, sigmas, c0 = shipped(nfe)
    s0, s1 = sigmas[0], sigmas[1]

    def data(seed):
        xbar0, exact = s.xbar0(seed), s.state(seed, s1)
        return xbar0, s.state(seed, 0.0), lambda xbar, _s1: (exact - xbar0) / (s1 - s0)

    out = fit(
        s,
        sigmas,
        c0,
        data(FIT_SEED),
        data(EVAL_SEED),
        learn_sigma1=False,
        learn_scales=False,
        label=f"oracle NFE {nfe}",
    )
    return {"nfe": nfe, "shipped_eval_rmse": shipped_rmse(s, recipe), **out}


def shipped_rmse(s: Setup, recipe) -> float:
    with torch.no_grad():
        x = ds.sample(s.ode, s.x_T(EVAL_SEED), recipe=recipe)
    return float((x.double() - s.state(EVAL_SEED, 0.0)).pow(2).mean().sqrt())


def first_call(s: Setup, nfe: int) -> dict:
    recipe, sigmas, _ = shipped(nfe)
    sigmas = [sigmas[0]] + sigmas[2:]  # nfe steps, the first one's call at sigma_max
    c0 = multistep_coefficients("ipndm", {}, sigmas, schedule=s.ode.schedule)

    def first(xbar, _sigma1):
        with torch.no_grad():
            return s.view.eps(xbar.to(s.problem.dtype), s.sigma_max).to(F64)

    def data(seed):
        return s.xbar0(seed), s.state(seed, 0.0), first

    out = fit(s, sigmas, c0, data(FIT_SEED), data(EVAL_SEED), learn_scales=False, label=f"first call NFE {nfe}")
    return {"nfe": nfe, "shipped_eval_rmse": shipped_rmse(s, recipe), **out}


def bound(s: Setup, nfe: int, start: str, iterations: int) -> dict:
    recipe, sigmas, c0 = shipped(nfe)
    if start == "ipndm":  # another basin: iPNDM's table on a grid with every interior sigma halved
        sigmas = [sigmas[0]] + [v / 2 for v in sigmas[1:-1]] + [0.0]
        c0 = multistep_coefficients("ipndm", {}, sigmas, schedule=s.ode.schedule)
    ends = s.state(FIT_SEED, 0.0)
    moments = GaussianMoments.fit(ends, ends[0].numel())

    def first(xbar, sigma1):
        return moments.first_eps(xbar, s.sigma_max, sigma1)

    data = (s.xbar0(EVAL_SEED), s.state(EVAL_SEED, 0.0), first)
    out = fit(s, sigmas, c0, data, data, label=f"bound NFE {nfe} from {start}", iterations=iterations)
    return {"nfe": nfe, "start": start, "shipped_eval_rmse": shipped_rmse(s, recipe), **out}


def tables(rows: list[dict]) -> str:
    lines = []
    prox = [r for r in rows if r["kind"] == "proxy"]
    if prox:
        names = list(dict.fromkeys(r["proxy"] for r in prox))
        lines += ["| sigma | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for sigma in sorted({r["sigma"] for r in prox}, reverse=True):
            got = {r["proxy"]: r["rmse"] for r in prox if r["sigma"] == sigma}
            lines.append(f"| {sigma:.4g} | " + " | ".join(f"{got[k]:.4f}" if k in got else "" for k in names) + " |")
        lines.append("")
    fits = [r for r in rows if r["kind"] in ("oracle", "first", "bound")]
    if fits:
        lines += [
            "| NFE | measurement | shipped (eval) | start (fit / eval) | after (fit / eval) | iterations | sigmas |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sorted(fits, key=lambda r: (r["nfe"], r["kind"], r.get("start", ""))):
            what = {"first": "first call at sigma_max"}.get(r["kind"], r["kind"]) + (
                f" from {r['start']}" if "start" in r else ""
            )
            lines.append(
                f"| {r['nfe']} | {what} | {r['shipped_eval_rmse']:.4e} | {r['start_fit_rmse']:.4e} / "
                f"{r['start_eval_rmse']:.4e} | {r['fit_rmse']:.4e} / {r['eval_rmse']:.4e} | {r['iterations']} | "
                + ", ".join(f"{v:.3g}" for v in r["sigmas"][1:-1])
                + " |"
            )
    return "\n".join(lines)


TARGETS = {3: 1.215e-01 / 2, 5: 6.187e-02 / 2}  # issue 22: half the recipes shipped when it was filed (seed 0)


def plot(rows: list[dict], path: Path) -> None:
    """Left: each zero-call first step's error against sigma; right: per NFE the target, the shipped recipe, the
    oracle, the first call at sigma_max and the lowest bound."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    prox = [r for r in rows if r["kind"] == "proxy"]
    for name in dict.fromkeys(r["proxy"] for r in prox):
        pts = sorted((r["sigma"], r["rmse"]) for r in prox if r["proxy"] == name)
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set(xscale="log", yscale="log", xlabel="sigma reached from sigma_max", ylabel="RMSE to the exact state (xbar)")
    ax.invert_xaxis()  # the flow runs from sigma_max down
    ax.set_title("zero-call first steps, 512 unseen x_T")
    ax.legend(fontsize=8)
    nfes = sorted({r["nfe"] for r in rows if "nfe" in r})
    bars = ["target", "shipped", "oracle", "first call at sigma_max", "bound (lowest)"]
    for k, label in enumerate(bars):
        vals = []
        for n in nfes:
            of = [r for r in rows if r.get("nfe") == n]
            pick = {
                "target": [TARGETS.get(n, math.nan)],
                "shipped": [r["shipped_eval_rmse"] for r in of],
                "oracle": [r["eval_rmse"] for r in of if r["kind"] == "oracle"],
                "first call at sigma_max": [r["eval_rmse"] for r in of if r["kind"] == "first"],
                "bound (lowest)": [r["eval_rmse"] for r in of if r["kind"] == "bound"],
            }[label]
            vals.append(min(pick) if pick else math.nan)
        bx.bar([i + 0.16 * (k - 2) for i in range(len(nfes))], vals, width=0.16, label=label)
    bx.set_xticks(range(len(nfes)), [f"NFE {n}" for n in nfes])
    bx.set(yscale="log", ylabel="RMSE to the exact sample, 512 unseen x_T", ylim=(0.02, None))
    bx.set_title("learned multistep family on digits")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench-results/digits-limits")
    ap.add_argument("--nfe", default="3,5", help="comma list of the shipped recipes' NFE (default 3,5)")
    ap.add_argument("--fit-samples", type=int, default=512, help="x_T of seed 1000 (default 512)")
    ap.add_argument("--eval-samples", type=int, default=512, help="x_T of seed 0 (default 512, as --evaluate)")
    ap.add_argument("--only", default="proxy,oracle,first-call,bound", help="comma list of the measurements to run")
    ap.add_argument(
        "--iterations", type=int, default=ITERATIONS, help=f"bound: L-BFGS iterations at most (default {ITERATIONS})"
    )
    ap.add_argument("--starts", default=",".join(STARTS), help="bound: the starts (default: both)")
    ap.add_argument("--table", action="store_true", help="print the tables of OUT and stop")
    a = ap.parse_args(argv)
    bad = [v for v in a.starts.split(",") if v not in STARTS]
    if bad:
        ap.error(f"--starts: {', '.join(bad)} not among {', '.join(STARTS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "limits.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if a.table:
        print(tables(rows))
        plot(rows, out / "digits_limits.png")
        return 0
    torch.manual_seed(0)
    s = Setup(out, a.fit_samples, a.eval_samples, tol=1e-8)
    protocol = {"fit_samples": a.fit_samples, "eval_samples": a.eval_samples}
    for r in rows:
        if {k: r[k] for k in protocol} != protocol:
            raise SystemExit(f"{log} holds rows of another protocol ({r}); pass another --out")
    done = {r["key"] for r in rows}
    nfes = [int(v) for v in a.nfe.split(",")]
    jobs = []
    if "proxy" in a.only:
        jobs.append(
            ("proxy", lambda: proxies(s, sorted({*PROXY_SIGMAS, *(shipped(n)[1][1] for n in nfes)}, reverse=True)))
        )
    for n in nfes:
        if "oracle" in a.only:
            jobs.append((f"oracle-{n}", lambda n=n: [oracle(s, n)]))
        if "first-call" in a.only:
            jobs.append((f"first-call-{n}", lambda n=n: [first_call(s, n)]))
        for start in a.starts.split(","):
            if "bound" in a.only:
                more = "" if a.iterations == ITERATIONS else f"-it{a.iterations}"  # a longer fit is another row
                jobs.append((f"bound-{n}-{start}{more}", lambda n=n, start=start: [bound(s, n, start, a.iterations)]))
    for key, job in jobs:
        if key in done:
            continue
        new = [{"key": key, "kind": key.split("-")[0], **protocol, **r} for r in job()]
        with log.open("a") as f:
            for r in new:
                f.write(json.dumps(r) + "\n")
        rows += new
        print(tables(new), flush=True)
    print(tables(rows))
    plot(rows, out / "digits_limits.png")
    print(f"figure: {out / 'digits_limits.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
