"""Inverse problems (issue 21): the operators' SVDs against dense matrices, each restoration method's
run against an independent float64 implementation of its rule written here from docs/math.md
section 11 (dense matrices, torch.linalg.pinv, autograd VJPs; never the library's operator code),
the exactness claims (DDNM, DDRM), DPS at zeta = 0, a flow-matching model from diffusers, and
bad arguments refused before the first model call."""

import math

import pytest
import torch

import diffsolve as ds
from diffsolve.inverse import Blur, Downsample, Identity, Inpaint, Saturate

SHAPE = (1, 4, 4)  # one sample: C, H, W
D = math.prod(SHAPE)
B = 3
SCHEDULE = ds.VPLinearSchedule()
torch.manual_seed(0)
_W = torch.randn(D, D, dtype=torch.float64) * 0.3


def eps_model(x, t):
    """A smooth nonlinear per-sample eps-model fed sigma (t = sigma): eps = x / sqrt(1 + t^2) + 0.2 tanh(W x)."""
    flat = x.reshape(x.shape[0], -1)
    tt = t.to(x.dtype).reshape(-1, 1)
    out = flat / torch.sqrt(1 + tt * tt) + 0.2 * torch.tanh(flat @ _W.T.to(x.dtype))
    return out.reshape(x.shape)


def make_ode():
    return ds.wrap(eps_model, SCHEDULE, prediction="eps", time=lambda s: s, time_dtype=torch.float64)


