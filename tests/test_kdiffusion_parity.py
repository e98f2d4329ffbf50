"""Parity with k-diffusion's samplers (issue 14): dpm_2, dpm_2_ancestral, dpmpp_2s_ancestral,
dpmpp_3m_sde, dpm_fast and dpm_adaptive, run from k-diffusion's installed files on its own
DiscreteEpsDDPMDenoiser, against diffsolve's solvers through ``ds.k_sampler`` (float64).

Deterministic methods (and the stochastic ones at eta = 0) agree to 1e-10 relative; the stochastic
ones agree to the same precision given the same noise, injected on both sides (k-diffusion's
``noise_sampler=``, diffsolve's solver run with a noise function that hands out the same draws).
"""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.bench.peers import kdiffusion
from diffsolve.bench.problems import AnalyticProblem

try:
    K = kdiffusion()
except ImportError as exc:  # `make test` installs it (Makefile: pip install --no-deps k-diffusion)
    pytest.skip(f"k-diffusion not loadable: {exc}", allow_module_level=True)

SCHED = ds.DiscreteSchedule.linear(1000, 1e-4, 0.02)
TOL = 1e-10


@pytest.fixture(scope="module")
def setup():
    p = AnalyticProblem("gmm2d", 16)
    raw, _, _ = p.raw_model(torch.float64)
    den = K.external.DiscreteEpsDDPMDenoiser(raw, SCHED.alphas_cumprod, quantize=False)
    return p, den


def _x(p, sigma0, seed=3):
    return p.x_T(seed, 16).double() * math.hypot(float(sigma0), 1.0)


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


DETERMINISTIC = [
    ("sample_dpm_2", {}, "dpm-2", {}),
    ("sample_dpm_2_ancestral", {"eta": 0.0}, "dpm-2-ancestral", {"eta": 0.0}),
    ("sample_dpmpp_2s_ancestral", {"eta": 0.0}, "dpmpp-2s-ancestral", {"eta": 0.0}),
    (
        "sample_dpmpp_3m_sde",
        {"eta": 0.0},
        "dpmpp-3m-sde",
        {"eta": 0.0, "weights": "reference", "final_step": "denoise"},
    ),
]


@pytest.mark.parametrize("grid", ["karras", "trailing"])
@pytest.mark.parametrize("k_name, k_opts, name, opts", DETERMINISTIC, ids=[d[2] for d in DETERMINISTIC])
def test_deterministic_samplers_equal_k_diffusions(setup, grid, k_name, k_opts, name, opts):
    p, den = setup
    sigmas = ds.grid(grid, SCHED, 9)
    x = _x(p, sigmas[0])
    theirs = getattr(K.sampling, k_name)(den, x, sigmas, disable=True, **k_opts)
    ours = ds.k_sampler(name, **opts)(den, x, sigmas)
    assert _rel(ours, theirs) < TOL


def test_dpmpp_3m_at_reference_weights_equals_k_diffusions_3m_sde_at_eta_0(setup):
    p, den = setup
    sigmas = ds.grid("karras", SCHED, 12)
    x = _x(p, sigmas[0])
    theirs = K.sampling.sample_dpmpp_3m_sde(den, x, sigmas, eta=0.0, disable=True)
    ours = ds.k_sampler("dpmpp-3m", weights="reference", solver_type="taylor", final_step="denoise")(den, x, sigmas)
    assert _rel(ours, theirs) < TOL
    # the exact weights (the default) are a different method: they differ at the level of the error
    exact = ds.k_sampler("dpmpp-3m", solver_type="taylor", final_step="denoise")(den, x, sigmas)
    assert _rel(exact, theirs) > 1e-6


