"""``preimage evaluate``: the paper's Table 1 (shallow representations) or a per-layer table of a
CNN over the eval images, resumable through the finished batches kept beside ``--out``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import PreimageError
from .common import add_model_options, model_options


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    sp = subparsers.add_parser("evaluate", help="Table 1 (shallow) or a per-layer CNN table over the eval set")
    sp.add_argument("--reps", default="hog,hogb,dsift", help="comma-separated: hog, hogb, dsift, hoggle")
    sp.add_argument("--model", help="evaluate this CNN's layers instead (e.g. mobilenet_v2, a .onnx/.tflite file, "
                                    "package.module:factory); its loading options (--preprocess …) join every "
                                    "unit's key and the result")
    sp.add_argument("--layers", help="comma-separated layers of --model (default: its blocks)")
    sp.add_argument("--cnn-lambda-tv", type=float, help="one TV weight for every layer (default: by depth)")
    sp.add_argument("--limit", type=int, help="only N eval images, spread evenly over the (class-sorted) set")
    sp.add_argument("--iters", type=int, help="iterations per inversion (default 800)")
    sp.add_argument("--lr", type=float)
    sp.add_argument("--lambda-tv", type=float, default=5.0, help="TV weight (default 5, the paper's Table 1)")
    sp.add_argument("--max-side", type=int, default=None, help="downscale eval images (default: native size)")
    sp.add_argument("--method", choices=["default", "paper"], default="default",
                    help="default: preimage's (for --model: a Fourier image with L-BFGS, calibrated on train/; "
                         "for HOG/DSIFT the paper's); paper: exactly the paper's method")
    sp.add_argument("--param", choices=["pixel", "fourier", "dip"], default=None,
                    help="the image's parameterisation (default: the representation's: pixels for HOG/DSIFT, "
                         "fourier for CNN layers)")
    sp.add_argument("--jitter", help="jitter the image the code sees by up to N pixels ('auto': a quarter of "
                                     "the code's stride)")
    sp.add_argument("--out", help="write the results as JSON here; finished batches are kept in OUT.parts "
                                  "until then, so an interrupted run resumes when given the same --out")
    sp.add_argument("--resume-dir", help="keep finished batches in this folder instead (kept afterwards)")
    sp.add_argument("--no-progress", action="store_true")
    add_model_options(sp)
    sp.set_defaults(func=cmd_evaluate)
    return sp


def cmd_evaluate(args) -> int:
    """Entry point of ``preimage evaluate``: print the table; with ``--out``, write it as JSON and
    drop the default batch folder ``OUT.parts`` (a ``--resume-dir`` is kept)."""
    from ..evaluate import (cached_units, evaluate_cnn_layers, evaluate_shallow, format_cnn_table, format_table1,
                            remove_cache)
    from .common import export_model_dirs
    export_model_dirs(args.model_dir)  # workers resolve --model by name through PREIMAGE_MODELS
    model_opts = model_options(args)
    if not args.model and any(v is not None for k, v in model_opts.items() if k != "model_dir"):
        raise PreimageError("--weights, --preprocess and its options, --input-size are for --model")
    cache_dir = args.resume_dir or (f"{args.out}.parts" if args.out else None)
    options = {k: v for k, v in (("param", args.param), ("jitter", args.jitter)) if v is not None}
    if args.method == "paper":
        if options:
            raise ValueError("--method paper is the paper's own method: drop --param/--jitter")
        options = {"method": "paper"}
    if cached_units(cache_dir):
        print(f"preimage: resuming from the finished batches in {cache_dir}", file=sys.stderr)
    if args.model:
        layers = [s.strip() for s in args.layers.split(",")] if args.layers else None
        result = evaluate_cnn_layers(args.model, layers=layers, limit=args.limit, iterations=args.iters,
                                     lr=args.lr, lambda_tv=args.cnn_lambda_tv, progress=not args.no_progress,
                                     cache_dir=cache_dir, options=options, model_options=model_opts)
        table = format_cnn_table(result)
    else:
        reps = [r.strip() for r in args.reps.split(",") if r.strip()]
        result = evaluate_shallow(reps, limit=args.limit, iterations=args.iters, lr=args.lr,
                                  lambda_tv=args.lambda_tv, progress=not args.no_progress, max_side=args.max_side,
                                  cache_dir=cache_dir, options=options)
        table = format_table1(result)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
        if not args.resume_dir:  # the default folder beside --out is only for resuming this run
            remove_cache(cache_dir)
    return 0
