"""The built-in guidance methods, registered by :mod:`diffsolve.plugins.builtin` (kept apart from the
package's ``make_guidance``, which reads the registry, so that the registry does not import it back)."""

from __future__ import annotations

from .apg import APG
from .autoguidance import Autoguidance
from .cfg import CFG
from .cfg_pp import CFGPlusPlus
from .cfg_rescale import CFGRescale
from .cfg_zero_star import CFGZeroStar

BUILTIN_GUIDANCE = (CFG, CFGPlusPlus, APG, CFGRescale, CFGZeroStar, Autoguidance)
