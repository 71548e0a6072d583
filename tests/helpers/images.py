"""Synthetic test images, one builder per kind of picture, and the evaluation images (or a skip).

Every builder is deterministic (seeded) and states its shape, dtype and value range. Tests that
need the same kind of picture with other parameters pass them; a builder's defaults reproduce
the picture the first test using it was written with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
import torch

from preimage import data


def step_edge(size: int = 64, vertical: bool = True, low: float = 0.0, high: float = 255.0) -> torch.Tensor:
    """A sharp step edge through the centre: ``(1, 1, size, size)`` float32, ``low`` left of
    (``vertical``) or above (horizontal) the edge, ``high`` from column/row ``size // 2`` on."""
    x = torch.full((1, 1, size, size), float(low))
    if vertical:
        x[..., size // 2:] = high
    else:
        x[..., size // 2:, :] = high
    return x


def seeded_noise(shape: Sequence[int], seed: int, *, scale: float = 255.0, offset: float = 0.0,
                 step: float = 0.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Uniform noise from a private generator seeded with ``seed``: ``rand(shape)·scale + offset``
    (values in ``[offset, offset + scale)``), plus ``step`` on the right half (columns
    ``W // 2`` on: a vertical edge). Contiguous, ``dtype``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(*shape, generator=g, dtype=dtype) * scale
    if offset:
        x = x + offset
    if step:
        x[..., :, shape[-1] // 2:] += step
    return x.contiguous()


def waves(h: int, w: int, amplitude: float, period_x: float, period_y: float, mean: float = 128.0
          ) -> np.ndarray:
    """A smooth pattern with gradients of every orientation:
    ``mean + amplitude·sin(x / period_x)·cos(y / period_y)``, ``(h, w)`` float64."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return mean + amplitude * np.sin(x / period_x) * np.cos(y / period_y)


def noisy_ramp(seed: int, h: int = 40, w: int = 40, noise: float = 30.0) -> np.ndarray:
    """A left-to-right ramp 0 → 255 plus Gaussian noise (std ``noise``), clipped:
    ``(h, w, 3)`` uint8."""
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    return np.clip(base + rng.normal(0, noise, (h, w, 3)), 0, 255).astype(np.uint8)


def blurred_noise(sizes: Sequence[tuple[int, int]], seed: int = 0) -> list[np.ndarray]:
    """Smooth random colour pictures (uniform noise on a grid 8× coarser, bicubically enlarged,
    so HOG has structure), one per ``(h, w)`` of ``sizes``, drawn in turn from one generator:
    ``(h, w, 3)`` uint8 each."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        small = rng.uniform(0, 255, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)))
    return out


def textured(rng: np.random.Generator, size: int = 128) -> torch.Tensor:
    """A random picture on 0–255 with structure everywhere (as natural images have): smooth noise
    texture, Gaussian blobs and soft oriented edges. ``(1, size, size)`` float32."""
    from scipy.ndimage import gaussian_filter
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    img = gaussian_filter(rng.standard_normal((size, size)), rng.uniform(2, 4))
    img = 128 + img * (25 / img.std())
    for _ in range(rng.integers(3, 6)):
        cy, cx = rng.uniform(0, size, 2)
        s = rng.uniform(5, 14)
        img += rng.choice([-1, 1]) * rng.uniform(40, 90) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * s * s))
    for _ in range(rng.integers(1, 3)):
        th = rng.uniform(0, np.pi)
        off = rng.uniform(-size / 4, size / 4)
        d = (x - size / 2) * np.cos(th) + (y - size / 2) * np.sin(th) - off
        img += rng.uniform(30, 70) * np.tanh(d / rng.uniform(1, 3))
    return torch.from_numpy(np.clip(img, 0, 255))[None].float()


def eval_image_paths() -> list[Path]:
    """The shared evaluation images (sorted), or skip the test saying what is missing."""
    if data.shared_dir() is None:
        pytest.skip(data.missing_reason("evaluation images"))
    try:
        paths = data.eval_images()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    if not paths:
        pytest.skip("no evaluation images found")
    return paths
