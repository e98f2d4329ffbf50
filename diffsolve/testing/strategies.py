"""Hypothesis strategies for diffsolve's objects (the property suite, ``tests/properties``, is built on them).

Every strategy draws its randomness through hypothesis (numbers, or seeds for torch generators), so
a failing example shrinks and is reported. Everything is float64 unless stated.

Schedules
    :func:`alpha_bar_sequences` (random strictly decreasing alpha_bar in (0, 1)),
    :func:`discrete_schedules` (random or named DDPM schedules), :func:`continuous_schedules`,
    :func:`schedules` (either).
Grids
    :func:`sigma_grids` (random strictly decreasing sigmas, by default ending at 0),
    :func:`named_grids` (a registered grid at a random step count on a drawn schedule).
States
    :func:`shapes`, :func:`states` (bounded float64 tensors of random shapes).
Models
    :func:`gaussians`, :func:`mixtures`, :func:`point_masses` (analytic problems with random
    parameters, :mod:`diffsolve.analytic`), :func:`smooth_networks` (a small tanh MLP with fixed
    random weights, used as an eps model).

Example::

    from hypothesis import given
    from diffsolve.testing import strategies as dst

    @given(dst.point_masses(), dst.sigma_grids())
    def test_my_solver_is_exact_on_a_point_mass(problem, sigmas): ...
"""

from __future__ import annotations

import math
from collections.abc import Sequence

try:
    from hypothesis import assume
    from hypothesis import strategies as st
except ImportError as exc:  # pragma: no cover - only without the test extra
    raise ImportError("diffsolve.testing.strategies needs hypothesis: pip install 'diffsolve[test]'") from exc

import torch

from ..analytic import Gaussian, GaussianMixture, PointMass
from ..schedules import (
    DiscreteSchedule,
    FlowSchedule,
    Schedule,
    SigmaSchedule,
    VPCosineSchedule,
    VPLinearSchedule,
)

__all__ = [
    "seeds",
    "etas",
    "alpha_bar_sequences",
    "discrete_schedules",
    "continuous_schedules",
    "schedules",
    "sigma_grids",
    "named_grids",
    "shapes",
    "states",
    "gaussians",
    "mixtures",
    "point_masses",
    "smooth_networks",
    "TanhMLP",
    "DISCRETE_ONLY_GRIDS",
]

_F64 = torch.float64

#: seeds for torch generators (drawn by hypothesis, so failures shrink to a seed)
seeds = st.integers(min_value=0, max_value=2**32 - 1)

#: DDIM's eta in its valid range [0, 1] (E18 radicand note)
etas = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)

#: grids defined over a DiscreteSchedule's own levels only
DISCRETE_ONLY_GRIDS = ("trailing", "leading", "linspace", "ddim-uniform", "ddim-quad")
#: published tables of one model family: they refuse other schedules, so they are not drawn
#: unless asked for by ``names=`` (with their model's schedule)
MODEL_TABLE_GRIDS = ("ays-sd15", "ays-sdxl", "ays-svd", "gits-sd15")


def _log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log(lo), math.log(hi), allow_nan=False).map(math.exp)


# -- schedules -------------------------------------------------------------------------------
@st.composite
def alpha_bar_sequences(
    draw, min_size: int = 10, max_size: int = 64, min_decrement: float = 1e-4, max_decrement: float = 2.0
) -> torch.Tensor:
    """A strictly decreasing float64 alpha_bar sequence in (0, 1): abar_k = exp(-sum_{j<=k} d_j).

    At least ``min_size`` = 10 levels by default: a 2-level schedule is a legal but degenerate
    model (every grid on it has one or two steps) that hides bugs; ask for it with ``min_size=2``.

    The log-decrements d_j are drawn in [min_decrement, max_decrement], so consecutive levels are
    distinguishable in float64 and 1 - abar_1 >= min_decrement / 2 (no cancellation issue, pitfall 5).
    """
    d = draw(st.lists(st.floats(min_decrement, max_decrement, allow_nan=False), min_size=min_size, max_size=max_size))
    log_abar = -torch.cumsum(torch.tensor(d, dtype=_F64), 0)
    abar = torch.exp(log_abar)
    assume(bool((abar[1:] < abar[:-1]).all()) and float(abar[-1]) > 0)
    return abar


