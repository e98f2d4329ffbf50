"""Autoguidance (Karras et al. 2024), docs/math.md#guidance-autoguidance: guide with a weaker version of the same
model instead of the unconditional one, both called with the condition:

    D = D_weak + w (D_main - D_weak),   eps = eps_weak + w (eps_main - eps_weak)

The weak model (smaller and/or trained shorter) makes the same kind of errors as the main model,
only more; extrapolating away from it removes those errors without the unconditional model's
pull towards the class-agnostic mode.
"""

from __future__ import annotations

from .base import Guidance
from .cfg import lerp_pair


class Autoguidance(Guidance):
    """CFG's rule with a weaker model in place of the unconditional prediction (docs/math.md#guidance-autoguidance).

    Args:
        scale: w (the paper's best values are about 1.5-3).
        weak_model: called like the main model, ``weak_model(x, t, **cond, **model_kwargs)``, with
            the same prediction type and time convention.
    """

    name = "autoguidance"
    second = "weak"

    def __init__(self, scale: float, *, weak_model=None, sigma_interval=None):
        super().__init__(scale, sigma_interval=sigma_interval)
        if weak_model is None or not callable(weak_model):
            raise TypeError(
                "autoguidance needs weak_model=<callable>: a weaker version of the model, called like it "
                f"(model(x, t, **kwargs)); got {weak_model!r}"
            )
        self.weak_model = weak_model

    def options(self):
        return {"weak_model": type(self.weak_model).__name__}

    def combine(self, xbar, sigma, cond, other, state):
        return lerp_pair(other, cond, self.scale)
