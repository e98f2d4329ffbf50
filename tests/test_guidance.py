"""Guidance methods (docs/guidance.md, docs/math.md#guidance): each rule against an independent float64
implementation of its paper's formula, CFG++ through the renoise hook (RENOISE_SPEC), the interval
option, composition with thresholding, the registry and a plugin installed through an entry point.

The model is a small float64 conditional eps-model (a smooth nonlinear map of x, t and a label), so
every reference below calls it once per prediction and applies the formula with plain tensor algebra.
"""

from __future__ import annotations

import math

import pytest
import torch
from example_install import pip_install_example

import diffsolve as ds
from diffsolve.analytic import default_schedule
from diffsolve.plugins import Registry, UnknownNameError

F64 = torch.float64
# float64 rounding of O(1)..O(100) values through a handful of operations
TOL = 1e-12

_g = torch.Generator().manual_seed(0)
W_LABEL = torch.randn(3, 1, 4, 4, generator=_g, dtype=F64)
W_MIX = torch.randn(4, 4, generator=_g, dtype=F64) / 2


def model(x, t, y):
    """eps(x, t, y): nonlinear in x, depends on the time and on the label y (2 = the null label)."""
    h = x @ W_MIX + W_LABEL[y] * (1 + t.to(F64)[:, None, None, None] / 1000)
    return torch.tanh(h) + 0.1 * x


def weak(x, t, y):
    return 0.8 * model(x, t, y) + 0.05 * x


SCHED = default_schedule()
Y = torch.tensor([0, 1, 1])
NULL = torch.tensor([2, 2, 2])


def guided(guidance, **kw):
    return ds.wrap(model, SCHED, time="index", cond={"y": Y}, uncond={"y": NULL}, guidance=guidance, **kw)


def guided_flow(guidance):
    """The same labels and model read as a flow (velocity) model on ds.FlowSchedule()."""
    return ds.wrap(
        lambda x, t, y: model(x, t * 1000, y),
        ds.FlowSchedule(),
        prediction="flow",
        cond={"y": Y},
        uncond={"y": NULL},
        guidance=guidance,
    )


def state(seed=1, sigma=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 1, 4, 4, generator=g, dtype=F64) * math.sqrt(1 + sigma**2)


def pair(xbar, sigma, labels, net=model):
    """(D, eps) of an eps-model at (xbar, sigma): E6 and E9 written out."""
    a = 1 / math.sqrt(1 + sigma**2)
    t = torch.full((xbar.shape[0],), float(SCHED.t(sigma)), dtype=torch.float32)
    eps = net(xbar * a, t, labels)
    return xbar - sigma * eps, eps


def dot(a, b):
    return (a * b).flatten(1).sum(1).reshape(-1, 1, 1, 1)


# -- each rule against its paper's formula -----------------------------------------------------------
def test_float_guidance_keeps_todays_rule_bit_for_bit():
    """ds.wrap(guidance=w) is one batched call and u + w (c - u) on the raw output, then E9: same ops, same bits."""
    xbar, sigma = state(), 3.0
    d, e = guided(7.5).predict(xbar, sigma)
    a = 1 / math.sqrt(1 + sigma**2)
    t = torch.full((6,), float(SCHED.t(sigma)), dtype=torch.float32)
    both = model(torch.cat([xbar * torch.tensor(a, dtype=F64)] * 2), t, torch.cat([Y, NULL]))
    out = both[3:] + 7.5 * (both[:3] - both[3:])
    assert torch.equal(e, out)
    assert torch.equal(d, torch.add(xbar, out, alpha=-sigma))


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, 7.5])
def test_cfg_method_is_ho_salimans_rule(w):
    xbar, sigma = state(), 2.0
    d, e = guided(ds.make_guidance("cfg", scale=w)).predict(xbar, sigma)
    (dc, ec), (du, eu) = pair(xbar, sigma, Y), pair(xbar, sigma, NULL)
    assert torch.allclose(e, eu + w * (ec - eu), atol=TOL, rtol=0)
    assert torch.allclose(d, du + w * (dc - du), atol=TOL, rtol=0)
    assert torch.allclose(d + sigma * e, xbar, atol=TOL, rtol=0)  # on the ray


