"""``check_solver``: the laws every diffsolve solver obeys, as one call for a plugin author's pytest.

diffsolve's own suites (``tests/test_conformance.py``, ``tests/properties/test_solver_laws.py``)
run over the registry with plugins disabled, so a plugin's solver is not tested by them. Call
this from your package's tests instead::

    from diffsolve.testing import check_solver

    def test_my_solver_obeys_the_diffsolve_contract():
        check_solver(MySolver)              # or the registered name, check_solver("my-solver")

Each check raises an ``AssertionError`` whose message names the check and what was measured;
the function returns a dict of the measurements (``measured_order``, ``nfe_per_step``, ...).
A few seconds per solver on a CPU. The checks, all on small analytic problems
(:mod:`diffsolve.analytic`) in float64 unless stated:

``contract``
    ``name`` a non-empty string, ``order`` and ``calls_per_step`` integers >= 1, ``stochastic``,
    ``invertible``, ``adaptive`` and ``renoise_ok`` booleans, a class docstring, options keyword-only;
    the default instance builds; the class implements the current protocol (``init`` + the generator
    ``step(i, x, state)``), not the first one (``setup`` + ``step(i, x)``).
``step protocol``
    (fixed-step solvers) ``init`` returns a :class:`~diffsolve.solvers.base.RunState`; ``step``
    is a generator whose requests are ``(tensor, float sigma, bool)`` and which returns ``(x_next, denoised)``; it leaves the state ``x`` and every model
    output it receives unchanged (no in-place edits); the instance keeps nothing of a run (two runs
    interleaved step by step on one instance give the results of two separate runs).
``shapes and dtypes``
    float32 and float64 states of shapes (2, 3) and (2, 1, 2, 2): the result keeps shape and dtype
    and is finite.
``calls per step``
    20 more steps make ``20 * calls_per_step`` more model calls (within 25%; adaptive solvers,
    those with a true class attribute ``adaptive``, are exempt).
``seed``
    the same generator seed gives the same result; a stochastic solver draws its noise through
    ``state.noise`` (per-sample generators: a sample does not change when the batch around it does).
``one step``
    a one-step grid (sigma_max -> 0) and a batch of one.
``lands on the data``
    50 steps from noise end near the components of a Gaussian mixture.
``order``
    deterministic fixed-step solvers: the observed order on a 2-D Gaussian mixture (uniform grids in
    sigma from 40 to 2, N = 25, 50, ... up to 1600 steps; the order is log2 of the ratio of successive
    differences |x_N - x_2N|, so no reference solution is needed) is within ``order_tolerance`` of
    the declared ``order`` (or of ``expected_order``).
``invert``
    an invertible solver encodes with :func:`diffsolve.invert` and the round trip returns near the
    start.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

__all__ = ["check_solver"]

_F64 = torch.float64


def _fail(check: str, name: str, detail: str) -> AssertionError:
    return AssertionError(f"check_solver({name!r}) [{check}]: {detail}")


def check_solver(
    solver: str | type,
    *,
    options: dict[str, Any] | None = None,
    expected_order: float | None = None,
    order_tolerance: float = 0.3,
    max_steps: int = 1600,
) -> dict[str, Any]:
    """Check that a solver obeys diffsolve's Solver contract and laws (see the module docstring).

    Args:
        solver: a registered solver name, or a :class:`~diffsolve.Solver` subclass (registered or not).
        options: options for the instance under test (default: the solver's defaults).
        expected_order: the order to measure against, when it is not the declared ``order``
            (a method may converge faster on uniform grids than it declares).
        order_tolerance: how far the observed order may be from the expected one.
        max_steps: the largest step count of the order measurement.

    Returns:
        the measurements: ``measured_order`` (None when not measured, with ``order_skipped``
        saying why), ``orders`` (the sequence), ``nfe_per_step``, ``stochastic``, ``invertible``.

    Raises:
        AssertionError: naming the failed check and what was measured.
    """
    from .. import analytic as problems
    from ..driver import solver_options
    from ..sampling import invert, make_solver, sample
    from ..schedules import DiscreteSchedule, SigmaSchedule
    from ..solvers.base import Solver

    options = dict(options or {})
    cls = _solver_class(solver)
    name = getattr(cls, "name", "") or getattr(cls, "__name__", repr(solver))
    report: dict[str, Any] = {}

    # -- contract -------------------------------------------------------------------------------
    if not isinstance(cls.name, str) or not cls.name:
        raise _fail("contract", name, "the class attribute 'name' must be a non-empty string")
    for attr in ("order", "calls_per_step"):
        value = getattr(cls, attr)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _fail("contract", name, f"{attr} must be an integer >= 1, got {value!r}")
    if not (cls.__doc__ or "").strip() or cls.__doc__ is Solver.__doc__:
        raise _fail(
            "contract",
            name,
            "the class needs a docstring: its first line describes the method in `diffsolve list` and docs/solvers.md",
        )
    import inspect

    bad = [
        p.name
        for p in inspect.signature(cls.__init__).parameters.values()
        if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    if bad:
        raise _fail("contract", name, f"options must be keyword-only (def __init__(self, *, ...)); positional: {bad}")
    try:
        instance = make_solver(cls, **options)
    except Exception as exc:
        raise _fail(
            "contract", name, f"the instance with options {options} cannot be made: {type(exc).__name__}: {exc}"
        ) from exc
    for attr in ("stochastic", "invertible", "adaptive", "renoise_ok"):
        if not isinstance(getattr(instance, attr), bool):
            raise _fail("contract", name, f"{attr} must be True or False, got {getattr(instance, attr)!r}")
    if cls.legacy:
        raise _fail(
            "contract",
            name,
            "the class uses the first Solver contract (setup(ode, sigmas, noise) + step(i, x) with the run on "
            "self), which runs only through a deprecated adapter: port it to init(ode, sigmas, noise) -> state "
            "and the generator step(i, x, state) (docs/plugins.md, 'Porting a solver')",
        )
    stochastic, invertible = instance.stochastic, instance.invertible
    report.update(stochastic=stochastic, invertible=invertible, options=solver_options(cls))

    def fresh():
        return make_solver(cls, **options)

    means3 = torch.tensor([[1.0, -0.5, 0.0], [-0.8, 0.4, 0.3]], dtype=_F64)
    mix3 = problems.GaussianMixture(means3, [0.3, 0.5], shape=(3,))
    if not instance.adaptive:
        _check_step_protocol(instance, name, mix3.ode(DiscreteSchedule.linear()))

    # -- shapes, dtypes, calls per step ----------------------------------------------------------
    mix4 = problems.GaussianMixture(
        torch.tensor([[1.0, -0.5, 0.0, 0.2], [-0.8, 0.4, 0.3, -0.1]], dtype=_F64), [0.3, 0.5], shape=(1, 2, 2)
    )
    sched = DiscreteSchedule.linear()

    def run(problem, shape, dtype=_F64, steps=6, seed=0, grid="trailing", generator=None, batch_seed=None):
        ode = problem.ode(sched)
        g = torch.Generator().manual_seed(seed if batch_seed is None else batch_seed)
        x_T = torch.randn(*shape, generator=g, dtype=_F64).to(dtype)
        gen = torch.Generator().manual_seed(seed + 1) if generator is None else generator
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = sample(ode, x_T, fresh(), steps=steps, grid=grid, generator=gen)
        return out, ode, x_T

    for problem, shape in ((mix3, (2, 3)), (mix4, (2, 1, 2, 2))):
        for dtype in (torch.float32, _F64):
            try:
                out, ode, _ = run(problem, shape, dtype)
            except Exception as exc:
                raise _fail(
                    "shapes and dtypes",
                    name,
                    f"sampling a {dtype} state of shape {shape} raised {type(exc).__name__}: {exc}",
                ) from exc
            if not isinstance(out, torch.Tensor) or out.shape != shape or out.dtype != dtype:
                got = (tuple(out.shape), out.dtype) if isinstance(out, torch.Tensor) else type(out).__name__
                raise _fail("shapes and dtypes", name, f"a {dtype} state of shape {shape} came back as {got}")
            if not bool(torch.isfinite(out).all()):
                raise _fail("shapes and dtypes", name, f"non-finite result for a {dtype} state of shape {shape}")
    # calls of a typical step: the extra calls of 20 more steps (warm-up and last steps cancel)
    nfe = {}
    for steps in (20, 40):
        _, ode, _ = run(mix3, (2, 3), steps=steps)
        nfe[steps] = ode.nfe
    per_step = (nfe[40] - nfe[20]) / 20
    report["nfe_per_step"] = None if instance.adaptive else per_step
    if not instance.adaptive and abs(per_step - cls.calls_per_step) > 0.25 * cls.calls_per_step:
        raise _fail(
            "calls per step",
            name,
            f"{nfe[20]} model calls for 20 steps and {nfe[40]} for 40: {per_step:g} "
            f"per step, but calls_per_step = {cls.calls_per_step}",
        )

    # -- seeds ----------------------------------------------------------------------------------
    a, _, _ = run(mix3, (2, 3))
    b, _, _ = run(mix3, (2, 3))
    if not torch.equal(a, b):
        raise _fail(
            "seed", name, f"two runs with the same x_T and generator seed differ by {float((a - b).abs().max()):.3g}"
        )
    if stochastic:
        c, _, _ = run(mix3, (2, 3), generator=torch.Generator().manual_seed(12345))
        if torch.equal(a, c):
            raise _fail(
                "seed",
                name,
                "the solver is stochastic but a different generator seed gave the same "
                "result: draw noise with state.noise(like)",
            )
        # per-sample generators: sample 1 alone equals sample 1 of the batch
        ode = mix3.ode(sched)
        x_T = torch.randn(3, 3, generator=torch.Generator().manual_seed(0), dtype=_F64)
        gens = lambda seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
        full = sample(ode, x_T, fresh(), steps=6, grid="trailing", generator=gens([7, 8, 9]))
        part = sample(ode, x_T[1:2], fresh(), steps=6, grid="trailing", generator=gens([8]))
        if not torch.allclose(full[1:2], part, rtol=1e-12, atol=1e-12):
            raise _fail(
                "seed",
                name,
                "with one generator per sample, a sample changed when the batch around "
                "it changed: draw noise with state.noise(like), not torch.randn",
            )

    # -- one step, batch of one ------------------------------------------------------------------
    try:
        out, ode, _ = run(mix3, (1, 3), steps=1, grid="karras")
    except Exception as exc:
        raise _fail("one step", name, f"a one-step grid raised {type(exc).__name__}: {exc}") from exc
    if out.shape != (1, 3) or not bool(torch.isfinite(out).all()) or ode.nfe < 1:
        raise _fail(
            "one step",
            name,
            f"a one-step run on a batch of one gave shape {tuple(out.shape)}, "
            f"finite={bool(torch.isfinite(out).all())}, {ode.nfe} model calls",
        )

    # -- lands on the data -----------------------------------------------------------------------
    out, _, _ = run(mix3, (8, 3), steps=50)
    nearest = torch.cdist(out.to(_F64), mix3.means).min(dim=1).values
    limit = 5 * float(mix3.stds.max())
    if not bool((nearest < limit).all()):
        raise _fail(
            "lands on the data",
            name,
            f"after 50 steps a sample is {float(nearest.max()):.3g} from the "
            f"nearest mixture component (allowed {limit:.3g})",
        )

    # -- order -----------------------------------------------------------------------------------
    expected = cls.order if expected_order is None else expected_order
    report.update(measured_order=None, orders=[])
    if stochastic:
        report["order_skipped"] = "stochastic with these options"
    elif instance.adaptive:
        report["order_skipped"] = "adaptive (chooses its own steps)"
    else:
        orders = _observed_orders(cls, options, expected, max_steps)
        report.update(measured_order=orders[-1] if orders else None, orders=orders)
        if not orders or abs(orders[-1] - expected) > order_tolerance:
            raise _fail(
                "order",
                name,
                f"observed orders {[round(p, 3) for p in orders]} on uniform grids of "
                f"25..{max_steps} steps; expected {expected} (declared order = "
                f"{cls.order}) within {order_tolerance}",
            )

    # -- invert ----------------------------------------------------------------------------------
    if invertible and not stochastic:
        g = problems.Gaussian(torch.tensor([0.3, -0.4, 0.8], dtype=_F64), 0.5)
        ode = g.ode(SigmaSchedule(0.0, 1e3, space="vp"))
        x0 = torch.tensor([[0.2, -0.3, 0.7], [0.5, -0.6, 1.0]], dtype=_F64)
        sig = (10.0 ** (1 / 7) * (1 - torch.arange(41, dtype=_F64) / 40)) ** 7
        try:
            x_T = invert(ode, x0, fresh(), sigmas=sig.flip(0))
            back = sample(ode, x_T, fresh(), sigmas=sig)
        except Exception as exc:
            raise _fail(
                "invert", name, f"the solver says invertible = True but invert raised {type(exc).__name__}: {exc}"
            ) from exc
        err = float((back - x0).abs().max())
        report["round_trip_error"] = err
        if not math.isfinite(err) or err > 0.1:
            raise _fail(
                "invert", name, f"encoding then decoding with 40 steps returned {err:.3g} from the start (allowed 0.1)"
            )
    return report


def _check_step_protocol(solver, name: str, ode) -> None:
    """The generator protocol, driven by hand on an 8-step grid: see ``step protocol`` above."""
    import inspect

    from ..grids import validate_sigmas
    from ..sampling import make_grid
    from ..solvers.base import RunState, Solver, answer

    check = "step protocol"
    sigmas = validate_sigmas(make_grid("trailing", ode.schedule, 8)).tolist()

    def noise_for(seed):
        g = torch.Generator().manual_seed(seed)
        return lambda like: torch.randn(like.shape, generator=g, dtype=like.dtype)

    def start(seed):
        state = solver.init(ode, sigmas, noise_for(seed))
        if not isinstance(state, RunState):
            raise _fail(check, name, f"init(ode, sigmas, noise) must return a RunState, got {type(state).__name__}")
        x = ode.to_xbar(torch.randn(2, 3, generator=torch.Generator().manual_seed(seed), dtype=_F64), sigmas[0])
        return state, x

    def one_step(i, x, state):
        """Step i driven by hand: returns (x_next, calls); raises on a broken protocol or an in-place edit."""
        x_before = x.clone()
        gen = solver.step(i, x, state)
        if not inspect.isgenerator(gen):
            raise _fail(
                check,
                name,
                f"step(i, x, state) must be a generator (yield (x, sigma, need_denoised) per model call), "
                f"got {type(gen).__name__}",
            )
        calls, received = 0, []
        try:
            request = gen.send(None)
            while True:
                if not (
                    isinstance(request, tuple)
                    and len(request) == 3
                    and isinstance(request[0], torch.Tensor)
                    and isinstance(request[1], float)
                    and isinstance(request[2], bool)
                ):
                    raise _fail(check, name, f"a step yielded {request!r:.80}; expected (tensor, float sigma, bool)")
                calls += 1
                out = answer(state.ode, *request)
                received.append((out, tuple(t.clone() if t is not None else None for t in out)))
                request = gen.send(out)
        except StopIteration as stop:
            result = stop.value
        if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.Tensor)):
            raise _fail(check, name, f"step {i} returned {type(result).__name__}; expected (x_next, denoised)")
        if not torch.equal(x, x_before):
            raise _fail(
                check,
                name,
                f"step {i} changed its input state x in place (by {float((x - x_before).abs().max()):.3g}): "
                "return a new tensor (x + c * eps, torch.add(...)), never x.add_(...)",
            )
        for out, kept in received:
            if any(t is not None and not torch.equal(t, k) for t, k in zip(out, kept)):
                raise _fail(check, name, f"step {i} changed a model output it received (denoised or eps) in place")
        return result[0], calls

    if type(solver).run is not Solver.run:
        return  # a whole-run method: checked through sample() below
    # two runs on one instance, interleaved step by step, equal the same runs one after the other
    (state_a, x_a), (state_b, x_b) = start(1), start(2)
    total = 0
    for i in range(len(sigmas) - 1):
        x_a, calls = one_step(i, x_a, state_a)
        x_b, _ = one_step(i, x_b, state_b)
        total += calls
    (state_c, x_c), (state_d, x_d) = start(1), start(2)
    for i in range(len(sigmas) - 1):
        x_c, _ = one_step(i, x_c, state_c)
    for i in range(len(sigmas) - 1):
        x_d, _ = one_step(i, x_d, state_d)
    # (a stochastic solver's noise is checked under ``seed``: one drawing from the global RNG would fail here)
    if not solver.stochastic and not (torch.equal(x_a, x_c) and torch.equal(x_b, x_d)):
        raise _fail(
            check,
            name,
            "two runs interleaved on one instance differ from the same runs made one after the other: "
            "keep every run's data (coefficients, history) in the state init returns, not on self",
        )
    if total == 0:
        raise _fail(check, name, "8 steps made no model request: yield (x, sigma, need_denoised) per model call")


def _solver_class(solver) -> type:
    from ..plugins.registry import get_registry
    from ..solvers.base import Solver

    if isinstance(solver, str):
        return get_registry().solver(solver)
    if isinstance(solver, type) and issubclass(solver, Solver):
        return solver
    raise TypeError(f"check_solver takes a registered solver name or a diffsolve Solver subclass, got {solver!r}")


def _observed_orders(cls, options, expected: float, max_steps: int) -> list[float]:
    """log2(|x_N - x_2N| / |x_2N - x_4N|) for N = 25, 50, ...: stops once two successive values agree
    within 0.1 and lie within 0.25 of ``expected``, when the differences reach rounding (1e-11), or at
    ``max_steps``. The problem is the one of tests/properties/test_solver_laws.py (a 2-component
    mixture, VP with t = sigma, sigma 40 -> 2 uniform: every method's asymptotic regime, no denoising
    step in the error)."""
    from ..analytic import GaussianMixture
    from ..sampling import make_solver, sample
    from ..schedules import SigmaSchedule

    mix = GaussianMixture(torch.tensor([[1.0, -0.5], [-0.8, 0.6]], dtype=_F64), [0.4, 0.6], [0.4, 0.6])
    ode = mix.ode(SigmaSchedule(0.0, 1e3, space="vp"), time="sigma")
    x_T = torch.tensor([[-1.5, 0.4], [0.7, -0.9], [0.1, 0.2]], dtype=_F64)
    outs, diffs, orders = [], [], []
    n = 25
    while n <= max_steps:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs.append(
                sample(ode, x_T, make_solver(cls, **options), sigmas=torch.linspace(40.0, 2.0, n + 1, dtype=_F64))
            )
        if len(outs) > 1:
            diffs.append(float((outs[-1] - outs[-2]).abs().max()))
            if len(diffs) > 1 and diffs[-1] > 0:
                orders.append(math.log2(diffs[-2] / diffs[-1]))
            if diffs[-1] < 1e-11:
                break
        if len(orders) > 1 and abs(orders[-1] - orders[-2]) < 0.1 and abs(orders[-1] - expected) <= 0.25:
            break
        n *= 2
    return orders
