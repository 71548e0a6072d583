"""Activation maximisation (issue 16): batched vs one call per unit, and the claims on the eval set.

Two parts, one run:

* **batching**: ``--units`` channels (0 … units−1) of ``--layer`` of MobileNet v2 visualised as
  ONE batched :func:`preimage.visualize.visualize` call, against ``--units`` separate calls (one
  channel each, same settings and iterations), both in this process, one after the other; the
  ratio of their wall times is the speed-up. The separate calls redo what a user looping over
  units would redo (the scale probes, the parameterisation, the optimiser); the network is built
  once for both.
* **claims** (on the ``--eval-images`` first eval images, cropped as for classification):
  each batched channel's mean activation against that channel's maximum over the eval images at the
  same size; and for ``--classes`` classes (those of the first eval images of distinct classes) a
  class image at 224² (``logits``, ``--class-iters`` iterations) against the class's logit on every
  eval image, and whether MobileNet v2 classifies the (rounded) class image as that class.

Usage::

    python benchmarks/bench_visualize.py --threads 1 [--layer block8_add] [--size 64] [--units 64]
        [--iters 50] [--eval-images 100] [--classes 5] [--class-iters 40] [--param fourier] [--out FILE.json]

writes the JSON (``_harness``) and a Markdown summary beside ``--out`` (``FILE.md``). ``--quick``: 4
units, 3 iterations, 4 eval images, 1 class (checks that it works, measures nothing).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

import _harness as H  # noqa: E402 - puts the checkout on sys.path

from preimage.data import eval_images  # noqa: E402
from preimage.models import get_model  # noqa: E402
from preimage.models.classify import (classify, imagenet_labels, load_for_classification,  # noqa: E402
                                      synset_class_index)
from preimage.objectives import channel, class_logit  # noqa: E402
from preimage.representations.cnn import CNNLayer  # noqa: E402
from preimage.visualize import visualize  # noqa: E402


def _batching(model, args) -> dict:
    """One batched call against ``args.units`` separate calls: seconds, ratio, scores of both."""
    rep = CNNLayer(model, args.layer, input_size=(args.size, args.size))
    shape = (3, args.size, args.size)
    kw = dict(image_shape=shape, iterations=args.iters, param=args.param, progress=False)
    units = list(range(args.units))
    with H.Stopwatch() as sw_batch:
        batched = visualize(rep, channel(units), **kw)
    H.progress({"part": "batched", "units": args.units, "seconds": sw_batch.seconds})
    single_scores = []
    with H.Stopwatch() as sw_single:
        for c in units:
            single_scores.append(float(visualize(rep, channel([c]), **kw).scores[0]))
    H.progress({"part": "separate", "units": args.units, "seconds": sw_single.seconds})
    return {"layer": args.layer, "size": args.size, "units": args.units, "iterations": args.iters,
            "batched_seconds": sw_batch.seconds, "separate_seconds": sw_single.seconds,
            "speedup": sw_single.seconds / sw_batch.seconds,
            "batched_scores": batched.scores.tolist(), "separate_scores": single_scores}, batched, rep


def _channel_claim(rep, batched, images: torch.Tensor) -> dict:
    """Each batched channel's activation vs its maximum over ``images`` (same size)."""
    n = batched.units
    best = torch.full((n,), -float("inf"), dtype=torch.float64)
    with torch.no_grad():
        for i in range(0, images.shape[0], 8):
            code = rep(images[i:i + 8])
            scores = channel(range(n))(code.repeat_interleave(n, 0)).view(-1, n).double()
            best = torch.maximum(best, scores.max(0).values)
    reached = batched.scores.double()
    return {"eval_max": best.tolist(), "reached": reached.tolist(),
            "exceeding": int((reached > best).sum()), "units": n,
            "min_ratio_to_eval_max": float((reached / best.clamp_min(1e-12)).min())}


def _class_claim(model, args, images: torch.Tensor, paths) -> dict:
    """Class images of the first ``args.classes`` distinct classes of the eval set vs their logits."""
    classes = list(dict.fromkeys(synset_class_index(p) for p in paths))[:args.classes]
    rep = CNNLayer(model, "logits")
    with torch.no_grad():
        logits = torch.cat([rep(images[i:i + 8]) for i in range(0, images.shape[0], 8)])[:, classes]
    with H.Stopwatch() as sw:
        vis = visualize(rep, class_logit(classes), iterations=args.class_iters, param=args.param, progress=False)
    preds = classify(vis.images.round(), model, topk=1, preprocessed=True)
    labels = imagenet_labels()
    rows = [{"class": k, "label": labels[k], "logit_reached": float(vis.scores[i]),
             "eval_max_logit": float(logits[:, i].max()),
             "exceeds_every_eval_image": bool(vis.scores[i] > logits[:, i].max()),
             "top1": preds[i][0][1], "classified_as_class": preds[i][0][0] == k, "probability": preds[i][0][2]}
            for i, k in enumerate(classes)]
    return {"classes": rows, "seconds": sw.seconds, "iterations": args.class_iters}


def _markdown(out: dict) -> str:
    b, c, k = out["batching"], out["channels"], out["class_images"]
    lines = ["# bench_visualize", "",
             f"MobileNet v2 `{b['layer']}`, {b['size']}², {b['iterations']} iterations, {out['settings']['param']} "
             f"image, {out['machine']['torch_threads']} thread(s), load {out['machine']['load_average_1min']}.", "",
             "| run | seconds |", "|---|---|",
             f"| {b['units']} channels, one batched call | {b['batched_seconds']:.1f} |",
             f"| {b['units']} separate calls | {b['separate_seconds']:.1f} |",
             f"| speed-up | **{b['speedup']:.2f}×** |", "",
             f"Channels whose activation exceeds their maximum over {out['eval_images']} eval images: "
             f"**{c['exceeding']} / {c['units']}** (smallest ratio {c['min_ratio_to_eval_max']:.2f}).", "",
             "| class | logit reached | max over eval images | exceeds all | classified as (p) |",
             "|---|---|---|---|---|"]
    for r in k["classes"]:
        lines.append(f"| {r['label'][:30]} | {r['logit_reached']:.1f} | {r['eval_max_logit']:.1f} | "
                     f"{'yes' if r['exceeds_every_eval_image'] else 'NO'} | {r['top1'][:30]} "
                     f"({r['probability']:.2f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = H.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--layer", default="block8_add")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--units", type=int, default=64)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--eval-images", type=int, default=100)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--class-iters", type=int, default=40)
    ap.add_argument("--param", default="fourier")
    args = H.quick(ap.parse_args(), units=4, iters=3, eval_images=4, classes=1, class_iters=3)
    H.setup(args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_model("mobilenet_v2")
        paths = eval_images()[:args.eval_images]
        batching, batched, rep = _batching(model, args)
        channels = _channel_claim(rep, batched, load_for_classification(paths, args.size))
        H.progress({"part": "channels", "exceeding": channels["exceeding"], "units": channels["units"]})
        classes = _class_claim(model, args, load_for_classification(paths, 224), paths)
    out = H.emit("bench_visualize", args, {"eval_images": len(paths), "batching": batching, "channels": channels,
                                           "class_images": classes})
    if args.out:
        Path(args.out).with_suffix(".md").write_text(_markdown(out))


if __name__ == "__main__":
    main()