def x_true():
    return torch.rand(B, *SHAPE, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1


def dense(op):
    """The matrix of a linear operator, column by column from its forward (d_y x d_x)."""
    basis = torch.eye(D, dtype=torch.float64).reshape(D, *SHAPE)
    return op.forward(basis).reshape(D, -1).T


def mask():
    return Inpaint((torch.rand(SHAPE, generator=torch.Generator().manual_seed(2)) < 0.5).double())


# -- reference pieces (float64, written from the equations) -------------------------------------------
def ref_predict(xbar, sigma):
    """(D, eps) of the eps-model at the sigma-form state xbar (E6, E9): x = xbar / sqrt(1 + sigma^2)."""
    x = xbar / math.sqrt(1 + sigma * sigma)
    eps = eps_model(x, torch.full((xbar.shape[0],), sigma))
    return xbar - sigma * eps, eps


def ddim_split(s_t, s_s, eta):
    """DDIM's eta family (E20/E26): (sigma_down, nubar)."""
    if s_s == 0:
        return 0.0, 0.0
    nubar = eta * s_s * math.sqrt(s_t**2 - s_s**2) / s_t
    return math.sqrt(s_s**2 - nubar**2), nubar


def ref_renoising_ddim(sigmas, x_T, gen, eta, modify):
    """DDIM continuing from the renoised pair (RENOISE_SPEC): x_next = D' + sigma_down eps + nubar z."""
    xbar = x_T * math.sqrt(1 + sigmas[0] ** 2)
    for s_t, s_s in zip(sigmas[:-1], sigmas[1:]):
        denoised, eps = modify(xbar, s_t)
        down, nubar = ddim_split(s_t, s_s, eta)
        xbar = denoised + down * eps
        if nubar > 0:
            xbar = xbar + nubar * torch.randn(xbar.shape, generator=gen, dtype=torch.float64)
    return xbar


def sigmas_for(steps):
    return ds.grid(SCHEDULE.default_grid, SCHEDULE, steps).tolist()


# -- operators ------------------------------------------------------------------------------------------
LINEAR_OPS = {
    "identity": lambda: Identity(),
    "inpaint": mask,
    "downsample": lambda: Downsample(2),
    "blur": lambda: Blur.gaussian(3, 0.8, rcond=0.0),
}


@pytest.mark.parametrize("name", sorted(LINEAR_OPS))
def test_operator_svd_pinv_and_adjoint_equal_the_dense_matrix(name):
    op = LINEAR_OPS[name]()
    a = dense(op)
    x = x_true()
    y = op.forward(x)
    s = op.singulars(SHAPE)[0]
    # V is orthonormal (its round trip and norm), and U diag(s) V^T reproduces A: float64 round-off
    torch.testing.assert_close(op.v(op.vt(x), SHAPE), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(op.vt(x).norm(dim=1), x.reshape(B, -1).norm(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(op.u(op.vt(x) * s, SHAPE), y, rtol=0, atol=1e-12)
    torch.testing.assert_close(y.reshape(B, -1), x.reshape(B, -1) @ a.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(
        op.pinv(y, SHAPE).reshape(B, -1), y.reshape(B, -1) @ torch.linalg.pinv(a).T, atol=1e-9, rtol=0
    )
    torch.testing.assert_close(op.adjoint(y, SHAPE).reshape(B, -1), y.reshape(B, -1) @ a, rtol=0, atol=1e-12)
    # the singular values are A's (sorted, nonzero ones)
    ref = torch.linalg.svdvals(a)
    torch.testing.assert_close(s[s > 0].sort(descending=True).values, ref[ref > 1e-12], rtol=1e-10, atol=0)


def test_blur_takes_a_separable_2d_kernel_and_refuses_a_non_separable_one():
    k = torch.tensor([0.25, 0.5, 0.25], dtype=torch.float64)
    x = x_true()
    torch.testing.assert_close(Blur(torch.outer(k, k)).forward(x), Blur(k).forward(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="separable"):
        Blur(torch.eye(3))


def test_nonlinear_operator_vjp_is_its_jacobian_transpose():
    op = Saturate(2.0)
    x, v = x_true(), torch.randn(B, *SHAPE, generator=torch.Generator().manual_seed(1))
    jac = 2.0 / math.tanh(2.0) * (1 - torch.tanh(2.0 * x) ** 2)  # d/dx tanh(g x) / tanh(g)
    torch.testing.assert_close(op.vjp(x, v), jac * v, rtol=1e-12, atol=0)
    assert not op.linear


@pytest.mark.parametrize("box", [(-1, 0, 3, 3), (10, 10, 2, 2), (6, 6, 4, 4), (0, 0, 0, 3)])
def test_an_inpainting_box_outside_the_image_or_empty_is_refused(box):
    # these made masks with no (or fewer) missing pixels: negative indices wrapped, slices past the edge were cut
    with pytest.raises(ValueError, match=r"must lie inside the 8x8 image"):
        Inpaint.box((1, 8, 8), *box)
    assert int((Inpaint.box((1, 8, 8), 6, 6, 2, 2).mask == 0).sum()) == 4  # the corner box itself is fine


def test_downsampling_an_image_whose_size_is_not_a_multiple_of_the_factor_is_refused():
    # Downsample(3) of an 8x8 image averaged the top-left 6x6 and dropped the rest: restore then returned 6x6
    with pytest.raises(ValueError, match=r"Downsample\(3\) needs H and W divisible by 3; got 8x8"):
        Downsample(3)(torch.zeros(2, 1, 8, 8))
    assert Downsample(2)(torch.zeros(2, 1, 8, 8)).shape == (2, 1, 4, 4)


def test_applying_an_inpainting_mask_that_does_not_fit_names_both_shapes():
    # op(x0) with a 4x4 mask on 8x8 images was torch's "size of tensor a (8) must match ..."
    with pytest.raises(ValueError, match=r"mask of shape \(1, 4, 4\) does not fit samples of shape \(1, 8, 8\)"):
        Inpaint.random((1, 4, 4), keep=0.5)(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="one mask per sample for 3 samples; x has 2"):
        Inpaint(torch.ones(3, 1, 8, 8))(torch.zeros(2, 1, 8, 8))


# -- each method against its rule ----------------------------------------------------------------------
def _restore(method, op, y, steps, noise_std=0.0, seed=7, **kw):
    return ds.restore(
        make_ode(), y, op, method, steps=steps, noise_std=noise_std, generator=torch.Generator().manual_seed(seed), **kw
    )


@pytest.mark.parametrize("noise_std", [0.0, 0.3])
@pytest.mark.parametrize("make_op", [lambda: Downsample(2), lambda: Blur.gaussian(3, 0.8, rcond=0.0)])
def test_ddnm_equals_its_projection_rule_with_ddim(noise_std, make_op):
    op, steps, eta = make_op(), 4, 0.85
    a = dense(op)
    u, s, vh = torch.linalg.svd(a, full_matrices=False)  # A = U diag(s) V^T, dense (I1)
    y = op.forward(x_true()) + noise_std * 0.5
    sig = sigmas_for(steps)
    gen = torch.Generator().manual_seed(7)
    x_T = torch.randn(B, *SHAPE, generator=gen, dtype=torch.float64)

    def modify(xbar, sigma):  # D' = D - V diag(lambda_i / s_i) U^T (A D - y), lambda_i = min(1, s' s_i / sy) (I3)
        denoised, eps = ref_predict(xbar, sigma)
        nxt = max([v for v in sig if v < sigma], default=0.0)
        lam = torch.ones_like(s) if noise_std == 0 else torch.clamp(nxt * s / noise_std, max=1.0)
        r = denoised.reshape(B, -1) @ a.T - y.reshape(B, -1)
        correction = ((r @ u) * (lam / s)) @ vh
        return denoised - correction.reshape(denoised.shape), eps

    ref = ref_renoising_ddim(sig, x_T, gen, eta, modify)
    out = _restore("ddnm", op, y, steps, noise_std)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)  # float64 round-off over 4 steps (blur: 1/s up to ~50)


@pytest.mark.parametrize("make_op", [mask, lambda: Downsample(2), lambda: Blur.gaussian(3, 0.8, rcond=0.0)])
def test_ddnm_without_noise_fits_the_measurement(make_op):
    op = make_op()
    y = op.forward(x_true())
    out = _restore("ddnm", op, y, 6)
    # the last step returns the projected D: A x = A A^+ y = y up to round-off (issue 21: <= 1e-4)
    assert (op.forward(out) - y).abs().max() <= 1e-4


def test_ddnm_in_float32_fits_the_measurement_within_1e_4():
    op = mask()
    y = op.forward(x_true()).float()
    out = ds.restore(
        ds.wrap(eps_model, SCHEDULE, time=lambda s: s),
        y,
        op,
        "ddnm",
        steps=6,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.dtype == torch.float32 and (op.forward(out) - y).abs().max() <= 1e-4


def test_dps_equals_its_gradient_rule():
    op, steps, zeta = Saturate(1.5), 4, 0.7
    y = op.forward(x_true())
    sig = sigmas_for(steps)
    gen = torch.Generator().manual_seed(7)
    x_T = torch.randn(B, *SHAPE, generator=gen, dtype=torch.float64)

    def modify(xbar, sigma):  # D' = D - zeta (1 + sigma^2) grad_xbar sum_b ||y_b - A(D_b)|| (I4; VP scale^-2)
        xg = xbar.clone().requires_grad_(True)
        with torch.enable_grad():
            denoised, eps = ref_predict(xg, sigma)
            loss = sum(torch.linalg.vector_norm(y[b] - op.forward(denoised[b : b + 1])[0]) for b in range(B))
            (g,) = torch.autograd.grad(loss, xg)
        return denoised.detach() - zeta * (1 + sigma * sigma) * g, eps.detach()

    ref = ref_renoising_ddim(sig, x_T, gen, 1.0, modify)
    out = _restore("dps", op, y, steps, zeta=zeta)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)  # float64 round-off through two VJPs per step


def test_dps_with_zeta_zero_is_unconditional_sampling_with_the_same_solver_and_noise():
    op, steps = mask(), 5
    y = op.forward(x_true())
    solver = ds.make_solver("ddim", eta=1.0)
    out = _restore("dps", op, y, steps, zeta=0.0, solver=solver)
    gen = torch.Generator().manual_seed(7)
    x_T = torch.randn(B, *SHAPE, generator=gen, dtype=torch.float64)
    plain = ds.sample(make_ode(), x_T, "ddim", sigmas=sigmas_for(steps), eta=1.0, generator=gen)
    # renoising D + sigma eps equals the state up to float64 round-off
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-10)


@pytest.mark.parametrize("noise_std", [0.0, 0.2])
def test_pigdm_equals_its_vjp_rule(noise_std):
    op, steps, w = Blur.gaussian(3, 0.8, rcond=0.0), 4, 0.9
    a = dense(op)
    y = op.forward(x_true()) + noise_std
    sig = sigmas_for(steps)
    gen = torch.Generator().manual_seed(7)
    x_T = torch.randn(B, *SHAPE, generator=gen, dtype=torch.float64)

    def modify(xbar, sigma):  # h = J^T A^T (r^2 A A^T + sy^2 I)^-1 (y - A D); D' = D + w r^2 h (I5)
        r2 = sigma * sigma / (1 + sigma * sigma)
        gram = r2 * a @ a.T + noise_std**2 * torch.eye(a.shape[0])
        xg = xbar.clone().requires_grad_(True)
        with torch.enable_grad():
            denoised, eps = ref_predict(xg, sigma)
            resid = y.reshape(B, -1) - denoised.detach().reshape(B, -1) @ a.T
            v = torch.linalg.solve(gram, resid.T).T @ a
            (h,) = torch.autograd.grad(denoised, xg, v.reshape(denoised.shape))
        return denoised.detach() + w * r2 * h, eps.detach()

    ref = ref_renoising_ddim(sig, x_T, gen, 1.0, modify)
    out = _restore("pigdm", op, y, steps, noise_std, scale=w)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)  # float64 round-off; Gram solve vs SVD


def test_ddrm_equals_its_per_coordinate_rule_on_inpainting():
    op, steps, eta, eta_b, sy = mask(), 5, 0.7, 0.9, 0.3
    m = op.mask.reshape(1, -1).bool().expand(B, -1)
    y = op.forward(x_true() + sy * 0.3)
    ybar = y.reshape(B, -1)  # s = 1 on kept pixels: ybar = y there
    sig = sigmas_for(steps)
    gen = torch.Generator().manual_seed(7)
    torch.randn(B, *SHAPE, generator=gen, dtype=torch.float64)  # restore's x_T, unused by DDRM
    z = torch.randn(B, D, generator=gen, dtype=torch.float64)
    c = torch.where(m & (sy < sig[0]), ybar + math.sqrt(max(sig[0] ** 2 - sy**2, 0)) * z, sig[0] * z)
    for s_t, s_s in zip(sig[:-1], sig[1:]):
        chat = ref_predict(c.reshape(B, *SHAPE), s_t)[0].reshape(B, -1)
        z = torch.randn(B, D, generator=gen, dtype=torch.float64)
        nxt = torch.empty_like(c)
        for b in range(B):
            for i in range(D):
                if not m[b, i]:  # unmeasured: DDIM with eta
                    nxt[b, i] = (
                        chat[b, i] + math.sqrt(1 - eta**2) * s_s * (c[b, i] - chat[b, i]) / s_t + eta * s_s * z[b, i]
                    )
                elif s_s < sy:  # the measurement is noisier than the next state
                    nxt[b, i] = (
                        chat[b, i] + math.sqrt(1 - eta**2) * s_s * (ybar[b, i] - chat[b, i]) / sy + eta * s_s * z[b, i]
                    )
                else:
                    std = math.sqrt(s_s**2 - eta_b**2 * sy**2)
                    nxt[b, i] = (1 - eta_b) * chat[b, i] + eta_b * ybar[b, i] + std * z[b, i]
        c = nxt
    out = _restore("ddrm", op, y, steps, sy, eta=eta, eta_b=eta_b)
    torch.testing.assert_close(out.reshape(B, -1), c, rtol=0, atol=1e-12)


@pytest.mark.parametrize("make_op", [Identity, mask, lambda: Downsample(2)])
def test_ddrm_without_noise_returns_the_measurement_where_measured(make_op):
    op = make_op()
    y = op.forward(x_true())
    out = _restore("ddrm", op, y, 5)
    torch.testing.assert_close(op.forward(out), y, rtol=0, atol=1e-12)
    if isinstance(op, Identity):
        torch.testing.assert_close(out, y, rtol=0, atol=1e-12)  # A = I: the restoration is y itself


def test_red_diff_equals_adam_on_its_gradient():
    op, steps, lam, lr = Downsample(2), 4, 0.3, 0.05
    a = dense(op)
    y = op.forward(x_true())
    sig = sigmas_for(steps)
    gen = torch.Generator().manual_seed(7)
    torch.randn(B, *SHAPE, generator=gen, dtype=torch.float64)  # restore's x_T, unused
    mu = (y.reshape(B, -1) @ torch.linalg.pinv(a).T).reshape(B, *SHAPE)
    m1, m2 = torch.zeros_like(mu), torch.zeros_like(mu)
    b1, b2 = 0.9, 0.999  # Adam's defaults (Kingma & Ba 2015)
    for k, sigma in enumerate(sig[:-1], start=1):
        eps = torch.randn(mu.shape, generator=gen, dtype=torch.float64)
        eps_hat = ref_predict(mu + sigma * eps, sigma)[1]
        resid = mu.reshape(B, -1) @ a.T - y.reshape(B, -1)
        g = (resid @ a).reshape(mu.shape) + lam * sigma * (eps_hat - eps)
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        mu = mu - lr * (m1 / (1 - b1**k)) / (torch.sqrt(m2 / (1 - b2**k)) + 1e-8)
    out = _restore("red-diff", op, y, steps, lam=lam, lr=lr)
    torch.testing.assert_close(out, mu, rtol=0, atol=1e-10)


def test_daps_equals_its_anneal_solve_langevin_renoise_rule():
    op, steps, inner, langevin, lr, beta = mask(), 3, 2, 3, 0.4, 0.1
    a = dense(op)
    y = op.forward(x_true())
    sig = sigmas_for(steps)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(B, *SHAPE, generator=gen, dtype=torch.float64)
    s_min = SCHEDULE.sigma_min
    for k, sigma in enumerate(sig[:-1]):
        # inner solve: Euler (DDIM, eta 0) on `inner` log-uniform levels sigma -> sigma_min, then to 0
        levels = [
            math.exp(math.log(sigma) + (math.log(s_min) - math.log(sigma)) * j / (inner - 1)) for j in range(inner)
        ]
        levels.append(0.0)
        xbar = x * math.sqrt(1 + sigma**2)
        for s_t, s_s in zip(levels[:-1], levels[1:]):
            denoised, eps = ref_predict(xbar, s_t)
            xbar = denoised if s_s == 0 else xbar + (s_s - s_t) * eps
        x0hat = x0 = xbar
        tau = lr / (1 / sigma**2 + 1 / beta**2)
        for _ in range(langevin):
            grad = (
                -(x0 - x0hat) / sigma**2
                - ((x0.reshape(B, -1) @ a.T - y.reshape(B, -1)) @ a).reshape(x0.shape) / beta**2
            )
            x0 = x0 + tau * grad + math.sqrt(2 * tau) * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
        if sig[k + 1] > 0:
            xbar = x0 + sig[k + 1] * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
            x = xbar / math.sqrt(1 + sig[k + 1] ** 2)
    out = _restore("daps", op, y, steps, inner_steps=inner, langevin_steps=langevin, lr=lr, beta_min=beta)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-10)


# -- bad arguments: refused before the first model call ---------------------------------------------------
def _never_called(x, t):
    raise AssertionError("the model was called before the arguments were checked")


BAD = [
    (dict(operator=Inpaint(torch.ones(4, 4)), y=torch.zeros(2, 1, 5, 5)), ValueError, "does not fit"),
    (dict(operator=Blur.gaussian(3, 1.0), y=torch.zeros(2, 16)), ValueError, r"shape \(C, H, W\)"),
    (dict(noise_std=-0.1), ValueError, "noise_std must be >= 0"),
    (dict(noise_std=float("nan")), ValueError, "noise_std"),
    (dict(operator=Saturate(), method="ddnm"), ValueError, "'ddnm' needs a linear operator.*Saturate.*daps, dps"),
    (dict(method="dpss"), ValueError, "unknown restorer 'dpss'.*did you mean 'dps'.*known restorers: daps, ddnm"),
    (dict(method="dps", zetta=1.0), ValueError, "unknown option.*did you mean 'zeta'.*its options are: zeta"),
    (dict(method="ddrm", solver="ddim"), ValueError, "own sampler"),
    (dict(method="ddnm", solver="bdia"), ValueError, "renoising.*'bdia'.*can: .*ddim"),
    (dict(operator="inpaint"), TypeError, "operator must be"),
    (dict(method="dps", zeta=-1.0), ValueError, "zeta must be >= 0"),
    (dict(steps=0), ValueError, "steps"),
]


@pytest.mark.parametrize("change, error, match", BAD)
def test_bad_arguments_are_refused_before_the_first_model_call(change, error, match):
    args = dict(operator=Identity(), y=torch.zeros(2, 1, 4, 4), method="ddnm")
    args.update(change)
    ode = ds.wrap(_never_called, SCHEDULE, time=lambda s: s)
    with pytest.raises(error, match=match):
        ds.restore(ode, args.pop("y"), args.pop("operator"), args.pop("method"), **{"steps": 3, **args})


@pytest.mark.parametrize("method", ["ddrm", "red-diff", "ddnm"])
def test_a_guided_odes_condition_batch_is_checked_against_y_before_the_first_model_call(method):
    # ddrm and red-diff call the model outside ds.sample: a cond of another batch reached the model
    # (torch's "size of tensor a (4) must match ..."), not the wrapper's message
    labels = torch.arange(4.0)
    ode = ds.wrap(
        lambda x, t, y: _never_called(x, t), SCHEDULE, guidance=3.0, cond={"y": labels}, uncond={"y": 0 * labels}
    )
    with pytest.raises(ValueError, match=r"cond\['y'\] has batch 4, but x has batch 2"):
        ds.restore(ode, torch.zeros(2, 1, 4, 4), Identity(), method, steps=3)


def test_the_driver_refuses_a_renoising_ode_with_a_solver_that_cannot_continue_from_it():
    from diffsolve.inverse import hooked

    view = hooked(make_ode(), lambda v, x, s: v.base_predict(x, s), renoise=True)
    with pytest.raises(ValueError, match="(?i)solver 'bdia' cannot run this ODE.*renoising.*solvers that can: .*ddim"):
        ds.sample(view, torch.zeros(1, *SHAPE), "bdia", steps=3)


def test_list_restorers_names_the_six_methods():
    assert {"ddnm", "ddrm", "dps", "pigdm", "red-diff", "daps"} <= set(ds.list_restorers())


# -- a flow-matching model from diffusers ----------------------------------------------------------------
def test_restore_works_with_a_flow_matching_model_from_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from tiny_models import tiny_unet

    unet = tiny_unet(channels=1, dtype=torch.float32)
    ode = ds.from_diffusers(unet, FlowMatchEulerDiscreteScheduler(shift=1.0))
    truth = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float32) * 2 - 1
    op = Inpaint.random((1, 8, 8), 0.5, torch.Generator().manual_seed(2))
    y = op.forward(truth)
    for method, kw in (("ddnm", {}), ("ddrm", {}), ("pigdm", {}), ("dps", {"zeta": 0.5})):
        out = ds.restore(ode, y, op, method, steps=4, generator=torch.Generator().manual_seed(3), **kw)
        assert out.shape == truth.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
        if method in ("ddnm", "ddrm"):  # exact on the measured pixels without noise (float32 round-off)
            assert (op.forward(out) - y).abs().max() <= 1e-4, method


# -- a restorer plugin through an installed distribution ---------------------------------------------------
def test_a_restorer_plugin_installed_from_its_distribution_registers_and_restores(tmp_path, monkeypatch):
    from example_install import pip_install_example

    from diffsolve.plugins import Registry, registry

    with pip_install_example("diffsolve-example-restorer", tmp_path, "diffsolve_example_restorer") as eps:
        reg = Registry(entry_points=eps, disabled=()).load()
        assert reg.restorers["example-replace"][1] == "diffsolve-example-restorer:example-restorer"
        monkeypatch.setattr(registry, "_default", reg)
        assert "example-replace" in ds.list_restorers()
        op = mask()
        y = op.forward(x_true())
        out = ds.restore(make_ode(), y, op, "example-replace", steps=3, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(op.forward(out), y, rtol=0, atol=1e-12)  # its rule: the measured part is y
        with pytest.raises(ValueError, match="unknown restorer 'example-replace'"):
            Registry(entry_points=eps, disabled=("example-restorer",)).load().restorer("example-replace")


# -- the benchmark (diffsolve/bench/inverse.py) ------------------------------------------------------------
def test_inverse_benchmark_writes_cells_as_they_finish_and_resumes(tmp_path):
    import argparse
    import json

    from diffsolve.bench import inverse

    out = tmp_path / "inverse.jsonl"
    args = argparse.Namespace(
        out=str(out), n=2, tasks=["sr2"], rows=["naive", "ddnm-20"], fresh=False, quiet=True, figures=str(tmp_path)
    )
    done = inverse.run(args)
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["task"], r["noise"], r["row"]) for r in recs] == [
        ("sr2", 0.05, "naive"),
        ("sr2", 0.05, "ddnm-20"),
        ("sr2", 0.0, "naive"),
        ("sr2", 0.0, "ddnm-20"),
    ]  # issue 21's Done-when cell (sr2 at sigma_y = 0.05) first
    ddnm = next(r for r in recs if r["row"] == "ddnm-20" and r["noise"] == 0.0)
    assert ddnm["nfe"] == 20 and ddnm["dc"] < 1e-4 and len(ddnm["psnr_each"]) == 2  # DDNM is exact without noise
    assert len(inverse.run(args)) == 4 and len(out.read_text().splitlines()) == 4  # a rerun adds no cell
    assert "| ddnm-20 (first 2 digits) | 20 |" in inverse.table(done)


