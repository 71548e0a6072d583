"""Reproduce the paper: every table and figure of NUMBERS.md from one command, as a report.

    preimage reproduce --quick --out runs/quick            # a few minutes on a laptop CPU
    preimage reproduce --out runs/full [--workers 2]       # the full run (opt-in: days on a CPU)
    preimage reproduce --only table1,fig4 --out runs/x     # a subset
    preimage reproduce --scheduler tcp://host:8786 --out runs/full   # on an existing Dask cluster

The experiments are split into units (images batch × representation/layer × λ set × restarts),
each one Dask task doing one batched :func:`preimage.invert` call; results go to a resumable
SQLite + files store (:mod:`.store`); a killed run restarted with the same arguments computes only
what is missing. The report (``DIR/report.html``, ``DIR/report.md``) is rebuilt from the store
alone (``preimage reproduce --report-only --out DIR``).

Python API::

    from preimage.experiments import run, config_from, write_report
    summary = run(config_from("quick"), "runs/quick")
"""

from __future__ import annotations

from .base import PRESETS, Config, config_from
from .registry import EXPERIMENTS, build_plan
from .units import run_unit

__all__ = ["run", "write_report", "config_from", "build_plan", "run_unit", "Config", "PRESETS", "EXPERIMENTS"]


def run(*args, **kwargs):
    """See :func:`preimage.experiments.runner.run` (imported lazily: Dask is optional)."""
    from .runner import run as _run
    return _run(*args, **kwargs)


def write_report(*args, **kwargs):
    """See :func:`preimage.experiments.report.write_report`."""
    from .report import write_report as _write
    return _write(*args, **kwargs)
