"""The Solver contract a plugin author sees (issue 12): names that import, setup + step only,
run state kept out of the ODE, options that cannot hide contract attributes, the shared checks."""

import importlib

import pytest
import torch

import diffsolve as ds
from diffsolve.solvers.base import ReversibleSolver, Solver, check_choice, check_int, check_real


def _ode(seen_dtypes=None):
    def model(x, t):
        if seen_dtypes is not None:
            seen_dtypes.append(x.dtype)
        return 0.1 * x

    return ds.wrap(model, ds.DiscreteSchedule.linear(), prediction="eps", time="index")


def test_subpackages_import_and_are_not_shadowed_by_functions():
    ddim = importlib.import_module("diffsolve.solvers.ddim")
    import diffsolve.grids as grids_module

    assert ddim.DDIM.name == "ddim"
    assert grids_module.__name__ == "diffsolve.grids"
    assert callable(ds.list_solvers) and callable(ds.list_grids)
    assert "ddim" in ds.list_solvers() and "karras" in ds.list_grids()
    assert not hasattr(ds, "solvers") or ds.solvers.__name__ == "diffsolve.solvers"


class _MinimalEuler(Solver):
    """A plugin written against the first contract: class attributes, setup and step(i, x), the run on self."""

    name = "minimal-euler"
    order = 1

    def setup(self, ode, sigmas, noise):
        super().setup(ode, sigmas, noise)
        self.h = [b - a for a, b in zip(self.sigmas[:-1], self.sigmas[1:])]

    def step(self, i, x):
        denoised, eps = self.ode.predict(x, self.sigmas[i])
        return x + self.h[i] * eps, denoised


class _Euler(Solver):
    """The same solver in the current contract: init returns the run state, step is a generator."""

    name = "minimal-euler-2"
    order = 1

    def init(self, ode, sigmas, noise):
        state = super().init(ode, sigmas, noise)
        state.h = [b - a for a, b in zip(state.sigmas[:-1], state.sigmas[1:])]
        return state

    def step(self, i, x, state):
        denoised, eps = yield x, state.sigmas[i], True
        return x + state.h[i] * eps, denoised


def test_a_solver_with_only_init_and_step_equals_ddim_and_inverts():
    ode = _ode()
    x_T = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    infos = []
    out = ds.sample(ode, x_T, _Euler, steps=6, callback=infos.append)
    torch.testing.assert_close(out, ds.sample(ode, x_T, "ddim", steps=6), rtol=0, atol=1e-12)
    assert [i["i"] for i in infos] == list(range(6))
    back = ds.invert(ode, out, _Euler, steps=6)
    assert back.shape == x_T.shape and torch.isfinite(back).all()


def test_a_first_contract_solver_runs_through_the_adapter_with_a_deprecation_warning_naming_the_new_form():
    ode = _ode()
    x_T = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    infos = []
    solver = _MinimalEuler()
    with pytest.warns(DeprecationWarning, match=r"first Solver contract.*init\(ode, sigmas, noise\) -> state"):
        out = ds.sample(ode, x_T, solver, steps=6, callback=infos.append)
    torch.testing.assert_close(out, ds.sample(ode, x_T, "ddim", steps=6), rtol=0, atol=1e-12)
    assert [i["i"] for i in infos] == list(range(6))
    assert not hasattr(solver, "h")  # the adapter set up a copy: the instance keeps no run
    with pytest.warns(DeprecationWarning):
        back = ds.invert(ode, out, _MinimalEuler, steps=6)
    assert back.shape == x_T.shape and torch.isfinite(back).all()


def test_an_option_named_like_a_contract_attribute_is_refused_when_the_class_is_defined():
    with pytest.raises(TypeError, match=r"option\(s\) \['order'\].*solver_order"):

        class _Bad(Solver):  # noqa: F841 - the definition itself must fail
            name = "bad"

            def __init__(self, *, order: int = 2):
                self.order = order


@pytest.mark.parametrize(
    "name, options, order",
    [
        ("unipc", {"solver_order": 2}, 3),
        ("unipc", {"solver_order": 2, "corrector": False}, 2),
        ("plms-hb", {"solver_order": 4}, 1),
        ("plms-hb", {"solver_order": 2, "beta": 1.0}, 2),
        ("lms", {"solver_order": 2}, 2),
        ("deis", {"solver_order": 1}, 1),
        ("ghvb", {"solver_order": 3}, 3),
    ],
)
def test_an_instance_reports_the_order_its_options_give(name, options, order):
    assert ds.make_solver(name, **options).order == order
    with pytest.raises(ValueError, match="its options are: .*solver_order"):
        ds.make_solver(name, order=order)


def test_no_registered_solver_has_an_option_named_like_a_contract_attribute():
    import inspect

    from diffsolve.plugins.registry import get_registry
    from diffsolve.solvers.base import CONTRACT_ATTRIBUTES

    reg = get_registry()
    for name in ds.list_solvers():
        params = inspect.signature(reg.solver(name).__init__).parameters
        assert not set(params) & set(CONTRACT_ATTRIBUTES), name


def test_the_ode_keeps_no_run_state_a_float32_call_after_a_bfloat16_run_gets_float32():
    seen = []
    ode = _ode(seen)
    x_T = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    ds.sample(ode, x_T.to(torch.bfloat16), "ddim", steps=3)
    assert seen[-1] == torch.bfloat16 and ode.run is None
    seen.clear()
    ode.eps(x_T.to(torch.float32), 1.0)
    assert seen == [torch.float32]


