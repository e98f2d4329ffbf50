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
