"""Training pairs: which 5×5-cell windows of an image have their 56×56 patch inside it, the
(HOG window, grey patch) pair of a window, and the seeded pool of windows sampled from a set of
training images, whose joint vectors feed dictionary learning."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ...errors import PreimageError
from .geometry import (CELL_SIZE, GREY_DIM, HOG_DIM, HOG_WINDOW, PATCH_SIZE, as_grey, centre_normalise,
                       compute_hog)


def valid_window_range(height: int, width: int) -> tuple[range, range]:
    """Top-left cells ``(i, j)`` of the 5×5 windows whose 56×56 patch lies inside an
    ``height × width`` image (and whose cells exist in the HOG map)."""
    h, w = (height + CELL_SIZE // 2) // CELL_SIZE, (width + CELL_SIZE // 2) // CELL_SIZE
    imax = min((height - PATCH_SIZE) // CELL_SIZE + 1, h - HOG_WINDOW)
    jmax = min((width - PATCH_SIZE) // CELL_SIZE + 1, w - HOG_WINDOW)
    return range(1, imax + 1), range(1, jmax + 1)


def extract_pairs(grey: np.ndarray, hog: np.ndarray, positions: np.ndarray,
                  normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs of one image.

    Args:
        grey: ``(H, W)`` grey image on 0–255.
        hog: ``(27, h, w)`` its HOG.
        positions: ``(N, 2)`` int top-left cells ``(i, j)`` (see :func:`valid_window_range`).
        normalise: centre and L2-normalise each half (as training does).
    Returns:
        ``(N, 675)`` HOG windows ``hog[:, i:i+5, j:j+5]`` and ``(N, 3136)`` grey patches
        ``grey[8i-8 : 8i+48, 8j-8 : 8j+48]``, float32.
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    n = len(positions)
    hw = np.empty((n, HOG_DIM), dtype=np.float64)
    gp = np.empty((n, GREY_DIM), dtype=np.float64)
    for k, (i, j) in enumerate(positions):
        y, x = CELL_SIZE * (i - 1), CELL_SIZE * (j - 1)
        if y < 0 or x < 0 or y + PATCH_SIZE > grey.shape[0] or x + PATCH_SIZE > grey.shape[1]:
            raise ValueError(f"window at cell ({i}, {j}) has its patch outside the image")
        hw[k] = hog[:, i:i + HOG_WINDOW, j:j + HOG_WINDOW].reshape(-1)
        gp[k] = grey[y:y + PATCH_SIZE, x:x + PATCH_SIZE].reshape(-1)
    if normalise:
        hw, gp = centre_normalise(hw), centre_normalise(gp)
    return hw.astype(np.float32), gp.astype(np.float32)


def grey_array(item) -> np.ndarray:
    """A training image as an ``(H, W)`` float64 grey array on 0–255: a file (read as BT.601
    grey) or an ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)`` array/tensor on 0–255."""
    from ...io.images import load_image
    if isinstance(item, (str, Path)):
        t = load_image(item, mode="grey")
    else:
        t = torch.as_tensor(item)
        t = as_grey(t[None] if t.dim() == 2 else t)
    return t[0].double().numpy()


class WindowPool:
    """The windows sampled for training: ``windows_per_image`` per image (without replacement,
    drawn from ``rng`` in image order; images with fewer valid windows give all of theirs, images
    smaller than one patch none).

    Attributes:
        greys: ``(H_k, W_k)`` float32 grey images kept (0–255).
        hogs: ``(27, h_k, w_k)`` float32 their HOG.
        image: ``(N,)`` index into ``greys`` of each pooled window.
        cells: ``(N, 2)`` its top-left cell ``(i, j)``.
    """

    def __init__(self, items: Sequence, windows_per_image: int, rng: np.random.Generator,
                 progress: bool = True):
        from tqdm.auto import tqdm

        items = list(items)
        if not items:
            raise PreimageError("train_hoggle needs at least one training image")
        self.greys, self.hogs, image, cells = [], [], [], []
        for item in tqdm(items, desc="HOGgle training: HOG of the training images", unit="image",
                         disable=not progress, dynamic_ncols=True):
            g = grey_array(item)
            rows, cols = valid_window_range(*g.shape)
            if len(rows) == 0 or len(cols) == 0:
                continue
            k = len(self.greys)
            self.hogs.append(compute_hog(torch.from_numpy(g)[None].float()).numpy())
            self.greys.append(g.astype(np.float32))
            n_valid = len(rows) * len(cols)
            take = rng.choice(n_valid, size=min(windows_per_image, n_valid), replace=False)
            cells.append(np.stack([rows.start + take // len(cols), cols.start + take % len(cols)], 1))
            image.append(np.full(len(take), k))
        if not self.greys:
            raise PreimageError(f"no training image is at least {PATCH_SIZE}×{PATCH_SIZE} pixels")
        self.image, self.cells = np.concatenate(image), np.concatenate(cells)

    def __len__(self) -> int:
        return len(self.image)

    def joint(self, idx: np.ndarray) -> np.ndarray:
        """Centred, normalised joint vectors ``(len(idx), 675 + 3136)`` float32 of pool windows
        ``idx`` (each half of norm ≈ 1, so a joint vector has norm ≈ √2): the pairs of
        :func:`extract_pairs`, gathered per image from strided views of its HOG and grey arrays."""
        idx = np.asarray(idx, dtype=np.int64)
        hw = torch.empty(len(idx), HOG_DIM)
        gp = torch.empty(len(idx), GREY_DIM)
        images = self.image[idx]
        for img in np.unique(images):
            rows = np.flatnonzero(images == img)
            i, j = self.cells[idx[rows], 0], self.cells[idx[rows], 1]
            hog_view, grey_view = self._views(img)
            rows = torch.from_numpy(rows)
            hw[rows] = torch.from_numpy(hog_view[:, i, j].transpose(1, 0, 2, 3).reshape(len(rows), HOG_DIM))
            patches = grey_view[CELL_SIZE * (i - 1), CELL_SIZE * (j - 1)]
            gp[rows] = torch.from_numpy(patches.reshape(len(rows), GREY_DIM))
        return torch.cat([centre_normalise(hw), centre_normalise(gp)], 1).numpy()

    def _views(self, img: int) -> tuple[np.ndarray, np.ndarray]:
        """Strided (no-copy) views of image ``img``: ``(27, h−4, w−4, 5, 5)`` HOG windows by
        top-left cell and ``(H−55, W−55, 56, 56)`` grey patches by top-left pixel."""
        from numpy.lib.stride_tricks import sliding_window_view
        return (sliding_window_view(self.hogs[img], (HOG_WINDOW, HOG_WINDOW), axis=(1, 2)),
                sliding_window_view(self.greys[img], (PATCH_SIZE, PATCH_SIZE)))


class BatchStream:
    """Mini-batches of ``batch_size`` joint vectors: the pool is traversed in a random order drawn
    from ``rng`` (drawn now, at construction), reshuffled whenever a batch would run past its end."""

    def __init__(self, pool: WindowPool, rng: np.random.Generator, batch_size: int):
        self.pool, self.rng, self.batch_size = pool, rng, batch_size
        self.perm, self.cursor = rng.permutation(len(pool)), 0

    def next(self) -> np.ndarray:
        """The next ``(batch_size, 3811)`` float32 batch of :meth:`WindowPool.joint` vectors."""
        if self.cursor + self.batch_size > len(self.pool):
            self.perm, self.cursor = self.rng.permutation(len(self.pool)), 0
        idx = self.perm[self.cursor:self.cursor + self.batch_size]
        self.cursor += self.batch_size
        return self.pool.joint(idx)
