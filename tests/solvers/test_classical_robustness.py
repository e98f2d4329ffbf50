"""The classical solvers in use: float32 robustness, adaptive tolerances, encoding (increasing
grids), NFE accounting, option validation, noise, callbacks and the shared multistep weights."""

import math
from fractions import Fraction

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import Gaussian
from diffsolve.solvers import _multistep as ms

F64 = torch.float64
MEANS = torch.tensor([[1.0, 0.5], [-1.0, -0.3]], dtype=F64)
STD, WEIGHTS = 0.5, (0.3, 0.7)

NATIVE = [
    ("heun", {}),
    ("lms", {}),
    ("ipndm", {}),
    ("plms", {}),
    ("plms-hb", {}),
    ("ghvb", {}),
    ("euler-ancestral", {"eta": 0.0}),
]
TORCHDIFFEQ_FIXED = [
    (f"torchdiffeq-{m}", {"variable": v})
    for m in ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams")
    for v in ("sigma", "log-sigma")
]
ADAPTIVE = [
    (f"torchdiffeq-{m}", {"variable": v})
    for m in ("dopri5", "bosh3", "adaptive_heun", "dopri8")
    for v in ("sigma", "log-sigma")
]
STOCHASTIC = [("heun", {"s_churn": 10.0}), ("euler-ancestral", {}), ("euler-ancestral", {"eta": 0.5, "s_noise": 0.9})]


def _ids(cases):
    return [f"{n}{o or ''}" for n, o in cases]


def mixture_eps(x, s):
    """Exact eps of the mixture (x: (N, 2) float64, s: (N, 1) sigma)."""
    var = STD**2 + s**2
    d0 = x - MEANS[0]
    logit = (
        math.log(WEIGHTS[1] / WEIGHTS[0])
        - 0.5 * (((x - MEANS[1]) ** 2).sum(-1, keepdim=True) - (d0**2).sum(-1, keepdim=True)) / var
    )
    return s * (d0 + torch.sigmoid(logit) * (MEANS[0] - MEANS[1])) / var


def vp_ode(eps_fn=mixture_eps, sigma_max=157.0):
    """An eps model in VP space (x = xbar / sqrt(1 + sigma^2)), fed sigma in the model's dtype."""

    def model(x, t):
        s = t.to(F64)[:, None]
        return eps_fn(x.to(F64) * torch.sqrt(1 + s**2), s).to(x.dtype)

    return ds.wrap(model, ds.SigmaSchedule(0.0, sigma_max, space="vp"), prediction="eps", time="sigma")


def gaussian_eps(x, s):
    """Exact eps of N(MEANS[0], STD^2 I) (E38): cheap, for the many runs of the float32 test."""
    return s * (x - MEANS[0]) / (STD**2 + s**2)


def ve_mixture_ode():
    def model(x, t):
        return mixture_eps(x, t[:, None])

    return ds.wrap(model, ds.SigmaSchedule(0.0, 80.0), prediction="eps", time="sigma", time_dtype=F64)


def karras(steps, sigma_min=0.01, sigma_max=20.0):
    return ds.grid("karras", ds.SigmaSchedule(sigma_min, sigma_max), steps)


# -- float32: finite for every step count, the final step to sigma = 0 included ------------------------
@pytest.mark.parametrize(
    "name, options",
    NATIVE + STOCHASTIC + TORCHDIFFEQ_FIXED + ADAPTIVE,
    ids=_ids(NATIVE + STOCHASTIC + TORCHDIFFEQ_FIXED + ADAPTIVE),
)
def test_float32_stays_finite_for_1_to_50_steps(name, options):
    # VP model with sigma_max = 157 (DDPM's): |xbar| ~ 157 at the start, the float32 stress of pitfall 6.
    # Adaptive methods choose their own internal steps, so a few grid sizes cover them (at a
    # looser tolerance than their default 1e-5, to keep this fast).
    ode = vp_ode(gaussian_eps)
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(0)).to(torch.float32)
    step_counts = range(1, 51)
    if name in dict(ADAPTIVE):
        step_counts, options = (1, 2, 3, 5, 50), {**options, "rtol": 1e-4, "atol": 1e-4}
    for steps in step_counts:
        gen = torch.Generator().manual_seed(steps)
        out = ds.sample(
            ode, x_T, name, sigmas=ds.grid("karras", ode.schedule, steps, sigma_min=0.002), generator=gen, **options
        )  # check_finite: raises NonFiniteError otherwise
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


