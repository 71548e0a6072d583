"""``preimage features``: compute an image's code and save it as a ``.npy`` array (no pickles),
which ``preimage invert --code`` reads back."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .common import add_target_arguments, build_target


def add_features_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``features`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    sp = subparsers.add_parser("features", help="compute and save an image's code (.npy)")
    add_target_arguments(sp, image_optional=False)
    sp.add_argument("--out", required=True, help="output .npy file")
    sp.set_defaults(func=cmd_features)
    return sp


def cmd_features(args) -> int:
    """Entry point of ``preimage features``: the code ``(D, h, w)`` (no batch axis) of IMAGE under
    ``--rep`` or ``--model``/``--layer``, as float32 ``.npy``."""
    import numpy as np
    target = build_target(args)
    with torch.no_grad():
        code = target.representation(target.image[None])[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, code.cpu().numpy())
    print(f"{target.name}: code of shape {tuple(code.shape)} → {out}")
    return 0
