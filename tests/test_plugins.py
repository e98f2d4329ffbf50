"""Plugins: solvers and grids arrive through entry points; broken plugins are reported and skipped."""

import types

import pytest
import torch
from example_install import pip_install_example

import diffsolve as ds
from diffsolve.plugins import DuplicateNameError, PluginWarning, Registry, UnknownNameError


@pytest.fixture(scope="module")
def installed_example(tmp_path_factory):
    """The example plugin distribution, really installed with pip from its local path (into a temp dir)."""
    target = tmp_path_factory.mktemp("site")
    with pip_install_example("diffsolve-example-plugin", target, "diffsolve_example_plugin") as eps:
        yield eps


def test_installed_plugin_solver_and_grid_appear_and_sample(installed_example):
    assert [ep.name for ep in installed_example] == ["example"]
    reg = Registry(entry_points=installed_example, disabled=()).load()
    assert reg.solvers["example-midpoint"][1] == "diffsolve-example-plugin:example"
    assert "ddim" in reg.solvers and "example-geometric" in reg.grids
    # it samples through the same driver, and is second order on a 2-component mixture
    # (sigma 5 -> 0.5 on uniform grids of 40 and 80 steps: asymptotic, ratio measured 4.17)
    mix = ds.analytic.GaussianMixture(torch.tensor([[1.0, -0.5], [-0.8, 0.4]]), [0.3, 0.5])
    ode = mix.ode(ds.SigmaSchedule(0.0, 20.0, space="vp"))
    x_T = torch.tensor([[1.0, -0.5], [0.3, 0.2]])
    ref = ds.analytic.reference_solution(ode, x_T, 5.0, 0.5)
    cls = reg.solver("example-midpoint")
    errs = [
        (ds.sample(ode, x_T, cls, sigmas=torch.linspace(5.0, 0.5, n + 1)) - ref).abs().max().item() for n in (40, 80)
    ]
    assert 3.5 < errs[0] / errs[1] < 4.5  # order 2: error / 4 per halving
    grid = reg.grid("example-geometric")(ds.EDMSchedule(), 4)
    assert grid[-1] == 0 and (grid[1:] < grid[:-1]).all()


def test_disable_list_blocks_a_plugin(installed_example, monkeypatch):
    monkeypatch.setenv("DIFFSOLVE_DISABLE_PLUGINS", "example")
    reg = Registry(entry_points=installed_example).load()
    assert "example-midpoint" not in reg.solvers
    assert reg.skipped == [("diffsolve-example-plugin:example", "disabled by DIFFSOLVE_DISABLE_PLUGINS")]
    monkeypatch.setenv("DIFFSOLVE_DISABLE_PLUGINS", "all")
    assert "example-midpoint" not in Registry(entry_points=installed_example).load().solvers


class _FakeEntryPoint:
    def __init__(self, name, obj=None, error=None):
        self.name, self._obj, self._error = name, obj, error
        self.dist = types.SimpleNamespace(name=f"dist-{name}")

    def load(self):
        if self._error:
            raise self._error
        return self._obj


def _plugin(**hooks):
    mod = types.SimpleNamespace()
    for hook, fn in hooks.items():
        setattr(mod, hook, ds.hookimpl(fn))
    return mod


def test_plugin_that_fails_to_import_is_reported_and_skipped():
    bad = _FakeEntryPoint("broken", error=ImportError("no module named torchvision"))
    with pytest.warns(PluginWarning, match="'dist-broken:broken' failed to load .*torchvision.*skipped"):
        reg = Registry(entry_points=[bad], disabled=()).load()
    assert "ddim" in reg.solvers and reg.skipped[0][0] == "dist-broken:broken"


def test_plugin_that_raises_while_registering_is_skipped_whole():
    class Good(ds.Solver):
        name = "good-but-unlucky"

    def register_solvers(register):
        register(Good)
        raise RuntimeError("boom")

    ep = _FakeEntryPoint("raiser", _plugin(register_solvers=register_solvers))
    with pytest.warns(PluginWarning, match="failed in register_solvers .*boom"):
        reg = Registry(entry_points=[ep], disabled=()).load()
    assert "good-but-unlucky" not in reg.solvers  # nothing half-registered


def test_plugin_registering_a_non_solver_is_skipped():
    ep = _FakeEntryPoint("wrong", _plugin(register_solvers=lambda register: register(object)))
    with pytest.warns(PluginWarning, match="expects a diffsolve Solver subclass"):
        Registry(entry_points=[ep], disabled=()).load()


def test_two_plugins_claiming_one_name_is_an_error_naming_both():
    class MyDDIM(ds.Solver):
        name = "ddim"

    ep = _FakeEntryPoint("clash", _plugin(register_solvers=lambda register: register(MyDDIM)))
    with pytest.raises(DuplicateNameError, match="'ddim' is registered by both 'diffsolve' and 'dist-clash:clash'"):
        Registry(entry_points=[ep], disabled=()).load()


def test_registry_loads_once():
    calls = []
    ep = _FakeEntryPoint(
        "counter", _plugin(register_grids=lambda register: (calls.append(1), register("counted", lambda s, n: None)))
    )
    reg = Registry(entry_points=[ep], disabled=())
    reg.load(), reg.load(), reg.solver_names()
    assert calls == [1]


def test_unknown_solver_lists_the_known_ones():
    with pytest.raises(
        UnknownNameError, match="unknown solver 'dddim' \\(did you mean 'ddim'\\?\\); known solvers: .*ddim"
    ):
        ds.sample(ds.analytic.Gaussian([0.0], 1.0).ode(), torch.zeros(1, 1), "dddim", steps=3)


