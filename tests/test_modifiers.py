"""Modifiers of every solver (diffsolve.modifiers, docs/modifiers.md), float64.

* LML follows its rule: a run of DDIM on the modified ODE equals an independent loop that applies
  eps - ebar <ebar, eps> / (lam + ||ebar||^2), rescaled to ||eps||, per sample, to the plain ODE's eps;
* a neutral setting (no modifier, lml = inf) is the plain ODE bit for bit, with several solvers;
* the running mean is per run: repeated and concurrent runs of one modified ODE give the same bits.
"""

import math
import threading

import numpy as np
import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import get_problem


@pytest.fixture(scope="module")
def setup():
    ode = get_problem("gmm64").ode(ds.DiscreteSchedule.linear())
    x_T = torch.randn(3, 64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    return ode, x_T


def test_lml_follows_its_rule_under_ddim(setup):
    ode, x_T = setup
    lam, steps = 0.5, 6
    sig = ds.grid("logsnr", ode.schedule, steps).tolist()
    got = ds.sample(ds.modify(ode, lml=lam), x_T, "ddim", sigmas=sig)
    # independent loop: DDIM (E30) on the plain ODE's eps, the rule applied per sample in numpy
    x = ode.to_xbar(x_T, sig[0])
    past = []
    for s, s_next in zip(sig[:-1], sig[1:]):
        d, e = ode.predict(x, s)
        e_np = e.numpy().copy()
        if past:
            ebar = np.mean(past, axis=0)
            for k in range(e_np.shape[0]):
                v = e_np[k] - ebar[k] * np.dot(ebar[k], e_np[k]) / (lam + np.dot(ebar[k], ebar[k]))
                e_np[k] = v * np.linalg.norm(e_np[k]) / np.linalg.norm(v)
        past.append(e.numpy())
        e_mod = torch.from_numpy(e_np)
        x = x - s * e_mod if s_next == 0 else x + (s_next - s) * e_mod  # E27 with D = xbar - sigma eps (E9)
    # float64 in two orders of evaluation, on states of size sigma_max |x_T| ~ 500 (ulp 1e-13): 1e-10
    assert float((got - ode.from_xbar(x, 0.0)).abs().max()) <= 1e-10


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "unipc", "heun"])
def test_neutral_modifiers_equal_the_plain_ode_bit_for_bit(setup, solver):
    ode, x_T = setup
    want = ds.sample(ode, x_T, solver, steps=5)
    for modified in (ds.modify(ode), ds.modify(ode, lml=math.inf)):
        assert torch.equal(ds.sample(modified, x_T, solver, steps=5), want)


def test_lml_state_lives_in_the_run_not_on_the_shared_ode(setup):
    ode, x_T = setup
    modified = ds.modify(ode, lml=0.1)
    first = ds.sample(modified, x_T, "dpmpp-2m", steps=6)
    assert not torch.equal(first, ds.sample(ode, x_T, "dpmpp-2m", steps=6))  # the rule changed something
    assert torch.equal(ds.sample(modified, x_T, "dpmpp-2m", steps=6), first)
    out = [None] * 4

    def work(k):
        out[k] = ds.sample(modified, x_T, "dpmpp-2m", steps=6)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(o, first) for o in out)


def test_bad_modifier_values_name_the_argument(setup):
    ode, _ = setup
    for bad in (0, -1.0, float("nan"), "big", True):
        with pytest.raises(ValueError, match="lml"):
            ds.modify(ode, lml=bad)
    with pytest.raises(TypeError, match="DiffusionODE"):
        ds.modify(lambda x, t: x, lml=1.0)


# -- time shift (TS-DDIM / TS-DPM, docs/math.md 3.8) --------------------------------------------------------


def _betas_sigmas():
    """The linear schedule's sigmas (E1, E4), computed here in numpy."""
    betas = np.linspace(1e-4, 0.02, 1000)
    abar = np.cumprod(1.0 - betas)
    return np.sqrt((1.0 - abar) / abar)


def _time_shift_reference(raw, window, cutoff, data_var):
    """The rule (S1-S3) written out in numpy around the raw model: model(x, t) with t the grid's index."""
    log_sig = np.log(_betas_sigmas())
    n = log_sig.size

    def sigma_at(idx):  # log-linear between the levels, as the schedule is defined (docs/math.md 1.2)
        lo = np.minimum(np.floor(idx).astype(int), n - 2)
        w = idx - lo
        return np.exp((1 - w) * log_sig[lo] + w * log_sig[lo + 1])

    def model(x, t):
        t0 = float(t[0])
        assert bool((t == t[0]).all())  # the solver asks one level for the whole batch
        half = window // 2
        if half == 0 or t0 <= cutoff:
            return raw(x, t)
        cand = t0 + np.arange(-half, half + 1, dtype=np.float64)
        cand = cand[(cand >= 0) & (cand <= n - 1)]
        s2 = sigma_at(cand) ** 2
        expected = (s2 + data_var) / (1 + s2)
        tau = []
        for row in x.numpy().reshape(x.shape[0], -1):
            v = np.var(row, ddof=1)
            tau.append(cand[int(np.argmin((v - expected) ** 2))])
        return raw(x, torch.tensor(tau, dtype=torch.float64))

    return model


