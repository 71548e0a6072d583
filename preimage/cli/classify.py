"""``preimage classify IMAGE... --model NAME``: the top ImageNet classes of images (to check that a
model and its weights work)."""

from __future__ import annotations

import argparse
import json


def add_classify_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``classify`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    sp = subparsers.add_parser("classify", help="top-5 ImageNet classes of images under a model")
    sp.add_argument("images", nargs="+")
    sp.add_argument("--model", default="mobilenet_v2")
    sp.add_argument("--topk", type=int, default=5)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_classify)
    return sp


def cmd_classify(args) -> int:
    """Entry point of ``preimage classify``: print the predictions as text, or as JSON with ``--json``."""
    from ..models.classify import classify_files, format_predictions
    results = classify_files(args.images, args.model, topk=args.topk)
    print(json.dumps(results, indent=2) if args.json else format_predictions(results))
    return 0
