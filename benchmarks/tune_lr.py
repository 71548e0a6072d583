"""Tune the default learning rate of a representation on the *train* images (never eval).

For each learning rate of a log grid, every train image (grey, downscaled to --max-side) is
inverted with the default schedule and λ; all (image, rate) pairs run as one batched optimisation
with per-sample rates. Prints JSON: mean final objective and mean relative code error per rate.
The images are spread evenly over the train set and centre-cropped to the smallest downscaled size
(one batch).

    python benchmarks/tune_lr.py --rep hog --images 4 [--out FILE] [--quick]

``--quick``: 2 images of at most 64 px, two rates, 3 iterations.
"""

from __future__ import annotations

import _harness as bench  # first: it makes the checkout importable
import torch

from preimage.data import spread, train_images
from preimage.io.images import centre_crop, limit_side, load_image
from preimage.metrics import relative_error
from preimage.objective import InversionObjective, default_lambdas
from preimage.optim import gaussian_init, minimise
from preimage.representations import get_representation


def train_batch(n: int, max_side: int) -> torch.Tensor:
    """``n`` train images spread over the set, grey, downscaled to at most ``max_side`` and
    centre-cropped to the smallest of their sizes: (n, 1, H, W) on 0–255."""
    ims = [limit_side(load_image(p, mode="grey"), max_side) for p in spread(train_images(), n)]
    h = min(i.shape[1] for i in ims)
    w = min(i.shape[2] for i in ims)
    return torch.stack([centre_crop(i, (h, w)) for i in ims])


def main(argv=None) -> int:
    ap = bench.parser(__doc__.splitlines()[0])
    ap.add_argument("--rep", default="hog")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--max-side", type=int, default=160)
    ap.add_argument("--lrs", default="1e-5,3e-5,1e-4,3e-4,1e-3,3e-3")
    ap.add_argument("--iters", type=int, default=800)
    ap.add_argument("--lambda-tv", type=float, default=5.0)
    args = bench.quick(ap.parse_args(argv), images=2, max_side=64, lrs="1e-4,1e-3", iters=3)
    bench.setup(args)
    lrs = [float(x) for x in args.lrs.split(",")]
    rep = get_representation(args.rep)
    ims = train_batch(args.images, args.max_side)
    shape = tuple(ims.shape[1:])
    with torch.no_grad():
        target = rep(ims)
    n, k = len(ims), len(lrs)
    lam_a, lam_v = default_lambdas(shape, lambda_tv_reference=args.lambda_tv)
    obj = InversionObjective(rep, target.repeat_interleave(k, 0), shape, lambda_alpha=lam_a, lambda_tv=lam_v)
    u0 = gaussian_init(1, shape).expand(n * k, *shape).contiguous()
    lr = torch.tensor(lrs).repeat(n)
    with bench.Stopwatch() as sw:
        res = minimise(obj, u0, lr=lr, schedule=rep.schedule, iterations=args.iters,
                       progress=f"{args.rep} lr sweep", stop_on_divergence=False)
    with torch.no_grad():
        codes = rep(obj.image(res.u))
    rel = relative_error(codes, obj.target).view(n, k)
    tot = torch.tensor(res.energy["total"]).view(n, k)
    bench.emit("learning-rate sweep", args, {
        "rep": args.rep, "image_shape": list(shape), "images": n, "iterations": args.iters,
        "seconds": sw.seconds, "rows": [{"lr": lr_, "mean_total": float(tot[:, j].mean()),
                                         "mean_relative_error": float(rel[:, j].mean())}
                                        for j, lr_ in enumerate(lrs)]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
