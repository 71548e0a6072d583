"""``preimage visualize``: the images that units of a network layer respond to most (activation
maximisation, IJCV 2016), all units as one batched optimisation.

    preimage visualize --model mobilenet_v2 --layer block6_add --channels 0:16 --out DIR
    preimage visualize --model mobilenet_v2 --layer block6_add --channels 3,7 --neuron centre --out DIR
    preimage visualize --model mobilenet_v2 --class 'tabby cat' --out DIR        (layer: logits)

Writes into ``--out``: ``grid.png`` (every unit, captioned with the activation reached),
``tiles/NNN_<label>.png`` (one image per unit, 0–255 as optimised) and ``result.json`` (per unit:
label, activation reached, at the start, the scale it was divided by; the settings).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
from pathlib import Path

from ..errors import PreimageError, UnknownNameError
from ..paper import IJCV_BOUND, IJCV_ITERATIONS
from ..params import PARAMETERISATIONS
from .common import MODEL_HELP, add_device_argument, add_model_options, load_model, output_folder, parse_floats, parse_size, resolve_device


def add_visualize_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``visualize`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    sp = subparsers.add_parser("visualize", help="images that a layer's channels, neurons or classes respond to most")
    sp.add_argument("--model", required=True, help=MODEL_HELP)
    sp.add_argument("--layer", help="layer (see `preimage layers MODEL`); default with --class: logits")
    add_model_options(sp)
    sp.add_argument("--channels", help="channels a:b (b excluded) or a comma list (default 0:16)")
    sp.add_argument("--neuron", nargs="?", const="centre",
                    help="maximise one neuron per channel, at 'centre' (default) or y,x of the code map, "
                         "instead of the channel's mean")
    sp.add_argument("--class", dest="classes", action="append",
                    help="maximise a class logit: an ImageNet label or its index (repeatable)")
    sp.add_argument("--param", choices=sorted(PARAMETERISATIONS), default="fourier",
                    help="image parameterisation: fourier (default), pixel (IJCV's), dip")
    add_optimisation_arguments(sp)
    sp.add_argument("--restarts", type=int, default=1, help="random restarts per unit (the best is shown)")
    sp.add_argument("--size", help="image size H,W (default: the network's input size)")
    sp.set_defaults(func=cmd_visualize)
    return sp


def add_optimisation_arguments(sp: argparse.ArgumentParser) -> None:
    """The flags ``visualize`` and ``caricature`` share: jitter, iterations, rate, priors, seed, device, output."""
    sp.add_argument("--jitter", default="auto",
                    help="shift the image by up to N pixels each step; 'auto' (default): a quarter of the "
                         "layer's stride")
    sp.add_argument("--iters", type=int, default=IJCV_ITERATIONS,
                    help=f"iterations (default {IJCV_ITERATIONS}, IJCV's)")
    sp.add_argument("--lr", type=float, help="Adam's rate (default: per parameterisation)")
    sp.add_argument("--lambda-tv", help="TV weight (default: the inversion's for this layer and size)")
    sp.add_argument("--lambda-alpha", help="α-norm weight (default: the inversion's)")
    sp.add_argument("--bound", type=float, default=IJCV_BOUND,
                    help=f"largest colour deviation of a pixel from the mean, grey levels (IJCV: {IJCV_BOUND:g}; "
                         "0: none)")
    sp.add_argument("--seed", type=int, default=0)
    add_device_argument(sp)
    sp.add_argument("--out", default="preimage-out", help="output folder (default ./preimage-out)")
    sp.add_argument("--no-progress", action="store_true")


def parse_channels(text: str | None, count: int) -> list[int]:
    """``"0:16"`` (end excluded) or ``"3,5,7"`` → channel indices, checked against ``count``
    channels; ``None`` → the first 16 (or all when fewer). Raises :class:`PreimageError`."""
    if text is None:
        return list(range(min(16, count)))
    text = text.strip()
    try:
        if ":" in text:
            a, b = (t.strip() for t in text.split(":", 1))
            lo, hi = int(a or 0), int(b) if b else count
            chans = list(range(lo, hi))
        else:
            chans = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PreimageError(f"--channels {text!r}: expected a:b or a comma list of integers") from None
    if not chans:
        raise PreimageError(f"--channels {text!r} selects no channel (a:b needs a < b)")
    bad = [c for c in chans if not 0 <= c < count]
    if bad:
        raise PreimageError(f"--channels {text!r}: channel {bad[0]} out of range, the layer has {count} "
                            f"(0–{count - 1})")
    return chans


def parse_position(text: str | None):
    """``--neuron``: ``None`` (channel means), ``"centre"`` or ``(y, x)``."""
    if text is None:
        return None
    if text.strip().lower() in ("centre", "center"):
        return "centre"
    try:
        y, x = (int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise PreimageError(f"--neuron {text!r}: expected 'centre' or y,x") from None
    return y, x


def resolve_class(text: str) -> tuple[int, str]:
    """An ImageNet label (any of its comma-separated names, case-insensitive) or index → ``(index,
    label)`` in the MobileNets' 1001 outputs. Raises :class:`UnknownNameError` with close matches."""
    from ..models.classify import imagenet_labels
    labels = imagenet_labels()
    t = text.strip()
    if t.isdigit():
        k = int(t)
        if not 0 <= k < len(labels):
            raise PreimageError(f"--class {k}: out of range 0–{len(labels) - 1}")
        return k, labels[k]
    key = t.lower()
    for k, label in enumerate(labels):
        names = [label.lower()] + [n.strip().lower() for n in label.split(",")]
        if key in names:
            return k, label
    near = difflib.get_close_matches(key, [n.strip().lower() for lab in labels for n in lab.split(",")], n=5)
    hint = f"; close: {', '.join(near)}" if near else ""
    raise UnknownNameError(f"unknown class {text!r}{hint} (see imagenet_labels.txt)")


