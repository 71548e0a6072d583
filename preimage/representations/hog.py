"""Histogram of oriented gradients (HOG), differentiable and numerically equal to VLFeat's ``vl_hog``.

This is the HOG of the paper (Mahendran & Vedaldi, CVPR 2015): VLFeat's UoCTTI variant (the DPM-v5
HOG of Felzenszwalb et al.) with its four texture channels dropped ("hog"), and the same with
VLFeat's bilinear orientation assignment ("hogb"). The full 31-channel UoCTTI and VLFeat's
Dalal–Triggs layout are available too. On float32 input every variant matches VLFeat 0.9.21
(``cyvlfeat.hog.hog``) to ~2e-7 (tests/test_hog.py checks ≤ 1e-5 on real, low-contrast,
colour-tied and synthetic images).

Conventions (VLFeat's; see ``shared/reference/vlfeat-conventions.md``)
----------------------------------------------------------------------
* Input ``(B, C, H, W)``, float32 or float64 (other float dtypes are computed in float32), C = 1
  (grey) or 3 (colour), pixel values on a **0–255 scale**. Values outside [0, 255] are fine. The
  scale matters, through the 1e-4 added to the squared block norms: do not rescale to [0, 1].
  H and W must be at least ``max(cell_size, 3)``.
* Gradient: central differences without the ½ factor, at interior pixels only (the outermost rows
  and columns contribute nothing). Colour: each pixel uses the channel with the largest squared
  gradient (the first one on ties).
* Orientation: 2n directed bins (n = ``num_orientations``, 9 by default), bin k at k·180°/n, angles
  measured with x to the right and y *downward*: a ramp brightening to the right falls in bin 0,
  one brightening downwards in bin 4 (90° ties bins 4 and 5 for n = 9; the lower bin wins, as in
  VLFeat), leftwards in bin 9. Hard assignment to the nearest bin by default; ``bilinear=True``
  ("HOGb") splits the magnitude between the two nearest bins, VLFeat's way:
  ``w1 = acos(|g·u_k0| / |g|) / (π/n)``, ``w0 = 1 − w1``.
* Spatial pooling: bilinear between cell centres at ``(b + 0.5)·cell − 0.5``; weight falling
  outside the grid is dropped. Grid ``h = (H + cell//2) // cell``, ``w`` likewise (227 → 28).
* Block normalisation: per 2×2 block of cells, ``f = 1/sqrt(Σ_cells ‖h_u‖² + 1e-4)`` with ``h_u``
  the undirected histogram (directed bins k and k+n added); beyond the border the nearest cell is
  repeated (replicate padding of the cell-norm map). Each cell lies in 4 blocks: upper-left,
  upper-right, lower-left, lower-right (UL, UR, LL, LR).

Output ``(B, D, h, w)``, channels first, same dtype and device as the input:

* ``variant="uoctti"``: channels ``0 … 2n−1`` directed, ``2n … 3n−1`` undirected, each
  ``0.5·Σ_blocks min(0.2, f·h)`` ∈ [0, 0.4]; D = 3n = 27 (the paper's HOG). With
  ``keep_texture=True`` four more channels ``3n … 3n+3``, one per block (UL, UR, LL, LR):
  ``(1/√18)·Σ_k min(0.2, f·h_u[k])`` ∈ [0, 0.2·n/√18]; D = 31.
* ``variant="dalaltriggs"``: D = 4n = 36, block-major: channel ``k + n·b`` is
  ``min(0.2, f_b·h_u[k])`` ∈ [0, 0.2] for block b in (UL, UR, LL, LR); no renormalisation.

Gradients
---------
Autograd flows through the gradient magnitudes, the per-pixel colour-channel selection, HOGb's
orientation weights, the spatial pooling, the block normalisation and the 0.2 clamp. The discrete
choices (orientation bin, winning colour channel) are piecewise constant and carry no gradient.
HOGb's forward weight is VLFeat's ``acos`` formula, its gradient that of the same angle written
with ``atan2`` (finite at exact alignment, where ``acos``'s derivative is infinite; at a bin
centre the weight has a kink and one side's derivative is used). Zero gradients get zero
derivative. The per-pixel stage has a hand-written backward (first order only: no double
backward).

Speed
-----
The inverter runs ~800 forward+backward passes per image. On CPU tensors, with numba installed,
the per-pixel stage — and, for the paper's HOG/HOGb (UoCTTI without texture), the block
normalisation too — runs as compiled loops (:mod:`.hog_numba`, ``kernel="auto"``): one pass over
the pixels each way, the orientation decided by VLFeat's own loop over the orientations, each
pixel's assignment kept for the backward pass. Elsewhere (CUDA, ``kernel="torch"``,
``PREIMAGE_COMPILED=0``) it is batched tensor operations with no Python loop over pixels or
cells: the orientation bin is found from ``atan2`` and confirmed with VLFeat's exact projections
of the two candidate bins, and the magnitudes are scatter-added into the four cells around each
pixel (the backward pass gathers). Both forms agree to float rounding. Index and weight tables
are cached per size, device and dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import compiled
from .base import Representation
from .glyph import hog_glyph

VARIANTS = ("uoctti", "dalaltriggs")


#: Pixels whose angle is within this many bins of a decision boundary (mid-way between two bins
#: for the best bin; a bin centre, for HOGb's runner-up) are decided with VLFeat's exact
#: projections; elsewhere the angle decides (its error, ~1e-6 bins, is far below this margin).
_MARGIN = 1e-2


def _axis_weights(n_pixels: int, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """VLFeat's bilinear spatial binning along one axis, for the interior pixels 1 … n_pixels−2.

    Pixel ``x`` sits at ``(x + 0.5)/cell − 0.5`` in cell units: it gives ``1 − frac`` to cell
    ``floor`` and ``frac`` to the next one. Returns ``(first, weights)``: ``first`` ``(n_pixels − 2,)``
    the first cell (−1 … n_cells − 1; cells outside the grid are dropped later), ``weights``
    ``(2, n_pixels − 2)``.
    """
    pos = (np.arange(1, n_pixels - 1) + 0.5) / cell - 0.5
    first = np.floor(pos).astype(np.int64)
    return first, np.stack([1.0 - (pos - first), pos - first])


class _Layout:
    """Per-size constants of :class:`_CellHistograms` (one image size, device and dtype).

    Cells live in a zero-padded grid ``(B, 2n, h+2, w+2)`` (cell (i, j) at (i+1, j+1)), so that
    every interior pixel's four cells (first y/x cell −1 … h−1/w−1, and the next) are inside it:
    ``base`` holds, per sample and pixel, the flat position of the pixel's first cell for bin 0
    (``b·2n·S + (cy+1)·(w+2) + cx + 1``, S = (h+2)(w+2)); bin ``d`` adds ``d·S`` and the other
    three corners ``1``, ``w+2``, ``w+3``. ``weights`` ``(4, H−2, W−2)``: the corners' bilinear
    weights. ``table`` ``(3·4, n)``: column k holds cos, sin and the index of k' = k−1, k, k+1, k+2
    (mod n) (VLFeat's float32 values for float32 input); ``directed`` ``(2, 2n)`` cos, sin of the
    2n directed bins (u_{k+n} = −u_k).
    """

    def __init__(self, height: int, width: int, cell: int, n: int, device, dtype):
        h, w = (height + cell // 2) // cell, (width + cell // 2) // cell
        self.h, self.w, self.n = h, w, n
        self.row = w + 2
        self.stride = (h + 2) * (w + 2)
        self.corners = (0, 1, w + 2, w + 3)
        cy, wy = _axis_weights(height, cell)
        cx, wx = _axis_weights(width, cell)
        self._pixel = torch.as_tensor(((cy[:, None] + 1) * (w + 2) + cx[None, :] + 1).reshape(-1), device=device)
        self.weights = torch.as_tensor((wy[:, None, :, None] * wx[None, :, None, :]).reshape(4, height - 2, width - 2),
                                       dtype=dtype, device=device)
        ang = np.arange(n) * math.pi / n
        cos, sin = np.cos(ang), np.sin(ang)
        if dtype == torch.float32:
            # VLFeat stores float(cos), float(sin) (rounded, so not exactly of unit norm);
            # float32 inputs use those values so that scores and ties come out identical.
            # Other dtypes use exact ones: with the rounded ones, acos(|g·u|/|g|) is off by
            # ~1e-8/angle near a bin centre, which would spoil float64 gradient checks.
            cos, sin = cos.astype(np.float32), sin.astype(np.float32)
        k = (np.arange(n)[None, :] + np.arange(-1, 3)[:, None]) % n  # (4, n)
        table = np.stack([cos[k], sin[k], k.astype(np.float64)])  # (3, 4, n)
        self.table = torch.as_tensor(table.reshape(12, n), dtype=dtype, device=device)
        self.directed = torch.as_tensor(np.stack([np.concatenate([cos, -cos]), np.concatenate([sin, -sin])]),
                                        dtype=dtype, device=device)
        self._base = torch.zeros(0, dtype=torch.int32, device=device)
        self.index_dtype = torch.int32
        # what the compiled loops read (numpy, this dtype): cos, sin (n,), consts (n/π, 1e-10), the
        # first cells in the padded grid (int64) and the bilinear weights along y, x (2, H−2), (2, W−2)
        np_dtype = torch.empty(0, dtype=dtype).numpy().dtype
        self.kernel_arrays = (cos.astype(np_dtype), sin.astype(np_dtype), np.array([n / math.pi, 1e-10], np_dtype),
                              cy + 1, cx + 1, wy.astype(np_dtype), wx.astype(np_dtype))

    def base(self, batch: int) -> torch.Tensor:
        """``(batch·N,)`` flat first-cell positions of every pixel of ``batch`` samples (bin 0)."""
        need = batch * self._pixel.numel()
        if self._base.numel() < need:
            total = batch * 2 * self.n * self.stride
            self.index_dtype = torch.int32 if total < 2 ** 31 - 1 else torch.int64
            offsets = torch.arange(batch, device=self._pixel.device).view(-1, 1) * (2 * self.n * self.stride)
            self._base = (offsets + self._pixel).view(-1).to(self.index_dtype)
        return self._base[:need]


def _exact_bins(gx: torch.Tensor, gy: torch.Tensor, n: int, bilinear: bool, table: torch.Tensor):
    """VLFeat's orientation assignment of gradients ``gx``, ``gy`` ``(M,)``, exactly.

    VLFeat picks the orientation k maximising |g·u_k| (the first k on ties); the maximum is one of
    the two orientations ka, ka+1 either side of the gradient's angle, and their scores are computed
    as VLFeat computes them, so near-ties are decided identically. HOGb's runner-up is the better of
    k0's two neighbours (the lower k on ties); at an exact bin centre either side may win, and
    VLFeat's rounding can still give it a small weight there. Returns float tensors ``(M,)``:
    the directed bin, and for HOGb the runner-up's directed bin and ``tr`` (1: the runner-up is
    k0 + 1, 0: k0 − 1); ``None`` for those without HOGb.
    """
    pos = torch.atan2(gy, gx).mul_(n / math.pi)  # in [-n, n]
    pos = torch.nan_to_num_(pos, nan=0.0)
    pos.add_((pos < 0).to(gx.dtype), alpha=n)
    ka = pos.floor_().clamp_(0, n - 1).long()
    J = 4 if bilinear else 2
    rows = table.view(3, 4, n)[:, (0 if bilinear else 1):(4 if bilinear else 3)].reshape(3 * J, n)
    q = rows.index_select(1, ka).view(3, J, -1)  # field (cos, sin, k') of k' = ka-1 … ka+2
    score = gx * q[0] + gy * q[1]
    ascore = score.abs()
    kk = q[2]
    i = 1 if bilinear else 0  # position of ka
    tb = ascore[i + 1] > ascore[i]
    tb = tb | ((ascore[i + 1] == ascore[i]) & (kk[i + 1] < kk[i]))
    s0 = torch.where(tb, score[i + 1], score[i])
    k0 = torch.where(tb, kk[i + 1], kk[i])
    bin0 = k0 + (s0 < 0).to(gx.dtype) * n
    if not bilinear:
        return bin0, None, None
    sl, sr = torch.where(tb, score[1], score[0]), torch.where(tb, score[3], score[2])
    kl, kr = torch.where(tb, kk[1], kk[0]), torch.where(tb, kk[3], kk[2])
    al, ar = sl.abs(), sr.abs()
    tr = (ar > al) | ((ar == al) & (kr < kl))
    s1, k1 = torch.where(tr, sr, sl), torch.where(tr, kr, kl)
    return bin0, k1 + (s1 < 0).to(gx.dtype) * n, tr.to(gx.dtype)


def _gradients(x: torch.Tensor):
    """Central differences of the winning colour channel: ``gx, gy, n2`` ``(B, H−2, W−2)`` and the
    one-hot ``(B, C, H−2, W−2)`` of the winner (``None`` for grey)."""
    C = x.shape[1]
    gx = x[:, :, 1:-1, 2:] - x[:, :, 1:-1, :-2]  # (B, C, Hi, Wi), no ½ (VLFeat)
    gy = x[:, :, 2:, 1:-1] - x[:, :, :-2, 1:-1]
    n2 = gx * gx
    n2 += gy * gy
    if C == 1:
        return gx[:, 0], gy[:, 0], n2[:, 0], None
    # per pixel, the channel with the largest squared gradient (the first on ties)
    win = torch.zeros_like(n2[:, 0])
    best = n2[:, 0]
    for ch in range(1, C):
        better = (n2[:, ch] > best).to(x.dtype)
        win = win + better * (ch - win)
        best = torch.maximum(best, n2[:, ch])
    onehot = (win.unsqueeze(1) == torch.arange(C, device=x.device, dtype=x.dtype).view(1, C, 1, 1))
    onehot = onehot.to(x.dtype)
    return (gx * onehot).sum(1), (gy * onehot).sum(1), best, onehot


def _orientations(gx: torch.Tensor, gy: torch.Tensor, n: int, bilinear: bool, table: torch.Tensor):
    """Directed bins of every pixel, VLFeat's: ``(bin0, bin1, tr)`` as for :func:`_exact_bins`,
    float tensors shaped like ``gx`` (contiguous). The angle decides, except within
    :data:`_MARGIN` of a decision boundary, where :func:`_exact_bins` does."""
    pos = torch.atan2(gy, gx).mul_(n / math.pi)  # directed bins, in [-n, n]
    pos.nan_to_num_(nan=0.0).add_(2 * n)  # in [n, 3n] (NaN input: NaN code rather than an index error)
    low = pos.floor()
    dist = pos.sub_(low).sub_(0.5)  # in [-0.5, 0.5): position between bins low and low + 1
    up = torch.gt(dist, 0, out=torch.empty_like(dist))  # 1 where bin low + 1 is nearer
    bins = [low + up]
    tr = None
    if bilinear:  # the runner-up is the other neighbour: on the right (k0 + 1) when low is best
        bins.append(low.add_(1).sub_(up))
        tr = up.neg_().add_(1)
        amb = dist.abs_().sub_(0.25).abs_() > 0.25 - _MARGIN  # near mid-way, or near a bin centre
    else:
        amb = dist.abs_() < _MARGIN
    wrap = torch.empty_like(dist)
    for b in bins:  # modulo 2n
        b.sub_(torch.ge(b, 2 * n, out=wrap), alpha=2 * n)
    sel = amb.view(-1).nonzero().squeeze(1)
    if sel.numel():
        exact = _exact_bins(gx.reshape(-1).index_select(0, sel), gy.reshape(-1).index_select(0, sel),
                            n, bilinear, table)
        for t, e in zip(bins + [tr], exact):
            if t is not None:
                t.view(-1).index_copy_(0, sel, e)
    return bins[0], (bins[1] if bilinear else None), tr


class _CellHistograms(torch.autograd.Function):
    """Image batch → directed cell histograms ``(B, 2n, h, w)`` (VLFeat's, before normalisation).

    Per interior pixel: the central-difference gradient of the winning colour channel, its
    magnitude, VLFeat's orientation bin(s) and weights, then scatter-adds into the four cells around
    the pixel (bilinear in x and y). The backward pass is written out (gathers, then the chain rule
    through the magnitude and the bilinear orientation weight, then the difference stencil), which
    costs a fraction of what autograd would record for the same forward.
    """

    @staticmethod
    def forward(ctx, x, n: int, bilinear: bool, lay: _Layout):
        B, C, H, W = x.shape
        gx, gy, n2, onehot = _gradients(x)
        if bilinear and x.dtype == torch.float32 and x.device.type == "cpu":
            # torch's vectorised float32 sqrt on CPU is within 1 ulp but not always correctly
            # rounded (VLFeat's sqrtf is); the rounded float64 root is, and HOGb's acos magnifies
            # a 1-ulp error. (HOG's magnitude enters linearly: 1 ulp is float rounding there.)
            mag = torch.sqrt(n2.double()).to(x.dtype)
        else:
            mag = torch.sqrt(n2)
        bin0, bin1, tr = _orientations(gx, gy, n, bilinear, lay.table)
        if bilinear:
            # VLFeat: w1 = acos(min(|s0| / max(|g|, 1e-10), 1)) / (pi / n), w0 = 1 - w1
            b0 = bin0.view(-1).to(torch.int64)
            s0 = gx * lay.directed[0].index_select(0, b0).view_as(gx)
            s0 += gy * lay.directed[1].index_select(0, b0).view_as(gx)
            w1 = torch.acos((s0.abs_() / mag.clamp_min(1e-10)).clamp_max_(1.0)).mul_(n / math.pi)
            parts = [(bin0, mag * (1 - w1)), (bin1, mag * w1)]  # VLFeat: gradNorm * ow
        else:
            w1 = None
            parts = [(bin0, mag)]
        base = lay.base(B)
        cells = torch.zeros(B * 2 * n * lay.stride + lay.row + 1, dtype=x.dtype, device=x.device)
        index = []
        for bins, src in parts:
            idx = torch.add(base, bins.view(-1).to(base.dtype), alpha=lay.stride)
            for offset, weight in zip(lay.corners, lay.weights):
                cells[offset:].index_add_(0, idx, (src * weight).view(-1))
            index.append(idx)
        out = cells[:B * 2 * n * lay.stride].view(B, 2 * n, lay.h + 2, lay.w + 2)[:, :, 1:-1, 1:-1]
        ctx.n, ctx.shape, ctx.lay = n, (B, C, H, W), lay
        ctx.save_for_backward(gx, gy, mag, onehot, w1, tr, *index)
        return out.contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_cells):
        gx, gy, mag, onehot, w1, tr, *index = ctx.saved_tensors
        B, C, H, W = ctx.shape
        n, lay = ctx.n, ctx.lay
        padded = torch.zeros(B * 2 * n * lay.stride + lay.row + 1, dtype=gx.dtype, device=gx.device)
        padded[:B * 2 * n * lay.stride].view(B, 2 * n, lay.h + 2, lay.w + 2)[:, :, 1:-1, 1:-1] = grad_cells
        g = []  # d loss / d src, per pixel and assignment: (B, Hi, Wi) each
        for idx in index:
            acc = None
            for offset, weight in zip(lay.corners, lay.weights):
                term = padded[offset:].index_select(0, idx).view_as(gx).mul_(weight)
                acc = term if acc is None else acc.add_(term)
            g.append(acc)
        inv = (mag > 0).to(mag.dtype) / mag.clamp_min(torch.finfo(mag.dtype).tiny)  # 1/|g|; 0 at g = 0
        if w1 is None:
            a = g[0].mul_(inv)
            ggx, ggy = a * gx, a * gy
        else:
            diff = g[1] - g[0]
            a = (g[0] + w1 * diff) * inv  # d loss/d|g| / |g|
            # d w1 / d g = ±(n/pi)·(-gy, gx)/|g|²: the angle to bin0 grows towards the runner-up,
            # at +pi/n (tr = 1) or -pi/n. (acos's derivative is infinite at exact alignment; this,
            # the derivative of the same angle written with atan2, is not.)
            b = diff * (tr * (2 * n / math.pi) - n / math.pi) * inv  # (dL/dw1)(dw1/dθ) / |g|²
            ggx, ggy = a * gx - b * gy, a * gy + b * gx
        if onehot is None:
            ggx, ggy = ggx.unsqueeze(1), ggy.unsqueeze(1)
        else:
            ggx, ggy = ggx.unsqueeze(1) * onehot, ggy.unsqueeze(1) * onehot
        grad = torch.zeros((B, C, H, W), dtype=ggx.dtype, device=ggx.device)
        grad[:, :, 1:-1, 2:] += ggx
        grad[:, :, 1:-1, :-2] -= ggx
        grad[:, :, 2:, 1:-1] += ggy
        grad[:, :, :-2, 1:-1] -= ggy
        return grad, None, None, None


def compiled_kernels(force: bool = False):
    """The compiled per-pixel loops (:mod:`preimage.representations.hog_numba`), or ``None``
    when numba is not installed or the loops are switched off (:mod:`preimage.compiled`; unless
    ``force``)."""
    return compiled.load("representations.hog_numba", force=force)


KERNELS = ("auto", "compiled", "torch")


def _compiled_cells(x: torch.Tensor, n: int, bilinear: bool, lay: _Layout):
    """``(cells, assign, w1)``: the padded directed cell histograms ``(B, 2n, h+2, w+2)`` of ``x``
    ``(B, C, H, W)`` (contiguous, CPU), zero on the padding, and each pixel's assignment for
    :func:`_compiled_cells_backward` (numpy arrays)."""
    B, _, H, W = x.shape
    cells = torch.zeros((B, 2 * n, lay.h + 2, lay.w + 2), dtype=x.dtype)
    assign = np.empty((3 if bilinear else 1, B, H - 2, W - 2), np.int16)  # HOGb's bin1 and tr: rows 1, 2
    w1 = np.empty((B, H - 2, W - 2) if bilinear else (1, 1, 1), x.numpy().dtype)
    compiled_kernels(force=True).cells_forward(x.numpy(), *lay.kernel_arrays, bilinear, cells.numpy(), assign, w1)
    return cells, assign, w1


def _compiled_cells_backward(x: torch.Tensor, n: int, bilinear: bool, lay: _Layout, assign, w1,
                             grad_cells: torch.Tensor) -> torch.Tensor:
    """d loss / d ``x`` ``(B, C, H, W)`` from d loss / d the padded cells ``(B, 2n, h+2, w+2)``
    (contiguous; zero on the padding)."""
    grad = torch.zeros_like(x)
    consts, first_y, first_x, wy, wx = lay.kernel_arrays[2:]
    compiled_kernels(force=True).cells_backward(x.numpy(), consts, first_y, first_x, wy, wx, bilinear, assign, w1,
                                                grad_cells.numpy(), grad.numpy())
    return grad


class _CompiledCellHistograms(torch.autograd.Function):
    """:class:`_CellHistograms` computed by the compiled loops of
    :mod:`~preimage.representations.hog_numba` (CPU, float32/float64): the same directed cell
    histograms ``(B, 2n, h, w)`` from ``x`` ``(B, C, H, W)``, in one pass over the pixels each
    way; the backward pass recomputes the gradients from ``x`` and reads the kept assignments."""

    @staticmethod
    def forward(ctx, x, n: int, bilinear: bool, lay: _Layout):
        x = x.detach().contiguous()
        cells, ctx.assign, ctx.w1 = _compiled_cells(x, n, bilinear, lay)
        ctx.n, ctx.bilinear, ctx.lay = n, bilinear, lay
        ctx.save_for_backward(x)
        return cells[:, :, 1:-1, 1:-1].contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_cells):
        (x,) = ctx.saved_tensors
        lay = ctx.lay
        padded = torch.zeros((x.shape[0], 2 * ctx.n, lay.h + 2, lay.w + 2), dtype=x.dtype)
        padded[:, :, 1:-1, 1:-1] = grad_cells
        grad = _compiled_cells_backward(x, ctx.n, ctx.bilinear, lay, ctx.assign, ctx.w1, padded)
        return grad, None, None, None


class _CompiledUoCTTI(torch.autograd.Function):
    """The paper's HOG (UoCTTI without texture), image ``(B, C, H, W)`` → code ``(B, 3n, h, w)``,
    wholly in the compiled loops: the cell histograms, then the block normalisation and the 0.2
    clamp (:func:`~preimage.representations.hog_numba.uoctti_forward`); keeps ``x``, the cells and
    each pixel's assignment."""

    @staticmethod
    def forward(ctx, x, n: int, bilinear: bool, lay: _Layout):
        x = x.detach().contiguous()
        cells, ctx.assign, ctx.w1 = _compiled_cells(x, n, bilinear, lay)
        norm = np.array([0.2, 0.5, 1e-4, 1.0], dtype=cells.numpy().dtype)
        out = torch.empty((x.shape[0], 3 * n, lay.h, lay.w), dtype=x.dtype)
        compiled_kernels(force=True).uoctti_forward(cells.numpy(), norm, out.numpy())
        ctx.n, ctx.bilinear, ctx.lay, ctx.norm = n, bilinear, lay, norm
        ctx.save_for_backward(x, cells)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, cells = ctx.saved_tensors
        grad_cells = torch.zeros_like(cells)
        compiled_kernels(force=True).uoctti_backward(cells.numpy(), ctx.norm, grad_out.contiguous().numpy(),
                                           grad_cells.numpy())
        grad = _compiled_cells_backward(x, ctx.n, ctx.bilinear, ctx.lay, ctx.assign, ctx.w1, grad_cells)
        return grad, None, None, None


class _ClampedBlocks(torch.autograd.Function):
    """UoCTTI's ``0.5·Σ_blocks min(0.2, f_b·h)``: ``h`` ``(B, D, h, w)``, block factors ``f``
    ``(B, 1, h+1, w+1)`` (block (i, j) covers cells i−1 … i, j−1 … j) → ``(B, D, h, w)``.

    Written out so that the four blocks never form a ``(B, 4, D, h, w)`` tensor; the backward
    passes the gradient where ``f_b·h ≤ 0.2`` (as ``clamp_max`` does)."""

    @staticmethod
    def forward(ctx, hh, f):
        out, masks = None, []
        for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):  # UL, UR, LL, LR
            p = f[..., i:i + hh.shape[-2], j:j + hh.shape[-1]] * hh
            masks.append(torch.le(p, 0.2, out=torch.empty_like(p)))
            p = p.clamp_max_(0.2)
            out = p if out is None else out.add_(p)
        ctx.save_for_backward(hh, f, *masks)
        return out.mul_(0.5)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        hh, f, *masks = ctx.saved_tensors
        half = grad * 0.5
        h, w = hh.shape[-2:]
        ghh = None
        gf = torch.zeros_like(f)
        for (i, j), m in zip(((0, 0), (0, 1), (1, 0), (1, 1)), masks):
            gm = m * half
            fb = f[..., i:i + h, j:j + w]
            gf[..., i:i + h, j:j + w] += (gm * hh).sum(1, keepdim=True)
            gm = gm.mul_(fb)
            ghh = gm if ghh is None else ghh.add_(gm)
        return ghh, gf


