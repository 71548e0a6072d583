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

from .base import Config, Plan
from .registry import build_plan
from .units import run_unit
from .store import ResultStore

__all__ = ["run", "default_workers", "library_versions", "INLINE"]

INLINE = "inline"


def default_workers() -> int:
    """1 worker on machines with two cores or fewer, else 2."""
    return 1 if (os.cpu_count() or 1) <= 2 else 2


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


def _run_inline(store: ResultStore, todo, log, threads: int | None) -> tuple[int, int]:
    """Compute the units in this process; returns (computed, failed)."""
    done = failed = 0
    for i, u in enumerate(todo, 1):
        t0 = time.perf_counter()
        try:
            result = run_unit(u.params, threads)
        except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
            store.fail(u.key, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}",
                       {"seconds": time.perf_counter() - t0})
            failed += 1
            log(f"[{i}/{len(todo)}] FAILED {_describe(u.params)}: {type(exc).__name__}: {exc}")
            continue
        _record(store, u, result)
        done += 1
        log(f"[{i}/{len(todo)}] {_describe(u.params)}: {result['timings']['seconds']:.1f} s")
    return done, failed


def _run_dask(store: ResultStore, todo, log, scheduler: str | None, workers: int,
              torch_threads: int | None) -> tuple[int, int, dict]:
    """Compute the units on a Dask cluster; returns (computed, failed, cluster information)."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        from ..errors import PreimageError
        raise PreimageError("preimage reproduce needs dask.distributed: pip install 'dask[distributed]' "
                            "(or the [reproduce] extra); --scheduler inline runs without it") from None
    cluster = None
    info: dict = {}
    if scheduler:
        client = Client(scheduler, timeout="60s")
        threads = torch_threads
        info = {"scheduler": scheduler, "workers": len(client.scheduler_info().get("workers", {}))}
    else:
        threads = torch_threads or 1
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
        info = {"scheduler": "LocalCluster", "workers": workers, "threads_per_worker": 1, "torch_threads": threads}
    done = failed = 0
    try:
        by_future = {}
        futs = []
        for u in todo:
            fut = client.submit(run_unit, u.params, threads, key=f"preimage-unit-{u.key}", pure=False, retries=0)
            by_future[fut.key] = u
            futs.append(fut)
        i = 0
        for fut in as_completed(futs):
            i += 1
            u = by_future[fut.key]
            if fut.status == "finished":
                try:
                    result = fut.result()
                except Exception as exc:  # noqa: BLE001  # pragma: no cover - status said finished
                    store.fail(u.key, f"{type(exc).__name__}: {exc}")
                    failed += 1
                    continue
                _record(store, u, result)
                done += 1
                log(f"[{i}/{len(todo)}] {_describe(u.params)}: {result['timings']['seconds']:.1f} s")
            else:
                exc = fut.exception()
                tb = "".join(traceback.format_tb(fut.traceback(), limit=5)) if fut.traceback() else ""
                store.fail(u.key, f"{type(exc).__name__}: {exc}\n{tb}")
                failed += 1
                log(f"[{i}/{len(todo)}] FAILED {_describe(u.params)}: {type(exc).__name__}: {exc}")
            fut.release()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return done, failed, info


def run(config: Config, out: str | Path, *, only: str | Sequence[str] | None = None,
        scheduler: str | None = None, workers: int | None = None, report: bool = True,
        torch_threads: int | None = None, log: Callable[[str], None] | None = None) -> dict:
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
    Returns:
        a summary dict: planned, already finished, computed, failed units, seconds, skipped parts,
        report paths.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    t0 = time.perf_counter()
    store = ResultStore(out)
    try:
        plan: Plan = build_plan(config, only)
        lost = store.verify_files()
        if lost:
            log(f"{len(lost)} finished units had missing files: computing them again")
        store.register((u.key, u.experiment, u.kind, u.params) for u in plan.units)
        finished = store.finished_keys()
        todo = [u for u in plan.units if u.key not in finished]
        workers = int(workers or default_workers())
        versions = library_versions()
        store.set_meta("config", config.to_dict())
        store.set_meta("plan", {"experiments": plan.experiments,
                                "units": {e: [u.key for u in us] for e, us in plan.by_experiment().items()},
                                "skipped": plan.skipped, "notes": plan.notes, "info": plan.info})
        store.set_meta("versions", versions)
        run_info = {"config": config.to_dict(), "only": plan.experiments, "planned": len(plan.units),
                    "already_finished": len(plan.units) - len(todo), "to_compute": len(todo),
                    "scheduler": scheduler or "LocalCluster", "workers": workers, "pid": os.getpid()}
        run_id = store.start_run(run_info)
        for part, reason in plan.skipped.items():
            log(f"skipped {part}: {reason}")
        log(f"{len(plan.units)} units planned, {len(plan.units) - len(todo)} already finished, "
            f"{len(todo)} to compute → {Path(out)}")
        store.mark_submitted(u.key for u in todo)
        status = "finished"
        done = failed = 0
        cluster_info: dict = {}
        try:
            if not todo:
                pass
            elif scheduler == INLINE:
                done, failed = _run_inline(store, todo, log, torch_threads)
                cluster_info = {"scheduler": INLINE}
            else:
                done, failed, cluster_info = _run_dask(store, todo, log, scheduler, workers, torch_threads)
        except BaseException:
            status = "interrupted"
            raise
        finally:
            seconds = time.perf_counter() - t0
            run_info.update({"computed": done, "failed": failed, "seconds": seconds, "cluster": cluster_info,
                             "status": status})
            store.end_run(run_id, status, run_info)
        summary = dict(run_info)
        summary["skipped"] = plan.skipped
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
