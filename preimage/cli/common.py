"""Argument helpers shared by the subcommands: the image and representation to invert (the
*target*), the output folder, the device, lists of numbers.

Every check of user input that the library does not make itself happens here, up front, and
fails with a :class:`~preimage.errors.PreimageError` that :func:`preimage.cli.main` prints as one
line.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import PreimageError

#: Longest image side accepted as is by ``invert`` and ``features`` (``--max-side``).
DEFAULT_MAX_SIDE = 1024


def parse_floats(text: str | None) -> list[float] | None:
    """``"0.5,5,50"`` → ``[0.5, 5.0, 50.0]``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise PreimageError(f"expected comma-separated numbers, got {text!r}") from None


def output_folder(path: str | Path) -> Path:
    """The output folder ``--out``, created when missing. Raises :class:`PreimageError` when the
    path names an existing file or cannot be created."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise PreimageError(f"--out {out}: is a file, not a folder; name a folder (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PreimageError(f"--out {out}: cannot create this folder ({exc.strerror or exc})") from None
    return out


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` (checked by :func:`resolve_device`)."""
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default cpu)")


def resolve_device(text: str | None) -> torch.device | None:
    """Check ``--device`` before any work starts: the ``torch.device`` to run on (``None``: the
    default, CPU). Raises :class:`PreimageError` for an unknown name, CUDA on a PyTorch build
    without CUDA, or a device this machine does not have."""
    if text is None:
        return None
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise PreimageError(f"--device {text!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise PreimageError(f"--device {text}: CUDA is not available in this PyTorch build (it is a CPU-only "
                                "build); use --device cpu, or install a CUDA build of PyTorch")
        if not torch.cuda.is_available():
            raise PreimageError(f"--device {text}: this PyTorch build has CUDA but sees no CUDA device (check "
                                "the driver and CUDA_VISIBLE_DEVICES); use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise PreimageError(f"--device {text}: this machine has {count} CUDA device(s), cuda:0 to "
                                f"cuda:{count - 1}")
        return dev
    try:  # mps, xpu, …: ask the backend itself
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError, AttributeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise PreimageError(f"--device {text}: not available here ({reason}); use --device cpu") from None
    return dev


def add_target_arguments(parser: argparse.ArgumentParser, image_optional: bool = True) -> None:
    """Add the arguments naming what to invert: IMAGE, ``--rep`` or ``--model``/``--layer``/
    ``--weights``, ``--colour``, ``--max-side`` (read by :func:`build_target`)."""
    parser.add_argument("image", nargs="?" if image_optional else None,
                        help="image file (default: a sample image bundled with scikit-image)")
    parser.add_argument("--rep", help="shallow representation: hog, hogb, dsift (default hog)")
    parser.add_argument("--model", help=MODEL_HELP)
    parser.add_argument("--layer", help="layer of --model to invert (see `preimage layers MODEL`)")
    add_model_options(parser)
    parser.add_argument("--colour", "--color", action="store_true",
                        help="invert HOG from the colour image (default: grey, as the paper)")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help=f"downscale larger images to this longest side (default {DEFAULT_MAX_SIDE})")


#: ``--model``'s help: every kind of model it takes.
MODEL_HELP = ("CNN: caffenet, mobilenet_v2, mobilenet_v2_tf2, mobilenet_v1, mobilenet_v1_small, torchvision:NAME, "
              "a .onnx or .tflite file (path, or a file name on the model search path), or "
              "package.module:factory (see `preimage models`)")


def add_model_options(parser: argparse.ArgumentParser, weights: bool = True) -> None:
    """Add the options that say where a ``--model`` is found and how it preprocesses images:
    ``--model-dir``, ``--weights``, ``--preprocess``, ``--channel-order``, ``--scale``, ``--mean``,
    ``--std``, ``--input-size`` (read by :func:`load_model`)."""
    from ..models.preprocess import PRESETS
    g = parser.add_argument_group("model options")
    g.add_argument("--model-dir", action="append", metavar="DIR",
                   help="folder searched first for model files (repeatable; also PREIMAGE_MODELS, the shared "
                        "data's models/, ~/.cache/preimage/models)")
    if weights:
        g.add_argument("--weights", help="weights: caffenet's or a package.module:factory network's (safetensors, "
                                         "or a state dict read with torch.load(weights_only=True))")
    g.add_argument("--preprocess", choices=sorted(PRESETS),
                   help="how an imported network (.onnx, float .tflite, factory) wants its input: caffe (BGR, "
                        "0–255, mean-subtracted), torchvision (RGB 0–1, ImageNet mean/std), tf (RGB to [-1, 1]), "
                        "raw (RGB 0–255); default: the file's metadata, else torchvision")
    g.add_argument("--channel-order", choices=["RGB", "BGR"], type=str.upper, help="override the channel order")
    g.add_argument("--scale", help="override the pixel scale: 0-255, 0-1, or a number such as 1/255")
    g.add_argument("--mean", help="override the mean subtracted after scaling (1 or 3 numbers, model channel order)")
    g.add_argument("--std", help="override the std divided by after the mean (1 or 3 numbers)")
    g.add_argument("--input-size", help="H,W the network runs at (needed for ONNX files with a dynamic size)")


