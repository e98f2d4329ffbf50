"""The Gaussian first step (diffsolve.gaussian_step, docs/math.md section 3.11, G1-G3): the closed-form flow solves
the ODE of Gaussian data with a full covariance, the moments fitted from samples are their mean and covariance (low
rank plus an isotropic rest), one DDIM step answered by the first eps lands on the flow, and a recipe carrying the
moments replays bit for bit, checks them, and refuses samples of another shape."""

import math

import pytest
import torch
from torchdiffeq import odeint

import diffsolve as ds
from diffsolve.analytic import default_schedule, get_problem
from diffsolve.gaussian_step import GaussianMoments
from diffsolve.recipe_ode import RecipeError, schedule_fingerprint

F64 = torch.float64


def _anisotropic(d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=F64)
    cov = a @ a.T / d + 0.05 * torch.eye(d, dtype=F64)
    mean = torch.randn(d, generator=g, dtype=F64)
    return mean, cov, g


def _exact_moments(mean, cov, shape):
    lam, u = torch.linalg.eigh(cov)
    return GaussianMoments(tuple(mean.tolist()), tuple(tuple(v) for v in u.T.tolist()), tuple(lam.tolist()), 0.0, shape)


def test_the_closed_form_flow_solves_the_gaussian_ode_with_a_full_covariance():
    # G1 against an independent integration of d xbar / d sigma = sigma (Sigma + sigma^2 I)^-1 (xbar - mu)
    mean, cov, g = _anisotropic()
    moments = _exact_moments(mean, cov, (5,))
    xbar0 = 40.0 * torch.randn(3, 5, generator=g, dtype=F64)
    eye = torch.eye(5, dtype=F64)

    def eps(s, y):
        return (s * torch.linalg.solve(cov + s * s * eye, (y - mean).T)).T

    want = odeint(eps, xbar0, torch.tensor([40.0, 0.7], dtype=F64), rtol=1e-11, atol=1e-11)[-1]
    # dopri5 at 1e-11 on a state of size ~40: agreement to ~1e-9
    torch.testing.assert_close(moments.flow(xbar0, 40.0, 0.7), want, rtol=0, atol=1e-8)


def test_the_isotropic_case_is_e38():
    problem = get_problem("gaussian")  # N(m, s^2 I)
    m = problem.mean
    moments = GaussianMoments(tuple(m.tolist()), (), (), problem.std**2, (m.numel(),))
    xbar = torch.randn(4, m.numel(), generator=torch.Generator().manual_seed(1), dtype=F64) * 30
    torch.testing.assert_close(moments.flow(xbar, 30.0, 2.0), problem.exact_flow(xbar, 30.0, 2.0), rtol=1e-14, atol=0)


def test_fitted_moments_are_the_sample_mean_and_covariance():
    mean, cov, g = _anisotropic()
    y = mean + torch.randn(400, 5, generator=g, dtype=F64) @ torch.linalg.cholesky(cov).T
    full = GaussianMoments.fit(y.reshape(400, 1, 5), rank=5)
    v, lam = torch.tensor(full.components, dtype=F64), torch.tensor(full.variances, dtype=F64)
    torch.testing.assert_close(torch.tensor(full.mean, dtype=F64), y.mean(0), rtol=0, atol=1e-14)
    torch.testing.assert_close(v.T @ torch.diag(lam) @ v, torch.cov(y.T), rtol=0, atol=1e-12)
    assert full.residual == pytest.approx(0.0, abs=1e-12) and full.shape == (1, 5)
    # rank 2: the two leading directions, and the mean variance of the three others
    low = GaussianMoments.fit(y.reshape(400, 1, 5), rank=2)
    ev = torch.linalg.eigvalsh(torch.cov(y.T))
    torch.testing.assert_close(torch.tensor(low.variances, dtype=F64), ev.flip(0)[:2], rtol=1e-12, atol=0)
    assert low.residual == pytest.approx(float(ev[:3].mean()), rel=1e-12)


