"""``preimage caricature``: exaggerate what a network layer sees in an image (IJCV 2016's caricature:
start from the image and maximise the inner product with its rectified, normalised code).

    preimage caricature IMAGE --model mobilenet_v2 --layer block10_add --out DIR
    preimage caricature IMAGE --model mobilenet_v2 --layer block3_add,block10_add --out DIR

Writes into ``--out``: ``original.png`` (the image as the network sees it, centre-cropped to its
input size), ``caricature[_LAYER].png`` per layer, ``summary.png`` (the original beside the
caricatures) and ``result.json`` (per layer: the inner product at the image, 1 by construction,
and reached).
"""

from __future__ import annotations

import argparse
import json

from ..errors import PreimageError
from ..params import PARAMETERISATIONS
from .common import MODEL_HELP, add_model_options, load_input, load_model, output_folder, resolve_device
from .visualize import add_optimisation_arguments, build_layer, optimisation_kwargs


def add_caricature_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``caricature`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    sp = subparsers.add_parser("caricature", help="exaggerate what a layer sees in an image (IJCV 2016)")
    sp.add_argument("image", nargs="?", help="image file (default: a sample image bundled with scikit-image)")
    sp.add_argument("--model", required=True, help=MODEL_HELP)
    sp.add_argument("--layer", required=True, help="layer, or a comma list of layers (see `preimage layers MODEL`)")
    add_model_options(sp)
    sp.add_argument("--param", choices=sorted(PARAMETERISATIONS), default="pixel",
                    help="image parameterisation: pixel (IJCV's, default), fourier, dip")
    add_optimisation_arguments(sp)
    sp.set_defaults(func=cmd_caricature)
    return sp


def cmd_caricature(args) -> int:
    """Entry point of ``preimage caricature``: one caricature per ``--layer``."""
    from ..io.draw import grid
    from ..io.images import resize_and_crop, save_image
    from ..visualize import caricature
    device = resolve_device(args.device)
    out = output_folder(args.out)
    layers = [t.strip() for t in args.layer.split(",") if t.strip()]
    if not layers:
        raise PreimageError("--layer names no layer")
    net = load_model(args)  # loaded once, shared by the layers
    reps = [build_layer(net, layer, None) for layer in layers]  # unknown layers fail before any work
    img, name = load_input(args.image, "rgb", None)
    shape = reps[0][1]
    img = resize_and_crop(img, shape[1:]).clamp(0, 255)
    save_image(img, out / "original.png")
    tiles, caps, rows = [img], ["original"], []
    for layer, (rep, _) in zip(layers, reps):
        vis = caricature(rep, img[None], param=args.param, jitter=args.jitter, device=device,
                         **optimisation_kwargs(args))
        file = "caricature.png" if len(layers) == 1 else f"caricature_{layer}.png"
        save_image(vis.images[0], out / file)
        start, end = float(vis.start_scores[0]), float(vis.scores[0])
        rows.append({"layer": layer, "file": file, "inner_product_start": start, "inner_product": end,
                     "gain": end / start if start > 0 else None, "seconds": vis.seconds, "settings": vis.settings})
        tiles.append(vis.images[0])
        caps.append(f"{layer} ×{end / start:.2f}" if start > 0 else layer)
        print(f"{name} {layer}: inner product with the image's code {start:.3g} → {end:.3g} in {vis.seconds:.1f} s")
    grid(tiles, caps, tile_height=224).save(out / "summary.png")
    (out / "result.json").write_text(json.dumps({"image": name, "model": args.model, "layers": rows}, indent=2))
    print(f"→ {out}")
    return 0
