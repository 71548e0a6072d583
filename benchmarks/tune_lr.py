"""Tune the default learning rate of a representation on the *train* images (never eval).

For each learning rate of a log grid, every train image (grey, downscaled to --max-side) is
inverted with the default schedule and λ; all (image, rate) pairs run as one batched optimisation
with per-sample rates. Prints JSON: mean final objective and mean relative code error per rate.

    python benchmarks/tune_lr.py --rep hog --images 4
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from preimage.data import train_images
from preimage.evaluate import _downscale
from preimage.imageio import load_image
from preimage.invert import inversion_defaults
from preimage.metrics import relative_error
from preimage.objective import InversionObjective, default_lambdas
from preimage.optim import gaussian_init, minimise
from preimage.representations import get_representation


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rep", default="hog")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--max-side", type=int, default=160)
    ap.add_argument("--lrs", default="1e-5,3e-5,1e-4,3e-4,1e-3,3e-3")
    ap.add_argument("--iters", type=int, default=800)
    ap.add_argument("--lambda-tv", type=float, default=5.0)
    args = ap.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")]
    rep = get_representation(args.rep)
    paths = train_images()[:: max(1, 200 // args.images)][: args.images]
    # one common size so that everything is one batch: centre-crop to the smallest downscaled size
    ims = [_downscale(load_image(p, mode="grey"), args.max_side) for p in paths]
    h = min(i.shape[1] for i in ims)
    w = min(i.shape[2] for i in ims)
    ims = torch.stack([i[:, (i.shape[1] - h) // 2:(i.shape[1] - h) // 2 + h,
                         (i.shape[2] - w) // 2:(i.shape[2] - w) // 2 + w] for i in ims])
    shape = tuple(ims.shape[1:])
    with torch.no_grad():
        target = rep(ims)
    n, k = len(ims), len(lrs)
    lam_a, lam_v = default_lambdas(shape, lambda_tv_reference=args.lambda_tv)
    obj = InversionObjective(rep, target.repeat_interleave(k, 0), shape, lambda_alpha=lam_a, lambda_tv=lam_v)
    u0 = gaussian_init(1, shape).expand(n * k, *shape).contiguous()
    lr = torch.tensor(lrs).repeat(n)
    t0 = time.perf_counter()
    res = minimise(obj, u0, lr=lr, schedule=inversion_defaults(rep)["schedule"], iterations=args.iters,
                   progress=f"{args.rep} lr sweep", stop_on_divergence=False)
    secs = time.perf_counter() - t0
    with torch.no_grad():
        codes = rep(obj.image(res.u))
    rel = relative_error(codes, obj.target).view(n, k)
    tot = torch.tensor(res.energy["total"]).view(n, k)
    out = {"rep": args.rep, "image_shape": list(shape), "images": n, "iterations": args.iters,
           "seconds": secs, "rows": [{"lr": lr_, "mean_total": float(tot[:, j].mean()),
                                       "mean_relative_error": float(rel[:, j].mean())}
                                      for j, lr_ in enumerate(lrs)]}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
