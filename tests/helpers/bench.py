"""Importing a benchmark script of ``benchmarks/`` as a module (its ``_harness`` import needs the
folder on the path while it loads)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def bench_module(name: str) -> ModuleType:
    """The module ``benchmarks/<name>.py``, e.g. ``bench_module("bench_priors")``."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))
