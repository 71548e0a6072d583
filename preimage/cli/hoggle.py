"""``preimage hoggle train``: learn the HOGgle baseline's paired dictionary ahead of time
(``preimage invert --method hoggle`` otherwise trains it on first use)."""

from __future__ import annotations

import argparse


def add_hoggle_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``hoggle`` subcommand (with its ``train`` subcommand) to an ``argparse`` subparsers
    object (sets ``func``)."""
    sp = subparsers.add_parser("hoggle", help="the HOGgle baseline")
    hsub = sp.add_subparsers(dest="hoggle_command", required=True)
    tp = hsub.add_parser("train", help="learn the paired dictionary on the shared train images")
    tp.add_argument("--out", help="dictionary file (default: the cache used by --method hoggle)")
    tp.add_argument("--atoms", type=int, default=1000)
    tp.add_argument("--alpha", type=float, default=0.02)
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--max-images", type=int)
    tp.set_defaults(func=cmd_hoggle_train)
    return sp


def cmd_hoggle_train(args) -> int:
    """Entry point of ``preimage hoggle train``: train on the shared train images and save."""
    from ..baselines.hoggle import train_command
    train_command(args.out, n_atoms=args.atoms, alpha=args.alpha, seed=args.seed, max_images=args.max_images)
    return 0
