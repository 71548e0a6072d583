"""HOG's per-pixel stage as compiled CPU loops (numba): one pass over the pixels forward, one back.

:class:`~preimage.representations.hog.HOG` uses these on CPU tensors when numba is installed
(``kernel="auto"``); they compute what :class:`~preimage.representations.hog._CellHistograms`
computes with torch operations — VLFeat's gradients, orientation assignment (hard, or HOGb's
bilinear one) and bilinear spatial binning — but visit each pixel once instead of once per tensor
operation (about 40 of them), which is what the torch version's time goes to on a CPU.

The orientation is decided the way VLFeat decides it, by looping over the n orientations and
keeping the first largest ``|g·u_k|`` (float32 arithmetic for float32 input, with VLFeat's rounded
``cos``/``sin``), so no angle and no tie-breaking margin is needed. The backward pass recomputes
the per-pixel quantities from the image instead of saving them (cheaper than reading them back).

Arrays (all C-contiguous numpy views of the torch tensors, one dtype, float32 or float64):

* ``x`` ``(B, C, H, W)`` the image batch on 0–255, C = 1 or 3;
* ``cos``, ``sin`` ``(n,)`` the undirected orientations; ``consts`` ``(2,)``: ``n/π`` and 1e-10;
* ``first_y`` ``(H−2,)``, ``first_x`` ``(W−2,)`` int64: each interior pixel's first cell in the
  zero-padded grid (0 … h, 0 … w; cell (i, j) of the grid sits at (i+1, j+1));
* ``wy`` ``(2, H−2)``, ``wx`` ``(2, W−2)``: the bilinear weights of the first and the next cell
  along each axis;
* ``cells`` ``(B, 2n, h+2, w+2)``: the padded directed histograms (forward: zeros in, sums out;
  backward: the gradient with respect to them, zero on the padding).
"""

from __future__ import annotations

import math

import numba
import numpy as np


_INLINE = dict(cache=True, nogil=True, inline="always")


@numba.njit(**_INLINE)
def _gradient_row(x, b, y, C, gx, gy, n2, win):
    """Row ``y`` (1 … H−2) of sample ``b``: central differences (no ½) of the channel with the
    largest squared gradient (the first on ties) into ``gx``, ``gy``, ``n2``, ``win`` ``(W−2,)``
    (``n2`` NaN where a channel's is, as the torch form's maximum).
    ``C`` is a literal 1 or 3 at the call, so that the channel loop unrolls and the row vectorises."""
    for j in range(x.shape[3] - 2):
        dx = x[b, 0, y, j + 2] - x[b, 0, y, j]
        dy = x[b, 0, y + 1, j + 1] - x[b, 0, y - 1, j + 1]
        best = dx * dx + dy * dy
        w = 0
        for c in range(1, C):
            ex = x[b, c, y, j + 2] - x[b, c, y, j]
            ey = x[b, c, y + 1, j + 1] - x[b, c, y - 1, j + 1]
            e2 = ex * ex + ey * ey
            better = e2 > best
            dx = ex if better else dx
            dy = ey if better else dy
            w = c if better else w
            best = e2 if (better or e2 != e2) else best  # a NaN anywhere makes the magnitude NaN
        gx[j], gy[j], n2[j], win[j] = dx, dy, best, w


@numba.njit(**_INLINE)
def _orientation_row(gx, gy, cos, sin, N, best, score, bin0):
    """VLFeat's hard assignment along a row: the first orientation k0 of the ``N`` (a literal at
    the call, so that the loop unrolls; ``cos``, ``sin`` arrays or tuples) with the largest
    ``|g·u_k|``, into ``best`` (k0),
    ``score`` (``g·u_k0``) and ``bin0`` (k0, + N where the score is negative)."""
    for j in range(gx.shape[0]):
        s0 = gx[j] * cos[0] + gy[j] * sin[0]
        k0 = 0
        for k in range(1, N):
            s = gx[j] * cos[k] + gy[j] * sin[k]
            better = abs(s) > abs(s0)
            s0 = s if better else s0
            k0 = k if better else k0
        best[j], score[j] = k0, s0
        bin0[j] = k0 + N if s0 < 0 else k0


