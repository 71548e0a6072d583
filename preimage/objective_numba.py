"""The priors of :mod:`preimage.objective` as compiled CPU loops (numba): one pass over the image
for each value and each gradient, instead of the 3–6 tensor operations (and temporaries) of the
torch forms, which is what they cost per iteration at the sizes inverted on a CPU.

:mod:`preimage.objective` uses them for CPU tensors when numba is installed; each function takes
C-contiguous numpy views ``(N, M)`` (one row per sample, float32 or float64) and writes into the
array it is given; sums are accumulated in float64.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def sixth_power(u, out):
    """``out`` ``(N,)`` = Σ u⁶ per row of ``u`` ``(N, M)``."""
    for i in range(u.shape[0]):
        total = 0.0
        for j in range(u.shape[1]):
            v2 = u[i, j] * u[i, j]
            total += v2 * v2 * v2
        out[i] = total


@numba.njit(cache=True, nogil=True)
def sixth_power_grad(u, scale, grad):
    """``grad`` ``(N, M)`` = 6·scale_i·u⁵ for ``u`` ``(N, M)``, ``scale`` ``(N,)``."""
    for i in range(u.shape[0]):
        s = scale[i] * 6
        for j in range(u.shape[1]):
            v = u[i, j]
            v2 = v * v
            grad[i, j] = v2 * v2 * v * s


@numba.njit(cache=True, nogil=True)
def squared_variation(u, out):
    """``out`` ``(N,)`` = Σ (forward differences)² along the last two axes of ``u`` ``(N, C, H, W)``
    (the last row and column add nothing)."""
    N, C, H, W = u.shape
    for i in range(N):
        total = 0.0
        for c in range(C):
            for y in range(H):
                for x in range(W - 1):
                    d = u[i, c, y, x + 1] - u[i, c, y, x]
                    total += d * d
            for y in range(H - 1):
                for x in range(W):
                    d = u[i, c, y + 1, x] - u[i, c, y, x]
                    total += d * d
        out[i] = total


@numba.njit(cache=True, nogil=True)
def squared_variation_grad(u, scale, grad):
    """``grad`` ``(N, C, H, W)`` = scale_i · d/du of :func:`squared_variation`:
    ``2·(d_left − d_right + d_up − d_down)`` with the differences that exist at each pixel."""
    N, C, H, W = u.shape
    for i in range(N):
        s = scale[i] * 2
        for c in range(C):
            for y in range(H):
                for x in range(W):
                    v = u[i, c, y, x]
                    g = v - v
                    if x > 0:
                        g += v - u[i, c, y, x - 1]
                    if x < W - 1:
                        g += v - u[i, c, y, x + 1]
                    if y > 0:
                        g += v - u[i, c, y - 1, x]
                    if y < H - 1:
                        g += v - u[i, c, y + 1, x]
                    grad[i, c, y, x] = g * s