@pytest.mark.parametrize("n", [6, 7, 8])
def test_dpm_fast_equals_k_diffusions_on_its_logsnr_steps(setup, n):
    p, den = setup
    s_max, s_min = float(SCHED.sigma_max), float(SCHED.sigma_min) * 10
    x = _x(p, s_max)
    theirs = K.sampling.sample_dpm_fast(den, x, s_min, s_max, n, disable=True)
    m = n // 3 + 1
    sigmas = torch.linspace(math.log(s_max), math.log(s_min), m + 1, dtype=torch.float64).exp()
    counted = []
    ours = ds.k_sampler("dpm-fast", nfe=n)(lambda x_, s: counted.append(1) or den(x_, s), x, sigmas)
    assert _rel(ours, theirs) < TOL and len(counted) == n


@pytest.mark.parametrize("order", [2, 3])
def test_dpm_adaptive_equals_k_diffusions(setup, order):
    p, den = setup
    s_max, s_min = 80.0, 0.05
    x = _x(p, s_max)
    theirs, info = K.sampling.sample_dpm_adaptive(
        den, x, s_min, s_max, order=order, rtol=1e-3, atol=1e-4, disable=True, return_info=True
    )
    counted = []
    ours = ds.k_sampler("dpm-adaptive", solver_order=order, rtol=1e-3, atol=1e-4)(
        lambda x_, s: counted.append(1) or den(x_, s), x, torch.tensor([s_max, s_min], dtype=torch.float64)
    )
    assert _rel(ours, theirs) < TOL
    assert len(counted) == info["nfe"] > 6 * order


# -- stochastic: the same noise on both sides ----------------------------------------------------------
def _draws(shape, count, seed=7):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(count)]


def _run_with_noise(den, name, opts, x, sigmas, draws):
    """diffsolve's solver on k-diffusion's denoiser (as ds.k_sampler wraps it), noise from ``draws``."""
    from diffsolve.schedules import SigmaSchedule
    from diffsolve.wrapper import DiffusionODE

    pos = sigmas[sigmas > 0]
    ode = DiffusionODE(
        den,
        SigmaSchedule(float(pos.min()), float(pos.max()), space="ve"),
        prediction="x0",
        time="sigma",
        time_dtype=torch.float64,
    )
    it = iter(draws)
    solver = ds.make_solver(name, **opts)
    state = solver.init(ode, sigmas.tolist(), lambda like: next(it))
    return solver.run(x, lambda *a: None, state)


STOCHASTIC = [
    ("sample_dpm_2_ancestral", {"eta": 1.0}, "dpm-2-ancestral", {"eta": 1.0}),
    ("sample_dpm_2_ancestral", {"eta": 0.5, "s_noise": 0.8}, "dpm-2-ancestral", {"eta": 0.5, "s_noise": 0.8}),
    ("sample_dpmpp_2s_ancestral", {"eta": 1.0}, "dpmpp-2s-ancestral", {}),
    ("sample_dpmpp_3m_sde", {"eta": 1.0}, "dpmpp-3m-sde", {"weights": "reference", "final_step": "denoise"}),
    (
        "sample_dpmpp_3m_sde",
        {"eta": 0.5, "s_noise": 0.9},
        "dpmpp-3m-sde",
        {"eta": 0.5, "s_noise": 0.9, "weights": "reference", "final_step": "denoise"},
    ),
]


@pytest.mark.parametrize(
    "k_name, k_opts, name, opts", STOCHASTIC, ids=[f"{d[2]}-{i}" for i, d in enumerate(STOCHASTIC)]
)
def test_stochastic_samplers_equal_k_diffusions_given_the_same_noise(setup, k_name, k_opts, name, opts):
    p, den = setup
    sigmas = ds.grid("karras", SCHED, 8)
    x = _x(p, sigmas[0])
    draws = _draws(x.shape, 8)
    it = iter(draws)
    theirs = getattr(K.sampling, k_name)(den, x, sigmas, disable=True, noise_sampler=lambda s, t: next(it), **k_opts)
    used = len(draws) - len(list(it))
    ours = _run_with_noise(den, name, opts, x, sigmas, draws)
    assert used == 7 and _rel(ours, theirs) < TOL
    # and the noise matters: other draws give another sample
    assert _rel(_run_with_noise(den, name, opts, x, sigmas, _draws(x.shape, 8, seed=8)), theirs) > 1e-3
