"""Solver ``learned-lms`` (docs/math.md section 3.10, M1-M2): a linear multistep method in sigma with free
per-step coefficients, and the probe that reads the table of a solver of the family.

* DDIM's table (the default) and iPNDM's table (its Adams-Bashforth weights b^(k), written out here from the
  iPNDM docstring, not from the library) give the registered solvers' samples;
* the probe (:func:`multistep_coefficients`) reads iPNDM's table and DPM-Solver++(2M)'s, with DC-Solver's
  compensation ratios folded in, so that learned-lms replays the compensated run; heun is not in the family;
* a recipe carrying it replays bit for bit after a JSON round trip and makes exactly its nfe model calls;
* bad coefficients are refused naming the option.
"""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import get_problem
from diffsolve.recipe_ode import RecipeError, run_parts, schedule_fingerprint
from diffsolve.tuning_learn import multistep_coefficients

AB = {1: [1.0], 2: [1.5, -0.5], 3: [23 / 12, -16 / 12, 5 / 12]}  # b^(k), newest eps first (iPNDM)


@pytest.fixture(scope="module")
def gmm():
    ode = get_problem("gmm64").ode(ds.DiscreteSchedule.linear())
    x_T = torch.randn(4, 64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return ode, x_T


def _grid(ode, steps):
    return [float(s) for s in ds.grid("logsnr", ode.schedule, steps).tolist()]


def ipndm_table(sigmas, order):
    """c_ij = h_i b^(k)_{i-j}, k = min(i + 1, order) (iPNDM, the step to 0 included), lower triangle by rows."""
    out = []
    for i in range(len(sigmas) - 1):
        h, b = sigmas[i + 1] - sigmas[i], AB[min(i + 1, order)]
        out += [h * b[i - j] if i - j < len(b) else 0.0 for j in range(i + 1)]
    return out


def _rel(a, b):
    return float((a - b).abs().max()) / float(b.abs().max())


@pytest.mark.parametrize("steps", [1, 3, 6])
def test_the_default_table_is_ddim(gmm, steps):
    ode, x_T = gmm
    sig = _grid(ode, steps)
    ref = ds.sample(ode, x_T, "ddim", sigmas=sig)
    out = ds.sample(ode, x_T, "learned-lms", sigmas=sig)
    # one torch.add per step with the same float64 coefficient as ddim; the step to 0 is D = xbar - sigma eps in
    # both: equal up to float64 rounding of the conversions (measured: 0)
    assert _rel(out, ref) <= 1e-13


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("steps", [2, 5])
def test_ipndms_table_gives_ipndms_samples(gmm, order, steps):
    ode, x_T = gmm
    sig = _grid(ode, steps)
    ref = ds.sample(ode, x_T, "ipndm", sigmas=sig, solver_order=order)
    out = ds.sample(ode, x_T, "learned-lms", sigmas=sig, coefficients=ipndm_table(sig, order))
    # the same float64 weights (h_i b_j multiplied once), summed in another order: float64 rounding only
    assert _rel(out, ref) <= 1e-12


@pytest.mark.parametrize("order", [2, 3])
def test_the_probe_reads_ipndms_table(gmm, order):
    ode, _ = gmm
    sig = _grid(ode, 5)
    got = multistep_coefficients("ipndm", {"solver_order": order}, sig, schedule=ode.schedule)
    want = ipndm_table(sig, order)
    # the probe divides each recorded state by scale(sigma): a few float64 roundings of numbers up to |h_0|
    assert max(abs(a - b) for a, b in zip(got, want)) <= 1e-12 * max(map(abs, want))


@pytest.mark.parametrize("solver,options", [("ipndm", {"solver_order": 2}), ("dpmpp-2m", {}), ("lms", {})])
@pytest.mark.parametrize("afs", [False, True])
def test_the_probed_table_replays_the_compensated_run(gmm, solver, options, afs):
    # DC-Solver's ratios and AFS as a recipe runs them (RecipeODE) are linear in the eps: M2
    ode, x_T = gmm
    sig = _grid(ode, 5)
    comp = [0.05, -0.1, 0.2, 0.03]
    ref = run_parts(ode, x_T, solver, options, sig, afs, comp)
    table = multistep_coefficients(solver, options, sig, compensation=comp, schedule=ode.schedule)
    assert table is not None and len(table) == 15
    out = run_parts(ode, x_T, "learned-lms", {"coefficients": table}, sig, afs)
    # float64 table read off a probe, applied as a sum of 15 terms: rounding only, measured ~1e-15
    assert _rel(out, ref) <= 1e-11


def test_solvers_outside_the_family_have_no_table(gmm):
    ode, _ = gmm
    sig = _grid(ode, 4)
    assert multistep_coefficients("heun", {}, sig, schedule=ode.schedule) is None  # two calls per step
    assert multistep_coefficients("dpm-solver", {}, sig, schedule=ode.schedule) is None


def test_a_learned_lms_recipe_replays_bit_for_bit_with_exactly_its_nfe_calls(gmm, tmp_path):
    ode, x_T = gmm
    sig = _grid(ode, 4)
    table = [c * (1 + 0.01 * k) for k, c in enumerate(ipndm_table(sig, 2))]
    fp = schedule_fingerprint(ode.schedule, ode.prediction)
    recipe = ds.Recipe("learned-lms", {"coefficients": table}, sig, afs=True, nfe=3, fingerprint=fp)
    back = ds.Recipe.load(recipe.save(tmp_path / "r.json"))
    assert back.options["coefficients"] == table  # floats written by repr: exact
    n0 = ode.nfe
    out = ds.sample(ode, x_T, recipe=recipe)
    assert ode.nfe - n0 == 3
    assert torch.equal(ds.sample(ode, x_T, recipe=back), out)
    with pytest.raises(RecipeError, match="nfe"):
        ds.Recipe("learned-lms", {"coefficients": table}, sig, afs=False, nfe=3, fingerprint=fp)


@pytest.mark.parametrize(
    "bad,match",
    [
        ("abc", "list of numbers"),
        (1.0, "list of numbers"),
        ([1.0, 2.0], "n \\(n \\+ 1\\) / 2"),
        ([], "n \\(n"),
        ([math.nan], "finite"),
        ([True], "finite"),
        ([1.0, "2", 3.0], "finite"),
    ],
)
def test_bad_coefficients_are_refused_naming_the_option(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        ds.make_solver("learned-lms", coefficients=bad)
    assert "coefficients" in str(err.value)


def test_a_table_for_another_grid_is_refused_naming_the_option(gmm):
    ode, x_T = gmm
    with pytest.raises(ValueError, match="coefficients has 6 numbers for a grid of 4 steps"):
        ds.sample(ode, x_T, "learned-lms", sigmas=_grid(ode, 4), coefficients=ipndm_table(_grid(ode, 3), 2))
