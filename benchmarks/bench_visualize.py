"""Activation maximisation (issue 16): batched vs one call per unit, and the claims on the eval set.

Two parts, one run:

* **batching**: ``--units`` channels (0 … units−1) of ``--layer`` of MobileNet v2 visualised as
  ONE batched :func:`preimage.visualize.visualize` call, against ``--units`` separate calls (one
  channel each, same settings and iterations), both in this process, one after the other,
  ``--rounds`` times in turn; the ratio of their wall times is the speed-up, reported per round and
  as the median over the rounds (a shared machine's load moves single rounds by ±15 %). The
  separate calls redo what a user looping over units would redo (the scale probes, the
  parameterisation, the optimiser); the network is built once for both. Batching pays most with
  every core in use: run it at the machine's thread count (``--threads 2`` here) as well as at 1.
* **claims** (on the ``--eval-images`` first eval images, cropped as for classification):
  each batched channel's mean activation against that channel's maximum over the eval images at the
  same size; and for ``--classes`` classes (those of the first eval images of distinct classes) a
  class image at 224² (``logits``, ``--class-iters`` iterations) against the class's logit on every
  eval image, and whether MobileNet v2 classifies the (rounded) class image as that class.
* **caricatures** (issue 16: "a caricature raises the inner product with the target code by ≥ 2×
  while staying in range"): the ``--caricature-images`` first eval images (the ``maximise`` figure's
  crop: shorter side to ``--caricature-size``, centre square; its three images are the first three)
  caricatured at each of ``--caricature-layers`` (default the figure's three depths) as one batched
  :func:`preimage.visualize.caricature` per layer with its defaults (``--caricature-iters`` to
  override the iterations); per image the gain (inner product reached / at the start image, which
  is the original moved into the bounded range) and the inner product itself (the original's is 1
  by construction), per layer min/median/max, whether every gain is ≥ 2× (the claim), whether every
  inner product reached is ≥ 2, and whether every image is within the bounded range
  (0–255 and ≤ 160 grey levels from the mean pixel).

Usage::

    python benchmarks/bench_visualize.py --threads 1 [--layer block8_add] [--size 64] [--units 64]
        [--iters 50] [--rounds 3] [--eval-images 100] [--classes 5] [--class-iters 40] [--param fourier]
        [--caricature-images 20] [--caricature-layers block5_add,block10_add,block15_add]
        [--caricature-size 224] [--caricature-iters N] [--parts batching,classes,caricature] [--out FILE.json]

writes the JSON (``_harness``) and a Markdown summary beside ``--out`` (``FILE.md``). ``--parts``
runs a subset (``batching`` includes the channel claim). ``--quick``: 4 units, 3 iterations, 4 eval
images, 1 class, 1 caricature at 64² with 3 iterations (checks that it works, measures nothing).
"""

from __future__ import annotations

import statistics
import warnings
from pathlib import Path

import torch

import _harness as H  # noqa: E402 - puts the checkout on sys.path

from preimage.data import eval_images  # noqa: E402
from preimage.io.images import load_image, resize_and_crop  # noqa: E402
from preimage.models import get_model  # noqa: E402
from preimage.models.classify import (classify, imagenet_labels, load_for_classification,  # noqa: E402
                                      synset_class_index)
from preimage.objectives import channel, class_logit  # noqa: E402
from preimage.representations.cnn import CNNLayer  # noqa: E402
from preimage.objectives import IJCV_BOUND  # noqa: E402
from preimage.visualize import caricature, visualize  # noqa: E402

#: the ``maximise`` figure's three caricature depths on MobileNet v2 (a quarter, half, three quarters)
CARICATURE_LAYERS = "block5_add,block10_add,block15_add"
PARTS = ("batching", "classes", "caricature")


