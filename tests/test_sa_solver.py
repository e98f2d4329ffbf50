"""SA-Solver against diffusers' SASolverScheduler (issue 14): the same predictor/corrector orders,
tau function and grid (diffusers' own sigmas, which end at its smallest trained level) give the same
samples; for tau > 0 the same noise is injected on both sides (diffusers' randn_tensor replaced by
a list of draws)."""

import pytest
import torch
from diffusers import SASolverScheduler
from diffusers.schedulers import scheduling_sasolver

import diffsolve as ds
from diffsolve.bench.problems import AnalyticProblem


@pytest.fixture(scope="module")
def model():
    raw, _, _ = AnalyticProblem("gmm2d", 8).raw_model(torch.float64)
    return raw


def _draws(shape, n, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(n)]


def _diffusers(model, sched, x, draws, monkeypatch):
    it = iter(draws)
    monkeypatch.setattr(scheduling_sasolver, "randn_tensor", lambda shape, **kw: next(it))
    for t in sched.timesteps:
        x = sched.step(model(x, t.expand(x.shape[0]).double()), t, x).prev_sample
    return x


@pytest.mark.parametrize("p, c", [(1, 1), (2, 2), (3, 4), (4, 3)])
@pytest.mark.parametrize("tau", ["zero", "default", "half"])
def test_sa_solver_equals_diffusers_sasolver(model, monkeypatch, p, c, tau):
    taus = {"zero": lambda t: 0.0, "default": lambda t: 1.0 if 200 <= t <= 800 else 0.0, "half": lambda t: 0.5}
    sched = SASolverScheduler(predictor_order=p, corrector_order=c, tau_func=taus[tau])
    sched.set_timesteps(12)
    x = AnalyticProblem("gmm2d", 8).x_T(2, 8).double()
    draws = _draws(x.shape, 12)
    expected = _diffusers(model, sched, x.clone(), draws, monkeypatch)

    ode = ds.from_diffusers(model, sched.config, time_dtype=torch.float64)
    index = lambda sigma: round(float(ode.schedule.t(sigma)))
    solver = ds.make_solver(
        "sa-solver",
        predictor_order=p,
        corrector_order=c,
        variant="diffusers",
        tau=(lambda s: taus[tau](index(s))) if tau != "zero" else 0.0,
    )
    it = iter(draws)
    sigmas = sched.sigmas.double().tolist()
    state = solver.init(ode, sigmas, lambda like: next(it))
    ours = ode.from_xbar(solver.run(ode.to_xbar(x, sigmas[0]), lambda *a: None, state), sigmas[-1])
    rel = float((ours - expected).abs().max() / expected.abs().max())
    assert rel < 5e-6, rel  # diffusers forms its coefficients from float32 sigmas (measured 5e-7 to 8e-7)
    if tau == "half":  # and the noise matters
        other = ds.make_solver("sa-solver", predictor_order=p, corrector_order=c, tau=0.5, variant="diffusers")
        it2 = iter(_draws(x.shape, 12, seed=6))
        state = other.init(ode, sigmas, lambda like: next(it2))
        moved = ode.from_xbar(other.run(ode.to_xbar(x, sigmas[0]), lambda *a: None, state), sigmas[-1])
        assert float((moved - expected).abs().max()) > 1e-3
