"""Measurement operators y = A(x0) for :func:`diffsolve.restore` (docs/math.md, "Inverse problems").

``x0`` is a batch in the model's space, shape ``(B, *x_shape)``; ``A`` acts on each sample. A linear
operator also gives its singular value decomposition A = U diag(s) V^T in a *spectral layout*: one
coefficient per pixel of x (``d`` numbers per sample), the measured coordinates (s > 0) first among
equals, the unmeasured ones with s = 0. From it every linear operator gets, written once
(:class:`LinearOperator`): ``forward``, ``adjoint``, ``pinv`` (A^+ y), ``project`` (A^+ A x) and
``gram_solve`` ((r^2 A A^T + sigma_y^2 I)^-1 in the spectral basis). A nonlinear operator implements
``forward`` only; the methods that allow it differentiate it with autograd.

Matrices are built in float64 and applied in the state's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["Operator", "LinearOperator", "Identity", "Inpaint", "Downsample", "Blur", "Saturate"]

_F64 = torch.float64


class Operator:
    """A measurement operator ``y = A(x)`` on batches ``(B, *x_shape)``.

    Subclasses implement :meth:`forward` and :meth:`output_shape`; ``linear`` says whether A is linear
    (then subclass :class:`LinearOperator`, which adds the SVD).
    """

    linear: bool = False
    #: short name shown in errors and tables
    name: str = "operator"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    def output_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """The per-sample shape of ``A(x)`` for a per-sample ``x_shape``; a ValueError if ``x_shape`` does not fit."""
        raise NotImplementedError

    def input_shape(self, y_shape: Sequence[int]) -> tuple[int, ...]:
        """The per-sample shape of x whose measurement has the per-sample shape ``y_shape`` (default: the same)."""
        return tuple(int(n) for n in y_shape)

    def vjp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``J_A(x)^T v`` through autograd (for a linear A, the adjoint)."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.forward(xg), xg, v)
        return g

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearOperator(Operator):
    """A linear A with its SVD A = U diag(s) V^T in the spectral layout (module docstring).

    Subclasses implement ``vt`` (x -> V^T x, shape ``(B, d)``), ``v`` (its inverse, back to x's
    shape), ``ut`` (y -> U^T y placed at the measured coordinates, zeros elsewhere, ``(B, d)``), ``u``
    (spectral -> y's shape, reading the measured coordinates) and ``singulars`` (``(1 or B, d)``
    float64, zero at unmeasured coordinates).
    """

    linear = True

    def vt(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def v(self, c: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError

    def ut(self, y: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError

    def u(self, c: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError

    def singulars(self, x_shape: Sequence[int]) -> torch.Tensor:
        raise NotImplementedError

    # -- written once from the SVD ---------------------------------------------------------------
    def _s(self, x_shape, like: torch.Tensor) -> torch.Tensor:
        return self.singulars(tuple(x_shape)).to(device=like.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """A x = U diag(s) V^T x."""
        shape = tuple(x.shape[1:])
        return self.u(self.vt(x) * self._s(shape, x).to(x.dtype), shape)

    def adjoint(self, y: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
        """A^T y = V diag(s) U^T y."""
        return self.v(self.ut(y, x_shape) * self._s(x_shape, y).to(y.dtype), x_shape)

    def pinv(self, y: torch.Tensor, x_shape: Sequence[int]) -> torch.Tensor:
        """A^+ y = V diag(1/s on s > 0) U^T y (docs/math.md, "Inverse problems")."""
        s = self._s(x_shape, y)
        inv = torch.where(s > 0, 1.0 / torch.where(s > 0, s, 1.0), 0.0).to(y.dtype)
        return self.v(self.ut(y, x_shape) * inv, x_shape)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """A^+ A x: the part of x that the measurement sees (V diag(1 on s > 0) V^T x)."""
        shape = tuple(x.shape[1:])
        keep = (self._s(shape, x) > 0).to(x.dtype)
        return self.v(self.vt(x) * keep, shape)

    def output_shape(self, x_shape):
        raise NotImplementedError


def _check_shape(x_shape, dims: int, what: str) -> tuple[int, ...]:
    x_shape = tuple(int(n) for n in x_shape)
    if len(x_shape) != dims:
        raise ValueError(f"{what} acts on samples of shape (C, H, W); got a sample shape {x_shape}")
    return x_shape


class _PixelBasis(LinearOperator):
    """An operator diagonal in the pixel basis: U = V = I, so the SVD coordinates are the flattened pixels."""

    def vt(self, x):
        return x.reshape(x.shape[0], -1)

    def v(self, c, x_shape):
        return c.reshape(c.shape[0], *x_shape)

    def ut(self, y, x_shape):
        return y.reshape(y.shape[0], -1)

    def u(self, c, x_shape):
        return c.reshape(c.shape[0], *x_shape)


class Identity(_PixelBasis):
    """A = I: denoising (y = x0 + noise). U = V = I, s = 1."""

    name = "identity"

    def output_shape(self, x_shape):
        return tuple(int(n) for n in x_shape)

    def forward(self, x):
        return x

    def singulars(self, x_shape):
        return torch.ones(1, math.prod(x_shape), dtype=_F64)


class Inpaint(_PixelBasis):
    """Keep the pixels where ``mask`` is 1, zero the rest: y = mask * x0 (y has x0's shape).

    A = diag(mask): U = V = I, s = mask. ``mask`` (0/1 values) broadcasts against a batch
    ``(B, C, H, W)``: one mask for all samples (shape ``(H, W)``, ``(C, H, W)``) or one per sample
    (``(B, C, H, W)`` or ``(B, 1, H, W)``).
    """

    name = "inpaint"

    def __init__(self, mask: torch.Tensor):
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor of 0/1 values, got {type(mask).__name__}")
        m = mask.detach().to(_F64)
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError("mask must hold only 0 and 1 (1 = pixel measured)")
        if m.dim() not in (2, 3, 4):
            raise ValueError(f"mask must have shape (H, W), (C, H, W) or (B, C, H, W); got {tuple(m.shape)}")
        self.mask = m

    @classmethod
    def random(cls, shape: Sequence[int], keep: float, generator: torch.Generator | None = None) -> Inpaint:
        """A mask of ``shape`` keeping each pixel with probability ``keep`` (random inpainting)."""
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        return cls((torch.rand(tuple(shape), generator=generator, dtype=_F64) < keep).to(_F64))

    @classmethod
    def box(cls, shape: Sequence[int], top: int, left: int, height: int, width: int) -> Inpaint:
        """A mask of ``shape`` (..., H, W) with the box ``[top:top+height, left:left+width]`` missing (inside the
        image: a box partly or wholly outside it, or empty, is a ValueError, not a mask with fewer pixels missing)."""
        shape = tuple(shape)
        if len(shape) < 2:
            raise ValueError(f"shape must end in (H, W), got {shape}")
        H, W = shape[-2], shape[-1]
        for name, v in (("top", top), ("left", left), ("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"{name} must be an int, got {v!r}")
        if not (0 <= top and 0 <= left and height >= 1 and width >= 1 and top + height <= H and left + width <= W):
            raise ValueError(
                f"the box top={top}, left={left}, height={height}, width={width} must lie inside the {H}x{W} image "
                f"(0 <= top, top + height <= {H}, 0 <= left, left + width <= {W}, height and width >= 1)"
            )
        m = torch.ones(shape, dtype=_F64)
        m[..., top : top + height, left : left + width] = 0
        return cls(m)

    def _full(self, x_shape) -> torch.Tensor:
        x_shape = _check_shape(x_shape, 3, "Inpaint")
        m = self.mask if self.mask.dim() == 4 else self.mask.reshape(1, *self.mask.shape)
        try:
            return torch.broadcast_to(m, (m.shape[0], *x_shape))
        except RuntimeError:
            raise ValueError(
                f"mask of shape {tuple(self.mask.shape)} does not fit samples of shape {x_shape}"
            ) from None

    def output_shape(self, x_shape):
        self._full(x_shape)
        return tuple(int(n) for n in x_shape)

    def forward(self, x):
        full = self._full(x.shape[1:])  # a mask that does not fit: named, not torch's broadcasting error
        if full.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"the operator has one mask per sample for {full.shape[0]} samples; x has {x.shape[0]}")
        return x * self.mask.to(device=x.device, dtype=x.dtype)

    def singulars(self, x_shape):
        full = self._full(x_shape)
        return full.reshape(full.shape[0], -1)


class Downsample(LinearOperator):
    """Average pooling by ``factor``: y[c, i, j] = mean of the factor x factor block of x0.

    Per block, A is the row (1/f^2, ..., 1/f^2) = (1/f) q_0^T with q_0 = (1/f, ..., 1/f) a unit
    vector: one singular value 1/f. V completes q_0 to an orthonormal basis Q of the block (a QR
    factorization, float64); U = I on y. Spectral layout: per block, coordinate 0 is measured.
    """

    name = "downsample"

    def __init__(self, factor: int):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
        self.factor = f = factor
        first = torch.eye(f * f, dtype=_F64)
        first[:, 0] = 1.0
        q, _ = torch.linalg.qr(first)
        self.Q = q * torch.sign(q[0, 0])  # column 0 = +1/f

    def input_shape(self, y_shape):
        c, h, w = _check_shape(y_shape, 3, "Downsample")
        return (c, h * self.factor, w * self.factor)

    def output_shape(self, x_shape):
        c, h, w = _check_shape(x_shape, 3, "Downsample")
        if h % self.factor or w % self.factor:
            raise ValueError(f"Downsample({self.factor}) needs H and W divisible by {self.factor}; got {h}x{w}")
        return (c, h // self.factor, w // self.factor)

    def forward(self, x):
        self.output_shape(x.shape[1:])  # avg_pool2d would drop the rows and columns past a multiple of f
        return torch.nn.functional.avg_pool2d(x, self.factor)

    def _blocks(self, x):  # (B, C, H, W) -> (B, C, H/f, W/f, f*f)
        b, c, h, w = x.shape
        f = self.factor
        return x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 2, 4, 3, 5).reshape(b, c, h // f, w // f, f * f)

    def vt(self, x):
        return (self._blocks(x) @ self.Q.to(device=x.device, dtype=x.dtype)).reshape(x.shape[0], -1)

    def v(self, c, x_shape):
        ch, h, w = x_shape
        f = self.factor
        blocks = c.reshape(c.shape[0], ch, h // f, w // f, f * f) @ self.Q.T.to(device=c.device, dtype=c.dtype)
        return blocks.reshape(c.shape[0], ch, h // f, w // f, f, f).permute(0, 1, 2, 4, 3, 5).reshape(-1, ch, h, w)

    def ut(self, y, x_shape):
        out = y.new_zeros(*y.shape, self.factor**2)
        out[..., 0] = y
        return out.reshape(y.shape[0], -1)

    def u(self, c, x_shape):
        ch, h, w = x_shape
        f = self.factor
        return c.reshape(c.shape[0], ch, h // f, w // f, f * f)[..., 0]

    def singulars(self, x_shape):
        ch, h, w = x_shape
        s = torch.zeros(ch * h * w // self.factor**2, self.factor**2, dtype=_F64)
        s[:, 0] = 1.0 / self.factor
        return s.reshape(1, -1)


class Blur(LinearOperator):
    """A separable blur with zero padding ("same" size): y = B_h X B_w^T per channel.

    ``kernel``: a 1-D kernel of odd length (applied along both axes) or a rank-one 2-D kernel (the
    outer product of two 1-D kernels; it is factored). The SVD is that of the 1-D convolution
    matrices, B = U_b diag(s_b) V_b^T (float64), combined by Kronecker products: s = s_h s_w^T.
    Singular values below ``rcond`` times the largest count as zero (those coordinates are
    treated as unmeasured by A^+ and the spectral methods; ``forward`` stays the exact blur).
    """

    name = "blur"

    def __init__(self, kernel: torch.Tensor, rcond: float = 1e-3):
        k = torch.as_tensor(kernel, dtype=_F64)
        if k.dim() == 2:
            uu, ss, vv = torch.linalg.svd(k)
            if ss.numel() > 1 and float(ss[1]) > 1e-10 * float(ss[0]):
                raise ValueError("a 2-D kernel must be separable (rank one, e.g. a Gaussian); pass a 1-D kernel")
            kh, kw = uu[:, 0] * ss[0].sqrt(), vv[0] * ss[0].sqrt()
            if float(kh.sum()) < 0:
                kh, kw = -kh, -kw
        elif k.dim() == 1:
            kh = kw = k
        else:
            raise ValueError(f"kernel must be 1-D or 2-D, got shape {tuple(k.shape)}")
        if kh.numel() % 2 == 0 or kw.numel() % 2 == 0:
            raise ValueError(f"kernel sides must be odd (centred), got {kh.numel()} x {kw.numel()}")
        if not 0.0 <= rcond < 1.0:
            raise ValueError(f"rcond must be in [0, 1), got {rcond}")
        self.kh, self.kw, self.rcond = kh, kw, float(rcond)
        self._svd: dict[tuple[int, int], tuple] = {}

    @classmethod
    def gaussian(cls, size: int, std: float, **kw) -> Blur:
        """A normalized Gaussian kernel of odd ``size`` and standard deviation ``std`` (pixels)."""
        if size % 2 == 0 or size < 1:
            raise ValueError(f"size must be odd and >= 1, got {size}")
        if not std > 0:
            raise ValueError(f"std must be > 0, got {std}")
        r = torch.arange(size, dtype=_F64) - size // 2
        k = torch.exp(-(r**2) / (2 * std**2))
        return cls(k / k.sum(), **kw)

    @staticmethod
    def _matrix(k: torch.Tensor, n: int) -> torch.Tensor:
        """The n x n matrix of 'same' correlation with k, zero padding: (B x)_i = sum_j k[j - i + r] x_j."""
        r = k.numel() // 2
        i = torch.arange(n).reshape(-1, 1)
        j = torch.arange(n).reshape(1, -1)
        idx = j - i + r
        ok = (idx >= 0) & (idx < k.numel())
        return torch.where(ok, k[idx.clamp(0, k.numel() - 1)], torch.zeros((), dtype=_F64))

    def _parts(self, h: int, w: int):
        if (h, w) not in self._svd:
            bh, bw = self._matrix(self.kh, h), self._matrix(self.kw, w)
            uh, sh, vht = torch.linalg.svd(bh)
            uw, sw, vwt = torch.linalg.svd(bw)
            s = sh.reshape(-1, 1) * sw.reshape(1, -1)
            s = torch.where(s >= self.rcond * s.max(), s, torch.zeros((), dtype=_F64))
            self._svd[(h, w)] = (bh, bw, uh, vht.T, uw, vwt.T, s)
        return self._svd[(h, w)]

    def output_shape(self, x_shape):
        return _check_shape(x_shape, 3, "Blur")

    @staticmethod
    def _lr(m1, x, m2):  # m1 @ X @ m2^T on the last two dims
        return m1.to(device=x.device, dtype=x.dtype) @ x @ m2.to(device=x.device, dtype=x.dtype).T

    def forward(self, x):
        bh, bw = self._parts(x.shape[-2], x.shape[-1])[:2]
        return self._lr(bh, x, bw)

    def vt(self, x):
        _, _, _, vh, _, vw, _ = self._parts(x.shape[-2], x.shape[-1])
        return self._lr(vh.T, x, vw.T).reshape(x.shape[0], -1)

    def v(self, c, x_shape):
        _, _, _, vh, _, vw, _ = self._parts(x_shape[-2], x_shape[-1])
        return self._lr(vh, c.reshape(c.shape[0], *x_shape), vw)

    def ut(self, y, x_shape):
        _, _, uh, _, uw, _, _ = self._parts(x_shape[-2], x_shape[-1])
        return self._lr(uh.T, y, uw.T).reshape(y.shape[0], -1)

    def u(self, c, x_shape):
        _, _, uh, _, uw, _, _ = self._parts(x_shape[-2], x_shape[-1])
        return self._lr(uh, c.reshape(c.shape[0], *x_shape), uw)

    def singulars(self, x_shape):
        c, h, w = x_shape
        s = self._parts(h, w)[-1]
        return s.reshape(1, 1, h * w).expand(1, c, h * w).reshape(1, -1)


class Saturate(Operator):
    """A saturating sensor, y = tanh(gain * x0) / tanh(gain): nonlinear, differentiated by autograd.

    Near 0 it is the identity; it compresses values near +-1 (a sensor that clips smoothly).
    """

    name = "saturate"

    def __init__(self, gain: float = 2.0):
        if not (isinstance(gain, (int, float)) and math.isfinite(gain) and gain > 0):
            raise ValueError(f"gain must be a finite number > 0, got {gain!r}")
        self.gain = float(gain)

    def output_shape(self, x_shape):
        return tuple(int(n) for n in x_shape)

    def forward(self, x):
        return torch.tanh(self.gain * x) / math.tanh(self.gain)
