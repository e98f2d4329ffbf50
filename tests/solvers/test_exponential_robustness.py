"""Robustness of the exponential-integrator family: finite numbers in float32 on the default grids,
the step into sigma = 0, inversion round trips, option checks, noise discipline, shared numerics."""

import importlib
import math
from fractions import Fraction

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import get_problem

_exp = importlib.import_module("diffsolve.solvers._exponential")

FAMILY = [
    "dpm-solver-1",
    "dpm-solver-2s",
    "dpm-solver-3s",
    "dpmpp-1",
    "dpmpp-2s",
    "dpmpp-3s",
    "dpmpp-2m",
    "dpmpp-3m",
    "dpm-solver-2m",
    "dpm-solver-3m",
    "unipc",
    "deis",
    "dpmpp-2m-sde",
    "dpmpp-sde",
]
VARIANTS = [(name, {}) for name in FAMILY] + [
    ("unipc", {"variant": "bh1"}),
    ("unipc", {"solver_order": 3, "variant": "bh1"}),
    ("unipc", {"solver_order": 1, "variant": "bh1"}),
    ("deis", {"variable": "log-sigma"}),
    ("dpmpp-3m", {"final_step": "denoise"}),
    ("dpmpp-3s", {"final_step": "auto"}),
]
DETERMINISTIC = [(n, o) for n, o in VARIANTS if not ds.make_solver(n, **o).stochastic]
DETERMINISTIC += [("dpmpp-2m-sde", {"eta": 0.0}), ("dpmpp-sde", {"eta": 0.0})]
SCHEDULES = {  # each with its own default grid (all end at sigma = 0)
    "ddpm-linear/trailing": ds.DiscreteSchedule.linear(),
    "edm/karras": ds.EDMSchedule(),
    "vp-linear/logsnr": ds.VPLinearSchedule(),
    "flow/time-uniform": ds.FlowSchedule(),
}


CONTRACT = {  # name: (order, calls_per_step, stochastic)
    "dpm-solver-1": (1, 1, False),
    "dpm-solver-2s": (2, 2, False),
    "dpm-solver-3s": (3, 3, False),
    "dpmpp-1": (1, 1, False),
    "dpmpp-2s": (2, 2, False),
    "dpmpp-3s": (3, 3, False),
    "dpmpp-2m": (2, 1, False),
    "dpmpp-3m": (3, 1, False),
    "dpm-solver-2m": (2, 1, False),
    "dpm-solver-3m": (3, 1, False),
    "unipc": (3, 1, False),
    "deis": (3, 1, False),
    "dpmpp-2m-sde": (2, 1, True),
    "dpmpp-sde": (2, 2, True),
}


def test_the_family_is_registered_with_its_contract():
    assert set(CONTRACT) == set(FAMILY) and set(FAMILY) <= set(ds.list_solvers())
    for name, (order, calls, stochastic) in CONTRACT.items():
        cls = type(ds.make_solver(name))
        assert (cls.name, cls.order, cls.calls_per_step, cls.stochastic) == (name, order, calls, stochastic)
        assert cls.invertible is not stochastic


MEANS, STD = torch.tensor([[1.0, 0.5], [-0.8, -0.3]], dtype=torch.float64), 0.05


def light_ode(schedule):
    """A two-component Gaussian mixture with its exact eps (docs/math.md E38 per component), cheaper
    to call than diffsolve.analytic' general mixture: the model is fed t = sigma."""

    def model(x, t):
        sigma = float(t[0])
        s = torch.tensor(sigma, dtype=torch.float64)
        xbar = x.double() / schedule.scale(sigma)
        diff = xbar[:, None, :] - MEANS
        var = STD**2 + s**2
        r = torch.softmax(-(diff**2).sum(-1) / (2 * var), dim=-1)
        return (s * (r[..., None] * diff).sum(1) / var).to(x.dtype)

    return ds.wrap(model, schedule, time=lambda sigma: sigma, time_dtype=torch.float64)


@pytest.mark.parametrize("name, options", VARIANTS, ids=[f"{n}{o}" for n, o in VARIANTS])
def test_float32_stays_finite_for_1_to_50_steps_on_the_default_grids(name, options):
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)).float()
    for label, schedule in SCHEDULES.items():
        ode = light_ode(schedule)
        all_steps = range(1, 51) if label.startswith("ddpm") else (1, 2, 3, 5, 14, 15, 50)
        for steps in all_steps:
            seen = []
            out = ds.sample(
                ode,
                x_T,
                name,
                steps=steps,
                generator=torch.Generator().manual_seed(1),
                callback=lambda info: seen.append(info),
                **options,
            )  # check_finite raises on NaN/inf
            assert out.dtype == torch.float32 and torch.isfinite(out).all(), (label, steps)
            # the step into sigma = 0 is the denoising step E27: the output is the last denoised estimate
            assert seen[-1]["sigma_next"] == 0 and torch.equal(seen[-1]["xbar"], seen[-1]["denoised"])


def test_unipc_bh1_takes_the_step_into_zero_without_dividing_by_h():
    ode = get_problem("gmm64").ode(ds.DiscreteSchedule.linear())
    x_T = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    for fs in _exp.FINAL_STEPS:
        out = ds.sample(ode, x_T, "unipc", steps=8, grid="logsnr", variant="bh1", solver_order=3, final_step=fs)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("name, options", DETERMINISTIC, ids=[f"{n}{o}" for n, o in DETERMINISTIC])
