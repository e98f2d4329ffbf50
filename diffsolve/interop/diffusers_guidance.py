"""Guided sampling of a diffusers conditional UNet with any guidance method (docs/guidance.md).

diffusers' pipelines compute classifier-free guidance themselves and hand the scheduler only the combined
noise prediction, so :class:`~diffsolve.DiffsolveScheduler` inside such a pipeline runs any solver with
the pipeline's own CFG but cannot apply a method that needs the two predictions separately (CFG++, a
sigma interval, autoguidance, APG on x0). :func:`guided_ode` instead wraps the UNet itself: the guidance
method sees both predictions, and every solver samples the result::

    ode = guided_ode(pipe.unet, pipe.scheduler, prompt_embeds=c, negative_prompt_embeds=u,
                     guidance=ds.make_guidance("cfg++", scale=0.6))
    latents = ds.sample(ode, torch.randn(1, 4, 64, 64), "ddim", sigmas=ds.diffusers_grid(pipe.scheduler.config, 20))
"""

from __future__ import annotations

from typing import Any

import torch

from ..wrapper import DiffusionODE
from .diffusers import from_diffusers

__all__ = ["guided_ode"]


def guided_ode(
    unet,
    scheduler_or_config,
    *,
    prompt_embeds: torch.Tensor,
    negative_prompt_embeds: torch.Tensor,
    guidance,
    cond_kwargs: dict[str, Any] | None = None,
    uncond_kwargs: dict[str, Any] | None = None,
    **wrap_options: Any,
) -> DiffusionODE:
    """A conditional diffusers UNet (``unet(x, t, encoder_hidden_states=...)``) as a guided ODE.

    Args:
        unet: e.g. ``UNet2DConditionModel`` (or any callable taking ``encoder_hidden_states``).
        scheduler_or_config: the pipeline's scheduler or its config (:func:`diffsolve.from_diffusers`).
        prompt_embeds, negative_prompt_embeds: the conditional and unconditional text embeddings, one row
            per sample each (batched into one call per evaluation).
        guidance: a CFG scale (float) or a method from ``ds.make_guidance``.
        cond_kwargs, uncond_kwargs: further per-branch keyword tensors (e.g. SDXL's ``added_cond_kwargs``
            entries passed as plain keywords); the same keys in both.
        wrap_options: passed on to :func:`diffsolve.from_diffusers` / :func:`diffsolve.wrap`.
    """
    cond = {"encoder_hidden_states": prompt_embeds, **(cond_kwargs or {})}
    uncond = {"encoder_hidden_states": negative_prompt_embeds, **(uncond_kwargs or {})}
    return from_diffusers(unet, scheduler_or_config, cond=cond, uncond=uncond, guidance=guidance, **wrap_options)
