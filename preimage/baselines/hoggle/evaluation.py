"""HOGgle over a set of images, for the paper's Table 1: each image (grey, native size) is
HOGgle-inverted from its HOG and described again; :func:`hoggle_codes` returns the target and
reconstruction codes (the evaluation tables score them through :mod:`preimage.metrics`), and
:func:`evaluate_hoggle` scores them there in the paper's and the authors' conventions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ._threads import DEFAULT_THREADS, torch_threads
from .dictionary import HoggleDictionary
from .geometry import compute_hog
from .inversion import DEFAULT_PAD, SIGMA, invert_hoggle


@dataclass
class HoggleCodes:
    """HOG codes of a set of images and of their HOGgle reconstructions.

    Attributes:
        images: file names, in input order.
        targets: per image, ``(27, h_i, w_i)`` float32 HOG of the grey image (0–255 input).
        recons: per image, ``(27, h_i, w_i)`` float32 HOG of its reconstruction (the same shape).
        seconds_per_image: mean inversion wall time from the HOG code (the dictionary's one-off
            Gram inverse, ≈ 0.1 s, is computed before timing starts).
        hog_seconds_per_image: mean HOG extraction time of the targets.
        settings: inversion settings (pad, sigma, algorithm, alpha) and the dictionary's metadata.
    """

    images: list[str]
    targets: list[torch.Tensor]
    recons: list[torch.Tensor]
    seconds_per_image: float
    hog_seconds_per_image: float
    settings: dict


def hoggle_codes(paths: Sequence, dictionary: HoggleDictionary, *, progress: bool = True,
                 **invert_kwargs) -> HoggleCodes:
    """HOGgle-invert every image file (read as BT.601 grey at its native size) from its HOG and
    return the HOG of each target and of each reconstruction (:class:`HoggleCodes`).

    ``invert_kwargs`` go to :func:`~preimage.baselines.hoggle.inversion.invert_hoggle` (``pad``,
    ``sigma``, ``alpha``, ``algorithm``, ``lasso_iter``, ``threads``); ``progress`` shows a tqdm bar.
    """
    from tqdm.auto import tqdm

    from ...io.images import load_image

    paths = list(paths)
    targets, recons = [], []
    inv_seconds = hog_seconds = 0.0
    dictionary.lasso_setup()               # once per dictionary, not counted per image
    with torch_threads(invert_kwargs.get("threads", DEFAULT_THREADS)):
        for p in tqdm(paths, desc="HOGgle", disable=not progress, dynamic_ncols=True):
            img = load_image(p, mode="grey")
            t0 = time.perf_counter()
            target = compute_hog(img)
            t1 = time.perf_counter()
            recon = invert_hoggle(target, dictionary, tuple(img.shape[-2:]), **invert_kwargs)
            t2 = time.perf_counter()
            hog_seconds += t1 - t0
            inv_seconds += t2 - t1
            targets.append(target)
            recons.append(compute_hog(recon))
    n = max(1, len(paths))
    settings = {"pad": invert_kwargs.get("pad", DEFAULT_PAD), "sigma": invert_kwargs.get("sigma", SIGMA),
                "algorithm": invert_kwargs.get("algorithm", "admm"),
                "alpha": invert_kwargs.get("alpha", dictionary.alpha), "dictionary": dictionary.metadata}
    return HoggleCodes([Path(p).name for p in paths], targets, recons, inv_seconds / n, hog_seconds / n, settings)


def evaluate_hoggle(paths: Sequence, dictionary: HoggleDictionary, *, progress: bool = True,
                    **invert_kwargs) -> dict:
    """:func:`hoggle_codes`, scored as the paper's Table 1 through :mod:`preimage.metrics`.

    The error of image i is ‖HOG(x*) − HOG(xᵢ)‖ / N_HOG (``"paper"``: N_HOG the mean pairwise
    distance between the HOG codes of the set, codes zero-padded to the largest) and the squared
    version (``"authors"``: squared distance / mean squared pairwise distance, diagonal included).

    Returns:
        ``{"representation": "hoggle", "n", "seconds_per_image", "hog_seconds_per_image",
        "images", "settings", "paper": {mean, std, n, normaliser, per_image}, "authors": {...}}``,
        means and standard deviations in percent, per-image errors as fractions.
    """
    from ...metrics import score_set

    paths = list(paths)
    if len(paths) < 2:
        raise ValueError("the normalised error needs at least two images")
    c = hoggle_codes(paths, dictionary, progress=progress, **invert_kwargs)
    out = {"representation": "hoggle", "n": len(paths), "seconds_per_image": c.seconds_per_image,
           "hog_seconds_per_image": c.hog_seconds_per_image, "images": c.images, "settings": c.settings}
    return {**out, **score_set(c.recons, c.targets)}
