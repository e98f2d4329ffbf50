"""Claim 15: diffsolve's 'ddim-uniform' and 'ddim-quad' are exactly the official DDIM code's index rules
(E39, E40): integer equality with the note's table and with an independent implementation, for any T, S."""

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

import diffsolve as ds
from diffsolve.grids import ddim_quad_indices, ddim_uniform_indices

from . import reference as ref

LINEAR = ds.DiscreteSchedule.linear()


def test_claim15_official_grids_reproduce_the_table():
    # docs/math.md 4.2 (T = 1000)
    assert ddim_uniform_indices(1000, 10) == list(range(0, 1000, 100))
    assert ddim_uniform_indices(1000, 20) == list(range(0, 1000, 50))
    assert ddim_uniform_indices(1000, 50) == list(range(0, 1000, 20))
    assert ddim_uniform_indices(1000, 100) == list(range(0, 1000, 10))
    assert ddim_uniform_indices(1000, 1000) == list(range(1000))
    assert ddim_quad_indices(1000, 10) == [0, 9, 39, 88, 158, 246, 355, 483, 632, 800]
    assert ddim_quad_indices(1000, 20) == [
        0,
        2,
        8,
        19,
        35,
        55,
        79,
        108,
        141,
        179,
        221,
        268,
        319,
        374,
        434,
        498,
        567,
        640,
        718,
        800,
    ]
    assert ddim_quad_indices(1000, 50)[:6] == [0, 0, 1, 2, 5, 8]
    assert ddim_quad_indices(1000, 100)[:8] == [0, 0, 0, 0, 1, 2, 2, 3]
    # non-divisors: NFE = len(seq) = 16, 31, 334, 500, 1000
    assert [len(ddim_uniform_indices(1000, S)) for S in (15, 30, 300, 400, 600)] == [16, 31, 334, 500, 1000]
    # quad distinct counts
    assert [len(set(ddim_quad_indices(1000, S))) for S in (10, 20, 50, 100, 200, 500, 1000)] == [
        10,
        20,
        49,
        96,
        187,
        422,
        688,
    ]
    assert all(ddim_quad_indices(1000, S)[-1] == 800 for S in (10, 20, 50, 100, 1000))


@given(st.integers(2, 2000), st.data())
def test_claim15_index_rules_equal_an_independent_implementation(T, data):
    S = data.draw(st.integers(1, T), label="S")
    assert ddim_uniform_indices(T, S) == ref.official_uniform(T, S)
    if S >= 2:
        assert ddim_quad_indices(T, S) == ref.official_quad(T, S)


@given(st.integers(1, 1000))
def test_claim15_grids_visit_exactly_the_official_levels(S):
    # the sigmas of the grid are the schedule's own levels at the official indices, top first, then 0
    seq = ref.official_uniform(1000, S)
    sig = ds.grid("ddim-uniform", LINEAR, S)
    assert torch.equal(sig, torch.cat([LINEAR.sigmas[list(reversed(seq))], torch.zeros(1, dtype=torch.float64)]))
    assume(S >= 2)
    distinct = sorted(set(ref.official_quad(1000, S)))
    sig = ds.grid("ddim-quad", LINEAR, S, duplicates="drop")
    # duplicates dropped on request (each would be a no-op step costing one call, claim 16): one level per
    # distinct index; without the request a step count with duplicates is an error (test_grids.py)
    assert torch.equal(sig, torch.cat([LINEAR.sigmas[list(reversed(distinct))], torch.zeros(1, dtype=torch.float64)]))


def test_claim15_quad_needs_two_steps():
    with pytest.raises(ValueError, match="ddim-quad needs steps >= 2"):
        ds.grid("ddim-quad", LINEAR, 1)
