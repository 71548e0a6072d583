"""Dense SIFT as a differentiable module, numerically equal to VLFeat's "fast" ``vl_dsift``.

:class:`DenseSIFT` reproduces ``vl_dsift_process`` with ``useFlatWindow`` on (``cyvlfeat.sift.dsift(
img, step=..., size=..., fast=True, float_descriptors=True)``) in PyTorch, batched and differentiable,
so that the inverter can back-propagate through it.

Conventions (measured against libvlfeat 0.9.21 / cyvlfeat 0.7.1, see
``shared/reference/vlfeat-conventions.md``):

* **Input** ``x``: ``(B, 1, H, W)`` float32 or float64, grey, values on a 0–255 scale (values outside
  are fine). Colour images must be converted first (``load_image(path, mode="grey")``).
* **Gradient**: ``0.5·(I[k+1] − I[k−1])`` inside, one-sided ``I[1] − I[0]`` / ``I[n−1] − I[n−2]``
  at the borders, x to the right and y downward.
* **Orientation**: VLFeat's polynomial ``vl_fast_atan2_f`` (error up to 6e-3 rad) and its fast
  square root (``x·resqrt(x)`` with the 0x5f3759df guess and two Newton steps, 0 below 1e-8) are
  reproduced — the exact functions would differ from VLFeat by up to ~1.7 on the 0–255 scale.
  The angle, in [0, 2π), is binned linearly between the two nearest of ``num_orientations``
  directed bins at ``t·2π/T`` (bin 0: gradient to the right, bin 2: downward).
* **Spatial binning**: every orientation channel is filtered by a triangular kernel of unit height
  and half-width ``bin_size`` (``1 − |d|/bin_size``) with replicate padding, then each spatial bin
  is multiplied by the mean over that bin of the Gaussian window (σ = ``window_size·bin_size``,
  centred on the descriptor).
* **Frames**: the top-left bin centre of the first frame is pixel (0, 0); bin centres are
  ``bin_size`` apart; frames are ``step`` apart and exist only where the whole
  ``num_spatial_bins²`` grid fits, so the first frame centre is at ``1.5·bin_size`` (for 4 bins)
  and per axis ``n = (size − 1 − 3·bin_size) // step + 1`` frames (227, bin 8, step 8 → 26).
  :meth:`DenseSIFT.frame_centers` returns the centres; VLFeat lists frames row by row (y outer),
  i.e. ``out[b, :, i, j]`` is VLFeat's frame ``i·nx + j``, whose cyvlfeat frame is ``[y, x]``.
* **Layout**: channel ``t + T·bin_x + T·N·bin_y`` (``t + 8·bin_x + 32·bin_y`` by default), exactly
  VLFeat's descriptor order.
* **Normalisation**: L2 (``fast_sqrt(Σd²) + FLT_EPSILON``), clamp at 0.2, L2 again (unless
  ``renormalize=False``), and the stored value ``min(512·d, 255)``. The histograms have VLFeat's
  own scale (``histograms(x).sum(1) / frame_extent²`` is cyvlfeat's ``norm=True`` frame energy),
  which matters through FLT_EPSILON and the 1e-8 threshold on nearly flat frames.

Output: ``(B, 128, ny, nx)`` in the input's dtype (float16/bfloat16 are computed in float32),
values in [0, 255] (≤ 102.4 with ``renormalize=False``, since then every ``d ≤ 0.2``).

Matching VLFeat. VLFeat filters with float32 running sums over whole image columns and rows
(``vl_imconvcoltri_f``); their rounding error is absolute, about 1e-7 × the running total, so in
weak-gradient frames it becomes a visible fraction of the normalised descriptor. Here the filtering
is exact (matmuls), and the output differs from cyvlfeat by VLFeat's own rounding noise, never by
more than cyvlfeat differs from itself on the transposed image (mathematically the same
descriptors). Measured on the 100 eval images (max |difference| on the 0–255 scale): 227×227
crops, median frame 2–3e-4, per-image maximum median 1.6e-3 (bin 8) / 2.9e-3 (bin 5), worst 0.13;
native sizes up to 4.5 in frames ~1000× weaker than typical. On ~50 px images, where VLFeat's
sums stay small, ≤ 5e-4. A float32 emulation of VLFeat's running sums reproduces its outliers.

Gradients: the normalisation divides by the histogram norm, so near-flat frames have very large
gradients (≈ 512/‖h‖), as VLFeat's function itself does; exactly flat frames have zero gradient.

Non-differentiable points (measure zero): orientation-bin edges, the 0.2 and 255 clamps, the
fast-atan2 quadrant switches (where it jumps by ~4e-6 rad) and the 1e-8 threshold of the fast
square root. Everywhere else the function is smooth; the hand-written backward passes of the fused
steps give its exact gradient (checked with ``torch.autograd.gradcheck``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import Representation

#: float32 machine epsilon (VL_EPSILON_F), used by VLFeat's fast atan2 and L2 normalisation.
FLT_EPSILON = 1.1920928955078125e-07
#: The magic constant of VLFeat's fast inverse square root, in units of 2**23 (one float32 exponent step).
_RESQRT_MAGIC_INT = 0x5F3759DF
_RESQRT_MAGIC = _RESQRT_MAGIC_INT / 2.0 ** 23
#: Below this squared value, VLFeat's ``vl_fast_sqrt_f`` returns 0.
_SQRT_THRESHOLD = 1e-8


def _fast_sqrt_parts(x: torch.Tensor, with_derivative: bool):
    """``vl_fast_sqrt_f(x)`` elementwise and, if asked, its derivative ``d/dx`` (else ``None``).

    ``x·resqrt(x)`` where ``resqrt`` is the 0x5f3759df bit-trick guess refined by two Newton steps
    (relative error ≤ 5e-6, always below the true root), and 0 where ``x ≤ 1e-8``.

    float32: the guess is VLFeat's, bit for bit. float64: the guess is the continuous
    piecewise-linear function that the integer trick samples (within one float32 ulp of it, which
    the Newton steps shrink ~2000×), so the result is continuous and finite differences agree with
    the derivative. The derivative is exact for that piecewise-linear guess (slope on its piece).
    """
    thr = _SQRT_THRESHOLD
    xs = x.clamp(min=thr)                                   # keeps everything finite
    keep = torch.sign(torch.relu(x - thr))                  # 0 where VLFeat returns 0, else 1
    if xs.dtype == torch.float32:
        xs = xs.contiguous()
        bits = xs.view(torch.int32)
        y0 = (_RESQRT_MAGIC_INT - (bits >> 1)).view(torch.float32)
        if with_derivative:                                 # 2**exponent of y0 and of x
            pow_y = (y0.view(torch.int32) & 0x7F800000).view(torch.float32)
            pow_x = (bits & 0x7F800000).view(torch.float32)
            slope0 = -0.5 * pow_y / pow_x
    else:
        xd = xs.to(torch.float64).contiguous()
        bits = xd.view(torch.int64)
        # the float32 bit pattern of x, as a real number / 2**23: (exponent + 127) + mantissa
        pattern = ((bits >> 52) - 896).to(torch.float64) + (bits & 0xFFFFFFFFFFFFF).to(torch.float64) * 2.0 ** -52
        j = _RESQRT_MAGIC - 0.5 * pattern
        je = torch.floor(j)
        pow_y = torch.exp2(je - 127.0)
        y0 = (pow_y * (1.0 + (j - je))).to(xs.dtype)
        if with_derivative:
            pow_x = ((bits & 0x7FF0000000000000).view(torch.float64)).to(xs.dtype)
            slope0 = -0.5 * pow_y.to(xs.dtype) / pow_x
    half = 0.5 * xs
    y0sq = y0 * y0
    y1 = y0 * (1.5 - half * y0sq)
    y1sq = y1 * y1
    y2 = y1 * (1.5 - half * y1sq)
    value = xs * y2 * keep
    if not with_derivative:
        return value, None
    dy1 = (1.5 - 3.0 * half * y0sq) * slope0 - 0.5 * y0sq * y0
    dy2 = (1.5 - 3.0 * half * y1sq) * dy1 - 0.5 * y1sq * y1
    return value, (y2 + xs * dy2) * keep


class _FastSqrt(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        value, deriv = _fast_sqrt_parts(x, ctx.needs_input_grad[0])
        ctx.save_for_backward(deriv)
        return value

    @staticmethod
    def backward(ctx, grad):
        (deriv,) = ctx.saved_tensors
        return grad * deriv


def fast_sqrt(x: torch.Tensor) -> torch.Tensor:
    """VLFeat's ``vl_fast_sqrt_f``, differentiable: ``0`` if ``x < 1e-8`` else ``x·resqrt(x)``.

    ``resqrt`` is the 0x5f3759df guess refined by two Newton steps (relative error ≤ 5e-6 below
    the true square root). Its derivative is 0 below the threshold, so there are no infinite
    gradients at 0.

    Args:
        x: any shape, float32/float64, ``x ≥ 0`` expected.
    Returns:
        same shape and dtype.
    """
    return _FastSqrt.apply(x)


_C3, _C1 = 0.1821, 0.9675   # vl_fast_atan2_f's polynomial: angle = π/4 ± (c3·r² − c1)·r


def fast_atan2_turns(gy: torch.Tensor, gx: torch.Tensor, num_orientations: int) -> torch.Tensor:
    """VLFeat's ``vl_fast_atan2_f(gy, gx)`` wrapped to [0, 2π) and scaled to orientation bins.

    Returns ``nt = mod_2pi(angle) · T / (2π)`` in ``[0, T]`` (same shape as the inputs), whose floor
    is the first orientation bin and whose fractional part the weight of the next one. (Reference
    helper, differentiable by autograd; :class:`DenseSIFT` uses a fused version.)
    """
    abs_y = gy.abs() + FLT_EPSILON
    abs_x = gx.abs()
    pos = gx >= 0
    q = (abs_x - abs_y) / (abs_x + abs_y)
    r = torch.where(pos, q, -q)
    base = torch.where(pos, torch.full_like(q, math.pi / 4), torch.full_like(q, 3 * math.pi / 4))
    angle = base + (_C3 * r * r - _C1) * r
    angle = torch.where(gy < 0, -angle, angle)
    angle = torch.where(angle < 0, angle + 2 * math.pi, angle)
    return angle * (num_orientations / (2 * math.pi))


def _orient(img: torch.Tensor, T: int, cx: torch.Tensor, cy: torch.Tensor, need: bool):
    """The per-pixel stage of :class:`_OrientedGradients`: grey ``(B, H, W)`` → ``(mod, lo, frac,
    saved)``, each ``(B, H, W)``: the gradient modulus, its first orientation bin (float, the
    second is ``(lo + 1) mod T`` with weight ``frac``) and, when ``need``, what
    :func:`_orient_backward` uses (else ``None``)."""
    # 0.5·central difference inside, one-sided at the borders: replicate padding makes the
    # border difference I[1] − I[0], and cx/cy are 0.5 inside and 1 on the border pixels.
    p = torch.nn.functional.pad(img, (1, 1), mode="replicate")
    gx = (p[..., 2:] - p[..., :-2]).mul_(cx)
    p = torch.nn.functional.pad(img.unsqueeze(1), (0, 0, 1, 1), mode="replicate").squeeze(1)
    gy = (p[..., 2:, :] - p[..., :-2, :]).mul_(cy)
    mod, dmod = _fast_sqrt_parts(gx * gx + gy * gy, need)

    # vl_fast_atan2_f: r = ±(|x| − |y|')/(|x| + |y|'), angle = π/4 or 3π/4 + (c3·r² − c1)·r,
    # negated for y < 0, then wrapped to [0, 2π) (here in bin units, which is the same).
    abs_y = gy.abs() + FLT_EPSILON
    abs_x = gx.abs()
    sx = torch.sign(torch.sign(gx) + 0.5)             # +1 for gx ≥ 0 (−0 included), else −1
    sy = torch.sign(torch.sign(gy) + 0.5)             # +1 for gy ≥ 0 (−0 included), else −1
    den = abs_x + abs_y
    r = (abs_x - abs_y) / den * sx
    r2 = r * r
    k = T / (2 * math.pi)
    nt = ((_C3 * r2 - _C1) * r + (math.pi / 2) - (math.pi / 4) * sx) * (sy * k)
    nt = nt - T * torch.floor(nt * (1.0 / T))         # [0, T]
    lo = torch.floor(nt).clamp_(max=T - 1)            # nt == T goes to bin T−1 with weight 0
    frac = nt - lo
    saved = None
    if need:
        # d nt / d(gx, gy) of the polynomial (one-sided at gx = 0 and gy = 0, as VLFeat's
        # branches): k·sy·P'(r)·2|y|'/den², −k·sx·P'(r)·2|x|/den², P'(r) = 3c3·r² − c1.
        common = (3 * _C3 * r2 - _C1) * (2 * k) / (den * den)
        dnt_dx = common * sy * abs_y
        dnt_dy = common * sx * abs_x
        dnt_dy.neg_()
        saved = (gx, gy, mod, dmod, frac, dnt_dx, dnt_dy)
    return mod, lo, frac, saved


def _orient_backward(saved, g_lo: torch.Tensor, diff: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor):
    """The image gradient ``(B, H, W)`` from ``dL/d(bin lo)`` ``g_lo`` and ``dL/d(bin hi) − g_lo``
    ``diff`` (per pixel, ``(B, H, W)``), with ``saved`` of :func:`_orient`."""
    gx, gy, mod, dmod, frac, dnt_dx, dnt_dy = saved
    d_g2 = (g_lo + frac * diff) * dmod * 2.0        # dL/d(gx²+gy²) × 2
    d_nt = diff * mod
    a = (d_g2 * gx + d_nt * dnt_dx) * cx             # dL/dgx × its difference weight
    b = (d_g2 * gy + d_nt * dnt_dy) * cy
    gimg = torch.zeros_like(a)
    # transpose of the difference operators (one-sided at the borders)
    gimg[..., 1:] += a[..., :-1]
    gimg[..., -1] += a[..., -1]
    gimg[..., :-1] -= a[..., 1:]
    gimg[..., 0] -= a[..., 0]
    gimg[..., 1:, :] += b[..., :-1, :]
    gimg[..., -1, :] += b[..., -1, :]
    gimg[..., :-1, :] -= b[..., 1:, :]
    gimg[..., 0, :] -= b[..., 0, :]
    return gimg


class _OrientedGradients(torch.autograd.Function):
    """Grey image ``(B, H, W)`` → gradient modulus split over T orientation channels ``(B, T, H, W)``.

    Fused forward (VLFeat's gradient, fast sqrt, fast atan2, linear orientation binning) with a
    hand-written backward: far fewer kernels than autograd over the same ~40 elementwise steps.
    """

    @staticmethod
    def forward(ctx, img, num_orientations, cx, cy):
        T = num_orientations
        need = ctx.needs_input_grad[0]
        mod, lo, frac, saved = _orient(img, T, cx, cy, need)
        hi = lo + 1.0 - T * torch.relu(lo - (T - 2))      # (lo + 1) mod T
        lo_i = lo.long().unsqueeze(1)
        hi_i = hi.long().unsqueeze(1)
        hi_part = frac * mod
        out = img.new_zeros(img.shape[0], T, *img.shape[1:])
        out.scatter_(1, lo_i, (mod - hi_part).unsqueeze(1))
        out.scatter_add_(1, hi_i, hi_part.unsqueeze(1))
        if need:
            ctx.save_for_backward(*saved, lo_i, hi_i, cx, cy)
        return out

    @staticmethod
    def backward(ctx, grad):
        *saved, lo_i, hi_i, cx, cy = ctx.saved_tensors
        g_lo = grad.gather(1, lo_i).squeeze(1)
        diff = grad.gather(1, hi_i).squeeze(1) - g_lo
        return _orient_backward(saved, g_lo, diff, cx, cy), None, None, None


class _Pooling:
    """Constants of :class:`_PooledGradients` for one image size, device and dtype.

    The triangular filters sample the image at the unique bin-centre rows ``ry`` and columns
    ``rx``; when every pixel lies within reach of at most two adjacent sampled rows (columns),
    which holds whenever the sampled positions are ``bin_size`` apart (``step`` a multiple of
    ``bin_size``, the defaults and the authors' setting), each pixel's modulus goes into 2
    orientations × 2 × 2 sampled positions of a grid ``(B, T+1, Ry+1, Rx+1)`` (channel T stands
    for bin 0, the last row and column are padding). ``base`` ``(B·H·W,)`` holds the flat position
    of each pixel's first cell, ``corners`` the offsets of the four and ``weights`` ``(4, H, W)``
    their triangle weights (VLFeat's replicate padding folded in).
    """

    def __init__(self, ky: np.ndarray, kx: np.ndarray, T: int, device, dtype):
        (fy, wy), (fx, wx) = self.first(ky), self.first(kx)   # ky (Ry, H), kx (Rx, W)
        self.ok = fy is not None and fx is not None
        if not self.ok:
            return
        self.T, self.Ry, self.Rx = T, ky.shape[0], kx.shape[0]
        self.row = self.Rx + 1
        self.stride = (self.Ry + 1) * self.row
        self.corners = (0, 1, self.row, self.row + 1)
        self._pixel = torch.as_tensor((fy[:, None] * self.row + fx[None, :]).reshape(-1), device=device)
        self.weights = torch.as_tensor((wy[:, None, :, None] * wx[None, :, None, :]).reshape(4, len(fy), len(fx)),
                                       dtype=dtype, device=device)
        self._base = torch.zeros(0, dtype=torch.int64, device=device)

    @staticmethod
    def first(k: np.ndarray):
        """``(first, weights (2, n))`` of a ``(R, n)`` filter whose columns have their non-zeros in
        two adjacent rows at most (``first`` the upper one); ``(None, None)`` otherwise."""
        nz = k != 0
        some = nz.any(0)
        first = np.where(some, nz.argmax(0), 0)
        last = np.where(some, k.shape[0] - 1 - nz[::-1].argmax(0), 0)
        if ((last - first) > 1).any():
            return None, None
        cols = np.arange(k.shape[1])
        padded = np.vstack([k, np.zeros((1, k.shape[1]))])
        return first, np.stack([padded[first, cols], padded[first + 1, cols]])

    def base(self, batch: int) -> torch.Tensor:
        """``(batch·H·W,)`` int64: each pixel's first cell, for orientation 0."""
        need = batch * self._pixel.numel()
        if self._base.numel() < need:
            offsets = torch.arange(batch, device=self._pixel.device).view(-1, 1) * ((self.T + 1) * self.stride)
            self._base = (offsets + self._pixel).view(-1)
        return self._base[:need]


class _PooledGradients(torch.autograd.Function):
    """Grey image ``(B, H, W)`` → the oriented gradients of :class:`_OrientedGradients` filtered by
    the triangles at the sampled rows and columns, ``(B, T, Ry, Rx)`` (= ``ky @ grads @ kx``),
    without forming ``(B, T, H, W)``: per pixel, index-adds into its 2 × 2 × 2 cells
    (:class:`_Pooling`). Hand-written backward (index-selects, then :func:`_orient_backward`)."""

    @staticmethod
    def forward(ctx, img, num_orientations, cx, cy, pool: _Pooling):
        T, B = num_orientations, img.shape[0]
        need = ctx.needs_input_grad[0]
        mod, lo, frac, saved = _orient(img, T, cx, cy, need)
        hi_part = frac * mod
        parts = (mod - hi_part, hi_part)                   # to bins lo and lo + 1 (T stands for 0)
        idx = torch.add(pool.base(B), lo.view(-1).long(), alpha=pool.stride)
        size = B * (T + 1) * pool.stride
        cells = img.new_zeros(size + pool.stride + pool.row + 1)
        for shift, part in zip((0, pool.stride), parts):
            for offset, weight in zip(pool.corners, pool.weights):
                cells[shift + offset:].index_add_(0, idx, (part * weight).view(-1))
        cells = cells[:size].view(B, T + 1, pool.Ry + 1, pool.Rx + 1)
        cells[:, 0] += cells[:, T]
        if need:
            ctx.pool = pool
            ctx.save_for_backward(*saved, idx, cx, cy)
        return cells[:, :T, :pool.Ry, :pool.Rx].contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        *saved, idx, cx, cy = ctx.saved_tensors
        pool = ctx.pool
        B, T = grad.shape[:2]
        size = B * (T + 1) * pool.stride
        padded = grad.new_zeros(size + pool.stride + pool.row + 1)
        cells = padded[:size].view(B, T + 1, pool.Ry + 1, pool.Rx + 1)
        cells[:, :T, :pool.Ry, :pool.Rx] = grad
        cells[:, T] = cells[:, 0]
        g = []
        for shift in (0, pool.stride):
            acc = None
            for offset, weight in zip(pool.corners, pool.weights):
                term = padded[shift + offset:].index_select(0, idx).view(B, *weight.shape).mul_(weight)
                acc = term if acc is None else acc.add_(term)
            g.append(acc)
        return _orient_backward(saved, g[0], g[1].sub_(g[0]), cx, cy), None, None, None, None


class _Normalize(torch.autograd.Function):
    """VLFeat's descriptor normalisation over dim 1, fused: ``d/(fast_sqrt(Σd²) + ε)``, clamp at
    0.2, optionally normalise again, then ``min(512·d, 255)``. Hand-written backward."""

    @staticmethod
    def forward(ctx, d, renormalize):
        need = ctx.needs_input_grad[0]
        s1 = (d * d).sum(1, keepdim=True)
        r1, dr1 = _fast_sqrt_parts(s1, need)
        n1 = r1 + FLT_EPSILON
        c = d / n1
        keep_c = torch.le(c, 0.2, out=torch.empty_like(c)) if need else None  # 1 where not clamped
        c = c.clamp_(max=0.2)
        if renormalize:
            s2 = (c * c).sum(1, keepdim=True)
            r2, dr2 = _fast_sqrt_parts(s2, need)
            n2 = r2 + FLT_EPSILON
            e = c / n2
        else:
            e = c
        out = e.mul_(512.0)
        if need:
            keep_o = torch.le(out, 255.0, out=torch.empty_like(out)).mul_(512.0)  # 512 where not clamped
        out = out.clamp_(max=255.0)
        if need:
            ctx.renormalize = renormalize
            saved = (d, n1, dr1, keep_c, keep_o, c)
            if renormalize:
                saved += (n2, dr2)
            ctx.save_for_backward(*saved)
        return out

    @staticmethod
    def backward(ctx, grad):
        d, n1, dr1, keep_c, keep_o, c, *rest = ctx.saved_tensors
        g = grad * keep_o
        if ctx.renormalize:
            n2, dr2 = rest
            # e = c / n2, n2 = fast_sqrt(Σc²) + ε
            g = g.sub_(c * ((g * c).sum(1, keepdim=True) * (2.0 * dr2 / n2))).div_(n2)
        g = g.mul_(keep_c)
        # c = d / n1 (before the clamp), n1 = fast_sqrt(Σd²) + ε
        g = g.sub_(d * ((g * d).sum(1, keepdim=True) * (2.0 * dr1 / n1))).div_(n1)
        return g, None


def _triangle_matrix(n: int, centers: np.ndarray, bin_size: int) -> np.ndarray:
    """``(len(centers), n)``: unit-height triangle of half-width ``bin_size`` around each centre,
    replicate padding folded into the first and last pixel (VLFeat's ``vl_imconvcoltri`` × bin_size)."""
    mat = np.zeros((len(centers), n))
    offsets = np.arange(-bin_size + 1, bin_size)
    weights = 1.0 - np.abs(offsets) / bin_size
    for row, c in enumerate(centers):
        np.add.at(mat[row], np.clip(c + offsets, 0, n - 1), weights)
    return mat


class DenseSIFT(Representation):
    """VLFeat "fast" dense SIFT: grey image ``(B, 1, H, W)`` on 0–255 → ``(B, 128, ny, nx)`` on [0, 255].

    Args (keyword only):
        bin_size: spatial bin width in pixels (VLFeat's ``size``), default 8 like HOG's cell.
        step: distance in pixels between frames, default 8 (one descriptor per HOG cell).
        num_spatial_bins: bins per side of the descriptor grid (4 → 4×4).
        num_orientations: directed orientation bins (8).
        window_size: σ of the Gaussian window in bins (VLFeat's ``windowSize``, default 2).
        renormalize: ``True`` (VLFeat) normalises again after the 0.2 clamp; ``False`` is the
            paper authors' layer (no second normalisation).

    The authors' CVPR 2015 setting is :attr:`AUTHORS` (bin 5 px, one descriptor every 15 px):
    ``DenseSIFT(**DenseSIFT.AUTHORS)``. The output equals ``cyvlfeat.sift.dsift(img, step=step,
    size=bin_size, fast=True, float_descriptors=True)[1].T.reshape(128, ny, nx)`` to float noise.
    """

    #: The settings of the authors' CVPR 2015 experiments (bin 5 px, 15 px step).
    AUTHORS = dict(bin_size=5, step=15)

    input_channels = (1,)
    mean_pixel = 128.0
    lr = 3e-4  # tuned on the train images (benchmarks/tune_lr.py)

    def __init__(self, *, bin_size: int = 8, step: int = 8, num_spatial_bins: int = 4,
                 num_orientations: int = 8, window_size: float = 2.0, renormalize: bool = True):
        super().__init__()
        for name, value in (("bin_size", bin_size), ("step", step), ("num_spatial_bins", num_spatial_bins),
                            ("num_orientations", num_orientations)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"DenseSIFT: {name} must be a positive integer, got {value!r}")
        if not (isinstance(window_size, (int, float)) and window_size > 0 and math.isfinite(window_size)):
            raise ValueError(f"DenseSIFT: window_size must be a positive number (in bins), got {window_size!r}")
        self.bin_size = int(bin_size)
        self.step = int(step)
        self.num_spatial_bins = int(num_spatial_bins)
        self.num_orientations = int(num_orientations)
        self.window_size = float(window_size)
        self.renormalize = bool(renormalize)
        side = self.frame_extent
        self.min_size = (max(side, 2), max(side, 2))
        self._cache: dict = {}
        # Mean of the Gaussian window over each spatial bin (VLFeat's wx/wy; its ×bin_size undoes
        # the unit integral of vl_imconvcoltri, here folded into the unit-height triangle).
        bs, nb = self.bin_size, self.num_spatial_bins
        xs = np.arange(-bs + 1, bs)
        sigma = bs * self.window_size
        self._bin_weight = np.array([
            np.exp(-0.5 * ((xs - bs * (b - 0.5 * (nb - 1))) / sigma) ** 2).mean() for b in range(nb)])

    # -- geometry ----------------------------------------------------------------------------------
    @property
    def frame_extent(self) -> int:
        """Pixels spanned by the bin centres of one frame: ``(num_spatial_bins − 1)·bin_size + 1``."""
        return (self.num_spatial_bins - 1) * self.bin_size + 1

    @property
    def descriptor_size(self) -> int:
        """Channels of the output: ``num_orientations · num_spatial_bins²`` (128)."""
        return self.num_orientations * self.num_spatial_bins ** 2

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """``(ny, nx)``, the number of frames per column and row for an ``height × width`` image
        (0 when no frame fits)."""
        def count(n: int) -> int:
            r = n - self.frame_extent
            return r // self.step + 1 if r >= 0 else 0
        return count(height), count(width)

    def frame_centers(self, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Frame centres in pixels (0-based, pixel centres at integers): ``(ys (ny,), xs (nx,))``.

        ``out[..., i, j]`` is centred at ``(ys[i], xs[j])``, which is cyvlfeat's frame ``i·nx + j``.
        """
        ny, nx = self.grid_size(height, width)
        half = 0.5 * self.bin_size * (self.num_spatial_bins - 1)
        return np.arange(ny) * self.step + half, np.arange(nx) * self.step + half

    # -- validation ---------------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is a float grey batch ``(B, 1, H, W)`` with ≥ 1 frame."""
        if not torch.is_tensor(x) or x.dim() != 4:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"DenseSIFT expects an image batch (B, 1, H, W), got {shape}")
        if x.shape[1] != 1:
            raise ValueError(
                "dense SIFT takes grey images (B, 1, H, W); convert with "
                "preimage.io.images.load_image(path, mode='grey'), or for an RGB batch "
                "(x * torch.tensor(preimage.io.images.GREY_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True) "
                f"(got {x.shape[1]} channels, shape {tuple(x.shape)})")
        if not x.is_floating_point():
            raise ValueError(f"DenseSIFT expects a float tensor (0–255 scale), got {x.dtype}; "
                             f"use x.float()")
        h, w = x.shape[-2:]
        if h < self.min_size[0] or w < self.min_size[1]:
            raise ValueError(
                f"DenseSIFT needs images of at least {self.min_size[0]}×{self.min_size[1]} pixels "
                f"(one {self.num_spatial_bins}×{self.num_spatial_bins} grid of {self.bin_size}-px bins), "
                f"got {h}×{w}; use a smaller bin_size or a larger image")

    # -- computation --------------------------------------------------------------------------------
    def _matrices(self, height: int, width: int, device: torch.device, dtype: torch.dtype):
        """Cached per (size, device, dtype): x filter (W, Rx), y filter × window (nb·ny, H),
        x selection × window (Rx, nb·nx), the pixel-border factors for the x/y derivatives, and
        the sparse form of the filters (:class:`_Pooling`) with its y selection × window
        (nb·ny, Ry)."""
        key = (height, width, str(device), dtype)
        mats = self._cache.get(key)
        if mats is None:
            bs, nb = self.bin_size, self.num_spatial_bins
            ny, nx = self.grid_size(height, width)
            # sampled pixel of (bin b, frame f) along an axis: f·step + b·bin_size
            rows = (np.arange(ny)[None, :] * self.step + np.arange(nb)[:, None] * bs).reshape(-1)
            cols = (np.arange(nx)[None, :] * self.step + np.arange(nb)[:, None] * bs).reshape(-1)
            ucols, inv = np.unique(cols, return_inverse=True)
            urows, inv_y = np.unique(rows, return_inverse=True)
            kx = _triangle_matrix(width, ucols, bs)                         # (Rx, W)
            ky = _triangle_matrix(height, urows, bs)                        # (Ry, H)
            sel = np.zeros((len(ucols), nb * nx))
            sel[inv.reshape(-1), np.arange(nb * nx)] = np.repeat(self._bin_weight, nx)
            sel_y = np.zeros((nb * ny, len(urows)))
            sel_y[np.arange(nb * ny), inv_y.reshape(-1)] = np.repeat(self._bin_weight, ny)
            cx = np.full(width, 0.5)
            cx[[0, -1]] = 1.0
            cy = np.full(height, 0.5)
            cy[[0, -1]] = 1.0
            as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device).contiguous()
            mats = (as_t(kx.T), as_t(sel_y @ ky), as_t(sel), as_t(cx), as_t(cy[:, None]),
                    _Pooling(ky, kx, self.num_orientations, device, dtype), as_t(sel_y))
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = mats
        return mats

    def code_stride(self) -> int:
        """The sampling step: pixels between neighbouring descriptors."""
        return self.step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense SIFT of a grey batch.

        Args:
            x: ``(B, 1, H, W)`` float32/float64, grey, 0–255 scale; H, W ≥ :attr:`min_size`.
        Returns:
            ``(B, 128, ny, nx)`` same dtype/device, values in [0, 255]; channel
            ``t + 8·bin_x + 32·bin_y``; ``(ny, nx) = grid_size(H, W)``.
        """
        self.check_input(x)
        if x.dtype not in (torch.float32, torch.float64):
            return self.forward(x.float()).to(x.dtype)
        return _Normalize.apply(self.histograms(x), self.renormalize)

    def histograms(self, x: torch.Tensor) -> torch.Tensor:
        """The descriptors before normalisation (VLFeat's ``descrs`` before the L2 step).

        Args:
            x: ``(B, 1, H, W)`` float, 0–255 (not validated here; :meth:`forward` does).
        Returns:
            ``(B, 128, ny, nx)``, non-negative, VLFeat's scale (gradient modulus × unit-height
            triangles × Gaussian-window bin means).
        """
        b, _, h, w = x.shape
        T, nb = self.num_orientations, self.num_spatial_bins
        ny, nx = self.grid_size(h, w)
        kx, ky, sel, cx, cy, pool, sel_y = self._matrices(h, w, x.device, x.dtype)

        if pool.ok:  # filtered at the sampled rows/columns pixel by pixel, then the window
            a = _PooledGradients.apply(x[:, 0], T, cx, cy, pool)          # (B, T, Ry, Rx)
            d = sel_y @ a @ sel                                             # (B, T, nb·ny, nb·nx)
        else:
            grads = _OrientedGradients.apply(x[:, 0], T, cx, cy)          # (B, T, H, W)
            # Separable triangular filtering sampled at the bin centres, Gaussian window folded in.
            a = grads @ kx                                                  # (B, T, H, Rx)
            a = ky @ a                                                      # (B, T, nb·ny, Rx)
            d = a @ sel                                                     # (B, T, nb·ny, nb·nx)
        return d.view(b, T, nb, ny, nb, nx).permute(0, 2, 4, 1, 3, 5).reshape(b, T * nb * nb, ny, nx)

    def extra_repr(self) -> str:
        return (f"bin_size={self.bin_size}, step={self.step}, num_spatial_bins={self.num_spatial_bins}, "
                f"num_orientations={self.num_orientations}, window_size={self.window_size}, "
                f"renormalize={self.renormalize}")


__all__ = ["DenseSIFT", "fast_sqrt", "fast_atan2_turns", "FLT_EPSILON"]
