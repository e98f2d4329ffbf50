"""Renoising predictions (docs/math.md, "Renoising predictions"): an ODE whose (denoised, eps) pair is off
the state's ray makes the solver continue from denoised + sigma * eps; solvers that cannot are refused."""

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import GaussianMixture, default_schedule
from diffsolve.wrapper import DiffusionODE

MIX = GaussianMixture(torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), 0.5)
SCHED = default_schedule()
SHIFT = 0.25  # D moved off the ray by a constant: x != D + sigma eps for every state


class ShiftedPredictions(DiffusionODE):
    """The mixture's exact model with D shifted by SHIFT and eps kept: a renoising prediction (CFG++ and
    DDNM return such pairs: a guided or projected D with the model's own eps)."""

    def predict(self, xbar, sigma):
        denoised, eps = super().predict(xbar, sigma)
        return denoised + SHIFT, eps


def _odes():
    renoising = ShiftedPredictions(MIX.model(SCHED), SCHED, time_dtype=torch.float64)
    renoising.renoise = True
    plain = ShiftedPredictions(MIX.model(SCHED), SCHED, time_dtype=torch.float64)  # same pairs, not renoising
    return renoising, plain


X_T = torch.randn(2, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0


def test_ddim_under_renoise_steps_to_denoised_plus_sigma_next_times_eps():
    ode, _ = _odes()
    sigmas = ds.grid("trailing", SCHED, 4).tolist()
    states = []
    ds.sample(ode, X_T, "ddim", sigmas=sigmas, callback=lambda info: states.append(info["xbar"]))
    x = ode.to_xbar(X_T, sigmas[0])
    for i in range(len(sigmas) - 2):
        denoised, eps = ode.predict(x, sigmas[i])
        expected = denoised + sigmas[i + 1] * eps  # DDIM's renoised step (docs/math.md, "Renoising predictions")
        torch.testing.assert_close(states[i], expected, rtol=1e-12, atol=1e-12)
        x = states[i]
    assert not torch.allclose(states[0], x_plain_first_step(sigmas), atol=1e-3)  # renoising changed the step


def x_plain_first_step(sigmas):
    _, plain = _odes()
    x = plain.to_xbar(X_T, sigmas[0])
    _, eps = plain.predict(x, sigmas[0])
    return x + (sigmas[1] - sigmas[0]) * eps


def _renoise_ok(name):
    return ds.make_solver(name).renoise_ok


BUILTIN = ds.list_solvers()


@pytest.mark.parametrize("name", [n for n in BUILTIN if _renoise_ok(n)])
def test_every_renoise_ok_solver_runs_on_renoising_predictions_and_uses_them(name):
    ode, plain = _odes()
    kw = {"steps": 6, "generator": torch.Generator().manual_seed(2)}
    out = ds.sample(ode, X_T, name, **kw)
    assert torch.isfinite(out).all()
    kw["generator"] = torch.Generator().manual_seed(2)
    # the same pairs without renoising: the result must differ, or the solver ignored the renoised state
    assert not torch.allclose(out, ds.sample(plain, X_T, name, **kw), atol=1e-6)


@pytest.mark.parametrize("name", [n for n in BUILTIN if not _renoise_ok(n)])
def test_a_solver_that_cannot_take_renoising_predictions_is_refused_with_the_ones_that_can(name):
    ode, _ = _odes()
    with pytest.raises(ValueError, match="renoising") as err:
        ds.sample(ode, X_T, name, steps=4)
    assert name in str(err.value) and "ddim" in str(err.value) and "dpmpp-2m" in str(err.value)
    assert ode.nfe == 0  # refused before the first model call


def test_unipc_takes_renoising_predictions_only_without_its_corrector():
    ode, _ = _odes()
    with pytest.raises(ValueError, match="renoising"):
        ds.sample(ode, X_T, "unipc", steps=4)
    assert torch.isfinite(ds.sample(ode, X_T, "unipc", steps=4, corrector=False)).all()
