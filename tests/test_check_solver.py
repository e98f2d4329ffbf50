"""diffsolve.testing.check_solver (issue 13): a plugin author's one-call test passes for good solvers and
names the broken law for bad ones."""

import sys
from pathlib import Path

import pytest
import torch

import diffsolve as ds
from diffsolve.testing import check_solver

EXAMPLE_SRC = Path(__file__).resolve().parents[1] / "examples" / "diffsolve-example-plugin" / "src"


class Euler(ds.Solver):
    """Euler in sigma (= DDIM), the base of the broken solvers below."""

    name = "test-euler"

    def step(self, i, x):
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        denoised, eps = self.ode.predict(x, s)
        return (denoised if s_next == 0 else x + (s_next - s) * eps), denoised


@pytest.mark.parametrize(
    "name, kwargs, order", [("ddim", {}, 1), ("heun", {}, 2), ("dpmpp-2m", {}, 2), ("bdia", {"expected_order": 2}, 2)]
)
def test_check_solver_passes_built_in_solvers_and_measures_their_order(name, kwargs, order):
    report = check_solver(name, **kwargs)
    assert abs(report["measured_order"] - order) <= 0.3
    assert report["nfe_per_step"] == ds.make_solver(name).calls_per_step


def test_check_solver_on_a_stochastic_solver_checks_its_noise_and_skips_the_order():
    report = check_solver("euler-ancestral")
    assert report["stochastic"] and report["measured_order"] is None and "stochastic" in report["order_skipped"]
    assert check_solver("euler-ancestral", options={"eta": 0.0})["measured_order"] == pytest.approx(1, abs=0.3)


def test_check_solver_passes_the_example_plugin_class_unregistered(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    try:
        from diffsolve_example_plugin import ExampleMidpoint

        report = check_solver(ExampleMidpoint)
    finally:
        sys.modules.pop("diffsolve_example_plugin", None)
    assert report["measured_order"] == pytest.approx(2, abs=0.3) and report["nfe_per_step"] == 2


class OverclaimsOrder(Euler):
    """Euler, declaring order 2."""

    name = "test-overclaims"
    order = 2


class GlobalRandom(Euler):
    """Adds noise from torch's global RNG instead of self.noise."""

    name = "test-global-random"
    stochastic = True
    invertible = False

    def step(self, i, x):
        x_next, denoised = super().step(i, x)
        return (x_next + 0.01 * torch.randn_like(x) if self.sigmas[i + 1] > 0 else x_next), denoised


class Flattens(Euler):
    """Returns the state flattened per sample (right for 1-D samples only)."""

    name = "test-flattens"

    def step(self, i, x):
        x_next, denoised = super().step(i, x)
        return x_next.reshape(x.shape[0], -1), denoised


class MiscountsCalls(Euler):
    """One model call per step, declaring two."""

    name = "test-miscounts"
    calls_per_step = 2


class PositionalOption(Euler):
    """An option that is not keyword-only."""

    name = "test-positional"

    def __init__(self, eta=0.0):
        self.eta = eta


class NoDoc(Euler):
    name = "test-nodoc"


NoDoc.__doc__ = None


@pytest.mark.parametrize(
    "cls, check, detail",
    [
        (OverclaimsOrder, "order", r"observed orders \[.*\].*expected 2 \(declared order = 2\)"),
        (GlobalRandom, "seed", "same x_T and generator seed differ"),
        (Flattens, "shapes and dtypes", r"state of shape \(2, 1, 2, 2\) (came back as \(\(2, 4\)|raised)"),
        (MiscountsCalls, "calls per step", "1 per step, but calls_per_step = 2"),
        (PositionalOption, "contract", r"options must be keyword-only.*\['eta'\]"),
        (NoDoc, "contract", "needs a docstring"),
    ],
)
def test_check_solver_names_the_broken_law(cls, check, detail):
    with pytest.raises(AssertionError, match=rf"check_solver\('{cls.name}'\) \[{check}\]: .*{detail}"):
        check_solver(cls)


def test_check_solver_refuses_what_is_not_a_solver():
    with pytest.raises(TypeError, match="registered solver name or a diffsolve Solver subclass"):
        check_solver(42)
    with pytest.raises(ds.UnknownNameError, match="did you mean 'heun'"):
        check_solver("huen")