def test_guidance_one_is_the_conditional_model():
    xbar, sigma = state(), 5.0
    cond_only = ds.wrap(model, SCHED, time="index", model_kwargs={"y": Y})
    for g in (1.0, ds.make_guidance("cfg", scale=1.0), ds.make_guidance("apg", scale=1.0, eta=0.3)):
        d, e = guided(g).predict(xbar, sigma)
        dc, ec = cond_only.predict(xbar, sigma)
        assert torch.allclose(d, dc, atol=TOL, rtol=0) and torch.allclose(e, ec, atol=TOL, rtol=0)


def test_cfg_plus_plus_pair_is_guided_denoised_with_unconditional_eps():
    xbar, sigma, lam = state(), 4.0, 0.4
    ode = guided(ds.make_guidance("cfg++", scale=lam))
    assert ode.renoise
    d, e = ode.predict(xbar, sigma)
    (dc, _), (du, eu) = pair(xbar, sigma, Y), pair(xbar, sigma, NULL)
    assert torch.allclose(d, du + lam * (dc - du), atol=TOL, rtol=0)
    assert torch.allclose(e, eu, atol=TOL, rtol=0)
    assert torch.allclose(ode.renoised(xbar, d, e, sigma), du + lam * (dc - du) + sigma * eu, atol=TOL, rtol=0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_cfg_plus_plus_with_ddim_is_the_euler_form(eta):
    """x_next = D_g + sigma_next (x - D_u) / sigma (Chung et al. 2024), and with eta > 0 the same plus DDIM's noise."""
    lam, steps = 0.6, 8
    x_T = state(seed=3, sigma=0.0)  # model space: unit noise
    ode = guided(ds.make_guidance("cfg++", scale=lam))
    sig = ds.grid("trailing", SCHED, steps).tolist()
    out = ds.sample(ode, x_T, "ddim", sigmas=sig, eta=eta, generator=torch.Generator().manual_seed(5))
    noise = torch.Generator().manual_seed(5)
    x = x_T * math.sqrt(1 + sig[0] ** 2)  # the driver's start: xbar = x_T / sqrt(abar)
    for s, s_next in zip(sig[:-1], sig[1:]):
        (dc, _), (du, _) = pair(x, s, Y), pair(x, s, NULL)
        dg = du + lam * (dc - du)
        if s_next == 0:
            x = dg
            break
        nubar = eta * s_next * math.sqrt(s**2 - s_next**2) / s  # E20 / A_s
        x = dg + math.sqrt(s_next**2 - nubar**2) * (x - du) / s
        if nubar > 0:
            x = x + nubar * torch.randn(x.shape, generator=noise, dtype=F64)
    assert torch.allclose(out, x, atol=1e-10, rtol=0)


def test_cfg_plus_plus_with_ddim_is_cfg_with_a_per_step_scale():
    """docs/math.md#guidance-cfgpp: on a DDIM step sigma -> sigma_next, CFG++ with lambda equals CFG with
    w = lambda / (1 - sigma_next / sigma) (w = lambda on the step into 0)."""
    lam = 0.3
    sig = ds.grid("trailing", SCHED, 6).tolist()
    x = state(seed=4, sigma=sig[0])
    ode = guided(ds.make_guidance("cfg++", scale=lam)).start_run()
    for s, s_next in zip(sig[:-1], sig[1:]):
        d, e = ode.predict(x, s)
        x_pp = ode.renoised(x, d, e, s) + (s_next - s) * e if s_next > 0 else d
        w = lam / (1 - s_next / s)
        d_w, e_w = guided(ds.make_guidance("cfg", scale=w)).predict(x, s)
        x_cfg = x + (s_next - s) * e_w if s_next > 0 else d_w
        assert torch.allclose(x_pp, x_cfg, atol=1e-10, rtol=0)
        x = x_pp


def test_cfg_plus_plus_refused_by_a_solver_without_the_renoise_hook():
    ode = guided(ds.make_guidance("cfg++", scale=0.5))
    with pytest.raises(ValueError, match=r"solver 'bdia' cannot run this ODE.*renoising.*Solvers that can: .*ddim"):
        ds.sample(ode, state(sigma=0.0), "bdia", steps=4)


def _can_renoise(name):
    return ds.make_solver(name).renoise_ok


@pytest.mark.parametrize("name", ds.list_solvers())
def test_cfg_plus_plus_runs_with_every_solver_that_has_the_renoise_hook_and_others_refuse(name):
    """CFG++ over the registry: a solver with the renoise hook (docs/math.md 3.6) samples the guided ODE to a
    finite result; one without it is refused before any model call, with the reason."""
    ode = guided(ds.make_guidance("cfg++", scale=0.6))
    x_T = state(seed=3, sigma=float(SCHED.sigma_max))
    kw = {"generator": torch.Generator().manual_seed(0)} if ds.make_solver(name).stochastic else {}
    if _can_renoise(name):
        out = ds.sample(ode, x_T, name, steps=6, **kw)
        assert torch.isfinite(out).all() and ode.nfe > 0
    else:
        with pytest.raises(ValueError, match=rf"solver '{name}' cannot run this ODE.*renoising"):
            ds.sample(ode, x_T, name, steps=6, **kw)
        assert ode.nfe == 0


def test_registry_dpmpp_2m_under_cfg_plus_plus_keeps_the_renoising_denoised_in_its_history():
    """The registry's dpmpp-2m (midpoint form, order 2 after the first step) on a CFG++ ODE equals the
    self-contained loop with the guided D in the history (RENOISE_SPEC 3, docs/math.md#guidance-history)."""
    ode = guided(ds.make_guidance("cfg++", scale=0.5))
    sig = ds.grid("trailing", SCHED, 6).tolist()
    x_T = state(seed=7, sigma=sig[0])
    ours = ds.sample(ode, ode.from_xbar(x_T, sig[0]), "dpmpp-2m", sigmas=sig, final_step="denoise")  # model space
    loop = _dpmpp_2m_renoise(ode.start_run(), x_T, sig, "guided")  # xbar; at sigma = 0 the two spaces agree
    assert torch.allclose(ours, loop, atol=1e-10, rtol=0)


def _dpmpp_2m_renoise(ode, x, sig, history):
    """DPM-Solver++(2M) (X3 of docs/math.md, Lu et al. 2022 multistep form in sigma) on the renoised state,
    a self-contained loop (the guidance branch's test-side solver; the house branch ports the registry's
    dpmpp-2m to the renoise hook). history="guided": the renoising D goes into the history (RENOISE_SPEC 3);
    "uncond": the unconditional D_u = x - sigma eps_u does (ComfyUI's variant)."""
    prev = None
    for i, (s, s_next) in enumerate(zip(sig[:-1], sig[1:])):
        d, e = ode.predict(x, s)
        du = x - s * e
        x = ode.renoised(x, d, e, s)
        if s_next == 0:
            return d
        h = math.log(s / s_next)
        r = s_next / s
        if prev is None:
            x = r * x + (1 - r) * d
        else:
            h_last = math.log(sig[i - 1] / s)
            rho = h_last / h
            x = r * x + (1 - r) * (d + (d - prev) / (2 * rho))
        prev = d if history == "guided" else du
    return x


def _comfy_dpmpp_2m_cfg_pp(x, sig, lam):
    """ComfyUI's sample_dpmpp_2m_cfg_pp, written out from its definition (t = -log sigma, h = t_next - t):
    mix = -exp(-h) U on the first and last steps, else -exp(-h) U - expm1(-h) (D - U_old) / (2 r), r = h_last / h;
    x <- D + mix + exp(-h) x; U_old <- U. D is the guided denoised, U the unconditional one."""
    old_u = None
    for i, (s, s_next) in enumerate(zip(sig[:-1], sig[1:])):
        (dc, _), (du, _) = pair(x, s, Y), pair(x, s, NULL)
        d = du + lam * (dc - du)
        if s_next == 0:
            return d
        t, t_next = -math.log(s), -math.log(s_next)
        h = t_next - t
        if old_u is None:
            mix = -math.exp(-h) * du
        else:
            r = (t - (-math.log(sig[i - 1]))) / h
            mix = -math.exp(-h) * du - math.expm1(-h) * (1 / (2 * r)) * (d - old_u)
        x = d + mix + math.exp(-h) * x
        old_u = du
    return x


def test_comfyui_dpmpp_2m_cfg_pp_is_renoise_with_unconditional_history():
    """ComfyUI's dpmpp_2m_cfg_pp equals DPM-Solver++(2M) on the renoised state with D_u in the history; with the
    renoising D_g in the history (RENOISE_SPEC, what docs/math.md#guidance-history derives) the two differ from step 2 on."""
    lam = 0.5
    ode = guided(ds.make_guidance("cfg++", scale=lam)).start_run()
    sig = ds.grid("trailing", SCHED, 6).tolist()
    x_T = state(seed=7, sigma=sig[0])
    comfy = _comfy_dpmpp_2m_cfg_pp(x_T, sig, lam)
    assert torch.allclose(_dpmpp_2m_renoise(ode, x_T, sig, "uncond"), comfy, atol=1e-10, rtol=0)
    ours = _dpmpp_2m_renoise(ode, x_T, sig, "guided")
    assert (ours - comfy).abs().max() > 1e-3  # a real difference, not rounding
    # over the first step (no history yet) both are the Euler form D_g + sigma_1 (x - D_u) / sigma_0
    one_step = sig[:2]
    assert torch.allclose(
        _dpmpp_2m_renoise(ode, x_T, one_step, "guided"),
        comfy_first := (_comfy_dpmpp_2m_cfg_pp(x_T, one_step, lam)),
        atol=1e-10,
        rtol=0,
    )
    (dc, _), (du, _) = pair(x_T, sig[0], Y), pair(x_T, sig[0], NULL)
    euler = du + lam * (dc - du) + sig[1] * (x_T - du) / sig[0]
    assert torch.allclose(comfy_first, euler, atol=1e-10, rtol=0)


def _apg_reference(dc, du, w, eta, r, beta, prev, formulation):
    """APG (Sadat et al. 2024, Algorithm 1) in float64: momentum, norm threshold, projection on D_c."""
    delta = dc - du
    if beta != 0 and prev is not None:
        delta = delta + beta * prev
    kept = delta
    if r > 0:
        norm = dot(delta, delta).sqrt()
        delta = delta * torch.minimum(torch.ones_like(norm), r / norm)
    par = dot(delta, dc) / dot(dc, dc) * dc
    update = (delta - par) + eta * par
    d = dc + (w - 1) * update if formulation == "paper" else du + w * update
    return d, kept


@pytest.mark.parametrize(
    "eta,r,beta,formulation", [(0.0, 0.0, 0.0, "paper"), (0.3, 0.5, -0.5, "paper"), (0.5, 0.2, 0.3, "uncond")]
)
def test_apg_is_sadat_rule_with_momentum_kept_in_the_run(eta, r, beta, formulation):
    w = 6.0
    method = ds.make_guidance("apg", scale=w, eta=eta, norm_threshold=r, momentum=beta, formulation=formulation)
    ode = guided(method)
    run = ode.start_run()
    prev = None
    for k, sigma in enumerate((6.0, 2.5, 0.7)):
        xbar = state(seed=10 + k, sigma=sigma)
        d, e = run.predict(xbar, sigma)
        (dc, _), (du, _) = pair(xbar, sigma, Y), pair(xbar, sigma, NULL)
        ref, prev = _apg_reference(dc, du, w, eta, r, beta, prev, formulation)
        assert torch.allclose(d, ref, atol=1e-10, rtol=0)
        assert torch.allclose(e, (xbar - ref) / sigma, atol=1e-10, rtol=0)
    assert not hasattr(method, "momentum_buffer") and vars(method).keys() == {
        "scale",
        "sigma_interval",
        "eta",
        "norm_threshold",
        "momentum",
        "formulation",
    }  # no run state on the method
    if beta != 0:
        # a second run starts with an empty momentum: its first evaluation equals the first of the first run
        xbar = state(seed=10, sigma=6.0)
        first = ode.start_run().predict(xbar, 6.0)[0]
        (dc, _), (du, _) = pair(xbar, 6.0, Y), pair(xbar, 6.0, NULL)
        assert torch.allclose(first, _apg_reference(dc, du, w, eta, r, beta, None, formulation)[0], atol=1e-10)
        with pytest.raises(ValueError, match="momentum.*inside a run"):
            ode.predict(xbar, 6.0)


def test_apg_at_eta_one_without_threshold_is_cfg():
    xbar, sigma = state(), 1.5
    d, _ = guided(ds.make_guidance("apg", scale=4.0, eta=1.0)).predict(xbar, sigma)
    d_cfg, _ = guided(4.0).predict(xbar, sigma)
    assert torch.allclose(d, d_cfg, atol=TOL, rtol=0)


@pytest.mark.parametrize("phi", [0.0, 0.7, 1.0])
def test_cfg_rescale_is_lin_rule_and_matches_the_wrapper_option(phi):
    xbar, sigma, w = state(), 2.0, 5.0
    d, e = guided(ds.make_guidance("cfg-rescale", scale=w, phi=phi)).predict(xbar, sigma)
    (_, ec), (_, eu) = pair(xbar, sigma, Y), pair(xbar, sigma, NULL)
    cfg = eu + w * (ec - eu)
    std = lambda v: v.flatten(1).std(1).reshape(-1, 1, 1, 1)  # noqa: E731
    ref = phi * cfg * std(ec) / std(cfg) + (1 - phi) * cfg
    assert torch.allclose(e, ref, atol=TOL, rtol=0) and torch.allclose(d, xbar - sigma * ref, atol=TOL, rtol=0)
    # an eps-model's raw output is eps: the wrapper's guidance_rescale is the same rule
    assert torch.allclose(e, guided(w, guidance_rescale=phi).predict(xbar, sigma)[1], atol=TOL, rtol=0)


def test_cfg_zero_star_is_the_optimized_scale_with_zero_init():
    w = 4.0
    ode = guided(ds.make_guidance("cfg-zero-star", scale=w, zero_init_steps=1))
    run = ode.start_run()
    xbar, sigma = state(), 3.0
    d0, e0 = run.predict(xbar, sigma)  # step 0: zero-init, x0hat = x_t (model space, E6)
    assert torch.allclose(d0, xbar / math.sqrt(1 + sigma**2), atol=TOL, rtol=0)
    assert torch.allclose(e0, (xbar - d0) / sigma, atol=TOL, rtol=0)
    run.run.step = 1
    d, e = run.predict(xbar, sigma)
    (_, ec), (_, eu) = pair(xbar, sigma, Y), pair(xbar, sigma, NULL)
    s_star = dot(ec, eu) / dot(eu, eu)
    ref = s_star * eu + w * (ec - s_star * eu)
    assert torch.allclose(e, ref, atol=TOL, rtol=0) and torch.allclose(d, xbar - sigma * ref, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="zero-init.*inside a run"):
        ode.predict(xbar, sigma)
    # a flow model: zero-init is the zero velocity, the first step leaves the model-space state where it is
    flow = guided_flow(ds.make_guidance("cfg-zero-star", scale=w, zero_init_steps=1))
    sig = [4.0, 1.5, 0.5, 0.0]
    traj = ds.sample(flow, state(sigma=0.0), "ddim", sigmas=sig, return_trajectory=True)[1]
    assert torch.allclose(traj[0], traj[1], atol=TOL, rtol=0)
    assert (traj[2] - traj[1]).abs().max() > 1e-3  # the second step moves


def test_cfg_zero_star_zero_init_refuses_an_inversion_from_sigma_zero():
    # invert's first step is at sigma = 0, where zero-init's eps = (xbar - D) / sigma was 0/0: the run
    # ended in a NonFiniteError blaming the model
    ode = guided(ds.make_guidance("cfg-zero-star", scale=4.0, zero_init_steps=1))
    with pytest.raises(ValueError, match="starts at sigma = 0.*zero_init_steps=0"):
        ds.invert(ode, state(sigma=0.0), steps=3)
    x_T = ds.invert(guided(ds.make_guidance("cfg-zero-star", scale=4.0, zero_init_steps=0)), state(sigma=0.0), steps=3)
    assert bool(torch.isfinite(x_T).all())


@pytest.mark.parametrize("interval", [(200.0, math.inf), (0.0, 1e-3)])
def test_a_sigma_interval_outside_the_models_range_is_refused_not_a_silent_no_op(interval):
    # (200, inf] on a schedule whose sigmas end at 157.4 never guided: the run was plain conditional sampling
    with pytest.raises(ValueError, match=r"does not meet the model's sigma range .*would never apply"):
        guided(ds.make_guidance("cfg", scale=4.0, sigma_interval=interval))
    guided(ds.make_guidance("cfg", scale=4.0, sigma_interval=(100.0, math.inf)))  # overlaps: accepted


def test_autoguidance_refuses_an_uncond_it_would_ignore():
    # both models are called with cond=; an uncond= (e.g. null labels meant for the weak model) was dropped
    with pytest.raises(ValueError, match="'autoguidance' calls the model and its weak_model both with cond=; uncond="):
        guided(ds.make_guidance("autoguidance", scale=2.0, weak_model=weak))


def test_autoguidance_is_karras_rule_with_the_weak_model_conditional():
    w = 2.5
    ode = ds.wrap(
        model,
        SCHED,
        time="index",
        cond={"y": Y},
        guidance=ds.make_guidance("autoguidance", scale=w, weak_model=weak),
    )
    xbar, sigma = state(), 1.0
    d, e = ode.predict(xbar, sigma)
    (dc, ec), (dw, ew) = pair(xbar, sigma, Y), pair(xbar, sigma, Y, net=weak)
    assert torch.allclose(d, dw + w * (dc - dw), atol=TOL, rtol=0)
    assert torch.allclose(e, ew + w * (ec - ew), atol=TOL, rtol=0)
    assert ode.nfe == 1  # one guided evaluation


# -- the interval ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,scale", [("cfg", 6.0), ("cfg++", 0.8), ("apg", 6.0), ("cfg-zero-star", 6.0)])
def test_interval_guidance_is_the_conditional_model_outside_the_interval(name, scale):
    opts = {"zero_init_steps": 0} if name == "cfg-zero-star" else {}
    ode = guided(ds.make_guidance(name, scale=scale, sigma_interval=(0.5, 4.0), **opts))
    plain = guided(ds.make_guidance(name, scale=scale, **opts))
    cond_only = ds.wrap(model, SCHED, time="index", model_kwargs={"y": Y})
    calls = []
    counted = ds.wrap(
        lambda x, t, y: calls.append(x.shape[0]) or model(x, t, y),
        SCHED,
        time="index",
        cond={"y": Y},
        uncond={"y": NULL},
        guidance=ds.make_guidance(name, scale=scale, sigma_interval=(0.5, 4.0), **opts),
    )
    for sigma in (0.2, 0.5, 4.5, 30.0):  # outside (0.5, 4]: lo itself is outside
        xbar = state(sigma=sigma)
        d, e = ode.predict(xbar, sigma)
        dc, ec = cond_only.predict(xbar, sigma)
        assert torch.equal(d, dc) and torch.equal(e, ec)
        counted.predict(xbar, sigma)
    assert calls == [3, 3, 3, 3]  # no unconditional half outside the interval
    for sigma in (0.51, 4.0):  # inside: the method itself
        xbar = state(sigma=sigma)
        assert torch.equal(ode.predict(xbar, sigma)[0], plain.predict(xbar, sigma)[0])


# -- thresholding composes -------------------------------------------------------------------------
def test_thresholding_acts_on_the_guided_denoised():
    xbar, sigma = state(), 2.0
    clip = ds.Clipping(-0.5, 0.5)
    d, e = guided(ds.make_guidance("apg", scale=5.0), denoised_transform=clip).predict(xbar, sigma)
    d_raw, _ = guided(ds.make_guidance("apg", scale=5.0)).predict(xbar, sigma)
    assert torch.equal(d, d_raw.clamp(-0.5, 0.5)) and torch.allclose(e, (xbar - d) / sigma, atol=TOL, rtol=0)
    # CFG++: the clipped guided D is renoised with the unconditional eps (the pair stays renoising)
    d, e = guided(ds.make_guidance("cfg++", scale=0.5), denoised_transform=clip).predict(xbar, sigma)
    (dc, _), (du, eu) = pair(xbar, sigma, Y), pair(xbar, sigma, NULL)
    assert torch.allclose(d, (du + 0.5 * (dc - du)).clamp(-0.5, 0.5), atol=TOL, rtol=0)
    assert torch.allclose(e, eu, atol=TOL, rtol=0)


# -- registry, errors, plugins -----------------------------------------------------------------------
def test_builtin_methods_are_registered():
    assert {"cfg", "cfg++", "apg", "cfg-rescale", "cfg-zero-star", "autoguidance"} <= set(ds.list_guidance())


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: ds.make_guidance("apgg", scale=2.0), UnknownNameError, r"did you mean 'apg'.*known guidance methods"),
        (lambda: ds.make_guidance("apg", scale=2.0, etta=0.1), ValueError, r"did you mean 'eta'"),
        (lambda: ds.make_guidance("cfg"), TypeError, r"scale= is required"),
        (lambda: ds.make_guidance("cfg", scale=float("nan")), ValueError, r"scale must be finite"),
        (lambda: ds.make_guidance("cfg", scale=-1.0), ValueError, r"scale must be in \[0, inf\]"),
        (lambda: ds.make_guidance("cfg++", scale=2.0), ValueError, r"'cfg\+\+': scale must be in \[0, 1\]"),
        (lambda: ds.make_guidance("cfg", scale=2.0, sigma_interval=(3.0, 1.0)), ValueError, r"0 <= lo < hi"),
        (lambda: ds.make_guidance("cfg", scale=2.0, sigma_interval=(-1, 1)), ValueError, r"0 <= lo < hi"),
        (lambda: ds.make_guidance("cfg", scale=2.0, sigma_interval=1.0), ValueError, r"pair \(lo, hi\)"),
        (lambda: ds.make_guidance("apg", scale=2.0, momentum=1.5), ValueError, r"momentum must be in \(-1, 1\)"),
        (lambda: ds.make_guidance("autoguidance", scale=2.0), TypeError, r"weak_model="),
        (lambda: guided("cfg"), TypeError, r"ds.make_guidance\('cfg', scale=...\)"),
        (
            lambda: ds.wrap(model, SCHED, time="index", cond={"y": Y}, guidance=ds.make_guidance("cfg", scale=2.0)),
            ValueError,
            r"needs both cond= and uncond=",
        ),
    ],
)
def test_bad_names_scales_and_intervals_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_method_refuses_a_grid_from_sigma_infinity():
    flow = guided_flow(ds.make_guidance("cfg", scale=3.0))
    with pytest.raises(ValueError, match="sigma = inf is not supported"):
        ds.sample(flow, state(sigma=0.0), "ddim", sigmas=[math.inf, 1.0, 0.0])


