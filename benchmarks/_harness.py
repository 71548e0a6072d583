"""What every benchmark shares: the common flags, wall-time measurement, the machine's facts and
the JSON output.

A benchmark builds its parser with :func:`parser` (``--out``, ``--quick``, ``--threads`` and, where
asked, ``--device`` and ``--repeats``), calls :func:`setup` on the parsed flags (threads, device),
measures with :func:`time_call` (median of repeats after a warm-up) or :class:`Stopwatch` (one
wall-time span), reports progress with :func:`progress` (one JSON line on stderr) and ends with
:func:`emit`, which prints one JSON object on stdout and writes it to ``--out`` when given::

    {"benchmark": ..., "machine": machine_facts(device), "settings": {...flags...}, ...results}

``--quick`` is a smoke run (a couple of images, a few iterations): it checks that the benchmark
works, and its numbers are not measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

# benchmarks run as scripts (``python benchmarks/x.py``): make the checkout's package importable
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


def parser(description: str, *, device: bool = False, repeats: int | None = None,
           repeats_flags: tuple[str, ...] = ("--repeats",)) -> argparse.ArgumentParser:
    """An argument parser with the flags every benchmark shares.

    Always ``--out FILE`` (also write the JSON there), ``--quick`` (a tiny smoke run) and
    ``--threads N`` (torch intra-op threads; default: torch's own); ``--device`` (default ``cpu``)
    when ``device`` is true; ``--repeats N`` (timed repeats whose median is kept, default
    ``repeats``; spelled ``repeats_flags``) when ``repeats`` is given.
    """
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", metavar="FILE", help="also write the JSON object to FILE")
    ap.add_argument("--quick", action="store_true",
                    help="a tiny smoke run (few images and iterations): checks that it works, measures nothing")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    if device:
        ap.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    if repeats is not None:
        ap.add_argument(*repeats_flags, dest="repeats", type=int, default=repeats,
                        help=f"timed repeats, the median is kept (default {repeats})")
    return ap


def setup(args: argparse.Namespace) -> torch.device:
    """Apply the common flags (``--threads``) and return the device named by ``--device`` (CPU
    when the parser has no such flag)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    return torch.device(getattr(args, "device", "cpu"))


def quick(args: argparse.Namespace, **small: Any) -> argparse.Namespace:
    """With ``--quick``, replace the flags named in ``small`` by their tiny values (so that the
    JSON's ``settings`` show what ran); without it, leave ``args`` as parsed."""
    if args.quick:
        for k, v in small.items():
            setattr(args, k, v)
    return args


def settings(args: argparse.Namespace, **extra: Any) -> dict:
    """The parsed flags (without ``--out``) plus ``extra``, for the JSON's ``settings``."""
    out = {k: v for k, v in vars(args).items() if k != "out"}
    out.update(extra)
    return out


def synchronize(device: torch.device | str | None) -> None:
    """Wait for queued work on ``device`` (a no-op on the CPU), so that wall times are complete."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Wall times in seconds of ``repeats`` calls after ``warmup`` untimed ones."""

    median: float
    best: float
    all: list[float]

    @property
    def median_ms(self) -> float:
        return 1e3 * self.median


def time_call(fn: Callable[[], Any], repeats: int = 3, *, warmup: int = 1,
              device: torch.device | str | None = None) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times, each timed alone (wall clock,
    ``device`` synchronised before and after): the median, the best and every time."""
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return Timing(statistics.median(times), min(times), times)


class Stopwatch:
    """Wall time of one ``with`` block (``device`` synchronised at both ends)::

        with Stopwatch() as sw:
            work()
        sw.seconds
    """

    def __init__(self, device: torch.device | str | None = None):
        self.device = device
        self.seconds = float("nan")

    def __enter__(self) -> "Stopwatch":
        synchronize(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.seconds = time.perf_counter() - self._t0


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_facts(device: torch.device | str | None = None) -> dict:
    """The facts a timing depends on: CPU, cores (present and usable), the 1-minute load average
    (other processes compete for the cores: read timings with it in mind), Python, torch and its
    thread count, and the device (the GPU's name on CUDA)."""
    device = torch.device(device if device is not None else "cpu")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    facts = {"cpu": _cpu_name(), "cores": os.cpu_count(), "cores_usable": usable,
             "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
             "platform": platform.platform(), "python": platform.python_version(),
             "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "device": str(device)}
    if device.type == "cuda":
        facts["device_name"] = torch.cuda.get_device_name(device)
    return facts


def progress(record: dict) -> None:
    """One result as a JSON line on stderr, as it is measured (stdout keeps the one final object)."""
    print(json.dumps(record), file=sys.stderr, flush=True)


def emit(name: str, args: argparse.Namespace, result: dict, *, device: torch.device | str | None = None,
         indent: int = 1) -> dict:
    """Print the benchmark's JSON object on stdout (and write it to ``args.out`` when set):
    ``benchmark``, ``machine`` (:func:`machine_facts`), ``settings`` (the flags, plus
    ``result["settings"]`` when present), then ``result``'s other keys. Returns the object."""
    result = dict(result)
    out = {"benchmark": name, "machine": machine_facts(device),
           "settings": settings(args, **result.pop("settings", {})), **result}
    text = json.dumps(out, indent=indent)
    print(text, flush=True)
    if getattr(args, "out", None):
        Path(args.out).write_text(text + "\n")
    return out


def write_merged(merged: dict, out: str | None, markdown: str) -> int:
    """Print a merged result's JSON on stdout and, with ``out``, write it there and its Markdown
    report beside it (``out`` with the suffix ``.md``). Returns 0 (an exit status)."""
    text = json.dumps(merged, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
        Path(out).with_suffix(".md").write_text(markdown)
    return 0
