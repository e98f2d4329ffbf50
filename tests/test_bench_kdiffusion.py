"""k-diffusion side by side (issues 3 and 4): its samplers, run from its installed files unchanged,
agree with diffsolve's solvers on the same problem, x_T and grid, and appear in the sweep."""

import sys

import pytest
import torch

import diffsolve as ds
from diffsolve.bench import run_bench
from diffsolve.bench.peers import PEERS, available_peers, kdiffusion, run_peer
from diffsolve.bench.problems import AnalyticProblem

try:
    K = kdiffusion()
except ImportError as exc:  # `make test` installs it (Makefile: pip install --no-deps k-diffusion)
    pytest.skip(f"k-diffusion not loadable: {exc}", allow_module_level=True)

KD_PEERS = [label for label in PEERS if PEERS[label].library == "k-diffusion"]


def test_every_k_diffusion_peer_is_available_and_torchvision_is_not_left_stubbed():
    assert set(KD_PEERS) <= set(available_peers())
    for name in ("sample_euler", "sample_heun", "sample_lms", "sample_dpmpp_2m"):
        assert callable(getattr(K.sampling, name))
    if "torchvision stubbed" in K.how:  # the stand-in lived only for the import
        assert "torchvision" not in sys.modules


# diffsolve solver equal to each k-diffusion sampler, run with its own DiscreteEpsDDPMDenoiser
SAME = {
    "k-diffusion:euler": "ddim",
    "k-diffusion:dpmpp-2m": "dpmpp-2m",
    "k-diffusion:lms": "lms",
    "k-diffusion:heun": "heun",
}


@pytest.mark.parametrize("grid", ["trailing", "karras", "logsnr"])
@pytest.mark.parametrize("label", sorted(SAME))
def test_k_diffusion_samplers_equal_diffsolve_solvers_to_float64_rounding(label, grid):
    # k-diffusion's state is xbar (its x = x_model * sqrt(1 + sigma^2)), its sigma is ours
    p = AnalyticProblem("gmm2d", 64)
    x_T = p.x_T(0, 64).double()
    nfe = 11 if label == "k-diffusion:heun" else 8
    run = run_peer(label, p, x_T, grid, nfe, torch.float64)
    assert run.nfe == nfe and run.sigma_end == 0.0
    ours = ds.sample(p.ode(torch.float64), x_T, SAME[label], steps=run.steps, grid=grid)
    rel = float((run.x0 - ours).abs().max() / ours.abs().max())
    assert rel < 1e-12, rel


def test_k_sampler_dpmpp_2m_equals_k_diffusions_with_its_own_denoiser():
    # the other direction: diffsolve's solver as a k-diffusion sampler, on k-diffusion's denoiser
    sched = ds.DiscreteSchedule.linear(1000, 1e-4, 0.02)
    p = AnalyticProblem("gmm2d", 16)
    raw, _, _ = p.raw_model(torch.float64)
    den = K.external.DiscreteEpsDDPMDenoiser(raw, sched.alphas_cumprod, quantize=False)
    sigmas = ds.grid("karras", sched, 7)
    x = p.x_T(3, 16).double() * float(sigmas[0].hypot(torch.tensor(1.0, dtype=torch.float64)))
    theirs = K.sampling.sample_dpmpp_2m(den, x, sigmas, disable=True)
    ours = ds.k_sampler("dpmpp-2m")(den, x, sigmas)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_k_diffusion_peers_in_the_sweep_on_every_grid(tmp_path):
    res = run_bench(
        ["gmm2d"],
        ["dpmpp-2m", "lms"],
        ["trailing", "karras"],
        [10],
        [0],
        out=tmp_path,
        peers_=True,
        samples=32,
        progress=False,
        overhead_repeats=1,
        plots=False,
        log=lambda *_: None,
    )
    cells = {(r["solver"], r["grid"]): r for r in res.rows}
    for name in ("dpmpp-2m", "lms"):
        for grid in ("trailing", "karras"):
            kd, ours = cells[(f"k-diffusion:{name}", grid)], cells[(name, grid)]
            assert kd["nfe"] == 10 and kd["rmse"] == pytest.approx(ours["rmse"], rel=1e-5)
    assert cells[("k-diffusion:heun", "karras")]["nfe"] == 9  # 2 S - 1 calls: S = 5
    # the best cell (lms on karras here) and the peer that ties it up to rounding are both bold
    md = (tmp_path / "results.md").read_text().splitlines()
    row = {
        name: next(line for line in md if line.startswith(f"| {name} | karras |"))
        for name in ("lms", "k-diffusion:lms")
    }
    assert row["lms"].split("|")[3] == row["k-diffusion:lms"].split("|")[3]
    assert row["lms"].split("|")[3].strip().startswith("**")


def test_overhead_table_has_the_floors_ddim_and_every_peer_side_by_side():
    from diffsolve.bench.overhead import measure_overhead, overhead_markdown

    rows = measure_overhead(solvers=["ddim", "dpmpp-2m"], shapes=[(1, 8)], steps=3, repeats=1)
    whos = [r["who"] for r in rows]
    assert whos[:2] == ["floor: x + c*eps (one fused op)", "floor, VP model: x*a for the model, then x + c*eps"]
    for who in (
        "diffsolve:ddim",
        "diffsolve:ddim (check_finite=False)",
        "diffsolve:ddim (VE model)",
        "diffsolve:dpmpp-2m",
        "diffusers:ddim",
        "diffusers:unipc",
        "k-diffusion:euler",
        "k-diffusion:dpmpp-2m",
    ):
        assert who in whos, who
    assert all(r["us_per_step"] > 0 and r["shape"] == "1x8" for r in rows)
    assert "k-diffusion:dpmpp-2m" in overhead_markdown(rows)
