"""Testing helpers for diffsolve and its plugins.

:mod:`diffsolve.testing.strategies` holds the hypothesis strategies the property suite
(``tests/properties``) is built on: schedules, sigma grids, states, analytic problems and
random smooth networks. A plugin author can reuse them to test a solver against the same laws.
It needs ``hypothesis`` (``pip install diffsolve[test]``); importing this package does not.
"""

__all__ = ["strategies"]  # a submodule: `from diffsolve.testing import strategies`
