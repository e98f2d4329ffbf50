"""The per-step exponential multistep family ``usf`` (docs/math.md X5-X7).

* One choice for every step is a known solver (X7): the registered solver and ``usf`` with the options of
  :func:`usf_options` give the same samples within 1e-9 relative in float64 (measured: 0 to 4e-14, the same
  float64 weights summed in another order);
* a per-step mix converges (each step is a consistent integrator of X1/X2);
* options are checked against the grid: lengths, orders above the history, a corrector where it would need
  one more model call, bh1 with noise prediction.
"""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import GaussianMixture, get_problem, reference_solution
from diffsolve.solvers.usf import usf_options

# the convergence problem of tests/properties/test_solver_laws.py: a 2-D two-component mixture, VP, t = sigma,
# uniform in sigma from 40 to 2 (no denoising step in the error)
MIXTURE = GaussianMixture(torch.tensor([[1.0, -0.5], [-0.8, 0.6]]), [0.4, 0.6], [0.4, 0.6])
X_T = torch.tensor([[-1.5, 0.4], [0.7, -0.9], [0.1, 0.2]])

SAME = [
    ("ddim", {}),
    ("dpmpp-2m", {}),
    ("dpmpp-2m", {"solver_type": "taylor"}),
    ("dpmpp-3m", {}),
    ("dpmpp-3m", {"final_step": "denoise"}),
    ("dpm-solver-2m", {}),
    ("dpm-solver-3m", {"final_step": "lower-order"}),
    ("unipc", {}),
    ("unipc", {"solver_order": 3, "variant": "bh1"}),
    ("unipc", {"solver_order": 1}),
    ("unipc", {"corrector": False, "final_step": "denoise"}),
]


@pytest.fixture(scope="module")
def gmm():
    ode = get_problem("gmm64").ode(ds.DiscreteSchedule.linear())
    x_T = torch.randn(4, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return ode, x_T


@pytest.mark.parametrize("steps", [3, 6, 20])
@pytest.mark.parametrize("name,options", SAME, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in SAME])
def test_one_choice_for_every_step_equals_the_registered_solver(gmm, name, options, steps):
    ode, x_T = gmm
    sig = ds.grid("logsnr", ode.schedule, steps)
    ref = ds.sample(ode, x_T, name, sigmas=sig, **options)
    opts = usf_options(name, options, [float(s) for s in sig.tolist()])
    out = ds.sample(ode, x_T, "usf", sigmas=sig, **opts)
    # the same float64 weights, summed in another order: measured <= 4e-14 relative
    assert float((out - ref).abs().max()) <= 1e-9 * float(ref.abs().max())


def test_solvers_outside_the_family_have_no_usf_options():
    sig = [10.0, 1.0, 0.1, 0.0]
    assert usf_options("heun", {}, sig) is None
    assert usf_options("dpmpp-3m", {"weights": "reference"}, sig) is None
    assert usf_options("ddim", {"eta": 1.0}, sig) is None


def _mix(n):
    """Per-step choices that change at every step: orders 2/3, data/noise, three estimates, correctors."""
    return {
        "step_orders": [min(2 + i % 2, i + 1) for i in range(n)],
        "prediction": [("data", "noise")[i % 2] for i in range(n)],
        "derivative": [("taylor", "midpoint", "taylor")[i % 3] for i in range(n)],
        "corrector": [i % 2 == 0 and i < n - 1 for i in range(n)],
    }


def test_a_per_step_mix_of_choices_converges_with_at_least_second_order():
    # the problem of test_solver_laws (uniform sigma from 40 to 2, no denoising step); every step has
    # order >= 2 after the first, so the mix is at least second order (measured 3.0-3.4: correctors)
    ode = MIXTURE.ode(ds.SigmaSchedule(0.0, 1e3, space="vp"), time="sigma")
    exact = reference_solution(ode, X_T, 40.0, 2.0, rtol=1e-13, atol=1e-13, method="dopri5")
    errs = []
    for n in (50, 100, 200):
        sig = torch.linspace(40.0, 2.0, n + 1, dtype=torch.float64)
        errs.append(float((ds.sample(ode, X_T, "usf", sigmas=sig, **_mix(n)) - exact).abs().max()))
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert min(orders) >= 1.75, (errs, orders)


