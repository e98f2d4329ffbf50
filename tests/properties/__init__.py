"""Property-based tests: docs/math.md section 10 and the laws of every registered solver.

docs/properties.md maps each claim to its test; tests/properties/test_meta.py keeps the two in sync.
"""
