"""Peers side by side: diffusers' schedulers on the same problem, x_T and end point (issue 4)."""

import pytest
import torch

pytest.importorskip("diffusers")  # in the test extra, so `make test` runs these

import diffsolve as ds  # noqa: E402
from diffsolve.bench import run_bench  # noqa: E402
from diffsolve.bench.peers import PEERS, available_peers, run_peer  # noqa: E402
from diffsolve.bench.problems import AnalyticProblem  # noqa: E402


@pytest.mark.parametrize("steps", [10, 20])
def test_ddim_and_diffusers_ddim_agree_to_float32_rounding_on_the_same_grid(steps):
    p = AnalyticProblem("gmm2d", 64)
    x_T = p.x_T(0, 64).float()
    peer = run_peer("diffusers:ddim", p, x_T, "trailing", steps, torch.float32)
    ours = ds.sample(p.ode(torch.float32), x_T, "ddim", steps=steps, grid="trailing")
    assert peer.nfe == steps and peer.sigma_end == 0.0 and ours.dtype == peer.x0.dtype == torch.float32
    rel = float((peer.x0 - ours).abs().max() / ours.abs().max())
    assert rel < 1e-5, rel


def test_every_diffusers_peer_runs_with_its_real_nfe_counted():
    p = AnalyticProblem("gmm2d", 32)
    x_T = p.x_T(1, 32).float()
    for label in [lab for lab in available_peers() if PEERS[lab].library == "diffusers"]:
        run = run_peer(label, p, x_T, "trailing", 10, torch.float32)
        assert torch.isfinite(run.x0).all(), label
        assert run.sigma_start == pytest.approx(p.schedule.sigma_max, rel=1e-12)
        if label == "diffusers:heun":
            assert (run.steps, run.nfe) == (5, 9)  # 2 calls per step, one on the last: 2 S - 1 <= 10
        else:
            assert (run.steps, run.nfe) == (10, 10), label
        assert (run.sigma_end > 0) == (label == "diffusers:deis"), label  # DEIS offers no final sigma 0


def test_peers_in_the_sweep_table(tmp_path):
    res = run_bench(
        ["gmm2d"],
        ["ddim"],
        ["trailing"],
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
    by = {r["solver"]: r for r in res.rows}
    assert {"ddim", "diffusers:ddim", "diffusers:heun", "diffusers:deis"} <= set(by)
    assert by["diffusers:ddim"]["rmse"] == pytest.approx(by["ddim"]["rmse"], rel=1e-6)
    assert by["diffusers:heun"]["nfe"] == 9 and not by["diffusers:heun"]["nfe_exact"]
    assert "ends at sigma" in by["diffusers:deis"]["message"]
    md = (tmp_path / "results.md").read_text()
    assert "diffusers:deis" in md and "†" in md and "* (9)" in md


def test_a_requested_peer_cell_that_cannot_run_is_a_row_that_says_why(capsys):
    # issue 23 item 11: `diffsolve bench --peers --grids trailing,karras` dropped the diffusers karras cells in silence
    from diffsolve.bench.cli import _say_unsupported_peer_cells
    from diffsolve.bench.harness import _cells
    from diffsolve.bench.spec import parse_solver

    cells = _cells(["gmm2d"], [parse_solver("diffusers:ddim")], ["trailing", "karras"], [5], [0])
    assert [c.grid for c in cells] == ["trailing", "karras"]
    p = AnalyticProblem("gmm2d", 4)
    with pytest.raises(ValueError, match="grid 'karras' is not run"):
        run_peer("diffusers:ddim", p, p.x_T(0, 4).float(), "karras", 5, torch.float32)
    _say_unsupported_peer_cells(["trailing", "karras"])  # what `diffsolve bench --peers` prints before the sweep
    assert (
        "--peers: diffusers:ddim cannot run grid(s) karras: diffusers:ddim runs diffusers' own"
        in capsys.readouterr().out
    )
