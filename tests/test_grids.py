"""The grid registry: every grid is strictly decreasing float64 ending at 0; user grids are validated."""

import pytest
import torch

import diffsolve as ds
from diffsolve.grids import ddim_quad_indices, ddim_uniform_indices

DISCRETE = ds.DiscreteSchedule.linear()
CONTINUOUS = ds.VPLinearSchedule()
MODEL_TABLES = ("ays-sd15", "ays-sdxl", "ays-svd", "gits-sd15")


@pytest.mark.parametrize("name", ds.list_grids())
@pytest.mark.parametrize("steps", [1, 2, 7, 50])
def test_every_registered_grid_is_strictly_decreasing_float64_ending_at_zero(name, steps):
    if name in MODEL_TABLES:  # published tables of one model family: on its own schedule
        sched = ds.EDMSchedule(0.002, 700.0) if name == "ays-svd" else ds.DiscreteSchedule.scaled_linear()
        if name == "gits-sd15" and steps != 10:
            with pytest.raises(ValueError, match="published for 10 steps only"):
                ds.grid(name, sched, steps)
            return
        sig = ds.grid(name, sched, steps)
        assert sig.dtype == torch.float64 and sig.numel() == steps + 1
        assert (sig[1:] < sig[:-1]).all() and sig[-1].item() == 0.0
        return
    if name == "ddim-quad" and steps < 2:
        with pytest.raises(ValueError, match="ddim-quad needs steps >= 2"):
            ds.grid(name, DISCRETE, steps)
        return
    if name == "ddim-quad" and steps > 29:  # the official rule repeats indices: see the ddim-quad tests
        return
    sig = ds.grid(name, DISCRETE, steps)
    assert sig.dtype == torch.float64 and sig.dim() == 1
    assert (sig[1:] < sig[:-1]).all() and sig[-1].item() == 0.0
    if not name.startswith("ddim-"):  # the official DDIM rules have their own counts (E39, E40)
        assert sig.numel() == steps + 1


@pytest.mark.parametrize("name", ["karras", "logsnr", "time-uniform", "time-quadratic", "kl-optimal"])
def test_sigma_space_grids_work_on_continuous_schedules(name):
    sig = ds.grid(name, CONTINUOUS, 12)
    assert sig[0].item() == pytest.approx(CONTINUOUS.sigma_max, rel=1e-12)
    assert sig[-2].item() == pytest.approx(CONTINUOUS.sigma_min, rel=1e-12)


def test_trailing_leading_linspace_follow_diffusers_timestep_spacing():
    # trailing (S=10): indices 999, 899, ..., 99; leading: 900, ..., 0; linspace: round(linspace(0, 999, 10))
    for name, idx in [
        ("trailing", range(999, 0, -100)),
        ("leading", range(900, -1, -100)),
        ("linspace", [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]),
    ]:
        sig = ds.grid(name, DISCRETE, 10)
        torch.testing.assert_close(sig[:-1], DISCRETE.sigmas[list(idx)], rtol=0, atol=0)


def test_official_ddim_uniform_and_quad_indices():
    # claim 15 (the table of docs/math.md 4.2)
    assert ddim_uniform_indices(1000, 10) == list(range(0, 1000, 100))
    assert ddim_quad_indices(1000, 10) == [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    assert [len(ddim_uniform_indices(1000, s)) for s in (15, 30, 300, 400)] == [16, 31, 334, 500]
    assert [len(set(ddim_quad_indices(1000, s))) for s in (50, 100, 200, 500, 1000)] == [49, 96, 187, 422, 688]
    assert ds.grid("ddim-quad", DISCRETE, 50, duplicates="drop").numel() == 49 + 1  # duplicates removed on request


def test_karras_grid_formula():
    sig = ds.grid("karras", ds.EDMSchedule(), 3, rho=7.0)
    lo, hi = 0.002 ** (1 / 7), 80 ** (1 / 7)
    expected = [80.0, ((hi + lo) / 2) ** 7, 0.002, 0.0]
    torch.testing.assert_close(sig, torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0)


def test_logsnr_grid_is_uniform_in_lambda():
    sig = ds.grid("logsnr", DISCRETE, 9)
    lam = -torch.log(sig[:-1])
    d = lam[1:] - lam[:-1]
    torch.testing.assert_close(d, d[:1].expand_as(d), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([1.0, 2.0, 0.0], "strictly decreasing"),
        ([[1.0, 0.0]], "1-D"),
        ([float("nan"), 0.0], "finite"),
        ([1.0, -0.5], "non-negative"),
        ([1.0], "at least 2 entries"),
    ],
)
def test_bad_user_grid_is_rejected_with_the_rule(bad, match):
    with pytest.raises(ValueError, match=match):
        ds.validate_sigmas(bad)


def test_unknown_grid_lists_known_grids():
    with pytest.raises(ds.UnknownNameError, match="unknown grid 'cosine'; known grids: .*karras"):
        ds.grid("cosine", DISCRETE, 5)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True])
def test_steps_must_be_a_positive_integer(steps):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        ds.grid("karras", DISCRETE, steps)


def test_discrete_grid_on_continuous_schedule_says_which_grids_apply():
    with pytest.raises(ValueError, match="'trailing' is defined over a DiscreteSchedule"):
        ds.grid("trailing", CONTINUOUS, 5)


def test_grid_with_too_many_steps_names_the_maximum():
    with pytest.raises(ValueError, match="at most 1000 steps"):
        ds.grid("trailing", DISCRETE, 1001)
