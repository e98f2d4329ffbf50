"""The digits-cond problem: the shipped class-conditional UNet, its weak sibling and the guided-sampling metrics."""

import pytest
import torch

import diffsolve as ds
from diffsolve.bench.catalog import get_bench_problem
from diffsolve.bench.digits import COND_UNET_WEIGHTS, NULL_LABEL, WEAK_COND_UNET_WEIGHTS


@pytest.fixture(scope="module")
def problem():
    return get_bench_problem("digits-cond")


def test_shipped_conditional_weights_load_safely_and_stay_small():
    for path in (COND_UNET_WEIGHTS, WEAK_COND_UNET_WEIGHTS):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        assert blob["config"]["num_classes"] == 10 and "label_dropout" in blob["meta"]
    shipped = sum(p.stat().st_size for p in COND_UNET_WEIGHTS.parent.glob("*.pt"))
    assert shipped <= 3 * 1024 * 1024, f"shipped weights {shipped} bytes > 3 MB"


def test_float_guidance_is_cfg_with_the_null_label(problem):
    labels = torch.tensor([3, 7])
    x = problem.x_T(0, 2)
    ode = problem.ode(torch.float32, labels=labels, guidance=2.5)
    net = problem.unet
    t = torch.full((2,), float(ode.model_time(5.0)))
    xin = x / (1 + 25.0) ** 0.5 * (1 + 25.0) ** 0.5 / (1 + 25.0) ** 0.5  # model space of xbar = x at sigma 5
    with torch.no_grad():
        c, u = net(xin, t, labels), net(xin, t, torch.full((2,), NULL_LABEL))
        eps = ode.eps(x, 5.0)
    assert torch.allclose(eps, u + 2.5 * (c - u), atol=1e-5)  # float32 network, batched vs separate calls


def test_metrics_of_guided_samples_and_of_the_real_digits(problem):
    assert problem.eval_labels().tolist() == problem.labels("test").tolist()
    labels = torch.arange(10).repeat(2)  # two per class: the least class-wise FDD takes
    x = ds.sample(problem.ode(torch.float32, labels=labels, guidance=3.0), problem.x_T(0, 20), "ddim", steps=2)
    m = problem.metrics(x, labels)
    assert set(m) == {"accuracy", "fdd_classwise", "fdd", "saturation"}
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["saturation"] <= 1 and m["fdd_classwise"] > 0
    real = problem.data("test")
    assert problem.saturation(real) == 0.0 and problem.accuracy(real, problem.labels("test")) > 0.95
    assert problem.saturation(torch.full((1, 1, 8, 8), -1.2)) == 1.0  # 0.2 past the range counts
    auto = problem.guidance("autoguidance", 2.0)
    assert (
        ds.sample(problem.ode(torch.float32, labels=labels[:4], guidance=auto), problem.x_T(1, 4), steps=2).shape[0]
        == 4
    )


def test_the_bench_harness_refuses_digits_cond_with_a_pointer():
    from diffsolve.bench.errors import BenchError
    from diffsolve.bench.harness import _resolve_problems

    with pytest.raises(BenchError, match="bench_guidance.py"):
        _resolve_problems(["digits-cond"], None)


def test_bad_labels_are_clear_errors(problem):
    with pytest.raises(TypeError, match="LongTensor"):
        problem.ode(torch.float32, labels=torch.tensor([1.0]))
    with pytest.raises(ValueError, match="classes 0..9"):
        problem.ode(torch.float32, labels=torch.tensor([10]))
    with pytest.raises(ValueError, match="guidance needs labels"):
        problem.ode(torch.float32, guidance=3.0)


