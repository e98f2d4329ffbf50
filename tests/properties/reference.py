"""Independent float64 implementations of the formulas of docs/math.md, written from the note's
equations (not from diffsolve's code): the oracles of the property suite.

VP-space quantities take (abar, 1 - abar) pairs formed from sigma as abar = 1/(1 + sigma^2),
1 - abar = sigma^2/(1 + sigma^2), never 1 - abar by subtraction near abar = 1 (pitfall 5).
"""

from __future__ import annotations

import math

import torch

import diffsolve as ds
from diffsolve.solvers.base import advance


def abar_pair(sigma: float) -> tuple[float, float]:
    """(abar, 1 - abar) at VE level sigma (E5), without cancellation."""
    r2 = 1.0 + sigma * sigma
    return 1.0 / r2, sigma * sigma / r2


def A(sigma: float) -> float:
    """sqrt(abar) (E5)."""
    return 1.0 / math.sqrt(1.0 + sigma * sigma)


def B(sigma: float) -> float:
    """sqrt(1 - abar) (E5)."""
    return sigma / math.sqrt(1.0 + sigma * sigma)


# -- DDIM's generalized step and its special cases ---------------------------------------------------
def ddim_nu(sigma_t: float, sigma_s: float, eta: float) -> float:
    """nu_{t->s}(eta) of E19 in VP units; 0 for s >= t (encoding, pitfall 10)."""
    if sigma_s >= sigma_t:
        return 0.0
    _, om_t = abar_pair(sigma_t)
    _, om_s = abar_pair(sigma_s)
    # 1 - abar_t/abar_s = 1 - (1 + s_s^2)/(1 + s_t^2), formed as (s_t^2 - s_s^2)/(1 + s_t^2)
    one_minus_ratio = (sigma_t**2 - sigma_s**2) / (1.0 + sigma_t**2)
    return eta * math.sqrt(om_s / om_t) * math.sqrt(one_minus_ratio)


def ddim_step_vp(x_t, eps, sigma_t: float, sigma_s: float, eta: float = 0.0, z=None):
    """E18 in VP space: x_s = A_s x0hat + sqrt(1 - abar_s - nu^2) eps + nu z, x0hat = (x_t - B_t eps)/A_t."""
    abar_t, om_t = abar_pair(sigma_t)
    abar_s, om_s = abar_pair(sigma_s)
    nu = ddim_nu(sigma_t, sigma_s, eta)
    x0hat = (x_t - math.sqrt(om_t) * eps) / math.sqrt(abar_t)
    out = math.sqrt(abar_s) * x0hat + math.sqrt(max(om_s - nu * nu, 0.0)) * eps
    if nu > 0:
        out = out + nu * z
    return out


def ddpm_posterior(x_t, x0hat, sigma_t: float, sigma_s: float) -> tuple[torch.Tensor, float]:
    """E23 mean and E24 variance of DDPM's posterior q(x_s | x_t, x0) (s < t)."""
    abar_t, om_t = abar_pair(sigma_t)
    abar_s, om_s = abar_pair(sigma_s)
    beta_ts = (sigma_t**2 - sigma_s**2) / (1.0 + sigma_t**2)  # 1 - abar_t/abar_s
    mean = (math.sqrt(abar_s) * beta_ts / om_t) * x0hat + (math.sqrt(abar_t / abar_s) * om_s / om_t) * x_t
    return mean, beta_ts * om_s / om_t


def kdiffusion_ancestral_step(xbar, denoised, sigma_from: float, sigma_to: float, eta: float, z):
    """k-diffusion's sample_euler_ancestral step (E26): get_ancestral_step, Euler to sigma_down, + sigma_up z."""
    if eta == 0:
        sigma_down, sigma_up = sigma_to, 0.0
    else:
        sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
        sigma_down = math.sqrt(sigma_to**2 - sigma_up**2)
    d = (xbar - denoised) / sigma_from
    out = xbar + d * (sigma_down - sigma_from)
    if sigma_to > 0:
        out = out + z * sigma_up
    return out