def build_layer(net, layer: str, size: str | None):
    """The :class:`~preimage.representations.cnn.CNNLayer` of layer ``layer`` of ``net`` (the
    model of :func:`~preimage.cli.common.load_model`) at ``--size`` ``H,W``, and the image shape
    ``(3, H, W)``."""
    from ..representations.cnn import CNNLayer
    hw = parse_size(size, "--size") if size else None
    rep = CNNLayer(net, layer, input_size=hw)
    h, w = hw or tuple(rep.input_size or (224, 224))
    return rep, (3, h, w)


def _objective(args, rep):
    """The objective of the flags: class logits, neurons or channel means."""
    from ..objectives import channel, class_logit, neuron
    if args.classes:
        if args.channels or args.neuron:
            raise PreimageError("--class maximises class logits; drop --channels/--neuron")
        resolved = [resolve_class(c) for c in args.classes]
        return class_logit([k for k, _ in resolved], labels=[lab.split(",")[0] for _, lab in resolved])
    chans = parse_channels(args.channels, int(rep.info.channels))
    pos = parse_position(args.neuron)
    return channel(chans) if pos is None else neuron(chans, position=pos)


def one_float(text: str | None, flag: str) -> float | None:
    """A single number of ``--lambda-*`` (``None`` stays ``None``)."""
    values = parse_floats(text)
    if values is not None and len(values) != 1:
        raise PreimageError(f"{flag} takes one number here, got {text!r}")
    return None if values is None else values[0]


def optimisation_kwargs(args) -> dict:
    """Keyword arguments of :func:`preimage.visualize.visualize` from the shared flags."""
    return dict(iterations=args.iters, lr=args.lr, lambda_tv=one_float(args.lambda_tv, "--lambda-tv"),
                lambda_alpha=one_float(args.lambda_alpha, "--lambda-alpha"),
                bound=args.bound if args.bound > 0 else None, seed=args.seed, progress=not args.no_progress)


def _file_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", label).strip("_")[:40] or "unit"


def write_visualisation(out: Path, vis, info: dict) -> dict:
    """``grid.png``, ``tiles/NNN_<label>.png`` and ``result.json`` of a
    :class:`~preimage.visualize.Visualisation` (best restart per unit); returns the JSON dict."""
    from ..io.draw import grid
    from ..io.images import save_image
    images, scores = vis.best()
    tiles = out / "tiles"
    tiles.mkdir(parents=True, exist_ok=True)
    units = []
    for i, (label, im, s) in enumerate(zip(vis.labels, images, scores.tolist())):
        name = f"{i:03d}_{_file_label(label)}.png"
        save_image(im, tiles / name)
        start = float(vis.start_scores.view(-1, vis.units)[:, i].max())
        units.append({"label": label, "activation": s, "start_activation": start,
                      "scale": float(vis.scales[i]), "activation_over_scale": s / float(vis.scales[i]),
                      "tile": f"tiles/{name}"})
    caps = [f"{lab[:18]} {s:.3g}" for lab, s in zip(vis.labels, scores.tolist())]
    grid(list(images), caps, columns=min(8, len(caps)), tile_height=max(96, min(224, images.shape[-2]))).save(
        out / "grid.png")
    result = {**info, "units": units, "settings": vis.settings, "seconds": vis.seconds}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    return result


def cmd_visualize(args) -> int:
    """Entry point of ``preimage visualize``."""
    from ..visualize import visualize
    device = resolve_device(args.device)
    out = output_folder(args.out)
    if args.restarts < 1 or args.iters < 1:
        raise PreimageError("--restarts and --iters must be at least 1")
    layer = args.layer or ("logits" if args.classes else None)
    if not layer:
        raise PreimageError("--layer NAME is needed (see `preimage layers MODEL`), or --class for class images")
    rep, shape = build_layer(load_model(args), layer, args.size)
    objective = _objective(args, rep)
    vis = visualize(rep, objective, image_shape=shape, restarts=args.restarts, param=args.param, jitter=args.jitter,
                    device=device, **optimisation_kwargs(args))
    write_visualisation(out, vis, {"model": args.model, "layer": layer})
    _, scores = vis.best()
    print(f"{args.model} {layer}: {objective.n} units maximised in {vis.seconds:.1f} s, activation "
          f"{float(scores.min()):.3g}–{float(scores.max()):.3g} → {out}")
    return 0

