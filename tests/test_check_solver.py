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

    def step(self, i, x, state):
        s, s_next = state.sigmas[i], state.sigmas[i + 1]
        denoised, eps = yield x, s, True
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

    def step(self, i, x, state):
        x_next, denoised = yield from super().step(i, x, state)
        return (x_next + 0.01 * torch.randn_like(x) if state.sigmas[i + 1] > 0 else x_next), denoised


class Flattens(Euler):
    """Returns the state flattened per sample (right for 1-D samples only)."""

    name = "test-flattens"

    def step(self, i, x, state):
        x_next, denoised = yield from super().step(i, x, state)
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


class EditsInPlace(Euler):
    """Euler that updates the state in place (docs/plugins.md forbids it: the driver and a callback may hold x)."""

    name = "test-in-place"

    def step(self, i, x, state):
        s, s_next = state.sigmas[i], state.sigmas[i + 1]
        denoised, eps = yield x, s, True
        return (denoised if s_next == 0 else x.add_(eps, alpha=s_next - s)), denoised


class KeepsRunOnSelf(Euler):
    """Euler with a 'history' kept on the instance: two interleaved runs on one instance mix."""

    name = "test-run-on-self"

    def step(self, i, x, state):
        s, s_next = state.sigmas[i], state.sigmas[i + 1]
        denoised, eps = yield x, s, True
        if i == 0:
            self.first_eps = eps
        return (denoised if s_next == 0 else x + (s_next - s) * (0.9 * eps + 0.1 * self.first_eps)), denoised


class NotAGenerator(Euler):
    """A step that calls the model itself instead of yielding the request."""

    name = "test-not-generator"

    def step(self, i, x, state):
        s, s_next = state.sigmas[i], state.sigmas[i + 1]
        denoised, eps = state.ode.predict(x, s)
        return (denoised if s_next == 0 else x + (s_next - s) * eps), denoised


class FirstContract(ds.Solver):
    """Euler written against the first contract (setup + step(i, x), the run on self)."""

    name = "test-first-contract"

    def step(self, i, x):
        s, s_next = self.sigmas[i], self.sigmas[i + 1]
        denoised, eps = self.ode.predict(x, s)
        return (denoised if s_next == 0 else x + (s_next - s) * eps), denoised


@pytest.mark.parametrize(
    "cls, check, detail",
    [
        (OverclaimsOrder, "order", r"observed orders \[.*\].*expected 2 \(declared order = 2\)"),
        (GlobalRandom, "seed", "same x_T and generator seed differ"),
        (Flattens, "shapes and dtypes", r"state of shape \(2, 1, 2, 2\) (came back as \(\(2, 4\)|raised)"),
        (MiscountsCalls, "calls per step", "1 per step, but calls_per_step = 2"),
        (PositionalOption, "contract", r"options must be keyword-only.*\['eta'\]"),
        (NoDoc, "contract", "needs a docstring"),
        (EditsInPlace, "step protocol", "changed its input state x in place"),
        (KeepsRunOnSelf, "step protocol", "two runs interleaved on one instance differ"),
        (NotAGenerator, "step protocol", "must be a generator"),
        (FirstContract, "contract", r"first Solver contract.*init\(ode, sigmas, noise\) -> state"),
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
