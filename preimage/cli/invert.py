"""``preimage invert``: reconstruct an image from its code (the paper's method, or HOGgle).

Writes into ``--out``: ``original.png``, ``reconstruction[_rR][_tvλ].png`` (min–max stretched)
and ``…_raw.png``, ``summary.png``, ``reconstructions.safetensors`` and ``result.json`` (see
:func:`preimage.io.artefacts.write_inversion`). While it runs, the optimiser's state is kept in
``OUT/.checkpoint/`` so that an interrupted run resumes when the same command is run again; a
finished run removes it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from ..errors import PreimageError
from ..optim import DEFAULT_WINDOW
from ..params import PARAMETERISATIONS
from .common import (Target, add_device_argument, add_target_arguments, build_target, output_folder,
                     parse_floats, resolve_device)

#: The optimiser's state inside ``--out`` while a run is unfinished.
CHECKPOINT_DIR = ".checkpoint"


def add_invert_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``invert`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    sp = subparsers.add_parser("invert", help="reconstruct an image from its code")
    add_target_arguments(sp)
    sp.add_argument("--code", help="invert a code saved by `preimage features` (.npy) instead of an image's")
    sp.add_argument("--image-size", help="H,W of the image to reconstruct from --code (default: IMAGE's size)")
    sp.add_argument("--method", choices=["optim", "paper", "hoggle"], default="optim",
                    help="optim: optimisation with --param/--optimizer/--jitter (default); paper: exactly the "
                         "paper's method (pixels, momentum, its schedule and λ, no jitter); hoggle: the "
                         "paired-dictionary baseline")
    sp.add_argument("--param", choices=sorted(PARAMETERISATIONS),
                    help="how the image is parameterised: pixel (the paper's; default for HOG and DSIFT), "
                         "fourier (colour-decorrelated Fourier image; default for CNN layers), dip (Deep "
                         "Image Prior generator)")
    sp.add_argument("--jitter", help="shift the image the code sees by up to N pixels each step "
                                     "(IJCV 2016); 'auto': a quarter of the code's stride")
    sp.add_argument("--lambda-tv", help="TV weight(s), comma-separated for a batched sweep "
                                        "(default: the paper's, scaled to the image size)")
    sp.add_argument("--lambda-alpha", help="α-norm weight(s) (default: the paper's 2.16e8, scaled)")
    sp.add_argument("--beta", type=float, default=2.0, help="TV exponent β (default 2; 1 = classic TV)")
    sp.add_argument("--iters", type=int, help="iterations (default: 800 shallow, 400 CNN, 2000 for a deep layer whose code "
                                              "is clipped, e.g. conv_last; the stages are rescaled to N)")
    sp.add_argument("--lr", type=float, help="base learning rate (default: per representation)")
    sp.add_argument("--optimizer", choices=["momentum", "adam", "lbfgs"],
                    help="default: the representation's recipe (pixel: the paper's momentum; a CNN layer's "
                         "fourier image: L-BFGS, Adam with --jitter or past 90 %% of the depth; dip: Adam)")
    sp.add_argument("--restarts", type=int, default=1, help="random restarts, optimised as one batch")
    sp.add_argument("--grad-leak", type=float, default=None,
                    help="--model layers: let this fraction of the gradient through where a ReLU/ReLU6 clips; "
                         "the code is unchanged (default 0.05, chosen on train/: MobileNet v2 conv_last "
                         "32.6 %% → 25.6 %%; 0: the exact gradient; --method paper always uses the exact one)")
    sp.add_argument("--tol", type=float, help="stop each sample early: when its energy improved by less than "
                                              "this fraction over --window iterations it moves to its next "
                                              "stage, after the last it stops (default: off, full schedule)")
    sp.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                    help=f"iterations over which --tol measures the improvement (default {DEFAULT_WINDOW})")
    sp.add_argument("--neighbourhood", "--neighborhood", type=int,
                    help="invert only the central n×n window of the code")
    sp.add_argument("--channels", help="invert a channel subset: first-half, second-half or a:b")
    sp.add_argument("--seed", type=int, default=0)
    add_device_argument(sp)
    sp.add_argument("--out", default="preimage-out", help="output folder (default ./preimage-out)")
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_invert)
    return sp


def cmd_invert(args) -> int:
    """Entry point of ``preimage invert``: check the device and output folder, build the target,
    invert it, write the artefacts, remove the finished run's checkpoint."""
    device = resolve_device(args.device)
    target = build_target(args)  # before --out is created: a bad model or image writes nothing
    out = output_folder(args.out)
    if args.method == "hoggle":
        return _invert_hoggle(args, target, out)
    result = _invert_optim(args, target, out, device)
    _write_optim(args, target, out, result)
    shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
    best = float(result.relative_errors.min())
    count = result.relative_errors[0].numel()  # R restarts × K settings
    print(f"{target.name}: relative code error {100 * best:.2f}% (best of {count}) in {result.seconds:.1f} s "
          f"→ {out}")
    return 0