# -- adaptive solvers meet their tolerance on the exact Gaussian flow (E38) ---------------------------------
@pytest.mark.parametrize("name, options", ADAPTIVE, ids=_ids(ADAPTIVE))
def test_adaptive_solvers_meet_their_tolerance(name, options):
    g = Gaussian(torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=F64), 0.5)
    ode = g.ode(ds.SigmaSchedule(0.0, 200.0, space="vp"), time="sigma")
    x_T = torch.tensor([[-2.0, -0.5, 0.7, 1.9], [0.3, 1.2, -0.4, -1.1]], dtype=F64)
    # log-sigma stops at sigma = 0.01 (a grid ending at 0 would end with a first-order denoise step)
    end = 0.01 if options["variable"] == "log-sigma" else 0.0
    errors, nfes = [], []
    for tol, grids in ((1e-3, ([80.0, end], [80.0, 10.0, 1.0, 0.1, end])), (1e-5, ([80.0, 10.0, 1.0, 0.1, end],))):
        for grid in grids:
            ode.nfe = 0
            out = ds.sample(ode, x_T, name, sigmas=grid, rtol=tol, atol=tol, **options)
            exact = g.exact_flow(ode.to_xbar(x_T, 80.0), 80.0, end)
            err = float((ode.to_xbar(out, end) - exact).abs().max())
            # global error against the scale torchdiffeq controls locally: atol + rtol * |x|
            assert err <= 20 * (tol + tol * float(exact.abs().max())), (tol, grid, err)
            errors.append(err)
            nfes.append(ode.nfe)
    assert max(errors[2:]) < max(errors[:2]) / 10  # the error follows the tolerance
    assert min(nfes[2:]) > max(nfes[:2])  # a tighter tolerance costs more model calls


