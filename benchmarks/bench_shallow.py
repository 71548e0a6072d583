"""Speed of shallow inversion: seconds per HOG / HOGb / DSIFT inversion of a 227×227 grey image
at the default 800 iterations, at batch 1 and batch 8, beside VLFeat's own forward time.

Prints one JSON object. Figures are measured in one run on this machine, so ratios between them
are meaningful; absolute numbers depend on the machine and its load.

    python benchmarks/bench_shallow.py [--iters 800] [--reps hog,hogb,dsift]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from preimage.imageio import default_image
from preimage.invert import invert
from preimage.representations import get_representation


def vlfeat_forward_ms(rep: str, img: np.ndarray, repeats: int = 20) -> float | None:
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
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1000


def forward_backward_ms(rep, x: torch.Tensor, repeats: int = 20) -> float:
    x = x.clone().requires_grad_(True)
    rep(x).sum().backward()
    t0 = time.perf_counter()
    for _ in range(repeats):
        x.grad = None
        rep(x).sum().backward()
    return (time.perf_counter() - t0) / repeats * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=800)
    ap.add_argument("--reps", default="hog,hogb,dsift")
    ap.add_argument("--batches", default="1,8")
    args = ap.parse_args()
    img, _ = default_image("grey")  # (1, 227, 227)
    out = {"machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
                       "platform": platform.platform()}, "iterations": args.iters, "image": [227, 227],
           "results": []}
    for name in args.reps.split(","):
        rep = get_representation(name)
        vl = vlfeat_forward_ms(name, img[0].numpy().astype(np.float32))
        for b in (int(s) for s in args.batches.split(",")):
            batch = img[None].repeat(b, 1, 1, 1)
            fb = forward_backward_ms(rep, batch)
            t0 = time.perf_counter()
            invert(rep, batch, iterations=args.iters, progress=False)
            secs = time.perf_counter() - t0
            out["results"].append({
                "rep": name, "batch": b, "seconds_per_inversion_batch": secs,
                "seconds_per_image": secs / b, "images_per_second": b / secs,
                "forward_backward_ms": fb, "vlfeat_forward_ms_per_image": vl,
                "forward_backward_over_vlfeat_forward": (fb / b / vl) if vl else None,
                "paper_seconds_per_image": 60.0, "speedup_vs_paper": 60.0 / (secs / b)})
            print(json.dumps(out["results"][-1]), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
