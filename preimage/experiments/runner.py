"""Run a reproduction plan on Dask and record every unit in the results store.

:func:`run` plans the selected experiments (:func:`preimage.experiments.registry.build_plan`),
registers every unit in the store, and submits only the units that are not ``finished`` yet, one
``dask.distributed`` task each (:func:`~preimage.experiments.units.run_unit`, a pure
function of the unit's parameters, keyed by the unit's stable hash). Results come back to this
process, which alone writes the store (files first, then the row), so a run killed at any point
loses at most the units in flight, and the next run resumes where it stopped.

Schedulers: the default is a :class:`distributed.LocalCluster` of worker *processes* on this
machine (``threads_per_worker=1``, ``workers`` of them, each with one torch intra-op thread:
on a shared, busy machine two OpenMP threads per worker were measured 15× slower than one);
``scheduler="tcp://host:8786"`` connects to an existing cluster (the workers need the package and the shared data, ``PREIMAGE_DATA``);
``scheduler="inline"`` computes the units in this process without Dask (debugging, tests).

On a cluster, every worker needs the package (``pip install preimage[reproduce]``, the same
version as the client) and the shared data under ``PREIMAGE_DATA`` (units name eval images by file
name, resolved by :func:`preimage.experiments.units.image_path` against the worker's own data root,
and models by name, resolved on the worker through ``PREIMAGE_MODELS`` / the shared data). Only
the client writes the store; workers return results over Dask.

Progress (:class:`Progress`): one line per unit with units done / total (reused ones included),
failures and an ETA: the remaining units' expected worker seconds (the mean of the finished units
of the same kind, layer and batch size, else of all finished units) over the number of workers.
The Dask dashboard's address is printed when the scheduler runs one.

Device: ``device="cuda"`` / ``"cpu"`` is set on each worker for the units it computes
(:func:`run_unit_on`, ``PREIMAGE_DEVICE``); ``None`` lets every worker choose
(:func:`preimage.experiments.units.unit_device`: CUDA when present).
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from collections import Counter
from contextlib import contextmanager

from ..errors import PreimageError
from .base import Config, Plan
from .registry import build_plan
from .units import run_unit
from .store import ResultStore

__all__ = ["run", "default_workers", "library_versions", "INLINE", "DEVICES", "Progress", "run_unit_on",
           "check_device", "format_seconds"]

INLINE = "inline"
#: ``--device`` values: ``auto`` (each worker chooses: CUDA when present), ``cpu``, ``cuda``.
DEVICES = ("auto", "cpu", "cuda")


@contextmanager
def _device_env(device: str | None):
    """``PREIMAGE_DEVICE`` set to ``device`` for the duration (nothing when None/auto)."""
    if not device or device == "auto":
        yield
        return
    old = os.environ.get("PREIMAGE_DEVICE")
    os.environ["PREIMAGE_DEVICE"] = device
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PREIMAGE_DEVICE", None)
        else:
            os.environ["PREIMAGE_DEVICE"] = old


def run_unit_on(params: dict, torch_threads: int | None = None, device: str | None = None) -> dict:
    """:func:`~preimage.experiments.units.run_unit` on ``device`` (``cpu``, ``cuda``, ``cuda:1``;
    None/``auto``: the worker's choice). What a Dask task runs on a worker."""
    with _device_env(device):
        return run_unit(params, torch_threads)


def check_device(device: str | None, local: bool) -> str | None:
    """``device`` validated (None for ``auto``); on a local run ``cuda`` needs a CUDA device here.

    Raises :class:`~preimage.errors.PreimageError` for an unknown device or a missing GPU.
    """
    if not device or device == "auto":
        return None
    if device != "cpu" and not device.startswith("cuda"):
        raise PreimageError(f"unknown device {device!r}; valid: {', '.join(DEVICES)}")
    if local and device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise PreimageError("--device cuda: no CUDA device on this machine (torch.cuda.is_available() is "
                                "False); use --device cpu, or --scheduler with GPU workers")
    return device


def format_seconds(s: float | None) -> str:
    """A duration as ``42 s``, ``12 min`` or ``1 h 05 min`` (``?`` when unknown)."""
    if s is None or s != s:
        return "?"
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class Progress:
    """Units done / total, failures and an ETA from the finished units' timings.

    Args:
        total: every planned unit. already: units finished before this run.
        todo: the parameter dicts of the units this run computes.
        workers: a function giving the current number of workers (the ETA divides by it).
    """

    def __init__(self, total: int, already: int, todo: Sequence[dict], workers: Callable[[], int]):
        self.total, self.done, self.failed, self.workers = total, already, 0, workers
        self.remaining = Counter(_describe(p) for p in todo)
        self.seconds: dict[str, list[float]] = {}

    def update(self, params: dict, seconds: float | None, ok: bool) -> None:
        """Count one unit that finished (``ok``) or failed after ``seconds`` of worker time."""
        group = _describe(params)
        self.remaining[group] -= 1
        if ok:
            self.done += 1
            if seconds is not None:
                self.seconds.setdefault(group, []).append(float(seconds))
        else:
            self.failed += 1

    def eta(self) -> float | None:
        """Seconds left: the remaining units' expected worker time over the workers (None before
        the first finished unit)."""
        every = [s for v in self.seconds.values() for s in v]
        if not every:
            return None
        overall = sum(every) / len(every)
        work = sum(n * (sum(self.seconds[g]) / len(self.seconds[g]) if g in self.seconds else overall)
                   for g, n in self.remaining.items() if n > 0)
        return work / max(1, self.workers())

    def line(self) -> str:
        """``412/1302 units done, 3 failed, ETA 2 h 05 min``."""
        return f"{self.done}/{self.total} units done, {self.failed} failed, ETA {format_seconds(self.eta())}"


def default_workers() -> int:
    """LocalCluster workers: one single-threaded process per core, at most 4 (the ``standard``
    preset's 2-hour estimate assumes both cores of a 2-core machine)."""
    return max(1, min(os.cpu_count() or 1, 4))


def library_versions() -> dict:
    """Versions of Python, the platform and the libraries that produce the numbers."""
    from importlib import metadata
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
           "cpu_count": os.cpu_count()}
    for dist in ("preimage", "torch", "numpy", "pillow", "safetensors", "scikit-learn", "scikit-image",
                 "dask", "distributed", "tflite"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        import torch
        out["torch_threads"] = torch.get_num_threads()
    except Exception:  # noqa: BLE001  # pragma: no cover
        pass
    try:
        root = Path(__file__).resolve().parents[2]
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
        if head.returncode == 0:
            out["git_commit"] = head.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=5)
            out["git_dirty"] = bool(dirty.stdout.strip())
    except Exception:  # noqa: BLE001 - not a git checkout
        pass
    return out


