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
The inverter runs ~800 forward+backward passes per image, so the per-pixel work is lean and
batched, with no Python loop over pixels or cells: the orientation bin is found from ``atan2``
and confirmed with VLFeat's exact projections of the two candidate bins; the magnitudes are
scatter-added into the two cells of their row (x pooling; backward is a gather); y pooling is one
``(h, H−2)`` matrix product. Index and weight tables are cached per size, device and dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import Representation
from .glyph import hog_glyph

VARIANTS = ("uoctti", "dalaltriggs")


def _axis_weights(n_pixels: int, n_cells: int, cell: int) -> tuple[np.ndarray, np.ndarray]:
    """VLFeat's bilinear spatial binning along one axis, for the interior pixels 1 … n_pixels−2.

    Pixel ``x`` sits at ``(x + 0.5)/cell − 0.5`` in cell units: it gives ``1 − frac`` to cell
    ``floor`` and ``frac`` to the next one; cells outside ``[0, n_cells)`` get nothing. Returns
    ``(cells, weights)``, both ``(2, n_pixels − 2)`` (cells clipped into range where the weight is 0).
    """
    pos = (np.arange(1, n_pixels - 1) + 0.5) / cell - 0.5
    first = np.floor(pos).astype(np.int64)
    cells = np.stack([first, first + 1])
    weights = np.stack([1.0 - (pos - first), pos - first])
    inside = (cells >= 0) & (cells < n_cells)
    return np.clip(cells, 0, n_cells - 1), np.where(inside, weights, 0.0)


