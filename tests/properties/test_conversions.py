"""Claims 2 and 19: the wrapper's conversions (E9-E17) are exact, so the ODE does not depend on what
the model predicts, which time it is fed, or which space its state lives in."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import diffsolve as ds
from diffsolve.testing import strategies as dst

PREDICTIONS = ["eps", "x0", "v", "score", "flow"]
SPACES = {
    "vp": lambda: ds.SigmaSchedule(0.0, 1e4, space="vp"),
    "ve": lambda: ds.SigmaSchedule(0.0, 1e4, space="ve"),
    "flow": lambda: ds.FlowSchedule(t_eps=1e-6, t_end=1 - 1e-6),
}


def _scale(space, sigma):
    """x = scale * xbar (E6 for VP, identity for VE, E17 for flow), written from the note."""
    return {"vp": 1 / math.sqrt(1 + sigma**2), "ve": 1.0, "flow": 1 / (1 + sigma)}[space]


def _raw_output(prediction, x0, eps, sigma, scale):
    """What an exact model of each parameterisation returns, from the note's definitions."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":  # E11
        return (eps - sigma * x0) / math.sqrt(1 + sigma**2)
    if prediction == "score":  # E14/E15: grad_x log p = grad_xbar log p / scale = -eps / (sigma scale)
        return -eps / (sigma * scale)
    return eps - x0  # E17: flow velocity u


@given(
    st.sampled_from(PREDICTIONS),
    st.sampled_from(sorted(SPACES)),
    st.floats(math.log(1e-3), math.log(1e3)).map(math.exp),
    dst.seeds,
    dst.shapes(),
)
def test_claim02_conversions_recover_x0_and_eps(prediction, space, sigma, seed, shape):
    g = torch.Generator().manual_seed(seed)
    x0, eps = torch.randn(shape, generator=g), torch.randn(shape, generator=g)  # unit variance (claim 2)
    xbar = x0 + sigma * eps  # E8
    scale = _scale(space, sigma)
    out = _raw_output(prediction, x0, eps, sigma, scale)
    seen = {}

    def model(x, t):
        seen["x"], seen["t"] = x, t
        return out.clone()

    ode = ds.wrap(model, SPACES[space](), prediction=prediction, time="sigma", time_dtype=torch.float64)
    denoised, eps_hat = ode.predict(xbar, sigma)
    # claim 2's bound: 1e-14 * max(sigma, 1/sigma) * max(1, |x0|, |eps|): the conversions divide by sigma
    # (x0 -> eps) or cancel terms of size sigma |eps| (eps -> x0); nothing else loses digits
    tol = 1e-14 * max(sigma, 1 / sigma) * max(1.0, x0.abs().max().item(), eps.abs().max().item())
    torch.testing.assert_close(denoised, x0, rtol=0, atol=tol)
    torch.testing.assert_close(eps_hat, eps, rtol=0, atol=tol)
    # x <-> xbar (E6, E17): the model was fed x = scale * xbar at its time sigma
    torch.testing.assert_close(seen["x"], scale * xbar, rtol=1e-15, atol=0)
    torch.testing.assert_close(ode.to_xbar(seen["x"], sigma), xbar, rtol=1e-14, atol=0)
    assert seen["t"].dtype == torch.float64 and torch.all(seen["t"] == sigma)
    # score <-> eps (E15): score_xbar = -eps/sigma = (x0 - xbar)/sigma^2
    torch.testing.assert_close(-eps_hat / sigma, (denoised - xbar) / sigma**2, rtol=0, atol=tol / sigma)


@given(dst.mixtures(), dst.schedules(), st.sampled_from(PREDICTIONS), st.floats(0.0, 1.0), dst.seeds)
def test_claim02_exact_models_in_every_convention_give_the_exact_ode(mixture, sched, prediction, u, seed):
    lo, hi = sched.sigma_min, sched.sigma_max
    sigma = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    ode = ds.wrap(mixture.model(sched, prediction), sched, prediction=prediction, time_dtype=torch.float64)
    xbar = mixture.sample(3, torch.Generator().manual_seed(seed)) + sigma * torch.randn(
        3, mixture.dim, generator=torch.Generator().manual_seed(seed + 1)
    )
    denoised, eps = ode.predict(xbar, sigma)
    # as claim 2, plus the analytic model's own t -> sigma map (about 1e-13 relative in sigma, at most
    # 1e-13 |xbar| in eps): 1e-12 * max(sigma, 1/sigma) * max(1, |xbar|)
    tol = 1e-12 * max(sigma, 1 / sigma) * max(1.0, xbar.abs().max().item())
    torch.testing.assert_close(eps, mixture.eps(xbar, sigma), rtol=0, atol=tol)
    torch.testing.assert_close(denoised, mixture.denoised(xbar, sigma), rtol=0, atol=tol)


@given(dst.gaussians(), dst.sigma_grids(max_steps=20), dst.seeds)
def test_claim19_ddim_trajectory_is_the_same_for_every_prediction(gaussian, sigmas, seed):
    sched = ds.SigmaSchedule(0.0, float(sigmas[0]), space="vp")
    x_T = torch.randn(2, gaussian.dim, generator=torch.Generator().manual_seed(seed))
    trajs = {}
    for p in PREDICTIONS:
        ode = ds.wrap(gaussian.model(sched, p), sched, prediction=p, time_dtype=torch.float64)
        _, traj = ds.sample(ode, x_T, "ddim", sigmas=sigmas, return_trajectory=True)
        trajs[p] = traj
    for p in PREDICTIONS[1:]:
        for k, (a, b) in enumerate(zip(trajs["eps"], trajs[p])):
            # claim 19: 1e-12 * scale, scale = max(1, sigma_k); each step's conversions round at 1e-16 * sigma
            torch.testing.assert_close(b, a, rtol=0, atol=1e-12 * max(1.0, float(sigmas[k])), msg=f"{p}, step {k}")


@given(dst.gaussians(), dst.sigma_grids(max_steps=20, sigma_max=(0.5, 100.0)), dst.seeds, st.sampled_from(PREDICTIONS))
def test_claim19_ddim_xbar_trajectory_is_the_same_in_vp_ve_and_flow_space(gaussian, sigmas, seed, prediction):
    xbar_T = 3 * torch.randn(2, gaussian.dim, generator=torch.Generator().manual_seed(seed))
    got = {}
    for space, make in SPACES.items():
        sched = make()
        ode = ds.wrap(
            gaussian.model(sched, prediction, "sigma" if space != "flow" else "t"),
            sched,
            prediction=prediction,
            time="sigma" if space != "flow" else "t",
            time_dtype=torch.float64,
        )
        x_T = ode.from_xbar(xbar_T, float(sigmas[0]))
        _, traj = ds.sample(ode, x_T, "ddim", sigmas=sigmas, return_trajectory=True)
        got[space] = [ode.to_xbar(x, float(s)) for x, s in zip(traj, sigmas)]
    for space in ("ve", "flow"):
        for k, (a, b) in enumerate(zip(got["vp"], got[space])):
            # xbar scale is sigma |x|: 1e-12 * max(1, sigma_k) * max(1, |xbar_T|) (flow's t <-> sigma map
            # loses up to 1e-16 (1 + sigma) relative in sigma)
            tol = 1e-12 * max(1.0, float(sigmas[k])) * max(1.0, xbar_T.abs().max().item())
            torch.testing.assert_close(b, a, rtol=0, atol=tol, msg=f"{space}, step {k}")
