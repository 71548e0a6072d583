"""``preimage classify IMAGE... --model NAME``: the top ImageNet classes of images (to check that a
model and its weights work)."""

from __future__ import annotations

import argparse
import json

from .common import MODEL_HELP, add_model_options, load_model, model_options


def add_classify_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``classify`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    sp = subparsers.add_parser("classify", help="top-5 ImageNet classes of images under a model")
    sp.add_argument("images", nargs="+")
    sp.add_argument("--model", default="mobilenet_v2", help=MODEL_HELP)
    add_model_options(sp)
    sp.add_argument("--topk", type=int, default=5)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_classify)
    return sp


def cmd_classify(args) -> int:
    """Entry point of ``preimage classify``: print the predictions as text, or as JSON with ``--json``."""
    from ..models.classify import classify_files, format_predictions
    from ..models.mobilenet import MOBILENET_NAMES
    net = None if args.model in MOBILENET_NAMES and not any(model_options(args).values()) else load_model(args)
    results = classify_files(args.images, args.model, topk=args.topk, net=net)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return 0
