"""``preimage reproduce``: every table and figure of the paper as a report, run as resumable
units (on Dask, or inline) by :mod:`preimage.experiments`.

    preimage reproduce --preset quick --out runs/quick     # (= --quick) a few minutes on a laptop CPU (CI)
    preimage reproduce --preset standard --out runs/std    # < 2 h on a 2-core CPU: Table 1 on 100 images
    preimage reproduce --preset full --out runs/full       # the paper's protocol (a GPU or a cluster)
    preimage reproduce --only table1,fig4 --out runs/x     # a subset
    preimage reproduce --scheduler tcp://host:8786 --out runs/full   # on an existing Dask cluster
    preimage reproduce --device cuda --out runs/full       # units on the GPU (default: CUDA when present)
    preimage reproduce --report-only --out runs/full       # rewrite the report from the store
"""

from __future__ import annotations

import argparse

from ..errors import PreimageError
from ..experiments import EXPERIMENTS, PRESETS, config_from, run, write_report
from .common import add_model_options, model_options

#: What each preset is for (``--help``); the settings are :data:`preimage.experiments.base.PRESETS`.
PRESET_HELP = {"quick": "CI, < 5 min: a few images, fewer iterations, a subset of layers",
               "standard": "this machine, < 2 h on 2 cores: Table 1 on all 100 eval images, the layer table "
                           "on a spread subset of them at the three λ, every figure",
               "full": "the paper's protocol, 100 images everywhere (a GPU or a cluster)",
               "tiny": "tests only: a handful of iterations"}


def add_reproduce_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``reproduce`` subcommand to an ``argparse`` subparsers object (sets ``func``)."""
    p = subparsers.add_parser(
        "reproduce", help="reproduce the paper's tables and figures as a report (on Dask)",
        description="Run the experiments of the paper (Table 1, Table 2, the Table-3 analogue on MobileNets, "
                    "figure analogues 1-10) as resumable Dask units and write DIR/report.html and "
                    "DIR/report.md. Re-running with the same arguments resumes a killed run.")
    p.add_argument("--out", required=True, metavar="DIR", help="results folder (store, images, report)")
    p.add_argument("--quick", action="store_true",
                   help="a few images, fewer iterations, a subset of layers (minutes, not days)")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="configuration preset (--quick is --preset quick; default full): "
                        + "; ".join(f"{k}: {v}" for k, v in PRESET_HELP.items() if k in PRESETS))
    p.add_argument("--only", default=None, metavar="LIST",
                   help=f"comma-separated experiments: {','.join(EXPERIMENTS)} (or figs, tables)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="Dask scheduler address (default: a LocalCluster on this machine; 'inline': no Dask)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="LocalCluster worker processes (default: one per core, at most 4)")
    p.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="torch threads per unit (default 1 per LocalCluster worker)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="where units compute: auto (CUDA when a worker has it, else CPU), cpu, cuda or cuda:N")
    p.add_argument("--dashboard", default=None, metavar="ADDRESS",
                   help="serve the LocalCluster's Dask dashboard at ADDRESS (e.g. :8787); "
                        "a remote scheduler's dashboard address is printed when it runs one")
    p.add_argument("--images", type=int, default=None, metavar="N", help="eval images for the tables")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a configuration setting (e.g. shallow_iterations=100); repeatable")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--report-only", action="store_true", help="only (re)write the report from the store")
    add_model_options(p)  # for the run's own models (e.g. --set figure_model=net.onnx); part of their units' keys
    p.set_defaults(func=cmd_reproduce)
    return p


def cmd_reproduce(args) -> int:
    """Entry point of ``preimage reproduce`` (errors are :class:`~preimage.errors.PreimageError`).
    Returns 0, or 1 when some units failed."""
    from .common import export_model_dirs
    export_model_dirs(args.model_dir)  # workers resolve models by name through PREIMAGE_MODELS
    if args.report_only:
        paths = write_report(args.out)
        print(f"report: {paths['html']} and {paths['markdown']}")
        return 0
    if args.quick and args.preset not in (None, "quick"):
        raise PreimageError("--quick and --preset disagree")
    preset = "quick" if args.quick else (args.preset or "full")
    overrides = list(args.set)
    if args.images is not None:
        overrides.append(f"n_images={args.images}")
    config = config_from(preset, overrides, model_options=model_options(args))
    if args.workers is not None and args.workers < 1:
        raise PreimageError("--workers must be at least 1")
    summary = run(config, args.out, only=args.only, scheduler=args.scheduler, workers=args.workers,
                  report=not args.no_report, torch_threads=args.torch_threads, device=args.device,
                  dashboard=args.dashboard)
    print(f"{summary['planned']} units ({summary['already_finished']} reused, {summary['computed']} computed, "
          f"{summary['failed']} failed) in {summary['seconds']:.1f} s"
          + (f"; report: {summary['report']['html']}" if "report" in summary else ""))
    return 1 if summary["failed"] else 0
