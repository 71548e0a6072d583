"""HOGgle inversion: every 5×5-cell window of the (zero-padded) HOG map is centred, normalised and
coded by a non-negative lasso against the HOG half of the atoms; the grey half reconstructs a
56×56 patch per window, and the patches are blended by a Gaussian-weighted average (σ = 9 px, as
ihog), cropped to the image and min–max stretched to [0, 255].

The default padding of 4 cells gives every window that holds at least one real cell (ihog pads by
5, which adds a ring of all-zero windows). Unlike ihog, which divides the accumulated patches by
the overlap *count* (so its Gaussian tapers rather than weights), the accumulation here is a
Gaussian-weighted average.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import InvalidTargetError
from ...io.images import stretch
from ._threads import DEFAULT_THREADS, torch_threads
from .dictionary import HoggleDictionary
from .geometry import (CELL_SIZE, GREY_DIM, HOG_CHANNELS, HOG_DIM, HOG_WINDOW, PATCH_SIZE, as_grey,
                       centre_normalise, compute_hog)
from .lasso import ALGORITHMS, positive_codes

SIGMA = 9.0              #: Gaussian blending window, pixels (ihog's value)
DEFAULT_PAD = 4          #: HOG-map zero padding at inversion, cells


def gaussian_window(size: int = PATCH_SIZE, sigma: float = SIGMA) -> np.ndarray:
    """``(size, size)`` float64 Gaussian centred on the patch (peak 1), as MATLAB's ``fspecial``."""
    r = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(r * r) / (2.0 * sigma * sigma))
    return np.outer(g, g)


def assemble_patches(patches: torch.Tensor, n_rows: int, n_cols: int, pad: int, image_size: tuple[int, int],
                     sigma: float = SIGMA) -> torch.Tensor:
    """Blend per-window patches into an image.

    Args:
        patches: ``(n_rows·n_cols, 56, 56)`` float64, window ``a·n_cols + b`` being the one whose
            top-left cell is ``(a − pad, b − pad)`` in the unpadded HOG map; its patch covers
            image pixels ``[8(a − pad − 1), 8(a − pad − 1) + 56)`` (rows), likewise columns.
        image_size: ``(H, W)`` of the output.
    Returns:
        ``(H, W)`` Gaussian-weighted average of the patches (not stretched).
    """
    g = torch.from_numpy(gaussian_window(PATCH_SIZE, sigma)).to(patches.dtype)
    out_h = CELL_SIZE * (n_rows - 1) + PATCH_SIZE
    out_w = CELL_SIZE * (n_cols - 1) + PATCH_SIZE
    cols = (patches * g).reshape(n_rows * n_cols, GREY_DIM).T[None]            # (1, 3136, L)
    acc = F.fold(cols, (out_h, out_w), kernel_size=PATCH_SIZE, stride=CELL_SIZE)[0, 0]
    wts = F.fold(g.reshape(GREY_DIM, 1).expand(GREY_DIM, n_rows * n_cols)[None], (out_h, out_w),
                 kernel_size=PATCH_SIZE, stride=CELL_SIZE)[0, 0]
    img = acc / wts.clamp_min(1e-30)
    off = CELL_SIZE * (pad + 1)           # canvas pixel `off` is image pixel 0
    H, W = image_size
    if off + H > out_h or off + W > out_w:
        raise ValueError(f"HOG map too small for a {H}×{W} image")
    return img[off:off + H, off:off + W]


