"""Low-NFE schedules that need no tuning: kl-optimal (closed form) and the published tables."""

import math

import numpy as np
import pytest

import diffsolve as ds

SD = ds.DiscreteSchedule.scaled_linear()
SVD = ds.EDMSchedule(0.002, 700.0)

# Align Your Steps (Sabour et al. 2024), Table 3 / diffusers AysSchedules; GITS SD1.5 (coefficient 1.20)
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152]
AYS_SDXL = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113]
AYS_SVD = [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034]
GITS = [
    14.61464119,
    5.85520077,
    2.84484982,
    1.67050016,
    1.08895338,
    0.74807048,
    0.50118381,
    0.32104823,
    0.19894916,
    0.09824532,
]


@pytest.mark.parametrize("c", [1.0, 0.5])
def test_kl_optimal_equals_the_closed_form_of_ays_theorem_3_1(c):
    sched = ds.EDMSchedule()
    n = 7
    sig = ds.grid("kl-optimal", sched, n, c=c)
    lo, hi = sched.sigma_min, sched.sigma_max
    want = [c * math.tan((1 - i / (n - 1)) * math.atan(hi / c) + i / (n - 1) * math.atan(lo / c)) for i in range(n)]
    np.testing.assert_allclose(sig[:-1].numpy(), want, rtol=1e-13)
    assert sig[-1].item() == 0.0 and sig[0].item() == hi and sig[-2].item() == lo


@pytest.mark.parametrize(
    "name,sched,table",
    [("ays-sd15", SD, AYS_SD15), ("ays-sdxl", SD, AYS_SDXL), ("ays-svd", SVD, AYS_SVD), ("gits-sd15", SD, GITS)],
)
def test_published_schedules_equal_their_tables_at_ten_steps(name, sched, table):
    assert ds.grid(name, sched, 10).tolist() == table + [0.0]


def test_ays_other_step_counts_interpolate_log_linearly():
    full = AYS_SD15 + [0.029]
    # 5 steps: 6 uniform positions over the 11 table points hit every other one
    assert ds.grid("ays-sd15", SD, 5).tolist() == pytest.approx(full[::2][:-1] + [0.0], rel=1e-12)
    # 20 steps: the midpoints are geometric means of neighbours
    s = ds.grid("ays-sd15", SD, 20).tolist()
    assert s[1] == pytest.approx(math.sqrt(full[0] * full[1]), rel=1e-12)
    assert s[0] == pytest.approx(full[0], rel=1e-14) and s[2] == pytest.approx(full[1], rel=1e-12) and s[-1] == 0.0


def test_published_tables_refuse_another_models_schedule():
    with pytest.raises(ValueError, match="published table of one model family.*sigma_max is 157.4"):
        ds.grid("ays-sd15", ds.DiscreteSchedule.linear(), 10)
    with pytest.raises(ValueError, match="10 steps only"):
        ds.grid("gits-sd15", SD, 8)
    with pytest.raises(ValueError, match="c .* must be a finite number > 0"):
        ds.grid("kl-optimal", SD, 8, c=0.0)
