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

from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..grids import validate_sigmas
from ..sampling import make_solver, sample
from ..schedules import SigmaSchedule
from ..validation import check_state
from ..wrapper import DiffusionODE

__all__ = ["k_sampler", "load_k_diffusion"]


def k_sampler(name: str, **options: Any) -> Callable[..., torch.Tensor]:
    """The diffsolve solver ``name`` (with its ``options``) as a k-diffusion sampler function.

    The returned function also takes ``generator=`` (a ``torch.Generator`` or one per sample)
    for stochastic solvers; without it they draw from torch's global RNG, as k-diffusion does.
    ``disable`` follows k-diffusion's progress-bar flag (a bar is shown only for ``disable=False``).
    The callback receives k-diffusion's dict once per step ``i``, as k-diffusion's samplers call it:
    ``x`` is the state at ``sigmas[i]`` *before* the step, ``sigma`` = ``sigma_hat`` = ``sigmas[i]``
    and ``denoised`` the step's denoised estimate (from the model call at ``sigmas[i]``).
    The arguments are checked before the first model call (``x`` a finite floating tensor with a
    batch dimension, ``sigmas`` a 1-D decreasing grid, ``extra_args`` a dict, ``callback`` callable).
    """
    if not isinstance(name, str):
        raise TypeError(f"k_sampler: name must be a registered solver name (a string), got {name!r}")
    make_solver(name, **options)  # unknown names and bad options fail here, not mid-run

    def sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, generator=None):
        if not callable(model):
            raise TypeError(f"model must be a denoiser model(x, sigma, **extra_args), got {type(model).__name__}")
        check_state(x, "x")
        if extra_args is not None and not isinstance(extra_args, Mapping):
            raise TypeError(f"extra_args must be a dict of model keyword arguments, got {type(extra_args).__name__}")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable with one dict, got {type(callback).__name__}")
        if isinstance(sigmas, torch.Tensor) and sigmas.is_floating_point():
            sigmas = sigmas.detach().to(torch.float64).cpu()
        sig = validate_sigmas(sigmas, name="sigmas")
        positive = sig[sig > 0]
        if positive.numel() == 0:
            raise ValueError("sigmas must contain a positive noise level")
        hi, lo = float(positive.max()), float(positive.min())
        schedule = SigmaSchedule(lo if lo < hi else 0.0, hi, space="ve")

        def denoiser(x_in, sigma, **kwargs):
            return model(x_in, sigma, **kwargs)

        ode = DiffusionODE(
            denoiser, schedule, prediction="x0", time="sigma", model_kwargs=extra_args or {}, time_dtype=x.dtype
        )
        k_callback = None
        if callback is not None:
            before = [x]  # the state at sigmas[i], before step i (k-diffusion's convention)

            def k_callback(info):
                i = info["i"]
                callback({"x": before[0], "i": i, "sigma": sig[i], "sigma_hat": sig[i], "denoised": info["denoised"]})
                before[0] = info["x"]

        return sample(
            ode,
            x,
            make_solver(name, **options),
            sigmas=sig,
            generator=generator,
            callback=k_callback,
            progress=disable is False,
        )

    sampler.__name__ = f"sample_{name.replace('-', '_')}"
    sampler.__doc__ = f"diffsolve {name!r} as a k-diffusion sampler (options {options})."
    return sampler


def load_k_diffusion():
    """k-diffusion's own ``sampling`` and ``external`` modules (``K.sampling.sample_dpmpp_2m``,
    ``K.external.DiscreteEpsDDPMDenoiser``, ...), to run its samplers beside diffsolve's.

    ``import k_diffusion`` runs its package ``__init__``, which imports its training stack
    (scikit-image, torchvision, kornia, clean-fid, CLIP, ...): the install of the README leaves that
    out, since torchvision would replace the installed torch. This loads the two modules from the
    installed k-diffusion files, unchanged, with ``import k_diffusion`` where that works and without
    the package ``__init__`` where it does not (``.how`` says which). ImportError if k-diffusion is
    not installed (``pip install --no-deps k-diffusion``; its samplers need scipy and torchsde, which
    the ``test`` / ``peers`` extras install).
    """
    from ..bench.peers import kdiffusion

    return kdiffusion()