def _batching(model, args) -> dict:
    """One batched call against ``args.units`` separate calls, ``args.rounds`` times in turn:
    seconds of each, the ratio per round and its median, the scores of both (last round)."""
    rep = CNNLayer(model, args.layer, input_size=(args.size, args.size))
    shape = (3, args.size, args.size)
    kw = dict(image_shape=shape, iterations=args.iters, param=args.param, progress=False)
    units = list(range(args.units))
    rounds = []
    for r in range(max(1, args.rounds)):
        with H.Stopwatch() as sw_batch:
            batched = visualize(rep, channel(units), **kw)
        single_scores = []
        with H.Stopwatch() as sw_single:
            for c in units:
                single_scores.append(float(visualize(rep, channel([c]), **kw).scores[0]))
        rounds.append({"batched_seconds": sw_batch.seconds, "separate_seconds": sw_single.seconds,
                       "speedup": sw_single.seconds / sw_batch.seconds})
        H.progress({"part": "batching", "round": r + 1, "units": args.units, **rounds[-1]})
    med = statistics.median(x["speedup"] for x in rounds)
    return {"layer": args.layer, "size": args.size, "units": args.units, "iterations": args.iters,
            "rounds": rounds, "batched_seconds": statistics.median(x["batched_seconds"] for x in rounds),
            "separate_seconds": statistics.median(x["separate_seconds"] for x in rounds), "speedup": med,
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


def _in_range(images: torch.Tensor, mean_pixel) -> list[bool]:
    """Per image ``(n, 3, H, W)``: within 0–255 and every pixel within IJCV's bound of ``mean_pixel``."""
    m = torch.as_tensor(mean_pixel, dtype=images.dtype).reshape(1, -1, 1, 1)
    dev = (images - m).pow(2).sum(1).sqrt().flatten(1).max(1).values
    lo, hi = images.flatten(1).min(1).values, images.flatten(1).max(1).values
    return [bool(a) for a in (lo >= 0) & (hi <= 255) & (dev <= IJCV_BOUND + 1e-3)]


def _caricature_claim(model, args, paths) -> dict:
    """Caricatures of ``paths`` at each of ``args.caricature_layers``, one batched call per layer:
    per image the gain (reached / at the image) and whether it is in range; per layer the summary."""
    size = args.caricature_size
    images = torch.stack([resize_and_crop(load_image(p), size).clamp(0, 255) for p in paths])
    kw = {} if args.caricature_iters is None else {"iterations": args.caricature_iters}
    layers = []
    for layer in [t.strip() for t in args.caricature_layers.split(",") if t.strip()]:
        rep = CNNLayer(model, layer, input_size=(size, size))
        vis = caricature(rep, images, progress=False, **kw)
        gains = (vis.scores / vis.start_scores).tolist()
        in_range = _in_range(vis.images, rep.mean_pixel)
        g = torch.tensor(gains)
        row = {"layer": layer, "images": [Path(p).name for p in paths], "gains": gains,
               "start_scores": vis.start_scores.tolist(), "scores": vis.scores.tolist(), "in_range": in_range,
               "min": float(g.min()), "median": float(g.median()), "max": float(g.max()),
               "min_score": float(vis.scores.min()), "all_doubled": bool((g >= 2).all()),
               "all_scores_at_least_2": bool((vis.scores >= 2).all()), "all_in_range": all(in_range),
               "iterations": vis.settings["iterations"], "lr": vis.settings["lr"], "jitter": vis.settings["jitter"],
               "lambda_tv": vis.settings["lambda_tv"], "lambda_alpha": vis.settings["lambda_alpha"],
               "seconds": vis.seconds}
        H.progress({"part": "caricature", "layer": layer, "min": row["min"], "median": row["median"],
                    "max": row["max"], "seconds": vis.seconds})
        layers.append(row)
    return {"size": size, "layers": layers, "all_doubled": all(r["all_doubled"] for r in layers),
            "all_scores_at_least_2": all(r["all_scores_at_least_2"] for r in layers),
            "all_in_range": all(r["all_in_range"] for r in layers)}


def _caricature_markdown(k: dict) -> list[str]:
    lines = ["", f"Caricatures at {k['size']}² (gain = inner product reached / at the start image, the original moved "
             "into the bounded range; claim: ≥ 2× in range; the original's own inner product is 1 by construction, "
             f"and every inner product reached is ≥ 2: {'yes' if k.get('all_scores_at_least_2') else 'no'}): "
             f"all ≥ 2×: **{'yes' if k['all_doubled'] else 'NO'}**, all in range: "
             f"**{'yes' if k['all_in_range'] else 'NO'}**.", "",
             "| layer | images | gain min | median | max | gain ≥ 2× | inner product min (original: 1) | ≥ 2 | "
             "in range | iterations | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in k["layers"]:
        n = len(r["gains"])
        lines.append(f"| {r['layer']} | {n} | {r['min']:.2f} | {r['median']:.2f} | {r['max']:.2f} | "
                     f"{sum(g >= 2 for g in r['gains'])}/{n} | {min(r['scores']):.2f} | "
                     f"{sum(v >= 2 for v in r['scores'])}/{n} | {sum(r['in_range'])}/{len(r['in_range'])} | "
                     f"{r['iterations']} | {r['seconds']:.0f} |")
    return lines


def _markdown(out: dict) -> str:
    lines = ["# bench_visualize", ""]
    b, c, k = out.get("batching"), out.get("channels"), out.get("class_images")
    if b:
        each = ", ".join(f"{x['speedup']:.2f}×" for x in b["rounds"])
        lines += [f"MobileNet v2 `{b['layer']}`, {b['size']}², {b['iterations']} iterations, {out['settings']['param']} "
                  f"image, {out['machine']['torch_threads']} thread(s), load {out['machine']['load_average_1min']}.",
                  "", "| run | seconds |", "|---|---|",
                  f"| {b['units']} channels, one batched call (median) | {b['batched_seconds']:.1f} |",
                  f"| {b['units']} separate calls (median) | {b['separate_seconds']:.1f} |",
                  f"| speed-up, median of {len(b['rounds'])} rounds | **{b['speedup']:.2f}×** |",
                  f"| speed-up of each round | {each} |", "",
                  f"Channels whose activation exceeds their maximum over {out['eval_images']} eval images: "
                  f"**{c['exceeding']} / {c['units']}** (smallest ratio {c['min_ratio_to_eval_max']:.2f})."]
    if k:
        lines += ["", "| class | logit reached | max over eval images | exceeds all | classified as (p) |",
                  "|---|---|---|---|---|"]
        for r in k["classes"]:
            lines.append(f"| {r['label'][:30]} | {r['logit_reached']:.1f} | {r['eval_max_logit']:.1f} | "
                         f"{'yes' if r['exceeds_every_eval_image'] else 'NO'} | {r['top1'][:30]} "
                         f"({r['probability']:.2f}) |")
    if out.get("caricatures"):
        lines += _caricature_markdown(out["caricatures"])
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = H.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--layer", default="block8_add")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--units", type=int, default=64)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3, help="batched/separate rounds, in turn (median ratio)")
    ap.add_argument("--eval-images", type=int, default=100)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--class-iters", type=int, default=40)
    ap.add_argument("--param", default="fourier")
    ap.add_argument("--caricature-images", type=int, default=20)
    ap.add_argument("--caricature-layers", default=CARICATURE_LAYERS)
    ap.add_argument("--caricature-size", type=int, default=224)
    ap.add_argument("--caricature-iters", type=int, default=None, help="default: caricature()'s own")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    args = H.quick(ap.parse_args(), units=4, iters=3, rounds=1, eval_images=4, classes=1, class_iters=3,
                   caricature_images=1, caricature_size=64, caricature_iters=3)
    parts = [t.strip() for t in args.parts.split(",") if t.strip()]
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--parts: a comma list of {', '.join(PARTS)}, got {args.parts!r}")
    H.setup(args)
    result = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_model("mobilenet_v2")
        paths = eval_images()[:args.eval_images]
        result["eval_images"] = len(paths)
        if "batching" in parts:
            result["batching"], batched, rep = _batching(model, args)
            result["channels"] = _channel_claim(rep, batched, load_for_classification(paths, args.size))
            H.progress({"part": "channels", "exceeding": result["channels"]["exceeding"],
                        "units": result["channels"]["units"]})
        if "classes" in parts:
            result["class_images"] = _class_claim(model, args, load_for_classification(paths, 224), paths)
        if "caricature" in parts and args.caricature_images > 0:
            result["caricatures"] = _caricature_claim(model, args, eval_images()[:args.caricature_images])
    out = H.emit("bench_visualize", args, result)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(_markdown(out))


if __name__ == "__main__":
    main()