def invert_hoggle(hog_code: torch.Tensor, dictionary: HoggleDictionary,
                  image_size: tuple[int, int] | None = None, *, pad: int = DEFAULT_PAD,
                  sigma: float = SIGMA, alpha: float | None = None, algorithm: str = "admm",
                  lasso_iter: int = 20, threads: int | None = DEFAULT_THREADS) -> torch.Tensor:
    """Reconstruct grey images from HOG codes with a paired dictionary.

    Args:
        hog_code: ``(27, h, w)`` or ``(B, 27, h, w)`` HOG (the paper's 27 UoCTTI channels, cell 8).
        dictionary: a :class:`HoggleDictionary`.
        image_size: ``(H, W)`` of the output; default ``(8h, 8w)``. ``(H + 4) // 8 == h`` gives
            the geometry the code came from.
        pad: zero cells added around the HOG map (4: every window holding at least one real cell).
        sigma: Gaussian blending window, pixels.
        alpha: lasso λ (default: the dictionary's training value).
        algorithm: ``"admm"`` (default: batched ADMM, ``lasso_iter`` iterations), or
            ``"lasso_cd"`` / ``"lasso_lars"`` (exact, sklearn ``sparse_encode(positive=True)``,
            ≈ 5–10× slower); see :func:`~preimage.baselines.hoggle.lasso.positive_codes`.
        lasso_iter: ADMM iterations (``"admm"``).
        threads: torch threads (see :func:`~preimage.baselines.hoggle._threads.torch_threads`;
            ``None``: unchanged).
    Returns:
        ``(1, H, W)`` (or ``(B, 1, H, W)``) float32, min–max stretched to [0, 255].
    """
    code = _checked_code(hog_code, algorithm)
    B, _, h, w = code.shape
    H, W = (CELL_SIZE * h, CELL_SIZE * w) if image_size is None else (int(image_size[0]), int(image_size[1]))
    if pad < 0 or h + 2 * pad < HOG_WINDOW or w + 2 * pad < HOG_WINDOW:
        raise ValueError(f"pad={pad} leaves the {h}×{w} HOG map smaller than one "
                         f"{HOG_WINDOW}×{HOG_WINDOW} window")
    n_rows, n_cols = h + 2 * pad - HOG_WINDOW + 1, w + 2 * pad - HOG_WINDOW + 1
    lam = dictionary.alpha if alpha is None else float(alpha)
    with torch_threads(threads):
        codes = window_codes(code, dictionary, pad, lam, algorithm=algorithm, lasso_iter=lasso_iter)
        patches = (codes @ torch.from_numpy(dictionary.grey_atoms)).double()
        patches = patches.reshape(B, n_rows * n_cols, PATCH_SIZE, PATCH_SIZE)
        out = torch.stack([assemble_patches(patches[b], n_rows, n_cols, pad, (H, W), sigma) for b in range(B)])
        out = stretch(out[:, None].float())
    return out if torch.as_tensor(hog_code).dim() == 4 else out[0]


def _checked_code(hog_code: torch.Tensor, algorithm: str) -> torch.Tensor:
    """``hog_code`` as ``(B, 27, h, w)``; :class:`InvalidTargetError` for a wrong shape or
    non-finite values, ``ValueError`` for an unknown ``algorithm``."""
    code = torch.as_tensor(hog_code)
    code = code if code.dim() == 4 else code[None]
    if code.dim() != 4 or code.shape[1] != HOG_CHANNELS:
        raise InvalidTargetError(f"HOGgle needs a (27, h, w) or (B, 27, h, w) HOG code, "
                                 f"got {tuple(hog_code.shape)}")
    if not torch.isfinite(code).all():
        raise InvalidTargetError("the HOG code contains NaN or Inf")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be 'admm', 'lasso_cd' or 'lasso_lars', not {algorithm!r}")
    return code


def window_codes(code: torch.Tensor, dictionary: HoggleDictionary, pad: int, alpha: float, *,
                 algorithm: str = "admm", lasso_iter: int = 20) -> torch.Tensor:
    """Lasso codes of every 5×5 window (stride 1 cell) of HOG maps zero-padded by ``pad`` cells.

    Args:
        code: ``(B, 27, h, w)`` HOG.
    Returns:
        ``(B·L, K)`` float32 non-negative codes, ``L = (h + 2·pad − 4)·(w + 2·pad − 4)`` windows
        per image in row-major order; windows that are all zero get the zero code.
    """
    padded = F.pad(code.detach().float().cpu(), (pad, pad, pad, pad))
    windows = F.unfold(padded, HOG_WINDOW)                   # (B, 675, L), channel-major (27, 5, 5)
    X = centre_normalise(windows.transpose(1, 2).reshape(-1, HOG_DIM))
    live = X.abs().sum(1) > 0                                # all-zero windows code to 0
    codes = torch.zeros(X.shape[0], dictionary.n_atoms)
    if bool(live.any()):
        setup = dictionary.lasso_setup() if algorithm == "admm" else None
        codes[live] = positive_codes(X[live], dictionary.hog_atoms, alpha, algorithm=algorithm,
                                     n_iter=lasso_iter, setup=setup)
    return codes


def hoggle_invert_image(image: torch.Tensor, dictionary: HoggleDictionary, **kwargs) -> torch.Tensor:
    """HOGgle reconstruction of an image from its HOG.

    Args:
        image: ``(C, H, W)`` or ``(B, C, H, W)`` on 0–255, C = 1 or 3 (colour → BT.601 grey,
            :func:`preimage.io.images.to_grey`).
        dictionary: a :class:`HoggleDictionary`.
        **kwargs: passed to :func:`invert_hoggle` (``pad``, ``sigma``, ``alpha``, ``algorithm``,
            ``lasso_iter``, ``threads``).
    Returns:
        ``(1, H, W)`` (or ``(B, 1, H, W)``) on 0–255 (min–max stretched).
    """
    image = torch.as_tensor(image)
    with torch_threads(kwargs.get("threads", DEFAULT_THREADS)):
        grey = as_grey(image.detach().cpu() if image.dim() == 4 else image.detach().cpu()[None])
        hog = compute_hog(grey)
        out = invert_hoggle(hog, dictionary, tuple(grey.shape[-2:]), **kwargs)
    return out if image.dim() == 4 else out[0]