# -- diffsolve bench --problem digits-cond --guidance (issue 20, item 6) ------------------------------------------
def test_bench_guidance_prints_the_metrics_of_each_method_and_resumes(problem, tmp_path, capsys):
    """`diffsolve bench --problem digits-cond --guidance cfg:4,cfg++:0.6` prints accuracy, class-wise FDD, FDD and
    saturation per method x solver x NFE; each cell equals sampling the same guided ODE by hand and scoring it with
    the problem's metrics, and a rerun reads the cells back instead of sampling again."""
    import json

    from cli_run import run_cli

    argv = ["bench", "--problem", "digits-cond", "--guidance", "cfg:4,cfg++:0.6", "--solvers", "ddim"]
    argv += ["--nfe", "5", "--samples", "20", "--out", str(tmp_path), "--quiet"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "| guidance | solver | grid | NFE | steps | accuracy | class-wise FDD | FDD | saturation |" in out
    rows = [json.loads(line) for line in (tmp_path / "guidance.jsonl").read_text().splitlines()]
    assert [(r["guidance"], r["solver"], r["nfe"], r["steps"]) for r in rows] == [
        ("cfg:4", "ddim", 5, 5),
        ("cfg++:0.6", "ddim", 5, 5),
    ]
    labels = torch.arange(20) % 10
    by_hand = ds.sample(
        problem.ode(torch.float32, labels=labels, guidance=4.0),
        problem.x_T(0, 20),
        "ddim",
        sigmas=ds.grid("trailing", problem.schedule, 5),
    )
    want = problem.metrics(by_hand, labels)
    assert {k: rows[0][k] for k in want} == want
    assert f"| cfg:4 | ddim | trailing | 5 | 5 | {want['accuracy']:.3f} | {want['fdd_classwise']:.1f} |" in out
    code, again, _ = run_cli(argv, capsys)
    assert code == 0 and len((tmp_path / "guidance.jsonl").read_text().splitlines()) == 2  # read back, not rerun
    assert again.split("results:")[0] == out.split("results:")[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--guidance", "cfgpp:0.5"], "unknown method 'cfgpp' (did you mean 'cfg++'?)"),
        (["--guidance", "cfg++:2"], "scale must be in [0, 1]"),
        (["--guidance", "apg:8:etta=1"], "etta"),
        (["--guidance", "cfg:x"], "the scale 'x' is not a number"),
        (["--guidance", "cfg:8", "--problem", "digits"], "pass --problem digits-cond"),
        (["--guidance", "cfg:8", "--samples", "5"], "at least 20"),
        (["--guidance", "cfg:8", "--solvers", "ddin"], "did you mean 'ddim'"),
    ],
)
def test_bench_guidance_refuses_bad_arguments_in_one_line(args, message, tmp_path, capsys):
    from cli_run import run_cli

    argv = ["bench", *(["--problem", "digits-cond"] if "--problem" not in args else []), *args]
    code, out, err = run_cli([*argv, "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "guidance.jsonl").exists()


def test_parse_guidance_reads_method_scale_and_options():
    from diffsolve.bench.guided import DEFAULT_SCALES, parse_guidance

    assert parse_guidance("cfg") == ("cfg", DEFAULT_SCALES["cfg"], {})
    assert parse_guidance("apg:6:eta=0.5") == ("apg", 6.0, {"eta": 0.5})
    assert parse_guidance("cfg:8:clip=True") == ("cfg", 8.0, {"clip": True})
    assert parse_guidance("autoguidance") == ("autoguidance", 2.0, {})


def test_the_guidance_picture_draws_one_row_per_method_and_a_reference_column(problem, tmp_path):
    """make demo's guided picture (diffsolve/bench/guided.py picture, small): a PNG whose rows are the methods and
    whose columns are the NFE plus the DDIM reference; drawn here at a toy size (1 x_T, NFE 2, DDIM 3 steps)."""
    import matplotlib.image

    from diffsolve.bench.guided import PICTURE_ROWS, picture

    path = picture(tmp_path / "g.png", n=1, cols=1, nfes=(2,), ref_steps=3, rows=PICTURE_ROWS[:2], problem=problem)
    image = matplotlib.image.imread(path)
    assert image.shape[0] > 100 and image.shape[1] > 400 and image.std() > 0.05  # drawn, not blank
