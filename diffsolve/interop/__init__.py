"""Bridges to the hosts most people run diffusion models in.

* :mod:`diffsolve.interop.diffusers`: :func:`from_diffusers` (a diffusers model and scheduler
  config as a :class:`~diffsolve.DiffusionODE`) and :class:`DiffsolveScheduler` (any diffsolve
  solver inside unmodified diffusers pipelines). Needs the ``diffusers`` extra for the scheduler.
* :mod:`diffsolve.interop.k_diffusion`: :func:`k_sampler`, any diffsolve solver as a
  k-diffusion / ComfyUI sampler function. Needs nothing beyond diffsolve.
"""
