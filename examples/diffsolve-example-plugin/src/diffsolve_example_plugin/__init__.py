"""An example diffsolve plugin: the explicit midpoint method in sigma and a geometric grid.

Midpoint (Runge's second-order method) on d xbar / d sigma = eps (docs/math.md E29):

    xbar_mid = xbar_t + (h / 2) eps(xbar_t, sigma_t),      h = sigma_s - sigma_t
    xbar_s   = xbar_t + h eps(xbar_mid, sigma_t + h / 2)

Order 2, two model calls per step; the step to sigma = 0 is the denoised estimate
at the midpoint-corrected state's start (Euler, E27), as a first-order last step.

The solver holds no run: ``step`` is a generator that yields ``(x, sigma, need_denoised)`` for each
model evaluation and receives ``(denoised, eps)`` (docs/plugins.md), so one instance serves any
number of runs, and the diffusers scheduler can feed it one pipeline model output at a time.
"""

import torch

from diffsolve import Solver, hookimpl


class ExampleMidpoint(Solver):
    """Explicit midpoint in sigma (order 2, 2 calls/step; Euler on the step to 0)."""

    name = "example-midpoint"
    order = 2
    calls_per_step = 2

    renoise_ok = True  # it continues from state.ode.renoised(...) after its first evaluation

    def step(self, i, x, state):
        s_t, s_s = state.sigmas[i], state.sigmas[i + 1]
        denoised, eps = yield x, s_t, True
        if s_s == 0:
            return denoised, denoised
        x = state.ode.renoised(x, denoised, eps, s_t)
        h = s_s - s_t
        _, eps_mid = yield x + (h / 2) * eps, s_t + h / 2, False
        return x + h * eps_mid, denoised


def geometric(schedule, steps, sigma_min=None, sigma_max=None):
    """Geometric (log-uniform) sigmas from sigma_max to sigma_min, then 0."""
    lo = schedule.sigma_min if sigma_min is None else sigma_min
    hi = schedule.sigma_max if sigma_max is None else sigma_max
    s = torch.logspace(torch.log10(torch.tensor(hi)), torch.log10(torch.tensor(lo)), steps, dtype=torch.float64)
    return torch.cat([s, torch.zeros(1, dtype=torch.float64)])


@hookimpl
def register_solvers(register):
    register(ExampleMidpoint)


@hookimpl
def register_grids(register):
    register("example-geometric", geometric)