def test_tests_do_not_autoload_machine_plugins():
    reg = ds.plugins.get_registry()
    assert all(owner == "diffsolve" for _, owner in reg.solvers.values())
    assert all(owner == "diffsolve" for _, owner in reg.grids.values())


# -- issue 13: plugin authors' errors and messages ------------------------------------------------------
class _Midpointish(ds.Solver):
    """A plugin solver (Euler in sigma) for the registry tests."""

    name = "plugin-euler"

    def step(self, i, x, state):
        sig = state.sigmas
        denoised, eps = yield x, sig[i], True
        return (denoised if sig[i + 1] == 0 else x + (sig[i + 1] - sig[i]) * eps), denoised


def test_plugin_whose_hooks_register_nothing_gets_a_plugin_warning():
    silent = _FakeEntryPoint("silent", _plugin(register_solvers=lambda register: None))
    no_hooks = _FakeEntryPoint("nohooks", types.SimpleNamespace(register_solvers=lambda register: None))
    with pytest.warns(PluginWarning, match="registered no solver and no grid") as rec:
        reg = Registry(entry_points=[silent, no_hooks], disabled=()).load()
    messages = [str(w.message) for w in rec]
    for owner in ("dist-silent:silent", "dist-nohooks:nohooks"):  # a hook that returns nothing, or no hookimpl
        assert any(f"{owner!r} registered no solver and no grid" in m for m in messages), messages
    assert "ddim" in reg.solvers


@pytest.mark.parametrize("spelling", ["My_Plugin", "MY-PLUGIN", "my_plugin", " my-plugin "])
def test_disable_list_matches_case_insensitively_with_dash_and_underscore_alike(spelling, monkeypatch):
    ep = _FakeEntryPoint("my-plugin", _plugin(register_solvers=lambda register: register(_Midpointish)))
    monkeypatch.setenv("DIFFSOLVE_DISABLE_PLUGINS", spelling)
    reg = Registry(entry_points=[ep]).load()
    assert "plugin-euler" not in reg.solvers
    assert reg.skipped == [("dist-my-plugin:my-plugin", "disabled by DIFFSOLVE_DISABLE_PLUGINS")]


def test_disable_list_warns_on_names_that_match_no_plugin(monkeypatch):
    ep = _FakeEntryPoint("real", _plugin(register_solvers=lambda register: register(_Midpointish)))
    monkeypatch.setenv("DIFFSOLVE_DISABLE_PLUGINS", "real,typo-plugin")
    with pytest.warns(
        PluginWarning,
        match=r"names \['typo-plugin'\], which match no installed diffsolve plugin "
        r"\(installed: real\)",
    ):
        reg = Registry(entry_points=[ep]).load()
    assert "plugin-euler" not in reg.solvers


def test_unknown_solver_error_says_a_plugin_was_disabled(monkeypatch):
    ep = _FakeEntryPoint("mine", _plugin(register_solvers=lambda register: register(_Midpointish)))
    monkeypatch.setenv("DIFFSOLVE_DISABLE_PLUGINS", "mine")
    reg = Registry(entry_points=[ep]).load()
    with pytest.raises(
        UnknownNameError,
        match="unknown solver 'plugin-euler'.*Plugin\\(s\\) dist-mine:mine are disabled by DIFFSOLVE_DISABLE_PLUGINS",
    ):
        reg.solver("plugin-euler")
    enabled = Registry(entry_points=[ep], disabled=())
    with pytest.raises(UnknownNameError) as info:
        enabled.solver("nope")
    assert "disabled" not in str(info.value)


def test_duplicate_name_error_gives_the_exact_disable_value(monkeypatch):
    class MyDDIM(ds.Solver):
        """Clashes with the built-in ddim."""

        name = "ddim"

    ep = _FakeEntryPoint("clash", _plugin(register_solvers=lambda register: register(MyDDIM)))
    monkeypatch.setenv("DIFFSOLVE_DISABLE_PLUGINS", "")
    with pytest.raises(DuplicateNameError, match="block one of them: set DIFFSOLVE_DISABLE_PLUGINS=clash$"):
        Registry(entry_points=[ep]).load()
    # two plugins: either one can go, and the current list is kept
    other = _FakeEntryPoint("other", _plugin(register_solvers=lambda register: register(_Midpointish)))
    again = _FakeEntryPoint("again", _plugin(register_solvers=lambda register: register(_Midpointish)))
    reg = Registry(entry_points=[other, again], disabled=["old"])
    with (
        pytest.warns(PluginWarning, match="old"),
        pytest.raises(
            DuplicateNameError, match="set DIFFSOLVE_DISABLE_PLUGINS=old,again or DIFFSOLVE_DISABLE_PLUGINS=old,other"
        ),
    ):
        reg.load()
    with pytest.raises(DuplicateNameError):  # a later lookup does not see a half-loaded registry
        reg.solver("ddim")


def test_diffsolve_list_shows_a_name_clash_instead_of_crashing(monkeypatch, capsys):
    from diffsolve import cli
    from diffsolve.plugins import registry

    class MyDDIM(ds.Solver):
        """Clashes with the built-in ddim."""

        name = "ddim"

    ep = _FakeEntryPoint("clash", _plugin(register_solvers=lambda register: register(MyDDIM)))
    monkeypatch.setenv("DIFFSOLVE_DISABLE_PLUGINS", "")
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [ep])
    monkeypatch.setattr(registry, "_default", None)
    try:
        code = cli.main(["list"])
    finally:
        registry.reset_registry()
    out = capsys.readouterr().out
    assert code == 1
    assert "NAME CLASH: solver 'ddim' is registered by both 'diffsolve' and 'dist-clash:clash'" in out
    assert "set DIFFSOLVE_DISABLE_PLUGINS=clash" in out
    assert "  ddim " in out and "[diffsolve]" in out  # the built-in keeps the name and is listed