class _RowHistograms(torch.autograd.Function):
    """Image batch → directed histograms pooled along x only, ``(B, 2n, H−2, w)``.

    Per interior pixel: the central-difference gradient of the winning colour channel, its
    magnitude, VLFeat's orientation bin(s) and weights, then a scatter-add into the two cells of the
    pixel's row. The backward pass is written out (a gather, then the chain rule through the
    magnitude and the bilinear orientation weight, then the difference stencil), which costs a
    fraction of what autograd would record for the same forward.
    """

    @staticmethod
    def forward(ctx, x, n: int, bilinear: bool, w: int, x_index, x_weight, table):
        B, C, H, W = x.shape
        Hi, Wi = H - 2, W - 2
        # Selections below are written as a·m + b·(1 − m) with m in {0, 1}: exact for finite
        # values, and much faster on CPU than torch.where with an unpredictable mask.
        gx = x[:, :, 1:-1, 2:] - x[:, :, 1:-1, :-2]  # (B, C, Hi, Wi), no ½ (VLFeat)
        gy = x[:, :, 2:, 1:-1] - x[:, :, :-2, 1:-1]
        n2 = gx * gx + gy * gy
        onehot = None
        if C == 1:
            gx, gy, n2 = gx[:, 0], gy[:, 0], n2[:, 0]
        else:  # per pixel, the channel with the largest squared gradient (the first on ties)
            win = torch.zeros_like(n2[:, 0])
            best = n2[:, 0]
            for ch in range(1, C):
                better = (n2[:, ch] > best).to(x.dtype)
                win = win + better * (ch - win)
                best = torch.maximum(best, n2[:, ch])
            onehot = (win.unsqueeze(1) == torch.arange(C, device=x.device, dtype=x.dtype).view(1, C, 1, 1))
            onehot = onehot.to(x.dtype)
            gx, gy, n2 = (gx * onehot).sum(1), (gy * onehot).sum(1), best
        if x.dtype == torch.float32 and x.device.type == "cpu":
            # torch's vectorised float32 sqrt on CPU is not always correctly rounded (VLFeat's sqrtf
            # is); rounding the float64 root is, and HOGb's acos magnifies a 1-ulp error.
            mag = torch.sqrt(n2.double()).to(x.dtype)
        else:
            mag = torch.sqrt(n2)

        # VLFeat picks the orientation k maximising |g·u_k| (the first k on ties). The maximum is
        # one of the two orientations ka, ka+1 either side of the gradient's angle; their scores
        # are computed exactly as VLFeat computes them, so near-ties are decided identically.
        pos = torch.atan2(gy, gx).mul_(n / math.pi)  # in [-n, n]
        pos = torch.nan_to_num_(pos, nan=0.0)  # NaN input: NaN code rather than an index error
        pos.add_((pos < 0).to(x.dtype), alpha=n)
        ka = pos.floor_().clamp_(0, n - 1).long().view(-1)
        # q[f, j]: field f (cos, sin, k') of orientation k' = ka-1, ka, ka+1, ka+2 (mod n)
        J = 4 if bilinear else 2
        q = table[J].index_select(1, ka).view(3, J, B, Hi, Wi)
        score = gx * q[0] + gy * q[1]  # (J, B, Hi, Wi)
        ascore = score.abs()
        kk = q[2]
        i = 1 if bilinear else 0  # position of ka
        tb = ascore[i + 1] > ascore[i]
        tb = (tb | ((ascore[i + 1] == ascore[i]) & (kk[i + 1] < kk[i]))).to(x.dtype)
        ta = 1 - tb
        s0 = score[i + 1] * tb + score[i] * ta
        k0 = kk[i + 1] * tb + kk[i] * ta
        bin0 = k0 + (s0 < 0).to(x.dtype) * n  # directed bin (exact small integers)
        if bilinear:
            # VLFeat's runner-up is the better of k0's two neighbours (the lower k on ties). At an
            # exact bin centre either side may win, and VLFeat's rounding can still give it a small
            # weight there, so it is decided with the exact scores too.
            sl = score[1] * tb + score[0] * ta
            sr = score[3] * tb + score[2] * ta
            kl = kk[1] * tb + kk[0] * ta
            kr = kk[3] * tb + kk[2] * ta
            al, ar = sl.abs(), sr.abs()
            tr = ((ar > al) | ((ar == al) & (kr < kl))).to(x.dtype)
            s1 = sr * tr + sl * (1 - tr)
            k1 = kr * tr + kl * (1 - tr)
            bins = torch.stack([bin0, k1 + (s1 < 0).to(x.dtype) * n], dim=1)  # (B, 2, Hi, Wi)
            # VLFeat: w1 = acos(min(|s0| / max(|g|, 1e-10), 1)) / (pi / n), w0 = 1 - w1
            w1 = torch.acos((s0.abs() / mag.clamp_min(1e-10)).clamp_max_(1.0)).mul_(n / math.pi)
            src = torch.stack([mag * (1 - w1), mag * w1], dim=1)  # VLFeat: gradNorm * ow
        else:
            tr = w1 = None
            bins = bin0.unsqueeze(1)
            src = mag.unsqueeze(1)
        A = bins.shape[1]
        index = torch.add(x_index, bins.long().view(B, A, 1, -1), alpha=Hi * w).view(B, -1)
        src = (src.unsqueeze(2) * x_weight).view(B, -1)  # (B, A·2·N)
        rows = torch.zeros((B, 2 * n * Hi * w), dtype=x.dtype, device=x.device)
        rows.scatter_add_(1, index, src)

        ctx.n, ctx.shape, ctx.A = n, (B, C, H, W), A
        ctx.save_for_backward(gx, gy, mag, index, x_weight, onehot, w1, tr)
        return rows.view(B, 2 * n, Hi, w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_rows):
        gx, gy, mag, index, x_weight, onehot, w1, tr = ctx.saved_tensors
        B, C, H, W = ctx.shape
        Hi, Wi = H - 2, W - 2
        n, A = ctx.n, ctx.A
        g = grad_rows.reshape(B, -1).gather(1, index).view(B, A, 2, Hi, Wi)
        g = (g * x_weight).sum(2)  # d loss / d src, per pixel and assignment: (B, A, Hi, Wi)
        inv = (mag > 0).to(mag.dtype) / mag.clamp_min(torch.finfo(mag.dtype).tiny)  # 1/|g|; 0 at g = 0
        if w1 is None:
            a = g[:, 0] * inv
            ggx, ggy = a * gx, a * gy
        else:
            diff = g[:, 1] - g[:, 0]
            a = (g[:, 0] + w1 * diff) * inv  # d loss/d|g| / |g|
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
        return grad, None, None, None, None, None, None