@numba.njit(**_INLINE)
def _runner_up_row(gx, gy, mag, cos, sin, consts, best, score, bin1, w1, tr):
    """HOGb along a row: the runner-up k1 (the better of k0 ± 1, the lower index on ties) into
    ``bin1`` (+ n where its score is negative) and ``tr`` (1: k1 = k0 + 1), and VLFeat's weight
    ``w1 = acos(min(|s0| / max(|g|, 1e-10), 1)) · n/π``."""
    n = cos.shape[0]
    one = consts[0] / consts[0]
    for j in range(gx.shape[0]):
        kl, kr = (best[j] + n - 1) % n, (best[j] + 1) % n
        sl = gx[j] * cos[kl] + gy[j] * sin[kl]
        sr = gx[j] * cos[kr] + gy[j] * sin[kr]
        right = abs(sr) > abs(sl) or (abs(sr) == abs(sl) and kr < kl)
        s1, k1 = (sr, kr) if right else (sl, kl)
        bin1[j] = k1 + n if s1 < 0 else k1
        tr[j] = 1 if right else 0
        w1[j] = math.acos(min(abs(score[j]) / max(mag[j], consts[1]), one)) * consts[0]


@numba.njit(**_INLINE)
def _pixels_row(x, b, y, cos, sin, consts, bilinear, buf, ibuf):
    """Everything per pixel of row ``y``: ``buf`` rows 0–4 = gx, gy, |g|, s0, w1; ``ibuf`` rows
    0–4 = winning channel, k0, bin0, bin1, tr (HOGb's only with ``bilinear``)."""
    if x.shape[1] == 1:
        _gradient_row(x, b, y, 1, buf[0], buf[1], buf[2], ibuf[0])
    else:
        _gradient_row(x, b, y, 3, buf[0], buf[1], buf[2], ibuf[0])
    for j in range(buf.shape[1]):
        buf[2, j] = math.sqrt(buf[2, j])
    if cos.shape[0] == 9:  # the default: the orientations in registers, the loop unrolled
        cs = (cos[0], cos[1], cos[2], cos[3], cos[4], cos[5], cos[6], cos[7], cos[8])
        sn = (sin[0], sin[1], sin[2], sin[3], sin[4], sin[5], sin[6], sin[7], sin[8])
        _orientation_row(buf[0], buf[1], cs, sn, 9, ibuf[1], buf[3], ibuf[2])
    else:
        _orientation_row(buf[0], buf[1], cos, sin, cos.shape[0], ibuf[1], buf[3], ibuf[2])
    if bilinear:
        _runner_up_row(buf[0], buf[1], buf[2], cos, sin, consts, ibuf[1], buf[3], ibuf[3], buf[4], ibuf[4])


@numba.njit(cache=True, nogil=True)
def cells_forward(x, cos, sin, consts, first_y, first_x, wy, wx, bilinear, cells, assign, w1s):
    """Scatter every interior pixel's gradient magnitude into ``cells`` (see the module): along
    its row into two cells (``wx``), then each row's histograms into two cell rows (``wy``). Keeps
    each pixel's assignment for the backward pass: ``assign`` ``(3, B, H−2, W−2)`` int16 (bin0,
    and for HOGb bin1 and tr; ``(1, B, …)`` without it), ``w1s`` ``(B, H−2, W−2)`` (HOGb's w1)."""
    B, _, H, W = x.shape
    buf = np.zeros((5, W - 2), x.dtype)
    ibuf = np.zeros((5, W - 2), np.int32)
    span = cells.shape[3]
    flat = np.zeros(cells.shape[1] * span, x.dtype)  # row i's x-pooled histograms, (2n, w+2) flat
    row = flat.reshape(cells.shape[1], span)
    one = consts[0] / consts[0]
    for b in range(B):
        for i in range(H - 2):
            _pixels_row(x, b, i + 1, cos, sin, consts, bilinear, buf, ibuf)
            flat[:] = 0
            for j in range(W - 2):
                mag, w1, k = buf[2, j], buf[4, j], ibuf[2, j]
                src, at = (mag * (one - w1) if bilinear else mag), k * span + first_x[j]
                flat[at] += src * wx[0, j]
                flat[at + 1] += src * wx[1, j]
                assign[0, b, i, j] = k
                if bilinear:
                    src, k = mag * w1, ibuf[3, j]
                    at = k * span + first_x[j]
                    flat[at] += src * wx[0, j]
                    flat[at + 1] += src * wx[1, j]
                    assign[1, b, i, j], assign[2, b, i, j], w1s[b, i, j] = k, ibuf[4, j], w1
            ry = first_y[i]
            for k in range(row.shape[0]):
                for c in range(span):
                    cells[b, k, ry, c] += row[k, c] * wy[0, i]
                    cells[b, k, ry + 1, c] += row[k, c] * wy[1, i]