def _describe(params: dict) -> str:
    """A one-line description of a unit for the progress log."""
    rep = params.get("rep") or {}
    what = rep.get("layer") or rep.get("name") or params.get("model") or params["kind"]
    if params["kind"] == "hoggle":
        what = "hoggle"
    extra = []
    if params.get("beta") not in (None, 2.0):
        extra.append(f"β={params['beta']:g}")
    if params.get("channels"):
        extra.append(params["channels"])
    n = len(params.get("images") or [])
    return f"{params['experiment']} {params['kind']} {what}" + (f" ×{n} img" if n else "") + \
        (f" ({', '.join(extra)})" if extra else "")


def _record(store: ResultStore, unit, result: dict) -> None:
    """Write a computed unit's files and row."""
    store.finish(unit.key, metrics=result["metrics"], timings=result.get("timings"), pngs=result.get("pngs"),
                 tensors=result.get("tensors"), worker=result.get("worker"))


def _run_inline(store: ResultStore, todo, log, threads: int | None, progress: Progress,
                device: str | None) -> tuple[int, int]:
    """Compute the units in this process; returns (computed, failed)."""
    done = failed = 0
    for u in todo:
        t0 = time.perf_counter()
        try:
            result = run_unit_on(u.params, threads, device)
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            store.fail(u.key, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}",
                       {"seconds": time.perf_counter() - t0})
            failed += 1
            progress.update(u.params, None, False)
            log(f"FAILED {_describe(u.params)}: {type(exc).__name__}: {exc} | {progress.line()}")
            continue
        _record(store, u, result)
        done += 1
        progress.update(u.params, result["timings"]["seconds"], True)
        log(f"{_describe(u.params)}: {result['timings']['seconds']:.1f} s | {progress.line()}")
    return done, failed