def model_options(args) -> dict:
    """Keyword arguments for :func:`preimage.models.get_model` from :func:`add_model_options`'
    arguments (absent ones are skipped, so any parser works)."""
    prep = {"preset": getattr(args, "preprocess", None), "order": getattr(args, "channel_order", None),
            "scale": getattr(args, "scale", None), "mean": getattr(args, "mean", None),
            "std": getattr(args, "std", None)}
    return {"weights": getattr(args, "weights", None), "model_dir": getattr(args, "model_dir", None) or None,
            "preprocess": prep if any(v is not None for v in prep.values()) else None,
            "input_size": getattr(args, "input_size", None)}


def export_model_dirs(dirs) -> None:
    """Put ``--model-dir`` folders in front of ``PREIMAGE_MODELS``, so worker processes (Dask)
    started from here find the same files."""
    import os
    if dirs:
        old = os.environ.get("PREIMAGE_MODELS")
        os.environ["PREIMAGE_MODELS"] = os.pathsep.join([str(d) for d in dirs] + ([old] if old else []))


def load_model(args, name: str | None = None) -> torch.nn.Module:
    """The model of ``--model`` (or ``name``) with the options of :func:`add_model_options`: the one
    place the CLI resolves models (names, .onnx/.tflite paths, ``package.module:factory``).
    Raises :class:`PreimageError` (one line) for anything wrong with it."""
    from ..models import get_model
    spec = name if name is not None else getattr(args, "model", None)
    if not spec:
        raise PreimageError("no model given (--model NAME, PATH.onnx, PATH.tflite or package.module:factory)")
    opts = model_options(args)
    export_model_dirs(opts["model_dir"])
    try:
        return get_model(spec, **opts)
    except ImportError as exc:
        raise PreimageError(f"--model {spec}: a package it needs is missing ({exc}); "
                            "pip install onnx for .onnx files, tflite for .tflite files") from None


def load_input(path: str | None, mode: str, max_side: int | None) -> tuple[torch.Tensor, str]:
    """The image to invert: ``(C, H, W)`` on 0–255 (``mode`` ``"rgb"`` or ``"grey"``), downscaled
    to ``max_side`` (said on stderr), and its name. No path: scikit-image's astronaut."""
    from ..io.images import default_image, limit_side, load_image
    if path is None:
        img, name = default_image(mode)
        print(f"preimage: no image given, using scikit-image's '{name}' sample", file=sys.stderr)
        return img, name
    img = load_image(path, mode=mode)
    small = limit_side(img, max_side)
    if small.shape != img.shape:
        (h, w), (sh, sw) = img.shape[-2:], small.shape[-2:]
        print(f"preimage: {path} is {h}×{w}; downscaled to {sh}×{sw} (--max-side {max_side})", file=sys.stderr)
    return small, Path(path).stem


@dataclass
class Target:
    """What a command inverts or encodes.

    Attributes:
        representation: the :class:`~preimage.representations.base.Representation` Φ.
        image: ``(C, H, W)`` on 0–255 (a grey placeholder of the right size when inverting a saved
            code without its image).
        name: the image's name (file stem) for messages and ``result.json``.
        info: what ``result.json`` records about Φ: ``{"rep": …}`` or ``{"model": …, "layer": …}``.
    """

    representation: torch.nn.Module
    image: torch.Tensor
    name: str
    info: dict = field(default_factory=dict)


def parse_size(text: str, flag: str = "--image-size") -> tuple[int, int]:
    """``"64,72"`` or ``"64x72"`` → ``(64, 72)`` (positive); :class:`PreimageError` naming ``flag``."""
    try:
        h, w = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise PreimageError(f"{flag} must be H,W, got {text!r}") from None
    if min(h, w) < 1:
        raise PreimageError(f"{flag} must be H,W, got {text!r}")
    return h, w


def _cnn_target(args) -> Target:
    """A CNN layer (``--model``/``--layer``) and the RGB image, resized to the network's input."""
    from ..io.images import resize
    from ..representations.cnn import CNNLayer
    if not args.layer:
        raise PreimageError("--model needs --layer NAME (see `preimage layers MODEL`)")
    from ..models import model_settings
    net = load_model(args)
    rep = CNNLayer(net, args.layer, grad_leak=getattr(args, "grad_leak", None))  # outside [0, 1): ValueError
    img, name = load_input(args.image, "rgb", None)
    if rep.input_size:
        img = resize(img, tuple(rep.input_size))
    return Target(rep, img, name, {"model": args.model, "layer": args.layer, "model_settings": model_settings(net)})


def build_target(args) -> Target:
    """The representation and image named by the arguments of :func:`add_target_arguments` (and,
    for ``invert --code`` without an image, ``--image-size``), checked against each other."""
    from ..representations import get_representation
    if args.model:
        return _cnn_target(args)
    if getattr(args, "grad_leak", 0.0):
        raise PreimageError("--grad-leak applies to network layers (--model/--layer), not to HOG or DSIFT")
    rep_name = args.rep or "hog"
    rep = get_representation(rep_name)
    mode = "rgb" if getattr(args, "colour", False) and rep_name != "dsift" else "grey"
    size = getattr(args, "image_size", None)
    if getattr(args, "code", None) and args.image is None and size:
        h, w = parse_size(size)
        img, name = torch.full((3 if mode == "rgb" else 1, h, w), 128.0), Path(args.code).stem
    else:
        img, name = load_input(args.image, mode, args.max_side)
    rep.check_input(img[None])
    return Target(rep, img, name, {"rep": rep_name})
