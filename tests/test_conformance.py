"""Conformance: every solver in the live registry honours the Solver contract.

Parametrised over the registry at collection time, so a new built-in or plugin
solver is tested the moment it registers.
"""

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import GaussianMixture
from diffsolve.plugins import get_registry

REGISTRY = get_registry()
NAMES = sorted(REGISTRY.solvers)


@pytest.fixture(scope="module")
def problem():
    return GaussianMixture(torch.tensor([[1.0, -0.5, 0.0], [-0.8, 0.4, 0.3]]), [0.3, 0.5], shape=(3,))


def _run(problem, name, dtype, steps=6, batch=2, seed=0, grid="trailing"):
    ode = problem.ode(ds.DiscreteSchedule.linear())
    x_T = torch.randn(batch, 3, generator=torch.Generator().manual_seed(seed)).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    return ds.sample(ode, x_T, name, steps=steps, grid=grid, generator=gen), ode


def test_registry_has_the_reference_solver():
    assert "ddim" in NAMES


@pytest.mark.parametrize("name", NAMES)
def test_solver_declares_its_contract(name):
    cls = REGISTRY.solver(name)
    assert cls.name == name
    assert isinstance(cls.order, int) and cls.order >= 1
    assert isinstance(cls.calls_per_step, int) and cls.calls_per_step >= 1
    assert cls.__doc__ and cls.__doc__.strip(), "a solver documents its method in its class docstring"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_solver_keeps_shape_and_dtype_and_is_finite(problem, name, dtype):
    out, _ = _run(problem, name, dtype)
    assert out.shape == (2, 3) and out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_solver_is_reproducible_with_the_same_seed(problem, name):
    a, _ = _run(problem, name, torch.float64)
    b, _ = _run(problem, name, torch.float64)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_solver_runs_a_one_step_grid_and_a_batch_of_one(problem, name):
    out, ode = _run(problem, name, torch.float64, steps=1, batch=1, grid="karras")
    assert out.shape == (1, 3) and torch.isfinite(out).all() and ode.nfe >= 1


@pytest.mark.parametrize("name", NAMES)
def test_solver_lands_near_the_data_with_enough_steps(problem, name):
    # 50 steps: every solver's samples are close to the mixture's components
    out, _ = _run(problem, name, torch.float64, steps=50, batch=8)
    nearest = torch.cdist(out, problem.means).min(dim=1).values
    assert (nearest < 5 * problem.stds.max()).all()


def test_solver_docs_page_is_generated_from_the_registry():
    # docs/solvers.md is `diffsolve list --markdown`; regenerate it when a solver changes
    from pathlib import Path

    from diffsolve.cli import solvers_markdown

    page = Path(__file__).resolve().parents[1] / "docs" / "solvers.md"
    assert page.read_text() == solvers_markdown(), "run: diffsolve list --markdown > docs/solvers.md"