def test_interval_accepts_an_open_top():
    g = ds.make_guidance("cfg", scale=2.0, sigma_interval=(0.3, math.inf))
    assert g.active(1e6) and not g.active(0.3)


@pytest.fixture(scope="module")
def installed_guidance_example(tmp_path_factory):
    """The example guidance distribution, really installed with pip from its local path (into a temp dir)."""
    target = tmp_path_factory.mktemp("site")
    with pip_install_example("diffsolve-example-guidance", target, "diffsolve_example_guidance") as eps:
        yield eps


def test_a_plugin_adds_a_guidance_method_through_an_entry_point(installed_guidance_example):
    reg = Registry(entry_points=installed_guidance_example, disabled=()).load()
    assert reg.guidance["example-ramped-cfg"][1] == "diffsolve-example-guidance:example-guidance"
    assert "cfg" in reg.guidance
    method = reg.guidance_method("example-ramped-cfg")(5.0, sigma_half=2.0)
    xbar, sigma = state(), 2.0
    d, _ = guided(method).predict(xbar, sigma)
    (dc, _), (du, _) = pair(xbar, sigma, Y), pair(xbar, sigma, NULL)
    w = 1 + 4.0 * sigma / (sigma + 2.0)
    assert torch.allclose(d, du + w * (dc - du), atol=TOL, rtol=0)
    out = ds.sample(guided(method), state(sigma=0.0), "dpmpp-2m", steps=5)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("ratio", [1.5, 6.2])