def _invert_optim(args, target: Target, out: Path, device: torch.device | None):
    """The paper's method on the target's code (or on ``--code``), masked by ``--neighbourhood``
    and ``--channels``; resumes from ``OUT/.checkpoint/``. Returns the :class:`preimage.invert.Inversion`."""
    from ..invert import invert
    from ..masks import code_mask
    rep, img = target.representation, target.image
    if args.code:
        code = _load_code(args.code, rep, img)
    else:
        with torch.no_grad():
            code = rep(img[None])
    mask = code_mask(code.shape[1:], args.neighbourhood, args.channels)
    paper = args.method == "paper"
    if paper and (args.param not in (None, "pixel") or args.jitter or args.optimizer not in (None, "momentum")
                  or args.grad_leak):
        raise PreimageError("--method paper is the paper's own method: pixels, momentum, no jitter, the exact "
                            "gradient; drop --param/--jitter/--optimizer/--grad-leak or use --method optim")
    return invert(rep, None if args.code else img[None], target=code if args.code else None,
                  image_shape=tuple(img.shape), restarts=args.restarts, lambda_tv=parse_floats(args.lambda_tv),
                  lambda_alpha=parse_floats(args.lambda_alpha), beta=args.beta, iterations=args.iters,
                  lr=args.lr, method="paper" if paper else args.optimizer, mask=mask, seed=args.seed, device=device,
                  progress=not args.no_progress, checkpoint=out / CHECKPOINT_DIR / "state",
                  param=args.param, jitter=args.jitter, tol=args.tol, window=args.window)


def _write_optim(args, target: Target, out: Path, result) -> None:
    """Write the inversion's files (:func:`preimage.io.artefacts.write_inversion`): the code's
    picture from the representation, the receptive-field box of ``--neighbourhood`` when known."""
    from ..io.artefacts import inversion_pictures, write_inversion
    rep = target.representation
    box = rep.receptive_field_box(args.neighbourhood) if args.neighbourhood else None
    originals = None if (args.code and args.image is None) else target.image[None]
    pictures = inversion_pictures(result, originals, code_picture=rep.render_code, box=box, images=[0])
    write_inversion(out, result, pictures, {"image": target.name, **target.info},
                    code_caption=f"{rep.name} code")


def _load_code(path: str, rep, img: torch.Tensor) -> torch.Tensor:
    """A target code saved by ``preimage features`` (.npy, no pickles) → ``(1, *code_shape)``,
    checked against the representation's code shape for an image of ``img``'s size ``(C, H, W)``."""
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


def _invert_hoggle(args, target: Target, out: Path) -> int:
    """``--method hoggle``: the paired-dictionary baseline on the image's HOG. Writes
    ``original.png``, ``reconstruction.png``, ``summary.png`` and ``result.json``."""
    from types import SimpleNamespace

    from ..baselines.hoggle import hoggle_invert_image, load_or_train_default
    from ..io.artefacts import inversion_pictures, picture_name
    from ..io.draw import grid
    from ..io.images import save_image
    from ..metrics import relative_error
    if target.info.get("rep") != "hog":
        raise PreimageError("--method hoggle inverts HOG only (use --rep hog)")
    rep, img = target.representation, target.image
    dictionary = load_or_train_default(progress=not args.no_progress)
    t0 = time.perf_counter()
    recon = hoggle_invert_image(img, dictionary)  # (1, H, W), already min–max stretched
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        c0, c1 = rep(img[None]), rep(recon[None])
    err = float(relative_error(c1, c0)[0])
    result = SimpleNamespace(reconstructions=recon[None, None, None], targets=c0)  # (N, R, K, C, H, W)
    pictures = inversion_pictures(result, img[None], code_picture=rep.render_code, raw=True)
    original, code, shown = (pictures[picture_name(kind)] for kind in ("original", "code", "raw"))
    save_image(original, out / "original.png")
    save_image(shown, out / "reconstruction.png")
    grid([original, code, shown], ["original", "HOG", f"HOGgle ({100 * err:.1f}%)"]).save(out / "summary.png")
    (out / "result.json").write_text(json.dumps(
        {"image": target.name, "method": "hoggle", "relative_error": err, "seconds": seconds}, indent=2))
    print(f"{target.name}: HOGgle relative error {100 * err:.1f}% in {seconds:.2f} s → {out}")
    return 0
