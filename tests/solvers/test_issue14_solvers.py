"""The solvers of issue 14 (dpm-2, dpm-2-ancestral, dpmpp-2s-ancestral, dpmpp-3m-sde, dpm-fast,
dpm-adaptive, er-sde, restart, sa-solver): the special cases that reduce to other solvers, and
their options' validation. Parity with the peers is in tests/test_kdiffusion_parity.py and
tests/test_sa_solver.py; the registry-wide suites cover the rest."""

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import GaussianMixture

MIX = GaussianMixture(torch.tensor([[1.0, -0.5, 0.0], [-0.8, 0.4, 0.3]]), [0.3, 0.5], shape=(3,))
X_T = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _sample(name, steps=12, grid="karras", seed=1, **opts):
    ode = MIX.ode(ds.DiscreteSchedule.linear())
    out = ds.sample(ode, X_T, name, steps=steps, grid=grid, generator=torch.Generator().manual_seed(seed), **opts)
    return out, ode.nfe


@pytest.mark.parametrize(
    "a, b",
    [
        (("dpm-2-ancestral", {"eta": 0.0}), ("dpm-2", {})),
        (("dpmpp-2s-ancestral", {"eta": 0.0}), ("dpmpp-2s", {})),
        (("dpmpp-3m-sde", {"eta": 0.0}), ("dpmpp-3m", {"solver_type": "taylor"})),
        (
            ("dpmpp-3m-sde", {"eta": 0.0, "weights": "reference"}),
            ("dpmpp-3m", {"solver_type": "taylor", "weights": "reference"}),
        ),
        (("dpm-fast", {"nfe": 3 * 11 - 1}), ("dpm-solver-3s", {"final_step": "denoise"})),
        (("er-sde", {"solver_order": 1, "noise_scale": "ode"}), ("ddim", {})),
        (("er-sde", {"solver_order": 1, "noise_scale": "sde"}), ("ddim", {"eta": 1.0})),
        (("restart", {"K": 0}), ("heun", {})),
    ],
)
def test_special_cases_equal_the_solver_they_reduce_to(a, b):
    x, _ = _sample(a[0], **a[1])
    y, _ = _sample(b[0], **b[1])
    if a[0] == "dpm-fast":  # all 3S steps but the last positive one, which is 2S: not equal, but close
        assert float((x - y).abs().max()) < 1e-2
        return
    torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_reference_weights_change_only_third_order_steps():
    exact, _ = _sample("dpmpp-3m")
    ref, _ = _sample("dpmpp-3m", weights="reference")
    assert 1e-8 < float((exact - ref).abs().max()) < 1e-1
    two_exact, _ = _sample("dpmpp-3m", steps=2)  # orders 1, 0: no third-order step
    two_ref, _ = _sample("dpmpp-3m", steps=2, weights="reference")
    assert torch.equal(two_exact, two_ref)


def test_restart_adds_k_resolves_of_restart_steps_heun_steps():
    _, plain = _sample("restart", K=0)
    _, once = _sample("restart", K=1, restart_steps=3)
    _, default = _sample("restart")
    assert default - plain == 2 * 6 * 2  # K = 2 restarts of 6 Heun steps
    _, twice = _sample("restart", K=2, restart_steps=4, intervals=[(0.1, 2.0), (0.5, 5.0)])
    assert once - plain == 2 * 3 and twice - plain == 2 * (2 * 4 * 2)


def test_dpm_adaptive_spends_fewer_calls_at_a_looser_tolerance():
    tight, n_tight = _sample("dpm-adaptive", steps=2, rtol=1e-6, atol=1e-6)
    loose, n_loose = _sample("dpm-adaptive", steps=2, rtol=1e-2, atol=1e-2)
    ref, _ = _sample("dpmpp-3m", steps=400, grid="logsnr")
    assert n_loose < n_tight
    assert float((tight - ref).abs().max()) < float((loose - ref).abs().max())


