"""Under load: one wrapped model shared by threads gives the serial results, bit for bit.

Every thread test starts its threads at a barrier and uses a model that releases the GIL on
each call (``time.sleep(0)``, as a network does in its kernels) with a short interpreter switch
interval, so runs interleave call by call. Counts are fixed and every wait has a timeout.
"""

import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

import diffsolve as ds
from diffsolve.analytic import GaussianMixture, default_schedule
from diffsolve.plugins import PluginWarning, Registry, registry
from diffsolve.wrapper import _CACHE_LIMIT

MIX = GaussianMixture(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), 0.5)
SCHED = default_schedule()
_EPS = MIX.model(SCHED)  # exact eps of the mixture, fed the DDPM index as time


def _eps_model(x, t, c=None):
    """The mixture's eps, computed in float64 and returned in the input's dtype; releases the GIL."""
    time.sleep(0)
    out = _EPS(x.double(), t)
    if c is not None:  # a conditional branch: guidance mixes it with the unconditional one
        out = out + 0.1 * c.double()[:, None]
    return out.to(x.dtype)


@pytest.fixture
def interleaved():
    """Switch threads every microsecond (restored after the test)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _in_threads(n, fn, timeout=60):
    """Run ``fn(k)`` in ``n`` threads started together; return results (or raise the first error)."""
    barrier = threading.Barrier(n, timeout=timeout)
    results, errors = [None] * n, []

    def target(k):
        try:
            barrier.wait()
            results[k] = fn(k)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(k,)) for k in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout)
    assert not any(th.is_alive() for th in threads), "a thread did not finish"
    return results, errors


# -- the plugin registry ----------------------------------------------------------------------------
def test_first_use_from_16_threads_sees_the_complete_registry(monkeypatch):
    monkeypatch.setattr(registry, "_default", None)  # a real first use (restored after the test)
    expected_solvers = Registry().load().solver_names()

    def first_use(k):
        sig = ds.grid("trailing", SCHED, 10)
        return registry.get_registry(), ds.list_solvers(), sig

    results, errors = _in_threads(16, first_use)
    assert errors == []
    assert len({id(reg) for reg, _, _ in results}) == 1  # one registry, loaded once
    assert all(names == expected_solvers for _, names, _ in results)
    assert all(torch.equal(sig, results[0][2]) for _, _, sig in results)


class _EntryPoint:
    def __init__(self, name, obj=None, error=None):
        self.name, self._obj, self._error, self.loads = name, obj, error, 0
        self.dist = type("Dist", (), {"name": f"dist-{name}"})()

    def load(self):
        self.loads += 1
        time.sleep(0.01)  # importing takes a while: other threads arrive meanwhile
        error, self._error = self._error, (None if isinstance(self._error, KeyboardInterrupt) else self._error)
        if error is not None:
            raise error
        return self._obj


def _grid_plugin():
    def register_grids(register):
        register(
            "plugin-uniform",
            lambda schedule, steps: torch.linspace(schedule.sigma_max, 0.0, steps + 1, dtype=torch.float64),
        )

    return type("Plugin", (), {"register_grids": staticmethod(ds.hookimpl(register_grids))})


def test_a_plugin_failing_during_a_concurrent_first_use_is_reported_once(monkeypatch):
    bad = _EntryPoint("broken", error=ImportError("no module named torchvision"))
    good = _EntryPoint("grids", _grid_plugin())
    monkeypatch.setenv("DIFFSOLVE_DISABLE_PLUGINS", "")
    monkeypatch.setattr(registry.metadata, "entry_points", lambda group: [bad, good])
    monkeypatch.setattr(registry, "_default", None)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results, errors = _in_threads(16, lambda k: ds.grid("plugin-uniform", SCHED, 4))
    assert errors == []
    assert bad.loads == 1 and good.loads == 1
    reports = [w for w in caught if issubclass(w.category, PluginWarning)]
    assert len(reports) == 1 and "'dist-broken:broken' failed to load" in str(reports[0].message)
    assert all(torch.equal(r, results[0]) for r in results)


def test_an_interrupted_registry_load_loads_again_on_next_use():
    ep = _EntryPoint("grids", _grid_plugin(), error=KeyboardInterrupt())
    reg = Registry(entry_points=[ep], disabled=())
    with pytest.raises(KeyboardInterrupt):
        reg.load()
    assert "plugin-uniform" in reg.grid_names() and "ddim" in reg.solver_names()
    assert ep.loads == 2


def test_a_registry_that_failed_to_load_raises_to_every_user():
    class MyDDIM(ds.Solver):
        name = "ddim"

    plugin = type("Clash", (), {"register_solvers": staticmethod(ds.hookimpl(lambda register: register(MyDDIM)))})
    reg = Registry(entry_points=[_EntryPoint("clash", plugin)], disabled=())
    for _ in range(2):  # not a half-filled registry on the second use
        with pytest.raises(ds.DuplicateNameError, match="'ddim' is registered by both"):
            reg.solver("heun")


# -- one ODE, many threads -------------------------------------------------------------------------
def _mixed_jobs():
    jobs = []
    for k in range(48):
        solver = ("ddim", "dpmpp-2m", "heun", "unipc")[k % 4]
        dtype = (torch.float32, torch.float64, torch.bfloat16)[k % 3]
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(k)).to(dtype)
        jobs.append((solver, x, 4 + k % 5))
    return jobs


def test_8_threads_running_48_mixed_jobs_on_one_ode_equal_the_serial_runs_bit_for_bit(interleaved):
    ode = ds.wrap(_eps_model, SCHED)
    jobs = _mixed_jobs()

    def run(job):
        solver, x, steps = job
        return ds.sample(ode, x, solver, steps=steps)

    serial = [run(job) for job in jobs]
    serial_nfe = ode.nfe
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(run, jobs, timeout=60))
    assert [out.dtype for out in threaded] == [x.dtype for _, x, _ in jobs]
    assert all(torch.equal(a, b) for a, b in zip(serial, threaded))
    assert ode.nfe == 2 * serial_nfe  # the shared counter lost no call
    assert ode.run is None


def test_invert_exact_inversion_and_k_sampler_in_8_threads_equal_the_serial_runs(interleaved):
    cond, uncond = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.zeros(4)
    ode = ds.wrap(_eps_model, SCHED, guidance=2.0, cond={"c": cond}, uncond={"c": uncond})
    x0 = MIX.sample(4, generator=torch.Generator().manual_seed(1))
    x_T = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    shared = ds.sample_reversible(ode, x_T, "bdia", steps=6)

    def k_denoiser(x, sigma):  # k-diffusion convention: returns D = x - sigma eps
        time.sleep(0)
        return MIX.denoised(x, sigma.double()).to(x.dtype)

    def job(k):
        kind, dtype = k % 6, (torch.float64, torch.float32)[(k // 6) % 2]
        seed = torch.Generator().manual_seed(100 + k)
        if kind == 0:
            return ds.invert(ode, x0.to(dtype), ("ddim", "heun")[k % 2], steps=5)
        if kind == 1:  # exact inversion of one shared sample from many threads
            return ds.invert_exact(ode, shared)
        if kind == 2:
            state = ds.sample_reversible(ode, x_T.to(dtype), "bdia", steps=5)
            return torch.cat([state.x, ds.invert(ode, state)])
        if kind == 3:  # stochastic, one generator per job
            return ds.sample(ode, x_T.to(dtype), "dpmpp-sde", steps=4, generator=seed)
        sigmas = ds.grid("karras", ds.EDMSchedule(), 5)
        name = "dpmpp-2m" if kind == 4 else "euler-ancestral"
        return ds.k_sampler(name)(k_denoiser, x_T.to(dtype) * sigmas[0], sigmas, generator=seed)

    serial = [job(k) for k in range(24)]
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(job, range(24), timeout=60))
    assert all(torch.equal(a, b) for a, b in zip(serial, threaded))
    torch.testing.assert_close(serial[1], x_T, rtol=0, atol=1e-9)  # and the inversion is exact


SHARED_INSTANCES = [
    ("dpmpp-2m", {}),
    ("unipc", {}),
    ("heun", {}),
    ("ipndm", {}),
    ("deis", {}),
    ("dpmpp-3m", {}),
    ("restart", {}),
    ("sa-solver", {"tau": 0.0}),
    ("usf", {"corrector": True, "prediction": "noise", "derivative": "taylor"}),
]


@pytest.mark.parametrize("name,options", SHARED_INSTANCES, ids=[n for n, _ in SHARED_INSTANCES])
def test_one_solver_instance_used_by_4_threads_at_once_equals_the_serial_runs_bit_for_bit(interleaved, name, options):
    # the instance holds only options; each run's grid, coefficients and history live in its own state
    solver = ds.make_solver(name, **options)
    ode = ds.wrap(_eps_model, SCHED)
    jobs = [(torch.randn(3, 8, generator=torch.Generator().manual_seed(k)), 5 + k) for k in range(4)]

    def run(k):
        x, steps = jobs[k]
        seed = torch.Generator().manual_seed(50 + k)  # restart draws noise: one generator per run
        return ds.sample(ode, x, solver, steps=steps, generator=seed)

    serial = [run(k) for k in range(4)]
    for _ in range(2):  # twice: a run must not leave anything on the instance for the next
        threaded, errors = _in_threads(4, run)
        assert errors == []
        assert all(torch.equal(a, b) for a, b in zip(serial, threaded))
    fresh = [
        ds.sample(ode, x, name, steps=steps, generator=torch.Generator().manual_seed(50 + k), **options)
        for k, (x, steps) in enumerate(jobs)
    ]
    assert all(torch.equal(a, b) for a, b in zip(serial, fresh))


# -- faults ----------------------------------------------------------------------------------------
class _Failing:
    """The eps model, raising ``error`` at model call number ``at`` (counted from 1) when armed."""

    def __init__(self, error):
        self.error, self.at, self.calls = error, None, 0

    def __call__(self, x, t):
        self.calls += 1
        if self.at is not None and self.calls == self.at:
            raise self.error
        return _eps_model(x, t)


@pytest.mark.parametrize(
    "error", [RuntimeError("CUDA out of memory"), KeyboardInterrupt()], ids=["exception", "keyboard-interrupt"]
)
def test_a_model_that_fails_mid_run_leaves_the_ode_as_good_as_new(error):
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(3))
    fresh = ds.wrap(_eps_model, SCHED)
    expected = ds.sample(fresh, x, "dpmpp-2m", steps=6)
    expected_eps = fresh.eps(x, 3.0)

    model = _Failing(error)
    ode = ds.wrap(model, SCHED)
    solver = ds.make_solver("heun")
    model.at = 5
    with pytest.raises(type(error)):
        ds.sample(ode, x.to(torch.bfloat16), solver, steps=6)  # a bfloat16 run, failing at call 5
    model.at = None
    assert ode.nfe == 4 and ode.run is None  # the four calls that returned
    assert torch.equal(ode.eps(x, 3.0), expected_eps)  # a direct call: in x's dtype, not the failed run's
    assert torch.equal(ds.sample(ode, x, "dpmpp-2m", steps=6), expected)
    assert ode.nfe == 4 + fresh.nfe
    for (sigma, batch, _, convention, dtype, *_), t in ode._t_cache.items():  # every cached time tensor holds its time
        if (convention, dtype) == (ode.time, ode.time_dtype):  # (the cache is the schedule's, shared by its ODEs)
            assert torch.equal(t, torch.full((batch,), ode.model_time(sigma), dtype=torch.float32))
    assert torch.equal(ds.sample(ode, x, solver, steps=3), ds.sample(fresh, x, "heun", steps=3))  # instance unharmed


def test_a_model_that_writes_into_its_time_input_gets_the_right_time_on_every_call():
    def scaling_model(x, t, in_place=True):  # converts the index to its own units in place, as some models do
        t = t.mul_(1e-3) if in_place else t * 1e-3
        return _EPS(x, t * 1e3)

    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(4))
    expected = ds.sample(ds.wrap(lambda x, t: scaling_model(x, t, in_place=False), SCHED), x, "heun", steps=5)
    ode = ds.wrap(scaling_model, SCHED)
    for _ in range(3):  # later runs find no time tensor the model changed
        assert torch.equal(ds.sample(ode, x, "heun", steps=5), expected)


def test_a_run_under_inference_mode_leaves_caches_a_later_run_with_gradients_can_use():
    # a server samples under torch.inference_mode(); a later request differentiates through a run on
    # the same schedule: the cached time and scale tensors must be normal tensors, not inference ones
    sched = ds.DiscreteSchedule.linear()  # its own schedule: its memos start empty
    ode = ds.wrap(lambda x, t: x * (t[:, None] / 1000), sched)  # t is saved for backward
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        fast = ds.sample(ode, x, "ddim", steps=3)
    x_grad = x.clone().requires_grad_(True)
    out = ds.sample(ds.wrap(ode.model, sched), x_grad, "ddim", steps=3, grad=True)
    out.sum().backward()
    assert torch.equal(out.detach(), fast) and torch.isfinite(x_grad.grad).all()


@pytest.mark.parametrize(
    "schedule", [SCHED, ds.VPLinearSchedule(), ds.VPCosineSchedule()], ids=["discrete", "vp-linear", "vp-cosine"]
)
def test_model_time_is_the_same_computed_alone_or_with_a_grid(schedule):
    # a run's model times are computed for its whole grid at once and cached; when another
    # thread's run empties that cache, they are computed one by one: the bits must not change
    sigmas = torch.rand(300, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    sigmas = (schedule.sigma_min + sigmas * (schedule.sigma_max - schedule.sigma_min)).tolist()
    alone = ds.wrap(_eps_model, schedule)
    one_by_one = [alone.model_time(s) for s in sigmas]
    batched = ds.wrap(_eps_model, schedule)
    batched.start_run(sigmas=sigmas)
    assert [batched.model_time(s) for s in sigmas] == one_by_one


# -- long-lived processes --------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc (Linux)")
def test_3000_calls_keep_memory_and_the_ode_caches_bounded():
    fail = [False]

    def model(x, t):
        if fail[0] and t[0] < 900:  # a run that fails half way: the model raises past its first call
            raise RuntimeError("out of memory")
        return x * 0.5

    ode = ds.wrap(model, SCHED)
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(1, 4, generator=gen)

    def call(k):
        # a new grid on every call (3 new noise levels): the caches fill, reach their bound, empty
        top = 100.0 + 50.0 * torch.rand((), generator=gen, dtype=torch.float64).item()
        sigmas = [top, top / 30, top / 900, 0.0]
        if k % 100 == 99:  # now and then a run that fails half way
            fail[0] = True
            with pytest.raises(RuntimeError, match="out of memory"):
                ds.sample(ode, x, "ddim", sigmas=sigmas)
            fail[0] = False
        ds.sample(ode, x, ("ddim", "heun", "dpmpp-2m")[k % 3], sigmas=sigmas)

    for k in range(1500):  # warm up: allocator pools; the caches have reached their bound once
        call(k)
    before = _rss_bytes()
    for k in range(1500, 3000):
        call(k)
    grown = _rss_bytes() - before
    # a leak of one 0-d tensor per model call (13500 calls) would be about 3 MiB
    assert grown < 2**20, f"resident memory grew by {grown / 2**20:.2f} MiB over 1500 calls"
    for cache in (ode._t_cache, ode._time_value, ode._level_cache):
        assert 0 < len(cache) <= _CACHE_LIMIT
    assert ode.run is None
