"""The ``preimage`` command: a thin shell over the library.

    preimage invert [IMAGE] --rep hog|hogb|dsift [--method optim|hoggle] --out DIR
    preimage invert [IMAGE] --model mobilenet_v2 --layer NAME [--neighbourhood 5] [--channels first-half]
    preimage features IMAGE --rep hog --out codes.npy
    preimage evaluate [--reps hog,hogb,dsift,hoggle] [--limit N]     (the paper's Table 1)
    preimage layers MODEL
    preimage classify IMAGE... --model NAME [--json]
    preimage hoggle train [--out FILE]
    preimage reproduce [--quick] [--only table1,table3,fig5,…] [--scheduler ADDRESS] --out DIR

Errors meant for users are printed as one line (``preimage: error: …``) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from .errors import PreimageError

DEFAULT_MAX_SIDE = 1024


def _parse_floats(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PreimageError(f"expected comma-separated numbers, got {text!r}") from None


def _limit_size(img: torch.Tensor, max_side: int | None, name: str) -> torch.Tensor:
    h, w = img.shape[-2:]
    if max_side and max(h, w) > max_side:
        scale = max_side / max(h, w)
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        print(f"preimage: {name} is {h}×{w}; downscaled to {size[0]}×{size[1]} (--max-side {max_side})",
              file=sys.stderr)
        img = torch.nn.functional.interpolate(img[None], size=size, mode="bilinear", antialias=True,
                                              align_corners=False)[0]
    return img


def _load_input(path: str | None, mode: str, max_side: int | None) -> tuple[torch.Tensor, str]:
    from .imageio import default_image, load_image
    if path is None:
        img, name = default_image(mode)
        print(f"preimage: no image given, using scikit-image's '{name}' sample", file=sys.stderr)
        return img, name
    img = load_image(path, mode=mode)
    return _limit_size(img, max_side, path), Path(path).stem


# ----------------------------------------------------------------------------------------------
# invert
# ----------------------------------------------------------------------------------------------

def _build_target_rep(args):
    """(representation, image (C,H,W) on 0–255, name, extra info dict) for the invert/features commands."""
    from .representations import get_representation
    if args.model:
        from .models import get_model
        from .representations.cnn import CNNLayer
        if not args.layer:
            raise PreimageError("--model needs --layer NAME (see `preimage layers MODEL`)")
        model = get_model(args.model, weights=getattr(args, "weights", None))
        rep = CNNLayer(model, args.layer)
        img, name = _load_input(args.image, "rgb", None)
        size = tuple(rep.input_size) if rep.input_size else tuple(img.shape[-2:])
        if tuple(img.shape[-2:]) != size:
            img = torch.nn.functional.interpolate(img[None], size=size, mode="bilinear", antialias=True,
                                                  align_corners=False)[0].clamp(0, 255)
        return rep, img, name, {"model": args.model, "layer": args.layer, "network": model}
    rep_name = args.rep or "hog"
    rep = get_representation(rep_name)
    mode = "rgb" if getattr(args, "colour", False) and rep_name != "dsift" else "grey"
    size = getattr(args, "image_size", None)
    if getattr(args, "code", None) and args.image is None and size:
        try:
            h, w = (int(v) for v in size.lower().replace("x", ",").split(","))
        except ValueError:
            raise PreimageError(f"--image-size must be H,W, got {size!r}") from None
        img, name = torch.full((3 if mode == "rgb" else 1, h, w), 128.0), Path(args.code).stem
        rep.check_input(img[None])
        return rep, img, name, {"rep": rep_name}
    img, name = _load_input(args.image, mode, args.max_side)
    rep.check_input(img[None])
    return rep, img, name, {"rep": rep_name}


def cmd_invert(args) -> int:
    from . import imageio
    from .invert import invert
    from .objective import central_window_mask, channel_mask
    from .visualize import draw_box, grid

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rep, img, name, info = _build_target_rep(args)

    if args.method == "hoggle":
        if info.get("rep") != "hog":
            raise PreimageError("--method hoggle inverts HOG only (use --rep hog)")
        from .hoggle import hoggle_invert_image, load_or_train_default
        dictionary = load_or_train_default(progress=not args.no_progress)
        import time
        t0 = time.perf_counter()
        recon = hoggle_invert_image(img, dictionary)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            c0, c1 = rep(img[None]), rep(recon[None])
        from .metrics import relative_error
        err = float(relative_error(c1, c0)[0])
        imageio.save_image(img, out / "original.png")
        imageio.save_image(recon, out / "reconstruction.png")
        from .glyph import hog_glyph
        grid([img, hog_glyph(c0[0]), recon], ["original", "HOG", f"HOGgle ({100 * err:.1f}%)"]
             ).save(out / "summary.png")
        (out / "result.json").write_text(json.dumps(
            {"image": name, "method": "hoggle", "relative_error": err, "seconds": seconds}, indent=2))
        print(f"{name}: HOGgle relative error {100 * err:.1f}% in {seconds:.2f} s → {out}")
        return 0

    if args.code:
        target = _load_code(args.code, rep, img)
    else:
        with torch.no_grad():
            target = rep(img[None])
    mask = None
    if args.neighbourhood:
        mask = central_window_mask(target.shape[1:], args.neighbourhood)
    if args.channels:
        cm = channel_mask(target.shape[1:], args.channels)
        mask = cm if mask is None else mask * cm
    lam_tv = _parse_floats(args.lambda_tv)
    if lam_tv is None and args.model:
        from .representations.cnn import paper_lambda_tv
        lam_tv = [paper_lambda_tv(rep.relative_depth)]
    res = invert(rep, None if args.code else img[None], target=target if args.code else None,
                 image_shape=tuple(img.shape), restarts=args.restarts, lambda_tv=lam_tv,
                 lambda_alpha=_parse_floats(args.lambda_alpha), beta=args.beta, iterations=args.iters,
                 lr=args.lr, method=args.optimizer, mask=mask, seed=args.seed, device=args.device,
                 progress=not args.no_progress, checkpoint=out / ".checkpoint" / "state")
    recon = res.reconstructions[0]  # (R, K, C, H, W)
    tiles, captions = [], []
    if not (args.code and args.image is None):
        imageio.save_image(img, out / "original.png")
        tiles, captions = [img], ["original"]
    if info.get("rep") in ("hog", "hogb"):
        from .glyph import hog_glyph
        tiles.append(hog_glyph(target[0].cpu()))
        captions.append("HOG glyphs")
    box = None
    if args.neighbourhood and args.model:
        from .models.receptive_field import receptive_field_box
        top, left, bottom, right = receptive_field_box(info["network"], args.layer, n=args.neighbourhood)
        box = (top, left, bottom - 1, right - 1)  # exclusive → inclusive bounds for drawing
    R, K = recon.shape[:2]
    for r in range(R):
        for k in range(K):
            suffix = ("" if R == 1 else f"_r{r}") + ("" if K == 1 else f"_tv{res.lambda_tv[k]:g}")
            shown = imageio.stretch(recon[r, k])
            imageio.save_image(shown, out / f"reconstruction{suffix}.png")
            imageio.save_image(recon[r, k], out / f"reconstruction{suffix}_raw.png")
            tiles.append(draw_box(shown, box) if box else shown)
            err = float(res.relative_errors[0, r, k])
            captions.append(f"λV={res.lambda_tv[k]:g} r{r}: {100 * err:.1f}%")
    grid(tiles, captions, columns=min(len(tiles), 6)).save(out / "summary.png")
    from safetensors.torch import save_file
    save_file({"reconstructions": res.reconstructions.contiguous(), "target": res.targets.contiguous()},
              str(out / "reconstructions.safetensors"))
    result = {"image": name, **{k: v for k, v in info.items() if k != "network"}, "settings": res.settings,
              "relative_errors": res.relative_errors[0].tolist(),
              "energy": {k: v[0].tolist() for k, v in res.energy.items()}, "seconds": res.seconds}
    (out / "result.json").write_text(json.dumps(result, indent=2))
    best = float(res.relative_errors.min())
    print(f"{name}: relative code error {100 * best:.2f}% (best of {R * K}) in {res.seconds:.1f} s → {out}")
    return 0


def _load_code(path: str, rep, img: torch.Tensor) -> torch.Tensor:
    """A target code saved by `preimage features` (.npy, no pickles), checked against the
    representation's code shape for an image of ``img``'s size."""
    import numpy as np
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PreimageError(f"{path}: cannot read a code from this file ({exc}); expected a .npy array") from None
    code = torch.from_numpy(np.asarray(arr, dtype=np.float32))
    with torch.no_grad():
        expected = tuple(rep(img[None]).shape[1:])
    if tuple(code.shape) != expected:
        raise PreimageError(f"{path}: code of shape {tuple(code.shape)} does not match the {expected} that "
                            f"this representation gives for a {img.shape[-2]}×{img.shape[-1]} image "
                            "(pass --image-size H,W or the original image)")
    return code[None]


def cmd_features(args) -> int:
    import numpy as np
    rep, img, name, _ = _build_target_rep(args)
    with torch.no_grad():
        code = rep(img[None])[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, code.cpu().numpy())
    print(f"{name}: code of shape {tuple(code.shape)} → {out}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import BatchCache, evaluate_cnn_layers, evaluate_shallow, format_cnn_table, format_table1
    cache_dir = args.resume_dir or (f"{args.out}.parts" if args.out else None)
    if cache_dir and Path(cache_dir).is_dir() and any(Path(cache_dir).glob("*.safetensors")):
        print(f"preimage: resuming from the finished batches in {cache_dir}", file=sys.stderr)
    if args.model:
        layers = [s.strip() for s in args.layers.split(",")] if args.layers else None
        result = evaluate_cnn_layers(args.model, layers=layers, limit=args.limit, iterations=args.iters,
                                     lr=args.lr, lambda_tv=args.cnn_lambda_tv, progress=not args.no_progress,
                                     cache_dir=cache_dir)
        table = format_cnn_table(result)
    else:
        reps = [r.strip() for r in args.reps.split(",") if r.strip()]
        result = evaluate_shallow(reps, limit=args.limit, iterations=args.iters, lr=args.lr,
                                  lambda_tv=args.lambda_tv, progress=not args.no_progress, max_side=args.max_side,
                                  cache_dir=cache_dir)
        table = format_table1(result)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        if not args.resume_dir:  # the default folder beside --out is only for resuming this run
            BatchCache(cache_dir).clear()
    return 0


def cmd_layers(args) -> int:
    from .models.layers_table import format_layers
    print(format_layers(args.model))
    return 0


def cmd_classify(args) -> int:
    from .classify import classify_files, format_predictions
    results = classify_files(args.images, args.model, topk=args.topk)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return 0


def cmd_hoggle_train(args) -> int:
    from .hoggle import train_command
    train_command(args.out, n_atoms=args.atoms, alpha=args.alpha, seed=args.seed, max_images=args.max_images)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="preimage", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def add_target(sp, with_image_optional=True):
        sp.add_argument("image", nargs="?" if with_image_optional else None,
                        help="image file (default: a sample image bundled with scikit-image)")
        sp.add_argument("--rep", help="shallow representation: hog, hogb, dsift (default hog)")
        sp.add_argument("--model", help="CNN: caffenet, mobilenet_v2, mobilenet_v2_tf2, mobilenet_v1, "
                                        "mobilenet_v1_small, torchvision:NAME")
        sp.add_argument("--layer", help="layer of --model to invert (see `preimage layers MODEL`)")
        sp.add_argument("--weights", help="weights file for caffenet (safetensors or a state dict)")
        sp.add_argument("--colour", "--color", action="store_true",
                        help="invert HOG from the colour image (default: grey, as the paper)")
        sp.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help=f"downscale larger images to this longest side (default {DEFAULT_MAX_SIDE})")

    sp = sub.add_parser("invert", help="reconstruct an image from its code")
    add_target(sp)
    sp.add_argument("--code", help="invert a code saved by `preimage features` (.npy) instead of an image's")
    sp.add_argument("--image-size", help="H,W of the image to reconstruct from --code (default: IMAGE's size)")
    sp.add_argument("--method", choices=["optim", "hoggle"], default="optim",
                    help="optim: the paper's method (default); hoggle: the paired-dictionary baseline")
    sp.add_argument("--lambda-tv", help="TV weight(s), comma-separated for a batched sweep "
                                        "(default: the paper's, scaled to the image size)")
    sp.add_argument("--lambda-alpha", help="α-norm weight(s) (default: the paper's 2.16e8, scaled)")
    sp.add_argument("--beta", type=float, default=2.0, help="TV exponent β (default 2; 1 = classic TV)")
    sp.add_argument("--iters", type=int, help="iterations (default: 800 shallow, 400 CNN)")
    sp.add_argument("--lr", type=float, help="base learning rate (default: per representation)")
    sp.add_argument("--optimizer", choices=["momentum", "adam", "lbfgs"], default="momentum")
    sp.add_argument("--restarts", type=int, default=1, help="random restarts, optimised as one batch")
    sp.add_argument("--neighbourhood", "--neighborhood", type=int,
                    help="invert only the central n×n window of the code")
    sp.add_argument("--channels", help="invert a channel subset: first-half, second-half or a:b")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", help="cpu, cuda, cuda:1 … (default cpu)")
    sp.add_argument("--out", default="preimage-out", help="output folder (default ./preimage-out)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_invert)

    sp = sub.add_parser("features", help="compute and save an image's code (.npy)")
    add_target(sp, with_image_optional=False)
    sp.add_argument("--out", required=True, help="output .npy file")
    sp.set_defaults(func=cmd_features)

    sp = sub.add_parser("evaluate", help="Table 1 (shallow) or a per-layer CNN table over the eval set")
    sp.add_argument("--reps", default="hog,hogb,dsift", help="comma-separated: hog, hogb, dsift, hoggle")
    sp.add_argument("--model", help="evaluate this CNN's layers instead (e.g. mobilenet_v2)")
    sp.add_argument("--layers", help="comma-separated layers of --model (default: its blocks)")
    sp.add_argument("--cnn-lambda-tv", type=float, help="one TV weight for every layer (default: by depth)")
    sp.add_argument("--limit", type=int, help="only N eval images, spread evenly over the (class-sorted) set")
    sp.add_argument("--iters", type=int, help="iterations per inversion (default 800)")
    sp.add_argument("--lr", type=float)
    sp.add_argument("--lambda-tv", type=float, default=5.0, help="TV weight (default 5, the paper's Table 1)")
    sp.add_argument("--max-side", type=int, default=None, help="downscale eval images (default: native size)")
    sp.add_argument("--out", help="write the results as JSON here; finished batches are kept in OUT.parts "
                                  "until then, so an interrupted run resumes when given the same --out")
    sp.add_argument("--resume-dir", help="keep finished batches in this folder instead (kept afterwards)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("layers", help="list a model's invertible layers with receptive fields")
    sp.add_argument("model")
    sp.set_defaults(func=cmd_layers)

    sp = sub.add_parser("classify", help="top-5 ImageNet classes of images under a model")
    sp.add_argument("images", nargs="+")
    sp.add_argument("--model", default="mobilenet_v2")
    sp.add_argument("--topk", type=int, default=5)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_classify)

    from .reproduce import add_reproduce_parser
    add_reproduce_parser(sub)

    sp = sub.add_parser("hoggle", help="the HOGgle baseline")
    hsub = sp.add_subparsers(dest="hoggle_command", required=True)
    tp = hsub.add_parser("train", help="learn the paired dictionary on the shared train images")
    tp.add_argument("--out", help="dictionary file (default: the cache used by --method hoggle)")
    tp.add_argument("--atoms", type=int, default=1000)
    tp.add_argument("--alpha", type=float, default=0.02)
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--max-images", type=int)
    tp.set_defaults(func=cmd_hoggle_train)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PreimageError as exc:
        print(f"preimage: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, FloatingPointError) as exc:
        print(f"preimage: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preimage: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
