"""Any diffsolve solver as a k-diffusion / ComfyUI sampler function.

k-diffusion's samplers share one signature, ``sampler(model, x, sigmas, extra_args=None,
callback=None, disable=None)``, where ``model(x, sigma, **extra_args)`` is a *denoiser* in the VE
convention: ``x`` is the noisy sample x0 + sigma * noise (the sigma-form state xbar itself), ``sigma``
a tensor of one value per sample, and the return value the denoised estimate D (docs/math.md
E16). ``x`` arrives already scaled to ``sigmas[0]`` and ``sigmas`` usually ends at 0. ComfyUI's
custom samplers (``KSAMPLER``) take functions of this form.

:func:`k_sampler` wraps the denoiser as an x0-prediction model on a VE schedule whose time is
sigma, and calls :func:`diffsolve.sample` on exactly the given ``sigmas``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..sampling import make_solver, sample
from ..schedules import SigmaSchedule
from ..wrapper import DiffusionODE

__all__ = ["k_sampler"]


def k_sampler(name: str, **options: Any) -> Callable[..., torch.Tensor]:
    """The diffsolve solver ``name`` (with its ``options``) as a k-diffusion sampler function.

    The returned function also takes ``generator=`` (a ``torch.Generator`` or one per sample)
    for stochastic solvers; without it they draw from torch's global RNG, as k-diffusion does.
    ``disable`` follows k-diffusion's progress-bar flag (a bar is shown only for ``disable=False``).
    The callback receives k-diffusion's dict: ``x``, ``i``, ``sigma``, ``sigma_hat``, ``denoised``.
    """
    make_solver(name, **options)  # unknown names and bad options fail here, not mid-run

    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
        sig = torch.as_tensor(sigmas).detach().to(torch.float64).cpu()
        positive = sig[sig > 0]
        if positive.numel() == 0:
            raise ValueError("sigmas must contain a positive noise level")
        hi, lo = float(positive.max()), float(positive.min())
        schedule = SigmaSchedule(lo if lo < hi else 0.0, hi, space="ve")

        def denoiser(x_in, sigma, **kwargs):
            return model(x_in, sigma, **kwargs)

        ode = DiffusionODE(denoiser, schedule, prediction="x0", time="sigma",
                           model_kwargs=extra_args or {}, time_dtype=x.dtype)
        k_callback = None
        if callback is not None:
            def k_callback(info):
                callback({"x": info["x"], "i": info["i"], "sigma": sig[info["i"]],
                          "sigma_hat": sig[info["i"]], "denoised": info["denoised"]})
        return sample(ode, x, make_solver(name, **options), sigmas=sig, generator=generator,
                      callback=k_callback, progress=disable is False)

    sampler.__name__ = f"sample_{name.replace('-', '_')}"
    sampler.__doc__ = f"diffsolve {name!r} as a k-diffusion sampler (options {options})."
    return sampler
