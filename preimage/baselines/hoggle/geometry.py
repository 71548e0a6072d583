"""HOGgle's geometry: HOG cells, 5×5-cell windows and their 56×56 grey patches, the paper's HOG of
a grey image, and the centring/normalisation applied to both halves of a window.

With VLFeat's geometry HOG cell ``b`` covers pixels ``[8b, 8b + 8)``; the window whose top-left
cell is ``(i, j)`` holds cells ``[i, i + 5) × [j, j + 5)`` and pairs with the grey patch
``[8i − 8, 8i + 48) × [8j − 8, 8j + 48)`` (the 7×7 cells around it: one cell of margin each side).
"""

from __future__ import annotations

import numpy as np
import torch

from ...io.images import to_grey

CELL_SIZE = 8            #: pixels per HOG cell
HOG_CHANNELS = 27        #: the paper's HOG: 18 directed + 9 undirected UoCTTI channels
HOG_WINDOW = 5           #: HOG window side, in cells
PATCH_CELLS = HOG_WINDOW + 2   #: grey patch side, in cells (one cell of margin each side)
PATCH_SIZE = PATCH_CELLS * CELL_SIZE   #: 56 px
HOG_DIM = HOG_CHANNELS * HOG_WINDOW * HOG_WINDOW   #: 675
GREY_DIM = PATCH_SIZE * PATCH_SIZE                 #: 3136
EPS = 1e-8               #: added to squared norms before dividing

_HOG_MODULE = None


def _hog_module():
    """The paper's HOG (one shared instance: it caches its per-size pooling matrices)."""
    global _HOG_MODULE
    if _HOG_MODULE is None:
        from ...representations.hog import HOG
        _HOG_MODULE = HOG(cell_size=CELL_SIZE, num_orientations=9, variant="uoctti", bilinear=False,
                          keep_texture=False)
    return _HOG_MODULE


@torch.no_grad()
def compute_hog(grey: torch.Tensor) -> torch.Tensor:
    """The paper's HOG of grey images: ``(B, 1, H, W)`` or ``(1, H, W)`` on 0–255 →
    ``(B, 27, h, w)`` or ``(27, h, w)``, ``h = (H + 4) // 8`` (float32)."""
    x = grey if grey.dim() == 4 else grey[None]
    out = _hog_module()(x.float())
    return out if grey.dim() == 4 else out[0]


def as_grey(image: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` or ``(B, C, H, W)`` on 0–255, C ∈ {1, 3} → the same with C = 1 (BT.601 luma,
    :func:`preimage.io.images.to_grey`; grey input is returned as it is)."""
    if image.dim() not in (3, 4) or image.shape[-3] not in (1, 3):
        raise ValueError(f"expected (C, H, W) or (B, C, H, W) with 1 or 3 channels, got {tuple(image.shape)}")
    return to_grey(image)


def centre_normalise(x):
    """Rows of ``(N, D)`` (numpy array or torch tensor): subtract the row mean, divide by
    ``sqrt(‖row‖² + 1e-8)`` (all-zero rows stay 0). Returns the same type and dtype."""
    if isinstance(x, torch.Tensor):
        x = x - x.mean(1, keepdim=True)
        return x / (x.pow(2).sum(1, keepdim=True) + EPS).sqrt()
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.sqrt((x * x).sum(axis=1, keepdims=True) + EPS)