@pytest.mark.parametrize(
    "name, opts, option",
    [
        ("dpm-2-ancestral", {"eta": -1.0}, "eta"),
        ("dpm-2-ancestral", {"s_noise": float("nan")}, "s_noise"),
        ("dpmpp-2s-ancestral", {"eta": float("inf")}, "eta"),
        ("dpmpp-3m-sde", {"weights": "half"}, "weights"),
        ("dpmpp-3m", {"weights": "paper"}, "weights"),
        ("dpmpp-3m-sde", {"s_noise": -1}, "s_noise"),
        ("dpm-fast", {"nfe": 0}, "nfe"),
        ("dpm-adaptive", {"solver_order": 1}, "solver_order"),
        ("dpm-adaptive", {"rtol": 0}, "rtol"),
        ("dpm-adaptive", {"atol": -1e-3}, "atol"),
        ("er-sde", {"solver_order": 4}, "solver_order"),
        ("er-sde", {"noise_scale": "vp"}, "noise_scale"),
        ("restart", {"K": -1}, "K"),
        ("restart", {"intervals": [(2.0, 1.0)]}, "intervals"),
        ("restart", {"restart_steps": 0}, "restart_steps"),
        ("sa-solver", {"predictor_order": 5}, "predictor_order"),
        ("sa-solver", {"corrector_order": 0}, "corrector_order"),
        ("sa-solver", {"tau": -0.5}, "tau"),
    ],
)
def test_bad_options_are_errors_naming_the_option(name, opts, option):
    with pytest.raises(ValueError, match=option):
        ds.make_solver(name, **opts)


def test_dpm_fast_says_which_budgets_fit_the_grid():
    with pytest.raises(ValueError, match="allowed: 12, 13, 14"):
        _sample("dpm-fast", steps=6, nfe=20)


# -- convergence of the deterministic variants the default-option order law does not reach -------------
def _slopes(name, ns=(100, 200, 400), **opts):
    import math

    from tests.properties.test_solver_laws import (
        ORDER_X_T,
        _order_ode,
        _order_reference,
    )

    ode, exact = _order_ode(), _order_reference()
    errs = []
    for n in ns:
        sig = torch.linspace(40.0, 2.0, n + 1, dtype=torch.float64)
        errs.append(float((ds.sample(ode, ORDER_X_T.double(), name, sigmas=sig, **opts) - exact).abs().max()))
    return [math.log2(a / b) for a, b in zip(errs, errs[1:])]


@pytest.mark.parametrize(
    "name, opts, order",
    [
        ("er-sde", {"noise_scale": "ode"}, 3),  # measured 2.88, 2.94
        ("er-sde", {"noise_scale": "ode", "solver_order": 2}, 2),
        ("dpmpp-3m-sde", {"eta": 0.0}, 3),
        ("dpmpp-3m-sde", {"eta": 0.0, "weights": "reference"}, 2),  # the reference weighting: order 2 only
        ("dpm-2-ancestral", {"eta": 0.0}, 2),
        ("dpmpp-2s-ancestral", {"eta": 0.0}, 2),
    ],
)
def test_deterministic_variants_converge_with_their_order(name, opts, order):
    slopes = _slopes(name, **opts)
    assert abs(slopes[-1] - order) < 0.3, slopes


# -- stochastic solvers without a peer agree in distribution ------------------------------------------
@pytest.mark.parametrize(
    "name, opts",
    [
        ("er-sde", {}),
        ("restart", {}),
        ("sa-solver", {}),
        ("sa-solver", {"tau": 0.5}),
        ("dpmpp-3m-sde", {}),
        ("dpm-2-ancestral", {}),
        ("dpmpp-2s-ancestral", {}),
    ],
)
def test_stochastic_solvers_sample_the_gaussian(name, opts):
    # N(0.5, 0.5^2) in 1-D: 2000 samples over 30 karras steps have its mean and std (std error 0.008)
    g = ds.analytic.Gaussian(torch.tensor([0.5], dtype=torch.float64), 0.5)
    ode = g.ode(ds.DiscreteSchedule.linear())
    x_T = torch.randn(2000, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = ds.sample(ode, x_T, name, steps=30, grid="karras", generator=torch.Generator().manual_seed(2), **opts)
    assert abs(float(out.mean()) - 0.5) < 0.03 and abs(float(out.std()) - 0.5) < 0.03, (out.mean(), out.std())
