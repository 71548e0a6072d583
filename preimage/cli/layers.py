"""``preimage layers MODEL``: a model's invertible layers with channels and receptive fields
(the paper's Table 2 for CaffeNet)."""

from __future__ import annotations

import argparse
import warnings

from .common import MODEL_HELP, add_model_options, load_model


def add_layers_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``layers`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    sp = subparsers.add_parser("layers", help="list a model's invertible layers with receptive fields")
    sp.add_argument("model", help=MODEL_HELP)
    add_model_options(sp)
    sp.set_defaults(func=cmd_layers)
    return sp


def cmd_layers(args) -> int:
    """Entry point of ``preimage layers``: print the table of :func:`preimage.representations.layers_table.format_layers`."""
    from ..representations.layers_table import format_layers
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random weights.*")  # the table does not depend on them
        net = load_model(args, args.model)
    print(format_layers(net))
    return 0
