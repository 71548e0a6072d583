"""Speed of shallow inversion: seconds per HOG / HOGb / DSIFT inversion of a 227×227 grey image
at the default 800 iterations, at batch 1 and batch 8, beside VLFeat's own forward time.

Prints one JSON object (progress lines on stderr). Figures are measured in one run on this
machine, so ratios between them are meaningful; absolute numbers depend on the machine and its
load. Forward(+backward) times are medians of ``--repeats`` calls after a warm-up.

    python benchmarks/bench_shallow.py [--iters 800] [--reps hog,hogb,dsift] [--out FILE] [--quick]
"""

from __future__ import annotations

import _harness as bench  # first: it makes the checkout importable

import numpy as np
import torch

from preimage.io.images import default_image
from preimage.invert import invert
from preimage.representations import get_representation

PAPER_SECONDS_PER_IMAGE = 60.0  # the paper's time for one shallow inversion


def vlfeat_forward_ms(rep: str, img: np.ndarray, repeats: int = 20) -> float | None:
    """Median milliseconds of VLFeat's own forward (cyvlfeat) on the (H, W) float32 image; None
    without cyvlfeat."""
    try:
        from cyvlfeat.hog import hog
        from cyvlfeat.sift import dsift
    except ImportError:
        return None
    if rep == "dsift":
        r = get_representation("dsift")
        fn = lambda: dsift(img, step=r.step, size=r.bin_size, fast=True, float_descriptors=True)  # noqa: E731
    else:
        fn = lambda: hog(img, 8, bilinear_interpolation=(rep == "hogb"))  # noqa: E731
    return bench.time_call(fn, repeats).median_ms


def forward_backward_ms(rep, x: torch.Tensor, repeats: int = 20) -> float:
    """Median milliseconds of ``rep(x).sum().backward()`` for the (B, C, H, W) batch ``x``."""
    x = x.clone().requires_grad_(True)

    def step():
        x.grad = None
        rep(x).sum().backward()
    return bench.time_call(step, repeats).median_ms


def measure(name: str, img: torch.Tensor, batch: int, args, vl: float | None) -> dict:
    """One representation at one batch size: the whole inversion's wall time and the forward +
    backward time. ``img`` is the (1, H, W) grey image on 0–255."""
    rep = get_representation(name)
    x = img[None].repeat(batch, 1, 1, 1)
    fb = forward_backward_ms(rep, x, args.repeats)
    with bench.Stopwatch() as sw:
        invert(rep, x, iterations=args.iters, progress=False)
    secs = sw.seconds
    return {"rep": name, "batch": batch, "seconds_per_inversion_batch": secs,
            "seconds_per_image": secs / batch, "images_per_second": batch / secs,
            "forward_backward_ms": fb, "vlfeat_forward_ms_per_image": vl,
            "forward_backward_over_vlfeat_forward": (fb / batch / vl) if vl else None,
            "paper_seconds_per_image": PAPER_SECONDS_PER_IMAGE,
            "speedup_vs_paper": PAPER_SECONDS_PER_IMAGE / (secs / batch)}


def main(argv=None) -> int:
    ap = bench.parser(__doc__.splitlines()[0], repeats=20)
    ap.add_argument("--iters", type=int, default=800)
    ap.add_argument("--reps", default="hog,hogb,dsift", help="representations, comma-separated")
    ap.add_argument("--batches", default="1,8")
    args = bench.quick(ap.parse_args(argv), iters=5, batches="1,2", repeats=2)
    bench.setup(args)
    img, _ = default_image("grey")  # (1, 227, 227)
    results = []
    for name in args.reps.split(","):
        vl = vlfeat_forward_ms(name, img[0].numpy().astype(np.float32), args.repeats)
        for b in (int(s) for s in args.batches.split(",")):
            results.append(measure(name, img, b, args, vl))
            bench.progress(results[-1])
    bench.emit("shallow inversion", args, {"iterations": args.iters, "image": list(img.shape[1:]),
                                           "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