# -- encoding: increasing grids -------------------------------------------------------------------------------
@pytest.mark.parametrize("name, options", NATIVE + TORCHDIFFEQ_FIXED, ids=_ids(NATIVE + TORCHDIFFEQ_FIXED))
def test_invert_round_trip_converges(name, options):
    ode = ve_mixture_ode()
    x0 = torch.tensor([[1.1, 0.3], [-0.7, -0.5], [-1.4, 0.2]], dtype=F64)
    errors = []
    for steps in (8, 16, 32):
        # 0, sigma_min, ..., 20 with sigma_min shrinking too: the driver's Euler step out of 0 and a
        # log-sigma decoder's final denoise step are O(sigma_min^2) each
        grid = torch.cat([torch.zeros(1, dtype=F64), karras(steps, sigma_min=0.16 / steps).flip(0)[1:]])
        x_T = ds.invert(ode, x0, name, sigmas=grid, **options)
        back = ds.sample(ode, x_T, name, sigmas=grid.flip(0), **options)
        errors.append(float((back - x0).abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 2, errors


@pytest.mark.parametrize("name, options", ADAPTIVE, ids=_ids(ADAPTIVE))
def test_adaptive_round_trip_is_within_tolerance(name, options):
    ode = ve_mixture_ode()
    x0 = torch.tensor([[1.1, 0.3], [-0.7, -0.5], [-1.4, 0.2]], dtype=F64)
    grid = torch.cat([torch.zeros(1, dtype=F64), karras(4).flip(0)[1:]])
    back = ds.sample(ode, ds.invert(ode, x0, name, sigmas=grid, **options), name, sigmas=grid.flip(0), **options)
    # default tolerance 1e-5; the floor is the driver's Euler step out of sigma = 0 (to 0.01)
    assert float((back - x0).abs().max()) < 1e-3


@pytest.mark.parametrize(
    "name, options", NATIVE + TORCHDIFFEQ_FIXED + ADAPTIVE, ids=_ids(NATIVE + TORCHDIFFEQ_FIXED + ADAPTIVE)
)
def test_solver_integrates_upward_on_an_increasing_grid_from_positive_sigma(name, options):
    """A grid starting at sigma = 0.5 > 0: the solver takes every step upward itself (no Euler start)."""
    g = Gaussian(torch.tensor([0.3, -0.2, 0.1, 0.5], dtype=F64), 0.5)
    ode = g.ode(ds.SigmaSchedule(0.0, 200.0, space="vp"), time="sigma")
    x0 = torch.tensor([[-2.0, -0.5, 0.7, 1.9], [0.3, 1.2, -0.4, -1.1]], dtype=F64)
    exact = g.exact_flow(ode.to_xbar(x0, 0.5), 0.5, 20.0)  # E38 holds in both directions
    errors = []
    for steps in (16,) if name in dict(ADAPTIVE) else (16, 32, 64):
        grid = torch.exp(torch.linspace(math.log(0.5), math.log(20.0), steps + 1, dtype=F64))
        errors.append(float((ode.to_xbar(ds.invert(ode, x0, name, sigmas=grid, **options), 20.0) - exact).abs().max()))
    if name in dict(ADAPTIVE):
        assert max(errors) <= 20 * (1e-5 + 1e-5 * float(exact.abs().max())), errors
    else:
        assert errors[0] > errors[1] > errors[2] and errors[2] < errors[0] / 3, errors


# -- model calls ------------------------------------------------------------------------------------------------
NFE = [  # (solver, options, steps, NFE on a grid ending at sigma = 0)
    ("heun", {}, 10, 19),  # 2 per step, Euler (1) on the step to 0
    ("plms", {}, 10, 19),  # 3 pseudo-RK steps of 4 calls, then 1 per step: steps + 9
    ("plms", {}, 2, 8),  # all pseudo-RK
    ("lms", {}, 10, 10),
    ("ipndm", {}, 10, 10),
    ("plms-hb", {}, 10, 10),
    ("ghvb", {}, 10, 10),
    ("euler-ancestral", {}, 10, 10),
    ("torchdiffeq-rk4", {}, 10, 40),
    ("torchdiffeq-rk4", {"variable": "log-sigma"}, 10, 37),  # 9 RK4 steps + the denoise step
    ("torchdiffeq-heun3", {}, 10, 30),
    ("torchdiffeq-explicit_adams", {}, 10, 16),  # 2 RK4 warm-up steps: steps + 6
    ("torchdiffeq-euler", {"variable": "log-sigma"}, 1, 1),  # only the denoise step
]


@pytest.mark.parametrize("name, options, steps, nfe", NFE, ids=[f"{c[0]}{c[1] or ''}-{c[2]}" for c in NFE])
def test_model_calls_per_run(name, options, steps, nfe):
    ode = ve_mixture_ode()
    calls = []
    inner = ode.model
    ode.model = lambda x, t, **kw: calls.append(1) or inner(x, t, **kw)
    ds.sample(
        ode,
        20 * torch.ones(1, 2, dtype=F64),
        name,
        sigmas=karras(steps).tolist(),
        generator=torch.Generator().manual_seed(0),
        **options,
    )
    assert ode.nfe == len(calls) == nfe


# -- options, flags, noise -----------------------------------------------------------------------------------------
BAD_OPTIONS = [
    ("lms", {"solver_order": 5}, "solver_order"),
    ("ipndm", {"solver_order": 0}, "solver_order"),
    ("ghvb", {"beta": 0.0}, "beta"),
    ("plms-hb", {"beta": 1.5}, "beta"),
    ("ghvb", {"solver_order": 2.0}, "solver_order"),
    ("lms", {"solver_order": True}, "solver_order"),
    ("plms", {"midpoint": "mean"}, "midpoint"),
    ("heun", {"s_churn": -1.0}, "s_churn"),
    ("heun", {"s_tmin": 2.0, "s_tmax": 1.0}, "s_tmax"),
    ("heun", {"s_noise": math.nan}, "s_noise"),
    ("euler-ancestral", {"eta": -0.1}, "eta"),
    ("torchdiffeq-rk4", {"variable": "t"}, "variable"),
    ("torchdiffeq-dopri5", {"rtol": 0.0}, "rtol"),
    ("torchdiffeq-dopri5", {"atol": -1e-6}, "atol"),
    ("torchdiffeq-rk4", {"rtol": 1e-3}, "variable"),  # fixed-grid methods take no tolerance
]


@pytest.mark.parametrize("name, options, word", BAD_OPTIONS, ids=[f"{c[0]}{c[1]}" for c in BAD_OPTIONS])
def test_bad_options_raise_value_error_naming_them(name, options, word):
    with pytest.raises(ValueError, match=word):
        ds.make_solver(name, **options)


def test_stochastic_flags_follow_the_options():
    assert not ds.make_solver("heun").stochastic and ds.make_solver("heun").invertible
    assert ds.make_solver("heun", s_churn=1.0).stochastic and not ds.make_solver("heun", s_churn=1.0).invertible
    assert ds.make_solver("euler-ancestral").stochastic
    assert not ds.make_solver("euler-ancestral", eta=0.0).stochastic
    assert not ds.make_solver("euler-ancestral", s_noise=0.0).stochastic
    with pytest.raises(ValueError, match="stochastic"):
        ds.invert(ve_mixture_ode(), torch.zeros(1, 2, dtype=F64), "heun", sigmas=[0.0, 1.0, 2.0], s_churn=1.0)


@pytest.mark.parametrize("name, options", STOCHASTIC, ids=_ids(STOCHASTIC))
def test_noise_comes_from_the_driver_per_sample(name, options):
    """Noise only via ``state.noise``: a sample with its own generator does not depend on its batch."""
    ode, grid = ve_mixture_ode(), karras(8)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=F64) * 20
    gens = lambda: [torch.Generator().manual_seed(100 + k) for k in range(3)]
    batch = ds.sample(ode, x, name, sigmas=grid, generator=gens(), **options)
    alone = ds.sample(ode, x[1:2], name, sigmas=grid, generator=gens()[1:2], **options)
    torch.testing.assert_close(batch[1:2], alone, rtol=0, atol=1e-12)
    other = ds.sample(ode, x, name, sigmas=grid, generator=torch.Generator().manual_seed(5), **options)
    assert float((other - batch).abs().max()) > 1e-3  # the noise matters


# -- torchdiffeq solvers report every grid state to the driver ----------------------------------------------------
def test_torchdiffeq_trajectory_is_the_grid_states():
    ode, grid = vp_ode(), karras(12, sigma_max=157.0).tolist()
    x_T = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    seen = []
    out, traj = ds.sample(
        ode,
        x_T,
        "torchdiffeq-euler",
        sigmas=grid,
        return_trajectory=True,
        callback=lambda info: seen.append((info["i"], info["sigma_next"])),
    )
    _, ref_traj = ds.sample(ode, x_T, "ddim", sigmas=grid, return_trajectory=True)
    assert seen == [(i, grid[i + 1]) for i in range(12)]
    for a, b in zip(traj, ref_traj):
        assert float((a - b).abs().max()) <= 1e-12 * 157
    for name, options in (("torchdiffeq-dopri5", {}), ("torchdiffeq-bosh3", {"variable": "log-sigma"})):
        seen.clear()
        out, traj = ds.sample(
            ode,
            x_T,
            name,
            sigmas=grid,
            return_trajectory=True,
            rtol=1e-6,
            atol=1e-6,
            callback=lambda info: seen.append(info["i"]),
            **options,
        )
        assert seen == list(range(12)) and len(traj) == 13 and torch.equal(traj[-1], out)
        # an intermediate state is the ODE's solution at its grid sigma
        mid = ds.sample(ode, x_T, "torchdiffeq-dopri8", sigmas=grid[:9], rtol=1e-9, atol=1e-9)
        assert float((traj[8] - mid).abs().max()) < 1e-4


# -- the shared weights of _multistep ---------------------------------------------------------------------------
def test_adams_bashforth_weights_are_the_classical_table():
    table = {
        1: [1],
        2: [Fraction(3, 2), Fraction(-1, 2)],
        3: [Fraction(23, 12), Fraction(-16, 12), Fraction(5, 12)],
        4: [Fraction(55, 24), Fraction(-59, 24), Fraction(37, 24), Fraction(-9, 24)],
        5: [Fraction(c, 720) for c in (1901, -2774, 2616, -1274, 251)],
    }
    for k, expected in table.items():
        assert ms.adams_bashforth(k) == pytest.approx([float(c) for c in expected], abs=1e-14)
    assert ms.adams_series(6) == pytest.approx([1, 1 / 2, 5 / 12, 3 / 8, 251 / 720, 95 / 288], abs=1e-15)  # eq. 15


@pytest.mark.parametrize("beta", [0.2, 0.5, 0.8, 1.0])
def test_ghvb_weights_are_the_papers_table(beta):
    b = beta  # Wizadwongsa et al. 2023, Algorithm 2 (orders 2-5) and eq. 19
    table = {
        2: [(2 + b) / (2 * b), -(2 - b) / (2 * b)],
        3: [(18 + 5 * b) / (12 * b), -(24 - 8 * b) / (12 * b), (6 - b) / (12 * b)],
        4: [(46 + 9 * b) / (24 * b), -(78 - 19 * b) / (24 * b), (42 - 5 * b) / (24 * b), -(10 - b) / (24 * b)],
        5: [
            (1650 + 251 * b) / (720 * b),
            -(3420 - 646 * b) / (720 * b),
            (2880 - 264 * b) / (720 * b),
            -(1380 - 106 * b) / (720 * b),
            (270 - 19 * b) / (720 * b),
        ],
    }
    assert ms.ghvb_weights(1, b) == pytest.approx([1.0], abs=1e-14)
    for k, expected in table.items():
        assert ms.ghvb_weights(k, b) == pytest.approx(expected, abs=1e-13)


def test_lagrange_weights_integrate_polynomials_exactly():
    nodes, a, b = [2.0, 2.7, 3.1, 4.5], 2.0, 1.4  # a step downward from the newest node, like a sampler
    w = ms.lagrange_weights(nodes, a, b)
    for p in range(4):  # integral_a^b s^p ds
        exact = (b ** (p + 1) - a ** (p + 1)) / (p + 1)
        assert (b - a) * sum(wj * s**p for wj, s in zip(w, nodes)) == pytest.approx(exact, rel=1e-13)
    equal = ms.lagrange_weights([5.0, 6.0, 7.0, 8.0], 5.0, 4.0)  # equal steps: Adams-Bashforth
    assert equal == pytest.approx(ms.adams_bashforth(4), abs=1e-13)
    steps = ms.warmup_weights([3.0, 2.0, 1.5, 1.2, 1.0, 0.0], 3, variable_step=True)
    assert [len(c) for c in steps] == [1, 2, 3, 3, 3]  # order ramps up while history builds
    assert steps[0] == pytest.approx([-1.0])  # the first step is Euler (DDIM)
