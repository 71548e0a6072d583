"""The colour correlation of natural images, estimated from the project's *train* images.

The Fourier parameterisation (:mod:`preimage.params.fourier`) draws three decorrelated channels
and mixes them with a 3×3 matrix ``A`` so that the mixed pixels have the covariance of real RGB
pixels: ``A·Aᵀ = Σ``, ``Σ`` being the 3×3 covariance of the mean-subtracted RGB pixels of
``train/`` (0–255 units). ``A`` is the principal (symmetric, positive semi-definite) square root of
``Σ``, ``A = V·diag(√λ)·Vᵀ`` with ``Σ = V·diag(λ)·Vᵀ``: unlike a Cholesky factor or lucent's
``U·√S`` it does not depend on an ordering or on the signs of eigenvectors, so it is reproducible
to the last digit; any ``A`` with ``A·Aᵀ = Σ`` gives white noise the same distribution.

How the numbers were computed (:func:`fit_colour`): every image of
:func:`preimage.data.train_images` (200 JPEGs) loaded with :func:`preimage.io.images.load_image`
(RGB, native size, 0–255), every pixel of every image weighted equally; mean over all pixels, then
``Σ = E[(p − mean)(p − mean)ᵀ]`` (population covariance, float64). Regenerate with::

    PREIMAGE_DATA=/path/to/shared python benchmarks/fit_colour.py

and paste its ``mean``, ``covariance`` and ``sqrt`` into the constants below;
``tests/test_params.py`` recomputes them from ``train/`` and checks they agree to 1e-3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..data import train_images
from ..io.images import load_image

#: Mean RGB of the train pixels (0–255), from :func:`fit_colour` on the 200 train images
#: (41,151,407 pixels).
COLOUR_MEAN = (126.670458, 120.041307, 110.834402)
#: Covariance Σ (3×3, 0–255 units²) of the mean-subtracted train pixels.
COLOUR_COVARIANCE = ((5034.06067, 4427.53687, 4118.73329),
                     (4427.53687, 4858.71643, 4650.72167),
                     (4118.73329, 4650.72167, 5386.36493))
#: Principal square root A of :data:`COLOUR_COVARIANCE` (A·Aᵀ = Σ, A = Aᵀ; 0–255 units).
COLOUR_SQRT = ((57.5768954, 32.6573209, 25.5433197),
               (32.6573209, 50.9793881, 34.5444325),
               (25.5433197, 34.5444325, 59.5028229))


def pixel_moments(paths: Iterable[str | Path]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Sums over every pixel of the RGB images at ``paths``: ``(Σp (3,), Σp·pᵀ (3, 3), count)``,
    float64, 0–255 units."""
    s1 = torch.zeros(3, dtype=torch.float64)
    s2 = torch.zeros(3, 3, dtype=torch.float64)
    count = 0
    for path in paths:
        p = load_image(path, mode="rgb").double().flatten(1)  # (3, H·W)
        s1 += p.sum(1)
        s2 += p @ p.T
        count += p.shape[1]
    return s1, s2, count


def principal_sqrt(cov: torch.Tensor) -> torch.Tensor:
    """The symmetric positive semi-definite square root ``(3, 3)`` of a covariance ``(3, 3)``."""
    cov = 0.5 * (cov + cov.T)
    evals, evecs = torch.linalg.eigh(cov.double())
    return (evecs * evals.clamp_min(0).sqrt()) @ evecs.T


def fit_colour(paths: Sequence[str | Path] | None = None) -> dict:
    """Estimate the colour statistics from ``paths`` (default: every train image, never eval).

    Returns a dict of plain floats: ``mean`` (3, 0–255), ``covariance`` (3×3, population, of the
    mean-subtracted pixels), ``sqrt`` (3×3, :func:`principal_sqrt` of it), ``images``, ``pixels``.
    """
    paths = list(train_images() if paths is None else paths)
    if not paths:
        raise ValueError("no images to estimate the colour correlation from")
    s1, s2, count = pixel_moments(paths)
    mean = s1 / count
    cov = s2 / count - torch.outer(mean, mean)
    sqrt = principal_sqrt(cov)
    return {"mean": mean.tolist(), "covariance": cov.tolist(), "sqrt": sqrt.tolist(),
            "images": len(paths), "pixels": count}


def colour_sqrt(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """:data:`COLOUR_SQRT` as a ``(3, 3)`` tensor (0–255 units)."""
    return torch.tensor(COLOUR_SQRT, dtype=dtype)