@numba.njit(cache=True, nogil=True)
def cells_backward(x, consts, first_y, first_x, wy, wx, bilinear, assign, w1s, cells, grad):
    """``grad`` ``(B, C, H, W)`` (zeros in) += d loss / d x, for ``cells`` = d loss / d histograms
    and the assignments :func:`cells_forward` kept."""
    B, C, H, W = x.shape
    buf = np.zeros((5, W - 2), x.dtype)
    ibuf = np.zeros((1, W - 2), np.int32)
    span = cells.shape[3]
    flat = np.zeros(cells.shape[1] * span, x.dtype)  # (2n, w+2) flat
    row = flat.reshape(cells.shape[1], span)
    zero = consts[0] - consts[0]
    one = consts[0] / consts[0]
    for b in range(B):
        for i in range(H - 2):
            y, ry = i + 1, first_y[i]
            for k in range(row.shape[0]):  # d loss / d (a unit in row i's x-pooled histogram)
                for c in range(row.shape[1]):
                    row[k, c] = cells[b, k, ry, c] * wy[0, i] + cells[b, k, ry + 1, c] * wy[1, i]
            if C == 1:
                _gradient_row(x, b, y, 1, buf[0], buf[1], buf[2], ibuf[0])
            else:
                _gradient_row(x, b, y, 3, buf[0], buf[1], buf[2], ibuf[0])
            for j in range(W - 2):
                gx, gy, mag = buf[0, j], buf[1, j], math.sqrt(buf[2, j])
                if not mag > zero:
                    continue  # no gradient: no derivative (as the torch version)
                at = assign[0, b, i, j] * span + first_x[j]
                g0 = flat[at] * wx[0, j] + flat[at + 1] * wx[1, j]
                inv = one / mag
                if bilinear:
                    at = assign[1, b, i, j] * span + first_x[j]
                    diff = flat[at] * wx[0, j] + flat[at + 1] * wx[1, j] - g0
                    a = (g0 + w1s[b, i, j] * diff) * inv
                    rot = diff * (consts[0] if assign[2, b, i, j] else -consts[0]) * inv  # d loss/d angle / |g|
                    ggx, ggy = a * gx - rot * gy, a * gy + rot * gx
                else:
                    a = g0 * inv
                    ggx, ggy = a * gx, a * gy
                c, xx = ibuf[0, j], j + 1
                grad[b, c, y, xx + 1] += ggx
                grad[b, c, y, xx - 1] -= ggx
                grad[b, c, y + 1, xx] += ggy
                grad[b, c, y - 1, xx] -= ggy


@numba.njit(cache=True, nogil=True)
def _block_factors(cells, b, n, norm, cn, f):
    """UoCTTI's block factors of sample ``b``: the cell norms ``cn`` ``(h, w)`` (‖h_u‖², h_u the
    undirected histogram) and ``f`` ``(h+1, w+1)``, block (i, j) covering cells i−1 … i,
    j−1 … j, ``1/√(Σ cn + 1e-4)`` with the cell norms replicated beyond the border
    (``norm[2]`` = 1e-4, ``norm[3]`` = 1)."""
    h, w = cn.shape
    eps, one = norm[2], norm[3]
    for i in range(h):
        for j in range(w):
            total = eps - eps
            for k in range(n):
                u = cells[b, k, i + 1, j + 1] + cells[b, k + n, i + 1, j + 1]
                total += u * u
            cn[i, j] = total
    for i in range(h + 1):
        i0, i1 = max(i - 1, 0), min(i, h - 1)
        for j in range(w + 1):
            j0, j1 = max(j - 1, 0), min(j, w - 1)
            f[i, j] = one / math.sqrt(cn[i0, j0] + cn[i0, j1] + cn[i1, j0] + cn[i1, j1] + eps)


