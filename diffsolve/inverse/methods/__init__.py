"""The built-in restoration methods of :func:`diffsolve.restore`, one file per method."""

from .daps import DAPS
from .ddnm import DDNM
from .ddrm import DDRM
from .dps import DPS
from .pigdm import PiGDM
from .red_diff import REDDiff

BUILTIN_RESTORERS = (DDNM, DDRM, DPS, PiGDM, REDDiff, DAPS)

__all__ = ["DDNM", "DDRM", "DPS", "PiGDM", "REDDiff", "DAPS", "BUILTIN_RESTORERS"]