def test_invert_round_trip_converges(name, options):
    # invert runs the solver on an increasing grid (h < 0 in every coefficient) after the driver's
    # first Euler step from sigma = 0; decoding on the same grid must return the data as steps grow
    problem = get_problem("gmm2d")
    ode = problem.ode(ds.SigmaSchedule(0.01, 80.0, space="vp"))
    x0 = problem.sample(8, generator=torch.Generator().manual_seed(0))
    errors = []
    for steps in (10, 20, 40):
        z = ds.invert(ode, x0, name, steps=steps, grid="logsnr", **options)
        back = ds.sample(ode, z, name, steps=steps, grid="logsnr", **options)
        errors.append(float((back - x0).abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 4, errors


@pytest.mark.parametrize("name", ["dpmpp-2m-sde", "dpmpp-sde"])
def test_stochastic_solvers_are_refused_by_invert_and_use_only_the_drivers_noise(name):
    problem = get_problem("gmm2d")
    ode = problem.ode(ds.DiscreteSchedule.linear())
    assert type(ds.make_solver(name)).stochastic
    with pytest.raises(ValueError, match="stochastic"):
        ds.invert(ode, problem.sample(2), name, steps=5)
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    gens = [torch.Generator().manual_seed(10 + k) for k in range(3)]
    batch = ds.sample(ode, x_T, name, steps=8, generator=gens)
    alone = ds.sample(ode, x_T[1:2], name, steps=8, generator=[torch.Generator().manual_seed(11)])
    assert torch.equal(batch[1:2], alone)  # sample 1 depends on its own generator only
    torch.manual_seed(0)
    again = ds.sample(ode, x_T, name, steps=8, generator=[torch.Generator().manual_seed(10 + k) for k in range(3)])
    assert torch.equal(batch, again)  # the global RNG is never touched


BAD_OPTIONS = [
    ("dpmpp-3m", {"final_step": "zero"}, "final_step"),
    ("dpm-solver-3s", {"final_step": None}, "final_step"),
    ("dpmpp-2m", {"solver_type": "heun"}, "solver_type"),
    ("unipc", {"solver_order": 4}, "solver_order"),
    ("unipc", {"solver_order": True}, "solver_order"),
    ("unipc", {"variant": "bh3"}, "variant"),
    ("unipc", {"corrector": "yes"}, "corrector"),
    ("deis", {"variable": "time"}, "variable"),
    ("deis", {"solver_order": 0}, "solver_order"),
    ("dpmpp-2m-sde", {"eta": -1.0}, "eta"),
    ("dpmpp-sde", {"eta": float("nan")}, "eta"),
    ("dpmpp-2m-sde", {"solver_type": "euler"}, "solver_type"),
]


@pytest.mark.parametrize("name, options, option", BAD_OPTIONS, ids=[f"{n}{o}" for n, o, _ in BAD_OPTIONS])
def test_bad_options_raise_a_value_error_naming_the_option_and_the_allowed_values(name, options, option):
    with pytest.raises(ValueError, match=option) as info:
        ds.make_solver(name, **options)
    assert "allowed" in str(info.value) or "must be" in str(info.value)


def test_unknown_option_is_refused():
    with pytest.raises(ValueError, match="lower_order_final"):
        ds.make_solver("dpmpp-2m", lower_order_final=True)


def test_unipc_declares_order_p_plus_one_with_the_corrector():
    assert ds.make_solver("unipc").order == 3 and type(ds.make_solver("unipc")).order == 3
    assert (
        ds.make_solver("unipc", solver_order=3).order == 4
        and ds.make_solver("unipc", solver_order=3, corrector=False).order == 3
    )


def test_step_orders_build_up_the_history_and_lower_the_order_at_the_end():
    grid = [80.0, 20.0, 5.0, 1.0, 0.3, 0.05, 0.0]  # 6 steps, the last into sigma = 0 (order 0: denoise)
    assert _exp.step_orders(grid, 3, "auto", True) == [1, 2, 3, 3, 2, 0]
    assert _exp.step_orders(grid, 3, "lower-order", True) == [1, 2, 3, 3, 2, 0]
    assert _exp.step_orders(grid, 3, "denoise", True) == [1, 2, 3, 3, 3, 0]
    assert _exp.step_orders(grid, 3, "lower-order", False) == [3, 3, 3, 3, 2, 0]
    long = [100.0 * 0.7**k for k in range(20)] + [0.0]  # 20 steps: "auto" keeps the full order
    assert _exp.step_orders(long, 3, "auto", True)[-3:] == [3, 3, 0]
    assert _exp.step_orders(grid[:-1], 2, "lower-order", True) == [1, 2, 2, 2, 1]  # no zero: last step order 1


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_phi_is_accurate_across_the_series_switch_and_for_large_arguments(k):
    # reference: phi_k(z) = sum_n z^n / (n + k)!, summed in exact rational arithmetic
    for z in (1e-12, -1e-8, 0.3, -0.3, 0.999, -0.999, 1.0, -1.0, 1.001, 2.5, -2.5, 12.0, -12.0, -40.0):
        exact = float(sum(Fraction(z) ** n / math.factorial(n + k) for n in range(int(4 * abs(z)) + 40)))
        assert _exp.phi(k, z) == pytest.approx(exact, rel=1e-14, abs=0)


def test_poly_weights_integrate_polynomials_exactly():
    nodes, h = [0.0, -0.7, -1.9], 0.8
    for form, sigma_s in (("data", 0.0), ("noise", 0.4)):
        mom = _exp.moments(h, 3, form, sigma_s)
        w = _exp.poly_weights(nodes, mom)
        for k in range(3):
            assert sum(wj * c**k for wj, c in zip(w, nodes)) == pytest.approx(mom[k], rel=1e-13)