@pytest.fixture(scope="module")
def ts_setup():
    prob = get_problem("gmm64")
    sched = ds.DiscreteSchedule.linear()
    x_T = torch.randn(6, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)  # model space
    return prob, sched, x_T


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "heun"])
# 0.07: about gmm64's per-sample variance; cutoff 166: the grid's level t = 166 itself is not shifted (t > cutoff)
@pytest.mark.parametrize(("data_var", "cutoff"), [(0.0, 100), (0.07, 166)])
def test_time_shift_follows_its_rule_with_three_solver_families(ts_setup, solver, data_var, cutoff):
    prob, sched, x_T = ts_setup
    # a wide window: the 64-entry variance picks taus inside the window at the low levels
    window = 200
    ode = prob.ode(sched)
    ref = ds.wrap(_time_shift_reference(prob.model(sched), window, cutoff, data_var), sched, time_dtype=torch.float64)
    shift = ds.TimeShift(window=window, cutoff=cutoff, data_var=data_var)
    got = ds.sample(ds.modify(ode, time_shift=shift), x_T, solver, steps=6)
    want = ds.sample(ref, x_T, solver, steps=6)
    # the same float64 model calls; the updates differ in rounding only (xbar up to sigma_max ~ 157 early on): 1e-10
    assert float((got - want).abs().max()) <= 1e-10
    # and the rule did something: at least 1e-3 away from the plain run
    assert float((got - ds.sample(ode, x_T, solver, steps=6)).abs().max()) > 1e-3


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "heun"])
def test_time_shift_is_the_plain_ode_bit_for_bit_without_a_window_or_above_the_grid(ts_setup, solver):
    prob, sched, x_T = ts_setup
    ode = prob.ode(sched)
    want = ds.sample(ode, x_T, solver, steps=5)
    for shift in (
        ds.TimeShift(window=0, cutoff=0),
        ds.TimeShift(window=1, cutoff=0),  # window // 2 = 0: the grid's step alone
        {"window": 40, "cutoff": 999},  # no index above the cutoff
    ):
        assert torch.equal(ds.sample(ds.modify(ode, time_shift=shift), x_T, solver, steps=5), want)


def test_time_shift_composes_with_lml_shift_first(ts_setup):
    prob, sched, x_T = ts_setup
    ode = prob.ode(sched)
    ref = ds.wrap(_time_shift_reference(prob.model(sched), 200, 100, 0.0), sched, time_dtype=torch.float64)
    both = ds.modify(ode, lml=0.5, time_shift=ds.TimeShift(window=200, cutoff=100))
    got = ds.sample(both, x_T, "dpmpp-2m", steps=6)
    # LML corrects (and averages) the time-shifted eps: LML on the reference's eps
    want = ds.sample(ds.modify(ref, lml=0.5), x_T, "dpmpp-2m", steps=6)
    assert float((got - want).abs().max()) <= 1e-10
    assert float((got - ds.sample(ds.modify(ode, lml=0.5), x_T, "dpmpp-2m", steps=6)).abs().max()) > 1e-3


@pytest.mark.parametrize("prediction", ["v", "x0"])
def test_time_shift_converts_other_predictions_at_the_shifted_level(ts_setup, prediction):
    prob, sched, x_T = ts_setup
    shift = ds.TimeShift(window=200, cutoff=100)
    want = ds.sample(ds.modify(prob.ode(sched), time_shift=shift), x_T, "ddim", steps=6)
    got = ds.sample(ds.modify(prob.ode(sched, prediction=prediction), time_shift=shift), x_T, "ddim", steps=6)
    # the exact model in each convention, converted at sigma_tau: the same eps up to rounding (float64)
    assert float((got - want).abs().max()) <= 1e-9


def test_time_shift_refuses_what_cannot_take_per_sample_times(ts_setup):
    prob, sched, _ = ts_setup
    with pytest.raises(ValueError, match="DiscreteSchedule"):
        ds.modify(prob.ode(ds.VPLinearSchedule()), time_shift=ds.TimeShift(window=10, cutoff=0))
    guided = ds.wrap(
        lambda x, t, c=None: x,
        sched,
        guidance=ds.make_guidance("cfg++", scale=0.5),
        cond={"c": torch.ones(1)},
        uncond={"c": torch.zeros(1)},
    )
    with pytest.raises(ValueError, match="cfg\\+\\+"):
        ds.modify(guided, time_shift=ds.TimeShift(window=10, cutoff=0))
    ode = prob.ode(sched)
    for bad, name in (
        (dict(window=-1, cutoff=0), "window"),
        (dict(window=2.5, cutoff=0), "window"),
        (dict(window=4, cutoff=-1), "cutoff"),
        (dict(window=4, cutoff=0, data_var=math.nan), "data_var"),
    ):
        with pytest.raises(ValueError, match=name):
            ds.modify(ode, time_shift=bad)
    with pytest.raises(ValueError, match="window, cutoff"):
        ds.modify(ode, time_shift={"window": 4, "cutof": 0})
    with pytest.raises(ValueError, match="at least 2 entries"):
        ds.sample(
            ds.modify(ode, time_shift={"window": 40, "cutoff": 0}),
            torch.zeros(3, 1, dtype=torch.float64),
            "ddim",
            steps=3,
        )
    with pytest.raises(ValueError, match="do not nest"):
        ds.modify(ds.modify(ode, lml=1.0), time_shift=ds.TimeShift(window=4, cutoff=0))