def test_a_per_step_choice_changes_the_sample_only_where_it_applies(gmm):
    ode, x_T = gmm
    sig = ds.grid("logsnr", ode.schedule, 5)
    base = usf_options("dpmpp-3m", {}, [float(s) for s in sig.tolist()])
    ref = ds.sample(ode, x_T, "usf", sigmas=sig, **base)
    # the denoising step's entries are not read (E27)
    last = {**base, "prediction": base["prediction"][:-1] + ["noise"], "derivative": base["derivative"][:-1] + ["bh1"]}
    assert torch.equal(ds.sample(ode, x_T, "usf", sigmas=sig, **last), ref)
    # the derivative estimate of a three-node step is fixed by X3 (step 2 has order 3 here)
    assert base["step_orders"][2] == 3
    d = {**base, "derivative": base["derivative"][:2] + ["taylor"] + base["derivative"][3:]}
    assert torch.equal(ds.sample(ode, x_T, "usf", sigmas=sig, **d), ref)
    # ... and of a two-node step it is not (step 1 has order 2)
    d = {**base, "derivative": base["derivative"][:1] + ["taylor"] + base["derivative"][2:]}
    assert not torch.equal(ds.sample(ode, x_T, "usf", sigmas=sig, **d), ref)


@pytest.mark.parametrize(
    "options,match",
    [
        ({"step_orders": [1, 2]}, "step_orders has 2 entries for a grid of 4 steps"),
        ({"step_orders": [1, 3, 3, 1]}, r"step_orders\[1\] = 3"),
        ({"step_orders": [1, 2, 3, 4]}, "usf takes orders 1-3"),
        ({"prediction": ["data", "noise"]}, "prediction has 2 entries"),
        ({"prediction": ["data", "eps", "data", "data"]}, r"prediction\[1\]='eps' is not allowed"),
        ({"derivative": "second"}, "derivative='second' is not allowed"),
        ({"prediction": "noise", "derivative": "bh1"}, "bh1"),
        ({"prediction": ["data", "noise", "data", "data"], "derivative": "bh1"}, "step 1: derivative 'bh1'"),
        ({"corrector": [False, False, True, False]}, r"corrector\[2\] = True"),
        ({"corrector": 1}, "corrector must be one of"),
    ],
)
def test_options_are_checked_against_the_grid(gmm, options, match):
    ode, x_T = gmm
    with pytest.raises(ValueError, match=match):
        ds.sample(ode, x_T, "usf", sigmas=ds.grid("logsnr", ode.schedule, 4), **options)


def test_a_corrector_refuses_renoising_predictions_and_the_plain_steps_accept_them():
    assert not ds.make_solver("usf", corrector=True).renoise_ok
    assert not ds.make_solver("usf", corrector=[False, True, False]).renoise_ok
    assert ds.make_solver("usf", corrector=[False, False]).renoise_ok


def test_every_per_step_choice_makes_one_model_call_per_step_as_counted(gmm):
    # the NFE contract for recipes the per-step search writes: count_calls' dry run equals the real run, and both
    # are one call per step (one fewer with AFS), whatever the choices
    import random

    from diffsolve.tuning import _step_choices

    ode, x_T = gmm
    sig = [float(s) for s in ds.grid("logsnr", ode.schedule, 6).tolist()]
    n, rng = len(sig) - 1, random.Random(0)
    for _ in range(12):
        steps = [rng.choice(_step_choices(i, n)) for i in range(n - 1)] + [(1, "data", False, None)]
        opts = {
            "step_orders": [c[0] for c in steps],
            "prediction": [c[1] for c in steps],
            "corrector": [c[2] for c in steps],
            "derivative": [c[3] or "taylor" for c in steps],
        }
        for afs in (False, True):
            calls = ds.count_calls("usf", sig, afs=afs, schedule=ode.schedule, **opts)
            r = ds.Recipe("usf", opts, sig, afs, calls, ds.tuning.schedule_fingerprint(ode.schedule, ode.prediction))
            n0 = ode.nfe
            r.sample(ode, x_T[:2])
            assert ode.nfe - n0 == calls == n - afs