def test_diffsolve_bench_task_inverse_runs_the_inverse_benchmark(monkeypatch, tmp_path):
    from diffsolve import cli
    from diffsolve.bench import inverse

    seen = {}
    monkeypatch.setattr(inverse, "handle", lambda args: seen.setdefault("args", args) and 0)
    assert cli.main(["bench", "--task", "inverse", "--out", str(tmp_path), "--samples", "5", "--quiet"]) == 0
    args = seen["args"]
    assert args.n == 5 and args.out == str(tmp_path / "inverse.jsonl") and args.figures == str(tmp_path)


@pytest.mark.parametrize("method", ["ddnm", "ddrm", "red-diff", "daps"])
def test_progress_shows_a_bar_and_does_not_change_the_result(method, capsys):
    op = mask()
    y = op.forward(x_true())
    plain = _restore(method, op, y, 3)
    shown = _restore(method, op, y, 3, progress=True)
    assert "3/3" in capsys.readouterr().err  # the bar counted the three levels
    torch.testing.assert_close(shown, plain, rtol=0, atol=0)


def test_the_demo_restoration_picture_has_the_truth_the_measurement_and_each_method(tmp_path):
    """`make demo`'s restoration picture: the cells it draws are the held-out digits, their naive
    reconstruction and each method's restoration (DDNM exact on the kept pixels of the noiseless inpainting)."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    from diffsolve.bench import inverse as bench_inverse

    cells = (("inpaint50", 0.0), ("sr2", 0.05))
    images = bench_inverse.restoration_cells(n=2, steps=4, methods=("ddnm",), cells=cells)
    assert set(images) == {(r, t) for r in ("truth", "measurement", "ddnm") for t, _ in cells}
    op = bench_inverse.operator("inpaint50", 2)
    truth = images[("truth", "inpaint50")]
    assert (op.forward(images[("ddnm", "inpaint50")]) - op.forward(truth)).abs().max() < 1e-4
    assert images[("measurement", "sr2")].shape == truth.shape
    path = bench_inverse.restoration_png(tmp_path / "r.png", n=2, steps=4, methods=("ddnm",), cells=cells)
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
