"""The priors of :mod:`preimage.objective` as compiled CPU loops (numba): one pass over the image
for each value and each gradient, instead of the 3–6 tensor operations (and temporaries) of the
torch forms, which is what they cost per iteration at the sizes inverted on a CPU.

:mod:`preimage.objective` uses them for CPU tensors when numba is installed (:mod:`preimage.compiled`);
each function takes C-contiguous numpy views (float32 or float64) and writes into the array it is
given. Sums are accumulated in float64, reassociated (vectorised) but never assuming finite
values, so a NaN or an infinity still reaches the energy.
"""

from __future__ import annotations

import numba

#: Sums may be reordered (vectorised); NaN and infinities keep their meaning.
_SUM = dict(cache=True, nogil=True, fastmath={"reassoc", "nsz"})


@numba.njit(**_SUM)
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


@numba.njit(**_SUM)
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
                if y + 1 < H:
                    for x in range(W):
                        d = u[i, c, y + 1, x] - u[i, c, y, x]
                        total += d * d
        out[i] = total


@numba.njit(cache=True, nogil=True)
def squared_variation_grad(u, scale, grad):
    """``grad`` ``(N, C, H, W)`` = scale_i · d/du of :func:`squared_variation`:
    ``2·(Σ over the pixel's existing neighbours of (u − neighbour))``."""
    N, C, H, W = u.shape
    for i in range(N):
        s = scale[i] * 2
        for c in range(C):
            for y in range(H):
                for x in range(W):  # horizontal neighbours
                    v = u[i, c, y, x]
                    g = v - v
                    if x > 0:
                        g += v - u[i, c, y, x - 1]
                    if x < W - 1:
                        g += v - u[i, c, y, x + 1]
                    grad[i, c, y, x] = g
                if y > 0:
                    for x in range(W):
                        grad[i, c, y, x] += u[i, c, y, x] - u[i, c, y - 1, x]
                if y < H - 1:
                    for x in range(W):
                        grad[i, c, y, x] += u[i, c, y, x] - u[i, c, y + 1, x]
                for x in range(W):
                    grad[i, c, y, x] *= s