# -- the first-order forms of section 3.2 -----------------------------------------------------------
def e22(x_t, eps, s_t, s_s):
    """VP coefficient form of DDIM at eta = 0: x_s = (A_s/A_t) x_t + A_s (sigma_s - sigma_t) eps."""
    return (A(s_s) / A(s_t)) * x_t + A(s_s) * (s_s - s_t) * eps


def e31(xbar_t, denoised, s_t, s_s):
    """Karras/denoiser form: xbar_s = (sigma_s/sigma_t) xbar_t + (1 - sigma_s/sigma_t) D."""
    return (s_s / s_t) * xbar_t + (1.0 - s_s / s_t) * denoised


def e33(x_t, eps, s_t, s_s):
    """DPM-Solver-1: x_s = (A_s/A_t) x_t - B_s (exp(h) - 1) eps, h = lambda_s - lambda_t = log(s_t/s_s); s_s > 0."""
    h = math.log(s_t) - math.log(s_s)
    return (A(s_s) / A(s_t)) * x_t - B(s_s) * math.expm1(h) * eps


def e34(x_t, x0hat, s_t, s_s):
    """DPM-Solver++(1): x_s = (B_s/B_t) x_t - A_s (exp(-h) - 1) x0hat (exp(-h) = s_s/s_t, 0 at s_s = 0)."""
    return (B(s_s) / B(s_t)) * x_t - A(s_s) * (s_s / s_t - 1.0) * x0hat


def e37(xbar_t, eps, s_t, s_s):
    """The paper's Euler-in-t update of the VE ODE, Eq. 15 [P15]: xbar_t + (s_s^2 - s_t^2)/(2 s_t) eps."""
    return xbar_t + 0.5 * (s_s**2 - s_t**2) / s_t * eps


# -- official DDIM grids (E39, E40) -----------------------------------------------------------------
def official_uniform(T: int, S: int) -> list[int]:
    """E39: k = floor(T/S); seq = (0, k, ..., k (ceil(T/k) - 1))."""
    k = T // S
    return [k * j for j in range(-(-T // k))]


def official_quad(T: int, S: int) -> list[int]:
    """E40: int((j sqrt(0.8 T)/(S - 1))^2), j = 0..S-1, as float64 linspace (last point = the endpoint)."""
    stop = math.sqrt(0.8 * T)
    step = stop / (S - 1)
    pts = [j * step for j in range(S - 1)] + [stop]
    return [int(p * p) for p in pts]


# -- slerp (E43) ------------------------------------------------------------------------------------
def slerp(z0: torch.Tensor, z1: torch.Tensor, a: float) -> torch.Tensor:
    theta = math.acos(max(-1.0, min(1.0, float((z0 * z1).sum() / (z0.norm() * z1.norm())))))
    return (math.sin((1 - a) * theta) * z0 + math.sin(a * theta) * z1) / math.sin(theta)


# -- helpers --------------------------------------------------------------------------------------
def constant_eps_ode(eps: torch.Tensor, space: str = "vp") -> ds.DiffusionODE:
    """An ODE whose model returns ``eps`` (broadcast) at every point: one solver step is then
    exactly one application of the step formula with that epshat."""
    sched = ds.SigmaSchedule(0.0, 1e6, space=space)
    return ds.wrap(lambda x, t: eps.expand_as(x).clone(), sched, prediction="eps", time_dtype=torch.float64)


def solver_step(name_or_solver, ode, sigma_t: float, sigma_s: float, xbar: torch.Tensor, z=None, **options):
    """One step of a solver from sigma_t to sigma_s (setup on the two-point grid), with fixed noise z."""
    solver = ds.make_solver(name_or_solver, **options)
    noise_calls = []

    def noise(like):
        noise_calls.append(1)
        return (torch.zeros_like(like) if z is None else z.expand_as(like).to(like.dtype)).clone()

    state = solver.init(ode, [float(sigma_t), float(sigma_s)], noise)
    out, denoised = advance(solver.step(0, xbar, state), ode)
    return out, denoised, len(noise_calls)
