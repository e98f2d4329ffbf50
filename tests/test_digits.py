"""The digits problem: shipped weights, data split, interface, FDD metric, pictures and the sample CLI."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn", reason="the digits problem needs scikit-learn (pip install 'diffsolve[digits]')")

import diffsolve as ds  # noqa: E402
from diffsolve import DiffusionODE  # noqa: E402
from diffsolve.bench import bench_problem_names, get_bench_problem  # noqa: E402
from diffsolve.bench.digits import (  # noqa: E402
    CLASSIFIER_WEIGHTS,
    N_TEST,
    N_TRAIN,
    UNET_WEIGHTS,
    digits_split,
    frechet_distance,
    load_digits_split,
)


@pytest.fixture(scope="module")
def problem():
    return get_bench_problem("digits")


def test_shipped_weights_load_with_weights_only_and_fit_in_two_megabytes():
    total = 0
    for path in (UNET_WEIGHTS, CLASSIFIER_WEIGHTS):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        assert set(blob) >= {"config", "state_dict", "meta"}
        assert all(isinstance(v, torch.Tensor) for v in blob["state_dict"].values())
        total += path.stat().st_size
    assert total <= 2 * 1024 * 1024


def test_split_is_fixed_stratified_and_disjoint():
    labels = torch.cat([load_digits_split("train")[1], load_digits_split("test")[1]]).numpy()
    train, test = digits_split(np.sort(labels))  # any labels of the right counts give the same sizes
    assert len(train) == N_TRAIN and len(test) == N_TEST and not set(train) & set(test)
    a, b = load_digits_split("test"), load_digits_split("test")
    assert torch.equal(a[0], b[0])
    shares = torch.bincount(a[1], minlength=10).double() / N_TEST
    assert float(shares.min()) > 0.08 and float(shares.max()) < 0.12
    with pytest.raises(ValueError, match="split"):
        load_digits_split("val")


def test_problem_interface(problem):
    assert "digits" in bench_problem_names()
    ode = problem.ode(torch.float32)
    assert isinstance(ode, DiffusionODE)
    x = problem.x_T(3, 5)
    assert x.shape == (5, *problem.shape) and torch.equal(x, problem.x_T(3, 5))
    assert not torch.equal(x, problem.x_T(4, 5))
    train, test = problem.data("train"), problem.data("test")
    assert train.shape == (N_TRAIN, *problem.shape) and test.shape == (N_TEST, *problem.shape)
    assert float(train.min()) >= -1 and float(train.max()) <= 1
    img = problem.to_images(test)
    assert img.shape == (N_TEST, problem.size, problem.size)
    assert float(img.min()) >= 0 and float(img.max()) <= 1
    with pytest.raises(ValueError, match="split"):
        problem.data("validation")
    eps = ode.eps(x.float(), 10.0)
    assert eps.shape == x.shape and torch.isfinite(eps).all()


def test_real_held_out_digits_score_as_digits(problem):
    test = problem.data("test")
    m = problem.metrics(test)
    # the held-out set scored against itself: FDD is 0 up to the rounding of the float32 classifier's
    # features, which metrics() recomputes from a float64 copy (measured 1.4e-11 in one worker order)
    assert m["coverage"] == 1.0 and m["fdd"] < 1e-8
    acc = (problem.probabilities(test).argmax(1) == problem.labels("test")).double().mean()
    assert float(acc) > 0.95


def test_fdd_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(400, 8, generator=g, dtype=torch.float64)
    assert frechet_distance(f, f) == pytest.approx(0.0, abs=1e-9)
    values = [frechet_distance(f, f + d) for d in (0.1, 0.5, 1.0)]
    assert values == sorted(values) and values[0] > 0
    # a pure mean shift d in every coordinate adds |d|^2 * D
    assert values[2] == pytest.approx(8.0, rel=1e-9)
    assert frechet_distance(f, 2 * f) > 1.0  # a scale change shows up in the covariance term
    with pytest.raises(ValueError, match="feature sets"):
        frechet_distance(f, f[:, :3])


def test_fdd_of_digits_grows_when_they_are_blurred(problem):
    test = problem.data("test")
    blurred = torch.nn.functional.avg_pool2d(test, 3, stride=1, padding=1, count_include_pad=False)
    assert problem.fdd(blurred) > 10 * problem.fdd(problem.data("train"))


def test_solver_picture_has_every_row_and_column(problem, tmp_path):
    pytest.importorskip("matplotlib")
    from diffsolve.bench.pictures import solver_grid_png, solver_row

    assert ds.steps_for_nfe("heun", 5, grid="karras", schedule=problem.schedule) == 3  # 2 calls/step, last Euler
    path = solver_grid_png(
        problem,
        tmp_path / "g.png",
        rows=[solver_row("ddim"), solver_row("heun", "karras")],
        nfes=(2, 3),
        n=4,
        reference=False,
    )
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def _sample(args, env, torchrun=False):
    pre = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        if torchrun
        else [sys.executable]
    )
    return subprocess.run(
        pre + ["-m", "diffsolve", "sample", "--problem", "digits", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_sample_npz_under_two_process_torchrun_equals_one_process_bit_for_bit(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["--solver", "ddim", "--eta", "1", "--steps", "3", "--batch", "4", "--seed", "5"]
    one = _sample(args + ["--n", "13", "--out", str(tmp_path / "one.npz")], env)
    assert one.returncode == 0, one.stderr[-3000:]
    # under torchrun the count is spelled --samples: torchrun's own parser takes --n as an
    # ambiguous prefix of its options (--nnodes, --nproc-per-node, ...)
    two = _sample(args + ["--samples", "13", "--out", str(tmp_path / "two.npz")], env, torchrun=True)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert a["x0"].shape == (13, 1, 8, 8) and a["images"].shape == (13, 8, 8)
    assert a["x0"].tobytes() == b["x0"].tobytes() and a["images"].tobytes() == b["images"].tobytes()


def test_per_sample_generators_make_the_first_samples_independent_of_n(problem):
    from diffsolve.bench.sample_cli import digits_samples

    big = digits_samples(problem, "ddim", 3, None, n=9, seed=2, batch=3, chunks=[1], eta=1.0)
    small = digits_samples(problem, "ddim", 3, None, n=6, seed=2, batch=3, chunks=[1], eta=1.0)
    assert np.array_equal(big[1], small[1])
    other = digits_samples(problem, "ddim", 3, None, n=6, seed=3, batch=3, chunks=[1], eta=1.0)
    assert not np.array_equal(big[1], other[1])


def test_sample_cli_refuses_digits_without_an_output_file(capsys):
    from diffsolve.cli import main

    assert main(["sample", "--problem", "digits", "--steps", "2"]) == 2
    assert "--out" in capsys.readouterr().err


def test_recipe_row_runs_the_recipe_of_each_nfe_and_leaves_the_others_empty(tmp_path):
    from diffsolve.analytic import default_schedule, get_problem
    from diffsolve.bench.pictures import recipe_row
    from diffsolve.recipe import schedule_fingerprint

    ode = get_problem("gmm2d").ode(default_schedule())
    sig = ds.grid("logsnr", ode.schedule, 5).tolist()  # 5 steps: 5 model calls
    recipe = ds.Recipe("dpmpp-2m", {}, sig, False, 5, schedule_fingerprint(ode.schedule, ode.prediction))
    recipe.save(tmp_path / "toy-nfe5.json")
    label, run = recipe_row("toy", folder=tmp_path)
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert label == "tuned recipe" and run(ode, x_T, 3) is None
    torch.testing.assert_close(run(ode, x_T, 5), ds.sample(ode, x_T, "dpmpp-2m", sigmas=sig), rtol=0, atol=0)


@pytest.mark.parametrize("nfe", [3, 5, 10])
def test_shipped_digits_recipes_fit_the_digits_model_and_make_exactly_their_model_calls(problem, nfe):
    from diffsolve.bench.pictures import RECIPES

    recipe = ds.Recipe.load(RECIPES / f"digits-nfe{nfe}.json")
    ode = problem.ode(torch.float32)
    recipe.check(ode)  # tuned on this schedule and prediction
    n0 = ode.nfe
    out = ds.sample(ode, problem.x_T(0, 4).to(torch.float32), recipe=recipe)
    assert ode.nfe - n0 == recipe.nfe <= nfe and torch.isfinite(out).all()