_NAMED_DISCRETE = {
    "linear": DiscreteSchedule.linear,
    "scaled_linear": DiscreteSchedule.scaled_linear,
    "squaredcos_cap_v2": DiscreteSchedule.squaredcos_cap_v2,
}


@st.composite
def discrete_schedules(
    draw, named: bool = True, random: bool = True, min_steps: int = 10, max_steps: int = 1000
) -> DiscreteSchedule:
    """A :class:`DiscreteSchedule`: one of the named DDPM schedules at a random length, or a random one.

    At least ``min_steps`` = 10 levels by default (pass ``min_steps=2`` for the degenerate short
    schedules: with 2 levels every grid has at most 2 steps, which hides most bugs)."""
    kinds = ([*_NAMED_DISCRETE] if named else []) + (["random"] if random else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "random":
        return DiscreteSchedule(draw(alpha_bar_sequences(min_size=max(min_steps, 2), max_size=min(max_steps, 64))))
    T = draw(st.integers(max(min_steps, 2), max_steps))
    return _NAMED_DISCRETE[kind](T)


@st.composite
def continuous_schedules(draw) -> Schedule:
    """A continuous schedule with random parameters: VP linear, VP cosine, sigma (VE or VP) or flow."""
    kind = draw(st.sampled_from(["vp-linear", "vp-cosine", "sigma-ve", "sigma-vp", "flow"]))
    if kind == "vp-linear":
        beta_min = draw(st.floats(0.01, 1.0))
        beta_max = draw(st.floats(beta_min + 1.0, 30.0))
        return VPLinearSchedule(beta_min, beta_max)
    if kind == "vp-cosine":
        return VPCosineSchedule(s=draw(st.floats(1e-3, 0.02)))
    if kind == "flow":
        return FlowSchedule(t_eps=draw(st.floats(1e-4, 1e-2)), t_end=draw(st.floats(0.9, 0.999)))
    lo = draw(_log_uniform(1e-3, 1e-1))
    hi = draw(_log_uniform(1.0, 200.0))
    return SigmaSchedule(lo, hi, space="ve" if kind == "sigma-ve" else "vp")


def schedules() -> st.SearchStrategy[Schedule]:
    """Any schedule: discrete (named or random) or continuous."""
    return st.one_of(discrete_schedules(), continuous_schedules())


# -- grids -----------------------------------------------------------------------------------
@st.composite
def sigma_grids(
    draw,
    min_steps: int = 1,
    max_steps: int = 30,
    sigma_max: tuple[float, float] = (0.5, 200.0),
    sigma_min: float = 1e-3,
    final_zero: bool = True,
    max_gap_ratio: float | None = None,
) -> torch.Tensor:
    """A strictly decreasing float64 sigma grid with ``steps`` in [min_steps, max_steps] steps.

    The first entry is drawn log-uniformly in ``sigma_max``; the other positive entries log-uniformly
    between ``sigma_min`` and it. With ``final_zero`` the grid ends at 0 (as every sampling grid does);
    otherwise it ends at a positive sigma. ``max_gap_ratio`` bounds the ratio of neighbouring gaps in
    log sigma (multistep methods extrapolate their history over that ratio, amplifying rounding
    by about its power of the method's order); the gaps are then drawn as a chain of such ratios.
    """
    steps = draw(st.integers(min_steps, max_steps))
    top = draw(_log_uniform(*sigma_max))
    n_inner = steps - 1 if final_zero else steps
    lo, hi = math.log(sigma_min), math.log(top)
    if max_gap_ratio is None:
        us = draw(
            st.lists(
                st.floats(lo, hi, exclude_max=True, allow_nan=False), min_size=n_inner, max_size=n_inner, unique=True
            )
        )
        pos = sorted({top, *(math.exp(u) for u in us)}, reverse=True)
    else:
        # log-sigma gaps built step by step, each within a factor max_gap_ratio of the previous one,
        # then scaled (ratios kept) to fit between sigma_min and the top
        factors = draw(
            st.lists(
                st.floats(-math.log(max_gap_ratio), math.log(max_gap_ratio)),
                min_size=max(n_inner - 1, 0),
                max_size=max(n_inner - 1, 0),
            )
        )
        gaps = [1.0]
        for f in factors:
            gaps.append(gaps[-1] * math.exp(f))
        span = draw(st.floats(0.01, 1.0)) * (hi - lo)
        scale = span / sum(gaps) if n_inner else 0.0
        pos, u = [top], hi
        for gap in gaps[:n_inner]:
            u -= gap * scale
            pos.append(math.exp(u))
    assume(len(pos) == n_inner + 1 and all(a > b for a, b in zip(pos, pos[1:])) and pos[-1] >= sigma_min * (1 - 1e-12))
    if max_gap_ratio is not None and n_inner > 1:
        # the ratios hold to rounding only for gaps well above float64 resolution
        gaps = [math.log(a / b) for a, b in zip(pos, pos[1:])]
        assume(min(gaps) > 1e-6)
    grid = torch.tensor(pos + ([0.0] if final_zero else []), dtype=_F64)
    return grid


@st.composite
def named_grids(
    draw,
    schedule_strategy: st.SearchStrategy[Schedule] | None = None,
    min_steps: int = 1,
    max_steps: int = 50,
    names: Sequence[str] | None = None,
):
    """``(schedule, name, steps, sigmas)``: a registered grid at a random step count.

    Grids come from the live registry (:func:`diffsolve.list_grids`), so plugin grids are drawn too;
    grids defined over discrete levels are only drawn with a :class:`DiscreteSchedule`, and the
    published per-model tables (:data:`MODEL_TABLE_GRIDS`) only when named.
    """
    from ..sampling import list_grids, make_grid

    schedule = draw(schedule_strategy if schedule_strategy is not None else schedules())
    pool = list(names) if names is not None else [n for n in list_grids() if n not in MODEL_TABLE_GRIDS]
    if not isinstance(schedule, DiscreteSchedule):
        pool = [n for n in pool if n not in DISCRETE_ONLY_GRIDS]
    name = draw(st.sampled_from(sorted(pool)))
    hi = max_steps
    if isinstance(schedule, DiscreteSchedule) and name in DISCRETE_ONLY_GRIDS:
        hi = min(hi, schedule.num_steps)
    if name == "ddim-quad":  # more steps than the official rule has distinct levels: an error
        from ..grids import ddim_quad_max_steps

        hi = min(hi, ddim_quad_max_steps(schedule.num_steps))
    lo = max(min_steps, 2 if name == "ddim-quad" else 1)
    assume(lo <= hi)
    steps = draw(st.integers(lo, hi))
    return schedule, name, steps, make_grid(name, schedule, steps)


# -- states ----------------------------------------------------------------------------------
def shapes(min_batch: int = 1, max_batch: int = 4, max_dims: int = 3, max_side: int = 4) -> st.SearchStrategy:
    """A state shape ``(batch, *sample_shape)`` with 0..max_dims sample dimensions (at least one entry)."""
    return st.tuples(
        st.integers(min_batch, max_batch),
        st.lists(st.integers(1, max_side), min_size=1, max_size=max_dims),
    ).map(lambda p: (p[0], *p[1]))


@st.composite
def states(
    draw, shape: Sequence[int] | st.SearchStrategy | None = None, bound: float = 10.0, dtype: torch.dtype = _F64
) -> torch.Tensor:
    """A bounded tensor with entries in [-bound, bound] (float64 by default) of a drawn or given shape."""
    from hypothesis.extra.numpy import arrays

    if shape is None:
        shape = shapes()
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    elements = st.floats(-bound, bound, allow_nan=False, allow_infinity=False, allow_subnormal=False, width=64)
    arr = draw(arrays(dtype="float64", shape=tuple(shape), elements=elements))
    return torch.from_numpy(arr.copy()).to(dtype)


# -- analytic problems -----------------------------------------------------------------------
@st.composite
def gaussians(
    draw, min_dim: int = 1, max_dim: int = 4, mean_bound: float = 2.0, std: tuple[float, float] = (0.05, 3.0)
) -> Gaussian:
    """N(m, s^2 I) with random dimension, mean and std (the exact flow E38 is available)."""
    dim = draw(st.integers(min_dim, max_dim))
    m = draw(st.lists(st.floats(-mean_bound, mean_bound), min_size=dim, max_size=dim))
    s = draw(_log_uniform(*std))
    return Gaussian(torch.tensor(m, dtype=_F64), s)


@st.composite
def mixtures(
    draw,
    min_components: int = 1,
    max_components: int = 4,
    min_dim: int = 1,
    max_dim: int = 4,
    mean_bound: float = 2.0,
    std: tuple[float, float] = (0.1, 2.0),
) -> GaussianMixture:
    """An isotropic Gaussian mixture with random components, means, stds and weights."""
    k = draw(st.integers(min_components, max_components))
    dim = draw(st.integers(min_dim, max_dim))
    means = [draw(st.lists(st.floats(-mean_bound, mean_bound), min_size=dim, max_size=dim)) for _ in range(k)]
    stds = [draw(_log_uniform(*std)) for _ in range(k)]
    weights = [draw(st.floats(0.1, 1.0)) for _ in range(k)]
    return GaussianMixture(torch.tensor(means, dtype=_F64), stds, weights)


@st.composite
def point_masses(draw, min_dim: int = 1, max_dim: int = 4, bound: float = 3.0) -> PointMass:
    """All mass at a random point c (claim 9)."""
    dim = draw(st.integers(min_dim, max_dim))
    c = draw(st.lists(st.floats(-bound, bound), min_size=dim, max_size=dim))
    return PointMass(torch.tensor(c, dtype=_F64))


# -- random smooth networks ------------------------------------------------------------------
class TanhMLP:
    """A smooth eps model ``model(x, t)``: one tanh hidden layer with fixed random weights.

    ``out = W2 tanh(W1 [x_flat, log1p(|t|)] + b1) + b2``, reshaped like ``x``. It is smooth in
    (x, t), bounded (|out| <= |W2|_1 + |b2|), and runs in the input's dtype.
    """

    def __init__(self, dim: int, width: int = 16, seed: int = 0, gain: float = 1.0):
        g = torch.Generator().manual_seed(seed)
        self.dim, self.width, self.seed = dim, width, seed
        self.w1 = gain * torch.randn(width, dim + 1, generator=g, dtype=_F64) / math.sqrt(dim + 1)
        self.b1 = 0.1 * torch.randn(width, generator=g, dtype=_F64)
        self.w2 = torch.randn(dim, width, generator=g, dtype=_F64) / math.sqrt(width)
        self.b2 = 0.1 * torch.randn(dim, generator=g, dtype=_F64)
        self.calls = 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **_) -> torch.Tensor:
        self.calls += 1
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.dim:
            raise ValueError(f"TanhMLP built for {self.dim} features, got {flat.shape[1]}")
        dt = x.dtype
        tt = torch.log1p(t.to(dt).abs()).reshape(-1, 1).expand(flat.shape[0], 1)
        h = torch.tanh(torch.cat([flat, tt], dim=1) @ self.w1.to(dt).T + self.b1.to(dt))
        return (h @ self.w2.to(dt).T + self.b2.to(dt)).reshape(x.shape)

    def __repr__(self) -> str:
        return f"TanhMLP(dim={self.dim}, width={self.width}, seed={self.seed})"


@st.composite
def smooth_networks(draw, dim: int | st.SearchStrategy[int] | None = None, width: int = 16) -> TanhMLP:
    """A :class:`TanhMLP` eps model of ``dim`` features (default: 1 to 8) with hypothesis-drawn weights seed and gain."""
    dim = st.integers(1, 8) if dim is None else dim
    d = draw(dim) if isinstance(dim, st.SearchStrategy) else int(dim)
    return TanhMLP(d, width=width, seed=draw(seeds), gain=draw(st.floats(0.2, 2.0)))