def test_model_times_are_model_time_per_sample():
    sigmas = torch.tensor([0.05, 0.7, 3.0, 40.0], dtype=torch.float64)
    cases = [(ds.DiscreteSchedule.linear(), None), (ds.VPLinearSchedule(), None)]
    cases += [(ds.EDMSchedule(), time) for time in ("sigma", "edm", "log-sigma")]
    cases += [(ds.DiscreteSchedule.linear(), lambda s: 2.0 * s + 1.0)]
    for sched, time in cases:
        ode = ds.wrap(lambda x, t: x, sched, time=time)
        want = [ode.model_time(float(s)) for s in sigmas]
        # float64 closed forms and the schedule's vectorized map: equal to rounding
        assert np.allclose(ode.model_times(sigmas).numpy(), want, rtol=1e-12, atol=0)


def test_time_shift_with_a_float_cfg_scale_shifts_both_halves_alike(ts_setup):
    prob, sched, x_T = ts_setup
    raw = prob.model(sched)

    def model(x, t, c):  # a conditional stand-in: the exact eps plus a term in the condition
        return raw(x, t) + 0.05 * c

    def ref_model(x, t, c):
        return _time_shift_reference(raw, 200, 100, 0.0)(x, t) + 0.05 * c

    kw = dict(guidance=3.0, cond={"c": torch.ones(6, 64)}, uncond={"c": torch.zeros(6, 64)}, time_dtype=torch.float64)
    shift = ds.TimeShift(window=200, cutoff=100)
    got = ds.sample(ds.modify(ds.wrap(model, sched, **kw), time_shift=shift), x_T, "dpmpp-2m", steps=6)
    want = ds.sample(ds.wrap(ref_model, sched, **kw), x_T, "dpmpp-2m", steps=6)
    # one batched call of 2 x 6 rows per evaluation, the same tau for a row's two halves: 1e-10 (float64)
    assert float((got - want).abs().max()) <= 1e-10
    assert float((got - ds.sample(ds.wrap(model, sched, **kw), x_T, "dpmpp-2m", steps=6)).abs().max()) > 1e-3


@pytest.mark.parametrize("solver", ["ddim", "dpmpp-2m", "heun"])
def test_time_shift_costs_no_model_call(ts_setup, solver):
    prob, sched, x_T = ts_setup
    ode = prob.ode(sched)
    calls = []
    modified = ds.modify(ode, time_shift=ds.TimeShift(window=200, cutoff=100))
    for o in (ode, modified):
        before = o.nfe
        ds.sample(o, x_T, solver, steps=6)
        calls.append(o.nfe - before)
    assert calls[0] == calls[1] > 0


@pytest.mark.parametrize("modifier", [{"lml": 0.5}, {"time_shift": ds.TimeShift(window=20, cutoff=0)}])
def test_a_recipe_refuses_a_modified_ode_rather_than_dropping_the_modifier(setup, modifier):
    # the recipe's run copied the ODE's fields into a plain-ODE wrapper and ran without lml / time_shift,
    # bit for bit the unmodified result
    from diffsolve.recipe_ode import RecipeError, schedule_fingerprint

    ode, x_T = setup
    sig = ds.grid("logsnr", ode.schedule, 4).tolist()
    recipe = ds.Recipe("ddim", {}, sig, False, 4, schedule_fingerprint(ode.schedule, ode.prediction))
    assert torch.equal(ds.sample(ode, x_T, recipe=recipe), ds.sample(ode, x_T, "ddim", sigmas=sig))
    with pytest.raises(RecipeError, match="this one is a ModifiedODE.*would silently drop"):
        ds.sample(ds.modify(ode, **modifier), x_T, recipe=recipe)


def test_lml_outside_a_run_is_refused_not_skipped(setup):
    # ddrm and red-diff evaluate the model outside a run, where lml had no running mean and silently did nothing
    from diffsolve.inverse import Inpaint

    ode, x_T = setup
    modified = ds.modify(ode, lml=0.5)
    with pytest.raises(ValueError, match="lml corrects eps against the run's running mean"):
        modified.predict(x_T, 3.0)
    torch.testing.assert_close(ds.modify(ode, lml=math.inf).predict(x_T, 3.0)[1], ode.predict(x_T, 3.0)[1])
    image_ode = ds.wrap(lambda x, t: 0.5 * x, ds.DiscreteSchedule.linear())
    op = Inpaint.box((1, 4, 4), 1, 1, 2, 2)
    y = op(torch.ones(2, 1, 4, 4))
    for method in ("ddrm", "red-diff"):
        with pytest.raises(ValueError, match="call it inside a run"):
            ds.restore(ds.modify(image_ode, lml=0.5), y, op, method, steps=2)
