"""The example plugin's own test: diffsolve's laws for its solver, in one call (docs/plugins.md section 4)."""

from diffsolve_example_plugin import ExampleMidpoint

from diffsolve.testing import check_solver


def test_example_midpoint_obeys_the_diffsolve_contract():
    report = check_solver(ExampleMidpoint)
    assert abs(report["measured_order"] - 2) < 0.3  # explicit midpoint: second order