class HOG(Representation):
    """VLFeat-equal HOG: image batch ``(B, C, H, W)`` on 0–255 → code ``(B, D, h, w)``.

    Args:
        cell_size: cell side in pixels (8 in the paper).
        num_orientations: undirected orientations n (9, at least 2); there are 2n directed bins.
        variant: ``"uoctti"`` (D = 3n, or 3n + 4 with ``keep_texture``) or ``"dalaltriggs"`` (D = 4n).
        bilinear: bilinear orientation assignment (the paper's HOGb) instead of hard.
        keep_texture: UoCTTI only: keep VLFeat's 4 texture channels (the paper drops them).
        kernel: how the per-pixel stage runs on CPU: ``"compiled"`` (numba's loops,
            :mod:`~preimage.representations.hog_numba`; an ``ImportError`` here without numba),
            ``"torch"`` (tensor operations, as on other devices), or ``"auto"`` (compiled when
            numba is installed and :mod:`preimage.compiled` does not switch the loops off). The
            codes agree to float rounding.

    ``h = (H + cell_size//2) // cell_size`` and ``w`` likewise. See the module docstring for the
    channel layout, the value ranges and the conventions.
    """

    input_channels = (1, 3)
    mean_pixel = 128.0
    lr = 3e-3  # tuned on the train images (benchmarks/tune_lr.py)

    def __init__(self, cell_size: int = 8, num_orientations: int = 9, variant: str = "uoctti",
                 bilinear: bool = False, keep_texture: bool = False, kernel: str = "auto"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"HOG kernel must be one of {KERNELS}, got {kernel!r}")
        if kernel == "compiled" and compiled_kernels(force=True) is None:
            raise ImportError("HOG(kernel='compiled') needs numba (pip install numba)")
        self.kernel = kernel
        variant = str(variant).lower().replace("-", "").replace("_", "")
        if variant not in VARIANTS:
            raise ValueError(f"HOG variant must be one of {VARIANTS}, got {variant!r}")
        if int(cell_size) != cell_size or cell_size < 1:
            raise ValueError(f"cell_size must be a positive integer, got {cell_size!r}")
        if int(num_orientations) != num_orientations or num_orientations < 2:
            raise ValueError(f"num_orientations must be an integer >= 2, got {num_orientations!r}")
        if keep_texture and variant != "uoctti":
            raise ValueError("keep_texture applies to the 'uoctti' variant only")
        self.cell_size = int(cell_size)
        self.num_orientations = int(num_orientations)
        self.variant = variant
        self.bilinear = bool(bilinear)
        self.keep_texture = bool(keep_texture)
        # at least one cell, and 3 pixels (VLFeat's minimum: one interior gradient)
        side = max(self.cell_size, 3)
        self.min_size = (side, side)
        n = self.num_orientations
        self.dim = (3 * n + (4 if keep_texture else 0)) if variant == "uoctti" else 4 * n
        self._cache: dict = {}

    def output_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(D, h, w)`` of the code of an ``height × width`` image."""
        c = self.cell_size
        return self.dim, (height + c // 2) // c, (width + c // 2) // c

    def _layout(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> _Layout:
        """The :class:`_Layout` of one image size, cached per size, device and dtype."""
        key = (height, width, device, dtype)
        hit = self._cache.get(key)
        if hit is None:
            hit = _Layout(height, width, self.cell_size, self.num_orientations, device, dtype)
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` float on 0–255 → ``(B, D, h, w)`` (same dtype and device), values ≥ 0.

        Raises ``ValueError`` for a non-4-D or non-float input, a channel count other than 1 or 3,
        or an image smaller than ``min_size``.
        """
        self.check_input(x)
        if not x.is_floating_point():
            raise ValueError(f"HOG expects a floating-point image batch, got {x.dtype}")
        if x.dtype not in (torch.float32, torch.float64):  # half precision: compute in float32
            return self.forward(x.float()).to(x.dtype)
        if self.variant == "uoctti" and not self.keep_texture and self.uses_compiled(x):
            H, W = x.shape[-2:]
            return _CompiledUoCTTI.apply(x, self.num_orientations, self.bilinear,
                                         self._layout(H, W, x.device, x.dtype))
        return self._normalise(self._histograms(x))

    def _histograms(self, x: torch.Tensor) -> torch.Tensor:
        """Directed cell histograms before normalisation, ``(B, 2n, h, w)`` (gradient-magnitude units)."""
        B, C, H, W = x.shape
        lay = self._layout(H, W, x.device, x.dtype)
        x = x.contiguous()  # the per-pixel stage assumes the standard layout (no-op if already)
        if self.uses_compiled(x):
            return _CompiledCellHistograms.apply(x, self.num_orientations, self.bilinear, lay)
        return _CellHistograms.apply(x, self.num_orientations, self.bilinear, lay)

    def uses_compiled(self, x: torch.Tensor) -> bool:
        """Whether the per-pixel stage of ``x`` runs in the compiled loops: ``kernel`` "compiled",
        or "auto" with numba installed and the loops on (:mod:`preimage.compiled`), on a CPU tensor
        (float32/float64 after ``forward``'s cast)."""
        return (self.kernel != "torch" and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
                and compiled_kernels(force=self.kernel == "compiled") is not None)

    def _normalise(self, hd: torch.Tensor) -> torch.Tensor:
        """Directed cell histograms ``(B, 2n, h, w)`` → the code ``(B, D, h, w)``."""
        n = self.num_orientations
        hu = hd[:, :n] + hd[:, n:]
        norm = (hu * hu).sum(1, keepdim=True)  # (B, 1, h, w)
        norm = F.pad(norm, (1, 1, 1, 1), mode="replicate")
        blocks = norm[..., :-1, :-1] + norm[..., :-1, 1:] + norm[..., 1:, :-1] + norm[..., 1:, 1:]
        f = torch.rsqrt(blocks + 1e-4)  # (B, 1, h+1, w+1): block (i, j) covers cells i-1..i, j-1..j
        if self.variant == "uoctti" and not self.keep_texture:
            return _ClampedBlocks.apply(torch.cat([hd, hu], dim=1), f)
        # factors of the blocks containing each cell: UL, UR, LL, LR -> (B, 4, 1, h, w)
        fb = torch.stack([f[..., :-1, :-1], f[..., :-1, 1:], f[..., 1:, :-1], f[..., 1:, 1:]], dim=1)
        if self.variant == "dalaltriggs":
            out = (fb * hu.unsqueeze(1)).clamp_max(0.2)  # (B, 4, n, h, w)
            return out.flatten(1, 2)
        hh = torch.cat([hd, hu], dim=1).unsqueeze(1)  # (B, 1, 3n, h, w)
        clamped = (fb * hh).clamp_max(0.2)  # (B, 4, 3n, h, w)
        tex = clamped[:, :, 2 * n:].sum(2) * (1.0 / math.sqrt(18.0))
        return torch.cat([0.5 * clamped.sum(1), tex], dim=1)

    def code_stride(self) -> int:
        """The cell size: pixels between neighbouring cells."""
        return self.cell_size

    def render_code(self, code: torch.Tensor) -> torch.Tensor:
        """The glyph picture of one code ``(D, h, w)``: ``(1, 16·h, 16·w)`` on 0–255, see
        :func:`preimage.representations.glyph.hog_glyph` (drawn for this variant)."""
        return hog_glyph(code, variant=self.variant, num_orientations=self.num_orientations)

    def extra_repr(self) -> str:
        return (f"cell_size={self.cell_size}, num_orientations={self.num_orientations}, "
                f"variant={self.variant!r}, bilinear={self.bilinear}, keep_texture={self.keep_texture}")