def _connect(scheduler: str | None, workers: int, torch_threads: int | None, dashboard: str | None, log):
    """``(client, cluster or None, torch threads per unit, information)`` for a Dask run; prints the
    dashboard's address when the scheduler runs one."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise PreimageError("preimage reproduce needs dask.distributed: pip install 'dask[distributed]' "
                            "(or the [reproduce] extra); --scheduler inline runs without it") from None
    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="60s")
        threads = torch_threads
        info = {"scheduler": scheduler, "workers": len(client.scheduler_info().get("workers", {}))}
    else:
        threads = torch_threads or 1
        import dask
        # Dask's nanny would start the workers with MALLOC_TRIM_THRESHOLD_=65536, which triples an
        # inversion's CPU time (units.restore_malloc_thresholds); None leaves glibc's defaults
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=dashboard, silence_logs=logging.ERROR)
        client = Client(cluster)
        info = {"scheduler": "LocalCluster", "workers": workers, "threads_per_worker": 1, "torch_threads": threads}
    try:
        has_dashboard = "dashboard" in (client.scheduler_info().get("services") or {})
        link = client.dashboard_link if has_dashboard else None
    except Exception:  # noqa: BLE001 - no dashboard is not an error  # pragma: no cover
        link = None
    if link:
        info["dashboard"] = link
        log(f"Dask dashboard: {link}")
    return client, cluster, threads, info


def _worker_count(client) -> Callable[[], int]:
    """The cluster's current number of workers, asked of the scheduler at most every 10 s."""
    state = {"at": -1e9, "n": 1}

    def count() -> int:
        if time.monotonic() - state["at"] > 10:
            try:
                state["n"] = len(client.scheduler_info().get("workers", {})) or 1
            except Exception:  # noqa: BLE001 - keep the last count  # pragma: no cover
                pass
            state["at"] = time.monotonic()
        return state["n"]
    return count


def _run_dask(store: ResultStore, todo, log, scheduler: str | None, workers: int, torch_threads: int | None,
              progress: Progress, device: str | None, dashboard: str | None) -> tuple[int, int, dict]:
    """Compute the units on a Dask cluster; returns (computed, failed, cluster information)."""
    from distributed import as_completed
    client, cluster, threads, info = _connect(scheduler, workers, torch_threads, dashboard, log)
    progress.workers = _worker_count(client)
    done = failed = 0
    try:
        by_future = {}
        futs = []
        for u in todo:
            fut = client.submit(run_unit_on, u.params, threads, device, key=f"preimage-unit-{u.key}", pure=False,
                                retries=0)
            by_future[fut.key] = u
            futs.append(fut)
        for fut in as_completed(futs):
            u = by_future[fut.key]
            if fut.status == "finished":
                try:
                    result = fut.result()
                except Exception as exc:  # noqa: BLE001  # pragma: no cover - status said finished
                    store.fail(u.key, f"{type(exc).__name__}: {exc}")
                    failed += 1
                    progress.update(u.params, None, False)
                    continue
                _record(store, u, result)
                done += 1
                progress.update(u.params, result["timings"]["seconds"], True)
                log(f"{_describe(u.params)}: {result['timings']['seconds']:.1f} s | {progress.line()}")
            else:
                exc = fut.exception()
                tb = "".join(traceback.format_tb(fut.traceback(), limit=5)) if fut.traceback() else ""
                store.fail(u.key, f"{type(exc).__name__}: {exc}\n{tb}")
                failed += 1
                progress.update(u.params, None, False)
                log(f"FAILED {_describe(u.params)}: {type(exc).__name__}: {exc} | {progress.line()}")
            fut.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return done, failed, info


def submission_order(todo: list) -> list:
    """The units in the order they are submitted: the plan's, except that of the HOGgle units
    (which train the dictionary on first use when it is not cached) one goes first and the rest
    last, so that one worker trains it while the others invert, instead of every worker at once."""
    hoggle = [u for u in todo if u.kind == "hoggle"]
    if not hoggle:
        return list(todo)
    return hoggle[:1] + [u for u in todo if u.kind != "hoggle"] + hoggle[1:]


