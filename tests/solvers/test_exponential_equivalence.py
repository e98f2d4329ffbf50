"""Identities between the exponential-integrator solvers and DDIM (float64).

* docs/math.md claim 4: DPM-Solver-1 (E33) and DPM-Solver++(1) (E34) equal DDIM (E22/E30)
  within 1e-12 * max(1, sigma) at every grid point, the step into sigma = 0 included.
* Members of the family that are the same method by construction give the same numbers:
  UniP-p without the corrector (bh2) is DPM-Solver++(pM); log-sigma DEIS is the exact-Lagrange
  ("taylor") DPM-Solver-pM; the SDE solvers at eta = 0 are their ODE counterparts; one
  SDE-DPM-Solver++ step at eta = 1 is DDIM with eta = 1 given the same noise.
"""

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import get_problem


def trajectory(ode, x_T, solver, sigmas=None, steps=None, grid=None, seed=None, **options):
    states = []
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    out = ds.sample(
        ode,
        x_T,
        solver,
        steps=steps,
        grid=grid,
        sigmas=sigmas,
        generator=gen,
        callback=lambda info: states.append((info["sigma_next"], info["xbar"])),
        **options,
    )
    return out, states


def assert_same_trajectory(a, b, tol):
    (out_a, states_a), (out_b, states_b) = a, b
    assert len(states_a) == len(states_b)
    for (s, xa), (_, xb) in zip(states_a, states_b):
        assert float((xa - xb).abs().max()) <= tol * max(1.0, s)
    assert float((out_a - out_b).abs().max()) <= tol


@pytest.fixture(scope="module")
def setup():
    problem = get_problem("gmm64")
    ode = problem.ode(ds.DiscreteSchedule.linear())
    x_T = torch.randn(4, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return ode, x_T


@pytest.mark.parametrize("name", ["dpm-solver-1", "dpmpp-1"])
@pytest.mark.parametrize("grid", ["trailing", "logsnr"])
def test_first_order_exponential_integrators_equal_ddim(setup, name, grid):
    ode, x_T = setup
    assert_same_trajectory(
        trajectory(ode, x_T, name, steps=10, grid=grid), trajectory(ode, x_T, "ddim", steps=10, grid=grid), 1e-12
    )


SAME_METHOD = [
    (("unipc", {"solver_order": 2, "corrector": False}), ("dpmpp-2m", {})),
    (("unipc", {"solver_order": 3, "corrector": False}), ("dpmpp-3m", {})),
    (("unipc", {"solver_order": 1, "corrector": False}), ("dpmpp-1", {})),
    (("deis", {"variable": "log-sigma"}), ("dpm-solver-3m", {"solver_type": "taylor"})),
    (("deis", {"variable": "log-sigma", "solver_order": 2}), ("dpm-solver-2m", {"solver_type": "taylor"})),
    (("dpmpp-2m-sde", {"eta": 0.0}), ("dpmpp-2m", {})),
    (("dpmpp-2m-sde", {"eta": 0.0, "solver_type": "taylor"}), ("dpmpp-2m", {"solver_type": "taylor"})),
    (("dpmpp-sde", {"eta": 0.0}), ("dpmpp-2s", {})),
]


@pytest.mark.parametrize("a, b", SAME_METHOD, ids=[f"{a[0]}{a[1]}={b[0]}{b[1]}" for a, b in SAME_METHOD])
def test_members_that_are_the_same_method_agree(setup, a, b):
    ode, x_T = setup
    for steps in (4, 12, 20):  # with and without the lower-order end of final_step="auto"
        assert_same_trajectory(
            trajectory(ode, x_T, a[0], steps=steps, grid="logsnr", **a[1]),
            trajectory(ode, x_T, b[0], steps=steps, grid="logsnr", **b[1]),
            1e-12,
        )


def test_deis_in_sigma_equals_deis_in_t_when_the_schedule_time_is_sigma():
    problem = get_problem("gaussian")
    ode = problem.ode(ds.SigmaSchedule(0.002, 80.0, space="vp"))
    x_T = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_same_trajectory(
        trajectory(ode, x_T, "deis", steps=12, grid="karras", variable="sigma"),
        trajectory(ode, x_T, "deis", steps=12, grid="karras", variable="t"),
        1e-12,
    )


@pytest.mark.parametrize("name", ["dpmpp-2m-sde", "dpmpp-sde"])
def test_one_sde_step_at_eta_one_is_ddim_with_eta_one(setup, name):
    # a single step is first order for both (no history; dpmpp-sde's one-step grid with
    # final_step="lower-order" takes its order-1 step): (S1) with D frozen is E26 at eta = 1
    ode, x_T = setup
    sigmas = [60.0, 2.5]
    options = {"final_step": "lower-order"} if name == "dpmpp-sde" else {}
    a = trajectory(ode, x_T, name, sigmas=sigmas, seed=7, eta=1.0, **options)
    b = trajectory(ode, x_T, "ddim", sigmas=sigmas, seed=7, eta=1.0)
    assert_same_trajectory(a, b, 1e-12)
    other_seed = trajectory(ode, x_T, name, sigmas=sigmas, seed=8, eta=1.0, **options)[0]
    assert not torch.allclose(a[0], other_seed)  # the noise is really drawn from the generator
