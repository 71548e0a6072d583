"""``preimage serve``: the interactive explorer in the browser (:mod:`preimage.serve`).

Binds to 127.0.0.1 by default. Any other ``--host`` needs a token: ``--token``, or one generated
and printed; every request must then carry it (the printed address sets it for the browser).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import PreimageError


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    sp = subparsers.add_parser("serve", help="explore inversions in the browser (a local web app)")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only; any other needs a token)")
    sp.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sp.add_argument("--workers", type=int, help="jobs run at once (default: one per core)")
    sp.add_argument("--queue", type=int, default=16, help="jobs that may wait for a worker; more get HTTP 429 "
                                                          "(default 16)")
    sp.add_argument("--token", help="secret every request must carry (default on a non-local host: generated)")
    sp.add_argument("--data-dir", default="preimage-serve",
                    help="uploads, runs and the gallery's SQLite file (default ./preimage-serve)")
    sp.add_argument("--model", action="append", default=[], metavar="NAME",
                    help="offer this model (anything `preimage invert --model` takes: a name, a model file, "
                         "offered under its stem); repeatable. Default: the MobileNets")
    sp.add_argument("--weights", action="append", default=[], metavar="NAME=FILE",
                    help="weights file of a --model (e.g. caffenet=caffenet.safetensors); repeatable")
    sp.set_defaults(func=cmd_serve)
    return sp


def serve_config(args):
    """The :class:`~preimage.serve.config.ServeConfig` of the parsed flags, and whether its token
    was generated."""
    from ..models import MOBILENET_MODEL_NAMES
    from ..serve.config import ServeConfig, default_workers, require_token
    if not 0 <= args.port <= 65535:
        raise PreimageError(f"--port must be 0 to 65535, got {args.port}")
    weights = {}
    for item in args.weights:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise PreimageError(f"--weights takes NAME=FILE, got {item!r}")
        weights[name.strip()] = path.strip()
    specs = {_label(m): m for m in (args.model or MOBILENET_MODEL_NAMES)}
    models = tuple(specs)
    for name in weights:
        if name not in models:
            raise PreimageError(f"--weights {name}=…: {name} is not a --model of this server")
    token, generated = require_token(args.host, args.token)
    workers = default_workers() if args.workers is None else args.workers
    cfg = ServeConfig(data_dir=args.data_dir, host=args.host, port=args.port, workers=workers,
                      queue_size=args.queue, token=token, models=models, model_specs=specs, model_weights=weights)
    return cfg, generated


def _label(spec: str) -> str:
    """The name a ``--model`` is offered under: a model file's stem, else the name itself."""
    path = Path(spec)
    return path.stem if len(path.parts) > 1 or path.suffix.lower() in (".onnx", ".tflite") else spec


def cmd_serve(args) -> int:
    """Entry point of ``preimage serve``: check the flags, print the address, serve until interrupted."""
    try:
        import uvicorn

        from ..serve import create_app
    except ImportError as exc:
        raise PreimageError(f"preimage serve needs the 'serve' extra ({exc.name} is missing): "
                            "pip install -e '.[serve]'") from None
    cfg, generated = serve_config(args)
    app = create_app(cfg)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    address = f"http://{host}:{cfg.port}/" + (f"?token={cfg.token}" if cfg.token else "")
    if generated:
        print(f"preimage serve: generated token {cfg.token} (pass --token to choose one)", file=sys.stderr)
    print(f"preimage serve: {address}  ({cfg.workers} worker(s), queue {cfg.queue_size}, data in {cfg.data_dir})",
          flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5)
    return 0
