"""Estimate the colour correlation of natural images from the *train* images (never eval).

Runs :func:`preimage.params.colour.fit_colour` on every image of ``train/`` and prints JSON: the
mean RGB, the 3×3 covariance of the mean-subtracted pixels, its principal square root (the matrix
the Fourier parameterisation mixes colours with), the image and pixel counts, and how far the
constants stored in ``preimage/params/colour.py`` are from the result (paste ``mean``,
``covariance`` and ``sqrt`` there when it changes)::

    PREIMAGE_DATA=/path/to/shared python benchmarks/fit_colour.py

``--quick`` uses the first 4 train images (a smoke run: its numbers are not the constants).
"""

from __future__ import annotations

import numpy as np

from _harness import Stopwatch, emit, parser, setup  # puts the checkout on sys.path
from preimage.data import train_images  # noqa: E402
from preimage.params.colour import COLOUR_COVARIANCE, COLOUR_MEAN, COLOUR_SQRT, fit_colour  # noqa: E402


def main() -> None:
    """Fit on train/ (or 4 images with --quick) and print the JSON object."""
    args = parser(__doc__.splitlines()[0]).parse_args()
    setup(args)
    paths = train_images()
    if args.quick:
        paths = paths[:4]
    with Stopwatch() as sw:
        fit = fit_colour(paths)
    stored = {"mean": COLOUR_MEAN, "covariance": COLOUR_COVARIANCE, "sqrt": COLOUR_SQRT}
    diff = {k: float(np.max(np.abs(np.array(fit[k]) - np.array(v)) / np.maximum(np.abs(v), 1.0)))
            for k, v in stored.items()}
    emit("fit_colour", args, {**fit, "seconds": round(sw.seconds, 3),
                              "stored_constants_max_relative_difference": diff,
                              "stored_constants_match": all(d <= 1e-3 for d in diff.values())})


if __name__ == "__main__":
    main()