def test_heun_step_is_the_ddim_step_plus_an_extrapolation_of_D_by_half_the_step_ratio_minus_one(ratio):
    """docs/math.md#guidance-heun: under CFG, Heun's step from sigma_0 to sigma_1 equals the DDIM step plus
    (sigma_0 / sigma_1 - 1) / 2 (D' - D_0), D' the data prediction at the DDIM predictor; a weight above 1 (ratio
    > 3, every step of a 5-step grid) extrapolates the change of D, which is why heun fails at NFE 10 under CFG."""
    from diffsolve.analytic import default_schedule, get_problem

    base = get_problem("gmm2d").ode(default_schedule())

    def cond_model(x, t, y):
        return base.model(x, t) + 0.3 * y.to(x.dtype)[:, None]

    y = torch.tensor([1, 2, 3])
    ode = ds.wrap(
        cond_model, base.schedule, prediction=base.prediction, time=base.time, guidance=8.0,
        cond={"y": y}, uncond={"y": torch.zeros(3, dtype=torch.long)},
    )  # fmt: skip
    s0 = 6.0
    s1 = s0 / ratio
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 6
    xbar0 = ode.to_xbar(x, s0)
    d0, _ = ode.predict(xbar0, s0)
    ddim = d0 + (s1 / s0) * (xbar0 - d0)
    d1, _ = ode.predict(ddim, s1)
    want = ode.from_xbar(ddim + (s0 / s1 - 1) / 2 * (d1 - d0), s1)
    got = ds.sample(ode, x, "heun", sigmas=[s0, s1])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)  # the same float64 arithmetic, reordered
