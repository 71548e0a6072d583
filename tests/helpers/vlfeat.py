"""VLFeat (through cyvlfeat), the numerical reference of HOG and dense SIFT: each wrapper skips
the test when cyvlfeat is not installed."""

from __future__ import annotations

import numpy as np
import pytest


def cyvlfeat(module: str):
    """``cyvlfeat.<module>`` (``"hog"`` or ``"sift"``), or skip the test."""
    return pytest.importorskip(f"cyvlfeat.{module}", reason="cyvlfeat (VLFeat) is not installed")


def vlfeat_hog(img: np.ndarray, cell: int = 8, **kw) -> np.ndarray:
    """VLFeat's HOG of an ``(H, W)`` or ``(H, W, 3)`` image on 0–255 (taken as contiguous
    float32): ``(h, w, D)`` float32. ``kw`` go to ``cyvlfeat.hog.hog`` (``variant``,
    ``bilinear_interpolation``, ``n_orientations``)."""
    return cyvlfeat("hog").hog(np.ascontiguousarray(img, dtype=np.float32), cell, **kw)


def vlfeat_dsift(img: np.ndarray, bin_size: int, step: int, **kw) -> tuple[np.ndarray, np.ndarray]:
    """VLFeat's fast dense SIFT of an ``(H, W)`` image on 0–255 (taken as contiguous float32),
    float descriptors: frames ``(N, 2)`` ``[y, x]`` (``(N, 3)`` with ``norm=True``) and
    descriptors ``(N, 128)`` float32. ``kw`` go to ``cyvlfeat.sift.dsift`` (``geometry``,
    ``window_size``, ``norm``)."""
    return cyvlfeat("sift").dsift(np.ascontiguousarray(img, dtype=np.float32), step=step, size=bin_size,
                                  fast=True, float_descriptors=True, **kw)
