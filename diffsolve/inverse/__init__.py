"""Inverse problems with the model as the prior: restore x0 from y = A(x0) + noise (docs/restoration.md).

Operators (:mod:`.operators`): :class:`Identity`, :class:`Inpaint`, :class:`Downsample`, :class:`Blur`
(linear, with their SVD) and :class:`Saturate` (nonlinear). Methods are plugins
(:class:`Restorer`, hook ``register_restorers``): ``ddnm``, ``ddrm``, ``dps``, ``pigdm``,
``red-diff``, ``daps``. Front door: :func:`restore`.
"""

from .base import Restorer, Task, hooked
from .operators import Blur, Downsample, Identity, Inpaint, LinearOperator, Operator, Saturate
from .restore import list_restorers, make_restorer, restore

__all__ = [
    "restore",
    "list_restorers",
    "make_restorer",
    "Restorer",
    "Task",
    "hooked",
    "Operator",
    "LinearOperator",
    "Identity",
    "Inpaint",
    "Downsample",
    "Blur",
    "Saturate",
]
