"""The ``preimage`` command: a thin shell over the library, one module per subcommand.

    preimage invert [IMAGE] --rep hog|hogb|dsift [--method optim|hoggle] --out DIR
    preimage invert [IMAGE] --model mobilenet_v2 --layer NAME [--neighbourhood 5] [--channels first-half]
    preimage features IMAGE --rep hog --out codes.npy
    preimage evaluate [--reps hog,hogb,dsift,hoggle] [--limit N]     (the paper's Table 1)
    preimage layers MODEL
    preimage models [--model-dir DIR]                                 (models found, folders searched)
    preimage classify IMAGE... --model NAME [--json]
    preimage hoggle train [--out FILE]
    preimage visualize --model M --layer L --channels 0:16 [--neuron centre] [--class NAME] --out DIR
    preimage caricature IMAGE --model M --layer L --out DIR
    preimage reproduce [--quick] [--only table1,table3,fig5,…] [--scheduler ADDRESS] --out DIR
    preimage serve [--host 127.0.0.1] [--port 8000] [--workers N] [--token T]

Errors meant for users are printed as one line (``preimage: error: …``) with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import PreimageError
from .classify import add_classify_parser
from .evaluate import add_evaluate_parser
from .features import add_features_parser
from .hoggle import add_hoggle_parser
from .invert import add_invert_parser
from .layers import add_layers_parser
from .reproduce import add_reproduce_parser
from .visualize import add_visualize_parser
from .caricature import add_caricature_parser
from .serve import add_serve_parser
from .models import add_models_parser

#: Exceptions that come from user input (a bad file, name, value or setting): printed as one line.
USER_ERRORS = (PreimageError, ValueError, FileNotFoundError, FloatingPointError, OSError)


def build_parser() -> argparse.ArgumentParser:
    """The ``preimage`` argument parser; each subcommand sets ``func`` (args → exit status)."""
    parser = argparse.ArgumentParser(prog="preimage", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_invert_parser, add_features_parser, add_evaluate_parser, add_layers_parser,
                add_classify_parser, add_reproduce_parser, add_hoggle_parser, add_serve_parser,
                add_visualize_parser, add_caricature_parser, add_models_parser):
        add(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its type's name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run the ``preimage`` command with ``argv`` (default ``sys.argv[1:]``); returns the exit
    status: 0, 2 for a user error (one line on stderr, no traceback), 130 when interrupted."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"preimage: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("preimage: interrupted; run the same command again to resume from the last checkpoint",
              file=sys.stderr)
        return 130