def _prepare(store: ResultStore, config: Config, only, log) -> tuple[Plan, list]:
    """Plan the run, register its units and record the plan, the configuration and the versions;
    returns the plan and the units still to compute."""
    plan: Plan = build_plan(config, only)
    lost = store.verify_files()
    if lost:
        log(f"{len(lost)} finished units had missing files: computing them again")
    store.register((u.key, u.experiment, u.kind, u.params) for u in plan.units)
    finished = store.finished_keys()
    todo = submission_order([u for u in plan.units if u.key not in finished])
    store.set_meta("config", config.to_dict())
    store.set_meta("plan", {"experiments": plan.experiments,
                            "units": {e: [u.key for u in us] for e, us in plan.by_experiment().items()},
                            "skipped": plan.skipped, "notes": plan.notes, "info": plan.info})
    store.set_meta("versions", library_versions())
    return plan, todo


def run(config: Config, out: str | Path, *, only: str | Sequence[str] | None = None,
        scheduler: str | None = None, workers: int | None = None, report: bool = True,
        torch_threads: int | None = None, log: Callable[[str], None] | None = None,
        device: str | None = None, dashboard: str | None = None) -> dict:
    """Run (or resume) a reproduction into the folder ``out``.

    Args:
        config: what to run (:data:`~preimage.experiments.base.PRESETS`).
        out: the results folder (store, unit files, report).
        only: experiment names (comma list or sequence); ``None``: all.
        scheduler: ``None`` (LocalCluster here), a Dask scheduler address, or ``"inline"``.
        workers: LocalCluster worker processes (default :func:`default_workers`).
        report: write ``report.html`` / ``report.md`` at the end.
        torch_threads: torch intra-op threads for each unit (default: 1 on a LocalCluster, left
            alone on a remote cluster or inline).
        log: progress lines (default: stderr).
        device: ``cpu``, ``cuda`` or None/``auto`` (each worker's choice: CUDA when present),
            see :func:`check_device`.
        dashboard: the LocalCluster's dashboard address (e.g. ``":8787"``);
            None: no dashboard. A remote scheduler's own dashboard is printed when it has one.
    Returns:
        a summary dict: planned, already finished, computed, failed units, seconds, skipped parts,
        report paths.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    device = check_device(device, local=scheduler in (None, INLINE))
    store = ResultStore(out)
    try:
        plan, todo = _prepare(store, config, only, log)
        workers = int(workers or default_workers())
        run_info = {"config": config.to_dict(), "preset": config.preset, "only": plan.experiments,
                    "planned": len(plan.units), "already_finished": len(plan.units) - len(todo),
                    "to_compute": len(todo), "scheduler": scheduler or "LocalCluster", "workers": workers,
                    "device": device or "auto", "pid": os.getpid()}
        run_id = store.start_run(run_info)
        for part, reason in plan.skipped.items():
            log(f"skipped {part}: {reason}")
        log(f"{len(plan.units)} units planned, {len(plan.units) - len(todo)} already finished, "
            f"{len(todo)} to compute → {Path(out)}")
        store.mark_submitted(u.key for u in todo)
        progress = Progress(len(plan.units), len(plan.units) - len(todo), [u.params for u in todo],
                            lambda: 1 if scheduler == INLINE else workers)
        status, done, failed, cluster_info = "finished", 0, 0, {}
        try:
            if todo and scheduler == INLINE:
                done, failed = _run_inline(store, todo, log, torch_threads, progress, device)
                cluster_info = {"scheduler": INLINE}
            elif todo:
                done, failed, cluster_info = _run_dask(store, todo, log, scheduler, workers, torch_threads,
                                                       progress, device, dashboard)
        except BaseException:
            status = "interrupted"
            raise
        finally:
            run_info.update({"computed": done, "failed": failed, "seconds": time.perf_counter() - t0,
                             "cluster": cluster_info, "status": status})
            store.end_run(run_id, status, run_info)
        summary = {**run_info, "skipped": plan.skipped}
        if report:
            from .report import write_report
            t1 = time.perf_counter()
            paths = write_report(out, store=store)
            summary["report"] = {k: str(v) for k, v in paths.items()}
            summary["report_seconds"] = time.perf_counter() - t1
            log(f"report: {paths['html']} and {paths['markdown']}")
        log(f"{done} units computed, {failed} failed, {len(plan.units) - len(todo)} reused, "
            f"{time.perf_counter() - t0:.1f} s")
        return summary
    finally:
        store.close()
