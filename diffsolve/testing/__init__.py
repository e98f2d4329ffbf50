"""Testing helpers for diffsolve and its plugins.

* :func:`check_solver` (:mod:`diffsolve.testing.solver_checks`): the contract and the laws every
  solver obeys (shapes and dtypes, seeds, a one-step grid, landing on the data, the measured order
  against the declared one, inversion), as one call for a plugin author's own pytest.
* :mod:`diffsolve.testing.strategies`: the hypothesis strategies the property suite
  (``tests/properties``) is built on: schedules, sigma grids, states, analytic problems and random
  smooth networks. It needs ``hypothesis`` (``pip install diffsolve[test]``); importing this
  package does not.
"""

from .solver_checks import check_solver

__all__ = ["check_solver", "strategies"]  # strategies: a submodule, `from diffsolve.testing import strategies`