class HOG(Representation):
    """VLFeat-equal HOG: image batch ``(B, C, H, W)`` on 0–255 → code ``(B, D, h, w)``.

    Args:
        cell_size: cell side in pixels (8 in the paper).
        num_orientations: undirected orientations n (9, at least 2); there are 2n directed bins.
        variant: ``"uoctti"`` (D = 3n, or 3n + 4 with ``keep_texture``) or ``"dalaltriggs"`` (D = 4n).
        bilinear: bilinear orientation assignment (the paper's HOGb) instead of hard.
        keep_texture: UoCTTI only: keep VLFeat's 4 texture channels (the paper drops them).

    ``h = (H + cell_size//2) // cell_size`` and ``w`` likewise. See the module docstring for the
    channel layout, the value ranges and the conventions.
    """

    input_channels = (1, 3)
    mean_pixel = 128.0
    lr = 3e-3  # tuned on the train images (benchmarks/tune_lr.py)

    def __init__(self, cell_size: int = 8, num_orientations: int = 9, variant: str = "uoctti",
                 bilinear: bool = False, keep_texture: bool = False):
        super().__init__()
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

    def _constants(self, height: int, width: int, device: torch.device, dtype: torch.dtype):
        """Per-size tables, cached per size, device and dtype.

        Returns ``(x_index, x_weight, y_matrix, table)``. Along x, interior pixel ``(y, x)``
        (N = (H−2)·(W−2) of them, row-major) adds to cells ``cx``, ``cx + 1`` of its row: ``x_index``
        ``(2, N)`` int64 holds ``y·w + cx`` and ``x_weight`` ``(2, 1, W−2)`` the weights. Along y,
        ``y_matrix`` ``(h, H−2)`` holds the weights of the interior rows. ``tables[4]`` ``(3·4, n)``:
        column k holds cos, sin and the index of k' = k−1, k, k+1, k+2 (mod n); ``tables[2]``
        ``(3·2, n)`` the same for k' = k, k+1.
        """
        key = (height, width, device, dtype)
        hit = self._cache.get(key)
        if hit is None:
            _, h, w = self.output_shape(height, width)
            cx, wx = _axis_weights(width, w, self.cell_size)
            cy, wy = _axis_weights(height, h, self.cell_size)
            x_index = (np.arange(height - 2)[None, :, None] * w + cx[:, None, :]).reshape(2, -1)
            y_matrix = np.zeros((h, height - 2))
            for k in range(2):
                np.add.at(y_matrix, (cy[k], np.arange(height - 2)), wy[k])
            n = self.num_orientations
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
            tables = {4: torch.as_tensor(table.reshape(12, n), dtype=dtype, device=device),
                      2: torch.as_tensor(table[:, 1:3].reshape(6, n), dtype=dtype, device=device)}
            hit = (torch.as_tensor(x_index, device=device),
                   torch.as_tensor(wx[:, None, :], dtype=dtype, device=device),
                   torch.as_tensor(y_matrix, dtype=dtype, device=device),
                   tables)
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
            return self._normalise(self._histograms(x.float())).to(x.dtype)
        return self._normalise(self._histograms(x))

    def _histograms(self, x: torch.Tensor) -> torch.Tensor:
        """Directed cell histograms before normalisation, ``(B, 2n, h, w)`` (gradient-magnitude units)."""
        B, C, H, W = x.shape
        _, h, w = self.output_shape(H, W)
        x_index, x_weight, y_matrix, table = self._constants(H, W, x.device, x.dtype)
        x = x.contiguous()  # the per-pixel stage assumes the standard layout (no-op if already)
        rows = _RowHistograms.apply(x, self.num_orientations, self.bilinear, w, x_index, x_weight, table)
        return torch.matmul(y_matrix, rows)  # pooling along y: (h, H-2) @ (B, 2n, H-2, w)

    def _normalise(self, hd: torch.Tensor) -> torch.Tensor:
        """Directed cell histograms ``(B, 2n, h, w)`` → the code ``(B, D, h, w)``."""
        n = self.num_orientations
        hu = hd[:, :n] + hd[:, n:]
        norm = (hu * hu).sum(1, keepdim=True)  # (B, 1, h, w)
        norm = F.pad(norm, (1, 1, 1, 1), mode="replicate")
        blocks = norm[..., :-1, :-1] + norm[..., :-1, 1:] + norm[..., 1:, :-1] + norm[..., 1:, 1:]
        f = torch.rsqrt(blocks + 1e-4)  # (B, 1, h+1, w+1): block (i, j) covers cells i-1..i, j-1..j
        # factors of the blocks containing each cell: UL, UR, LL, LR -> (B, 4, 1, h, w)
        fb = torch.stack([f[..., :-1, :-1], f[..., :-1, 1:], f[..., 1:, :-1], f[..., 1:, 1:]], dim=1)
        if self.variant == "dalaltriggs":
            out = (fb * hu.unsqueeze(1)).clamp_max(0.2)  # (B, 4, n, h, w)
            return out.flatten(1, 2)
        hh = torch.cat([hd, hu], dim=1).unsqueeze(1)  # (B, 1, 3n, h, w)
        clamped = (fb * hh).clamp_max(0.2)  # (B, 4, 3n, h, w)
        out = 0.5 * clamped.sum(1)
        if self.keep_texture:
            tex = clamped[:, :, 2 * n:].sum(2) * (1.0 / math.sqrt(18.0))
            out = torch.cat([out, tex], dim=1)
        return out

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