@numba.njit(cache=True, nogil=True)
def uoctti_forward(cells, norm, out):
    """The paper's HOG from the padded directed histograms ``cells`` ``(B, 2n, h+2, w+2)``:
    ``out`` ``(B, 3n, h, w)``, channel c ``0.5·Σ_blocks min(0.2, f_b·h_c)`` (h_c directed for
    c < 2n, undirected ``h_{c−2n} + h_{c−n}`` above); ``norm`` ``(4,)``: 0.2, 0.5, 1e-4, 1."""
    B, n2 = cells.shape[0], cells.shape[1]
    n, h, w = n2 // 2, cells.shape[2] - 2, cells.shape[3] - 2
    f = np.empty((h + 1, w + 1), cells.dtype)
    cn = np.empty((h, w), cells.dtype)
    cap, half = norm[0], norm[1]
    for b in range(B):
        _block_factors(cells, b, n, norm, cn, f)
        for c in range(3 * n):
            for i in range(h):
                for j in range(w):
                    v = cells[b, c, i + 1, j + 1] if c < n2 else (cells[b, c - n2, i + 1, j + 1]
                                                                 + cells[b, c - n, i + 1, j + 1])
                    out[b, c, i, j] = (min(f[i, j] * v, cap) + min(f[i, j + 1] * v, cap)
                                       + min(f[i + 1, j] * v, cap) + min(f[i + 1, j + 1] * v, cap)) * half


@numba.njit(cache=True, nogil=True)
def uoctti_backward(cells, norm, grad_out, grad_cells):
    """``grad_cells`` ``(B, 2n, h+2, w+2)`` (zeros in) = d loss / d ``cells`` for ``grad_out``
    ``(B, 3n, h, w)`` = d loss / d :func:`uoctti_forward`'s output (the clamp passes the gradient
    where ``f_b·h ≤ 0.2``; the padding gets none)."""
    B, n2 = cells.shape[0], cells.shape[1]
    n, h, w = n2 // 2, cells.shape[2] - 2, cells.shape[3] - 2
    f = np.empty((h + 1, w + 1), cells.dtype)
    gf = np.empty((h + 1, w + 1), cells.dtype)
    part = np.empty((4, h, w), cells.dtype)  # d loss / d f of each cell's UL, UR, LL, LR block
    cn = np.empty((h, w), cells.dtype)
    gcn = np.empty((h, w), cells.dtype)
    cap, half = norm[0], norm[1]
    for b in range(B):
        _block_factors(cells, b, n, norm, cn, f)
        part[:] = 0
        for c in range(3 * n):  # channel c reads directed bin lo (and, undirected, bin hi too)
            lo, hi = (c, c) if c < n2 else (c - n2, c - n)
            for i in range(h):
                for j in range(w):  # no dependence between the j's: vectorisable
                    v = cells[b, lo, i + 1, j + 1]
                    if c >= n2:
                        v += cells[b, hi, i + 1, j + 1]
                    g = grad_out[b, c, i, j] * half
                    zero = g - g
                    f00, f01, f10, f11 = f[i, j], f[i, j + 1], f[i + 1, j], f[i + 1, j + 1]
                    p00, p01, p10, p11 = f00 * v <= cap, f01 * v <= cap, f10 * v <= cap, f11 * v <= cap
                    gv = ((f00 if p00 else zero) + (f01 if p01 else zero) + (f10 if p10 else zero)
                          + (f11 if p11 else zero)) * g
                    gvv = g * v
                    part[0, i, j] += gvv if p00 else zero
                    part[1, i, j] += gvv if p01 else zero
                    part[2, i, j] += gvv if p10 else zero
                    part[3, i, j] += gvv if p11 else zero
                    grad_cells[b, lo, i + 1, j + 1] += gv
                    if c >= n2:
                        grad_cells[b, hi, i + 1, j + 1] += gv
        gf[:] = 0
        for i in range(h):
            for j in range(w):
                gf[i, j] += part[0, i, j]
                gf[i, j + 1] += part[1, i, j]
                gf[i + 1, j] += part[2, i, j]
                gf[i + 1, j + 1] += part[3, i, j]
        # f = (s + 1e-4)^(-1/2): d f / d s = -f³/2; s sums the replicated norms of 4 cells
        gcn[:] = 0
        for i in range(h + 1):
            i0, i1 = max(i - 1, 0), min(i, h - 1)
            for j in range(w + 1):
                j0, j1 = max(j - 1, 0), min(j, w - 1)
                gs = -gf[i, j] * f[i, j] * f[i, j] * f[i, j] * half
                gcn[i0, j0] += gs
                gcn[i0, j1] += gs
                gcn[i1, j0] += gs
                gcn[i1, j1] += gs
        for i in range(h):  # cn = Σ_k (h_k + h_{k+n})²
            for j in range(w):
                g2 = gcn[i, j] + gcn[i, j]
                for k in range(n):
                    u = cells[b, k, i + 1, j + 1] + cells[b, k + n, i + 1, j + 1]
                    grad_cells[b, k, i + 1, j + 1] += u * g2
                    grad_cells[b, k + n, i + 1, j + 1] += u * g2
