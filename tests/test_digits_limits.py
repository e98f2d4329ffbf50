"""benchmarks/digits_limits.py measures the recipes' own family: its run is the shipped recipe's run, its proxies
are exact where they can be checked in closed form."""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.gaussian_step import GaussianMoments


@pytest.fixture(scope="module")
def limits(load_benchmark):
    return load_benchmark("digits_limits")


@pytest.mark.parametrize("nfe", [3, 5])
def test_run_table_with_zero_input_scales_is_the_shipped_recipe_run(limits, tmp_path, nfe):
    s = limits.Setup(tmp_path, 4, 6, tol=1e-8)
    recipe, sigmas, c = limits.shipped(nfe)
    moments = GaussianMoments.from_dict(recipe.params["gaussian"])
    log_sigmas = torch.tensor([math.log(v) for v in sigmas[1:-1]], dtype=torch.float64)
    out = limits.run_table(
        s.view,
        s.xbar0(0),
        lambda xbar, sigma1: moments.first_eps(xbar, s.sigma_max, sigma1),
        torch.tensor(c, dtype=torch.float64),
        log_sigmas,
        torch.zeros(len(sigmas) - 2, dtype=torch.float64),
        s.problem.dtype,
    )
    with torch.no_grad():
        want = ds.sample(s.ode, s.x_T(0), recipe=recipe)
    # the same run, its state in float64 here and in the model's float32 in ds.sample: float32 rounding of O(1) values
    torch.testing.assert_close(out.float(), want, atol=1e-4, rtol=0)


def test_mixture_flow_of_one_sample_is_the_closed_form_flow(limits):
    # one zero-width component y: D = y, so xbar(sigma) - y scales with sigma (E38 with s = 0)
    g = torch.Generator().manual_seed(0)
    y = torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64)
    xbar0 = 80 * torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64)
    got = limits.mixture_flow(xbar0, y, 80.0, 0.5, steps=200)
    # RK4, h = log(160) / 200 = 0.025 in log sigma: global error ~ h^4 ~ 4e-7 of the 0.5 / 80 scaled offset (< 1e-7)
    torch.testing.assert_close(got, y + (xbar0 - y) * (0.5 / 80.0), atol=1e-6, rtol=0)


def test_affine_map_recovers_a_map_that_is_affine(limits):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(16, 16, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    x_fit, x_new = (torch.randn(n, 1, 4, 4, generator=g, dtype=torch.float64) for n in (40, 5))
    f = lambda x: (x.reshape(x.shape[0], -1) @ a + b).reshape(x.shape)  # noqa: E731
    torch.testing.assert_close(limits.affine_map(x_fit, f(x_fit), x_new), f(x_new), atol=1e-9, rtol=0)