def test_one_ddim_step_answered_by_the_first_eps_lands_on_the_gaussian_flow():
    # G3 through a recipe: ddim from sigma_0 with AFS answered by the Gaussian first step; the state after the first
    # step is the flow's (a float64 run of the same formula: rounding only)
    problem = get_problem("gaussian")
    sched = default_schedule()
    ode = problem.ode(sched)
    m = problem.mean
    moments = GaussianMoments(tuple(m.tolist()), (), (), problem.std**2, (m.numel(),))
    sigmas = [float(sched.sigma_max), 3.0, 0.5, 0.0]
    recipe = ds.Recipe(
        "ddim", {}, sigmas, True, 2, schedule_fingerprint(sched, ode.prediction), params={"gaussian": moments}
    )
    x_T = torch.randn(6, m.numel(), generator=torch.Generator().manual_seed(2), dtype=F64)
    out, traj = ds.sample(ode, x_T, recipe=recipe, return_trajectory=True)
    xbar1 = ode.to_xbar(traj[1], 3.0)
    want = problem.exact_flow(ode.to_xbar(x_T, sigmas[0]), sigmas[0], 3.0)
    torch.testing.assert_close(xbar1, want, rtol=1e-12, atol=1e-12)
    # the same grid with plain AFS misses it: the data's mean is not 0
    plain = ds.Recipe("ddim", {}, sigmas, True, 2, recipe.fingerprint)
    _, traj_afs = ds.sample(ode, x_T, recipe=plain, return_trajectory=True)
    assert (ode.to_xbar(traj_afs[1], 3.0) - want).abs().max() > 1e-3


def _gaussian_recipe(shape=(2,)):
    sched = default_schedule()
    ode = get_problem("gmm2d").ode(sched)
    y = torch.randn(50, *shape, generator=torch.Generator().manual_seed(0), dtype=F64) * 0.7 + 0.2
    params = {"gaussian": GaussianMoments.fit(y)}
    sig = [float(sched.sigma_max), 2.0, 0.4, 0.0]
    return ode, ds.Recipe("ipndm", {}, sig, True, 2, schedule_fingerprint(sched, ode.prediction), params=params)


def test_a_recipe_with_gaussian_moments_replays_bit_for_bit_with_exactly_its_nfe_calls(tmp_path):
    ode, recipe = _gaussian_recipe()
    back = ds.Recipe.load(recipe.save(tmp_path / "r.json"))
    assert back.to_dict() == recipe.to_dict() and "afs=gaussian" in repr(back)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    n0 = ode.nfe
    out = ds.sample(ode, x, recipe=recipe)
    assert ode.nfe - n0 == recipe.nfe == 2
    assert torch.equal(ds.sample(ode, x, recipe=back), out)
    # and the moments change the run: the same recipe with plain AFS lands elsewhere
    plain = ds.Recipe("ipndm", {}, recipe.sigmas, True, 2, recipe.fingerprint)
    assert not torch.allclose(ds.sample(ode, x, recipe=plain), out)


def test_a_recipe_for_samples_of_another_shape_is_refused():
    ode, recipe = _gaussian_recipe(shape=(1, 2))
    n0 = ode.nfe
    with pytest.raises(RecipeError, match=r"shape \(1, 2\).*\(2,\)"):
        ds.sample(ode, torch.zeros(3, 2, dtype=F64), recipe=recipe)
    assert ode.nfe == n0  # refused at the first evaluation, which the Gaussian step answers: no model call


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.update(residual=-1.0), "residual"),
        (lambda d: d.update(mean=d["mean"][:1]), "mean"),
        (lambda d: d["components"][0].__setitem__(0, d["components"][0][0] + 0.1), "orthonormal"),
        (lambda d: d.update(variances=[]), "variances"),
        (lambda d: d.update(shape=[0]), "shape"),
        (lambda d: d.pop("shape"), "shape"),
    ],
)
def test_damaged_moments_in_a_recipe_are_refused_naming_the_entry(edit, match):
    ode, recipe = _gaussian_recipe()
    d = recipe.to_dict()
    edit(d["params"]["gaussian"])
    with pytest.raises(RecipeError, match=match):
        ds.Recipe.from_dict(d)


def test_gaussian_moments_need_afs():
    _, recipe = _gaussian_recipe()
    d = recipe.to_dict()
    d["afs"], d["nfe"] = False, 3
    with pytest.raises(RecipeError, match="afs=True"):
        ds.Recipe.from_dict(d)


def test_fit_refuses_a_single_sample_and_non_finite_ones():
    with pytest.raises(ValueError, match="at least 2 samples"):
        GaussianMoments.fit(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="finite"):
        GaussianMoments.fit(torch.tensor([[0.0, math.nan], [1.0, 2.0]]))