def test_a_nan_report_after_a_clean_run_names_its_own_step():
    calls = {"n": 0}

    def model(x, t):
        calls["n"] += 1
        return x * float("nan") if calls["n"] == 8 else 0.1 * x

    ode = ds.wrap(model, ds.DiscreteSchedule.linear(), prediction="eps", time="index")
    x_T = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))
    ds.sample(ode, x_T, "ddim", steps=5)  # calls 1-5: clean
    with pytest.raises(ds.NonFiniteError, match="model returned non-finite values at step 2"):
        ds.sample(ode, x_T, "ddim", steps=5)  # call 8 is this run's step 2


def test_the_run_view_shares_the_model_and_counts_calls_on_the_users_ode():
    ode = _ode()
    view = ode.start_run(input_dtype=torch.float64, record=True)
    assert view is not ode and view.model is ode.model and view.run is not None and ode.run is None
    view.eps(torch.ones(1, 4), 2.0)
    assert ode.nfe == 1 and view.run.nfe == 1 and len(view.run.sums) == 1


def test_exact_inversion_needs_a_reversible_solver_not_an_unstep_attribute():
    class Pretender(_MinimalEuler):
        name = "pretender"

        def unstep(self, i, x, x_next):  # not a ReversibleSolver: no promise of an exact inverse
            return x

    ode = _ode()
    x_T = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="not reversible.*ReversibleSolver"):
        ds.sample_reversible(ode, x_T, Pretender, steps=4)
    assert isinstance(ds.make_solver("bdia"), ReversibleSolver)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: check_choice("variant", "bh3", ("bh1", "bh2")), "variant='bh3' is not allowed; allowed: 'bh1', 'bh2'"),
        (lambda: check_choice("corrector", 1, (True, False)), "corrector=1 is not allowed"),
        (lambda: check_real("eta", -1, low=0.0), r"eta must be a finite number in \[0.0, inf\], got -1"),
        (lambda: check_real("eta", float("nan"), low=0.0), "eta must be a finite number"),
        (lambda: check_real("eta", "x"), "eta must be a number, got 'x'"),
        (lambda: check_real("rtol", 0.0, low=0.0, low_open=True), r"rtol must be a finite number in \(0.0, inf\]"),
        (lambda: check_int("solver_order", 2.0, (1, 2, 3)), "solver_order=2.0 is not allowed; allowed: 1, 2, 3"),
        (lambda: check_int("solver_order", True, (1, 2, 3)), "solver_order=True is not allowed"),
    ],
)
def test_option_checks_name_the_option_and_the_allowed_values(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_option_checks_return_the_value():
    assert check_choice("v", "a", ("a",)) == "a" and check_int("k", 2, (1, 2)) == 2
    assert check_real("s_tmax", float("inf"), low=0.0, allow_inf=True) == float("inf")


def test_the_ancestral_split_keeps_the_marginal_variance_and_adds_no_noise_upward():
    from diffsolve.solvers._ancestral import ancestral_split

    for eta in (0.0, 0.3, 1.0):
        down, up = ancestral_split(3.0, 1.5, eta)
        assert abs(down**2 + up**2 - 1.5**2) < 1e-12
    assert ancestral_split(1.0, 2.0, 1.0) == (2.0, 0.0)
    assert ancestral_split(3.0, 1.5, 0.0) == (1.5, 0.0)
    down, up = ancestral_split(3.0, 2.9, 5.0)  # eta > 1: capped (k-diffusion) or kept (DDIM's E18)
    assert (down, up) == (0.0, 2.9)
    assert ancestral_split(3.0, 2.9, 5.0, clamp_up=False)[1] > 2.9


def test_make_grid_is_the_public_grid_function_and_grid_stays_its_alias():
    sched = ds.DiscreteSchedule.linear()
    assert ds.make_grid is ds.grid
    assert torch.equal(ds.make_grid("karras", sched, 7), ds.grid("karras", sched, 7))


def test_the_solver_base_declares_adaptive_and_renoise_ok_as_contract_attributes():
    from diffsolve.solvers.base import CONTRACT_ATTRIBUTES

    assert Solver.adaptive is False and Solver.renoise_ok is False
    assert {"adaptive", "renoise_ok"} <= set(CONTRACT_ATTRIBUTES)
    assert ds.make_solver("dpm-adaptive").adaptive and ds.make_solver("torchdiffeq-dopri5").adaptive
    assert not ds.make_solver("torchdiffeq-rk4").adaptive and not ds.make_solver("heun").adaptive


def test_step_orders_replaces_the_final_step_rule_and_is_checked():
    # the per-step orders the diffusers scheduler passes (its lower_order_final rule) as a public option:
    # the same orders as final_step="lower-order" give the same run, bit for bit
    ode = _ode()
    x_T = torch.randn(2, 4, generator=torch.Generator().manual_seed(3))
    sig = ds.make_grid("karras", ode.schedule, 6)
    lower = ds.sample(ode, x_T, "dpmpp-3m", sigmas=sig, final_step="lower-order")
    assert torch.equal(ds.sample(ode, x_T, "dpmpp-3m", sigmas=sig, step_orders=(1, 2, 3, 3, 2, 1)), lower)
    assert not torch.equal(ds.sample(ode, x_T, "dpmpp-3m", sigmas=sig, step_orders=(1, 1, 1, 1, 1, 1)), lower)
    with pytest.raises(ValueError, match="step_orders has 3 entries for a grid of 6 steps"):
        ds.sample(ode, x_T, "dpmpp-3m", sigmas=sig, step_orders=(1, 2, 3))
    with pytest.raises(ValueError, match=r"step_orders\[1\] = 3: step 1 of 'dpmpp-3m' can take order 2 at most"):
        ds.sample(ode, x_T, "dpmpp-3m", sigmas=sig, step_orders=(1, 3, 3, 3, 2, 1))
    with pytest.raises(ValueError, match="integers >= 1"):
        ds.make_solver("unipc", step_orders=(1, 0))
