"""Jobs and their scheduling: a bounded queue in front of a fixed number of worker threads.

* :class:`JobSpec`: what a client asks for (validated by pydantic: clear 422 messages).
* :class:`Job`: one submitted run: its state, cancellation flag and the clients watching it
  (each an ``asyncio.Queue`` fed from the worker thread).
* :class:`Scheduler`: ``submit`` (raises :class:`QueueFull`, HTTP 429, beyond the queue's
  capacity), ``cancel``, and the workers, each running jobs with one torch thread.

A job that is not ``persistent`` is cancelled when its last watcher disconnects, or when nobody
starts watching it within ``attach_seconds`` of its submission.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import secrets
import threading
import time
from collections import OrderedDict
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import PreimageError
from .store import RunStore

log = logging.getLogger("preimage.serve")

#: A run id: 22 URL-safe characters from :func:`secrets.token_urlsafe` (128 random bits).
RUN_ID_PATTERN = r"^[A-Za-z0-9_-]{22}$"
#: Finished jobs kept in memory for late watchers (each holds one progress frame).
RECENT = 32


class JobSpec(BaseModel):
    """One inversion request. Give ``upload`` (an id from ``POST /api/images``) or ``sample``
    (a name from ``GET /api/samples``), and ``representation`` or ``model`` + ``layer``."""

    model_config = ConfigDict(extra="forbid")

    upload: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{22}$", description="id of an uploaded image")
    sample: str | None = Field(None, max_length=200, description="name of a bundled sample image")
    representation: Literal["hog", "hogb", "dsift"] | None = Field(None, description="shallow representation")
    model: str | None = Field(None, max_length=200, description="a model name the server offers")
    layer: str | None = Field(None, max_length=200, description="the model's layer to invert")
    lambda_tv: list[float] | None = Field(None, min_length=1, max_length=16,
                                          description="λ_V values, ≥ 0 (default: the paper's, scaled)")
    restarts: int = Field(1, ge=1, le=64)
    iterations: int = Field(200, ge=1, le=100_000)
    param: Literal["pixel", "fourier", "dip"] | None = Field(
        None, description="the image's parameterisation (default: the representation's: pixels for HOG "
                          "and DSIFT, a Fourier image for CNN layers)")
    jitter: int | None = Field(None, ge=1, le=64)
    neighbourhood: int | None = Field(None, ge=1, le=64, description="invert the central n×n code window")
    channels: str | None = Field(None, pattern=r"^(first-half|second-half|\d+:\d+)$")
    colour: bool = Field(False, description="HOG of the colour image (default grey, as the paper)")
    max_side: int = Field(128, ge=8, le=4096, description="downscale shallow inputs to this longest side")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    persistent: bool = Field(False, description="keep running when the submitting client goes away")

    @model_validator(mode="after")
    def _one_of_each(self):
        if (self.upload is None) == (self.sample is None):
            raise ValueError("give exactly one of 'upload' and 'sample'")
        if (self.representation is None) == (self.model is None):
            raise ValueError("give exactly one of 'representation' and 'model'")
        if self.model is not None and not self.layer:
            raise ValueError("a model needs a 'layer'")
        if self.lambda_tv is not None:
            for v in self.lambda_tv:
                if not (v == v and 0 <= v < float("inf")):
                    raise ValueError("every λ_V must be a finite number ≥ 0")
        return self


class QueueFull(PreimageError):
    """The queue is at capacity (HTTP 429)."""


class JobCancelled(Exception):
    """Raised inside a running job when it is cancelled."""


class Job:
    """One submitted run. ``events`` go to every watcher's queue; the latest progress event and
    the final one are kept for watchers who arrive later."""

    def __init__(self, run_id: str, spec: JobSpec):
        self.id, self.spec = run_id, spec
        self.state = "queued"
        self.cancelled = threading.Event()
        self.created = time.monotonic()
        self.attached = False
        self.latest: dict | None = None
        self.final: dict | None = None
        #: ``[loop, queue, skipped]`` per watcher; ``skipped``: its latest progress frame was dropped
        self._watchers: list[list] = []
        self._lock = threading.Lock()

    def publish(self, event: str, data: dict) -> None:
        """Send ``{"event", "data"}`` to every watcher (from any thread). A watcher too slow to keep
        up misses progress frames, never the final event, and never the latest frame: one that
        skipped frames gets the latest again just before the final event."""
        item = {"event": event, "data": data}
        final = event in ("done", "failed", "cancelled")
        with self._lock:
            if event == "progress":
                self.latest = item
            elif final:
                self.final = item
            watchers = list(self._watchers)
            latest = self.latest
        for w in watchers:
            loop, q, skipped = w
            items = [item]
            if event == "progress":
                if q.qsize() > 8:
                    w[2] = True
                    continue
                w[2] = False
            elif final and skipped and latest is not None:
                items = [latest, item]
            for one in items:
                try:
                    loop.call_soon_threadsafe(q.put_nowait, one)
                except RuntimeError:  # the watcher's loop is closed
                    break

    def watch(self, loop: asyncio.AbstractEventLoop) -> tuple[asyncio.Queue, list[dict]]:
        """A new watcher: its queue, and the events it missed (latest progress, final event)."""
        q: asyncio.Queue = asyncio.Queue()
        with self._lock:
            self._watchers.append([loop, q, False])
            self.attached = True
            missed = [e for e in (self.latest, self.final) if e is not None]
        return q, missed

    def unwatch(self, q: asyncio.Queue) -> int:
        """Remove a watcher; returns how many remain."""
        with self._lock:
            self._watchers = [w for w in self._watchers if w[1] is not q]
            return len(self._watchers)

    @property
    def finished(self) -> bool:
        """Whether the job has ended (done, failed or cancelled)."""
        return self.final is not None


Runner = Callable[[Job], tuple[dict, list[str]]]


class Scheduler:
    """A bounded queue of jobs and ``workers`` threads running them with ``runner(job)``
    (→ ``(summary, files)``; raises :class:`JobCancelled` when cancelled). States go to ``store``."""

    def __init__(self, runner: Runner, store: RunStore, workers: int, queue_size: int,
                 attach_seconds: float = 30.0):
        self.runner, self.store = runner, store
        self.queue_size, self.attach_seconds = queue_size, attach_seconds
        self.jobs: dict[str, Job] = {}
        #: finished jobs kept a little while (at most :data:`RECENT`), so that a watcher arriving
        #: just after the end still sees the last progress frame before the final event
        self.recent: OrderedDict[str, Job] = OrderedDict()
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._stop = threading.Event()
        self.counts = {"submitted": 0, "refused": 0, "done": 0, "failed": 0, "cancelled": 0}
        torch.set_num_threads(1)
        self._threads = [threading.Thread(target=self._work, name=f"preimage-worker-{i}", daemon=True)
                         for i in range(workers)]
        self._threads.append(threading.Thread(target=self._janitor, name="preimage-janitor", daemon=True))
        for t in self._threads:
            t.start()

    def refuse_when_full(self) -> None:
        """Raise :class:`QueueFull` (and count the refusal) when ``queue_size`` jobs already wait."""
        with self._lock:
            self._refuse_when_full()

    def _refuse_when_full(self) -> None:
        if self._waiting >= self.queue_size:
            self.counts["refused"] += 1
            raise QueueFull(f"the server is busy: {self._waiting} jobs are waiting (the queue holds "
                            f"{self.queue_size}); try again in a moment")

    def submit(self, spec: JobSpec) -> Job:
        """Queue a job; :class:`QueueFull` when ``queue_size`` jobs already wait."""
        with self._lock:
            self._refuse_when_full()
            self._waiting += 1
            job = Job(secrets.token_urlsafe(16), spec)
            self.jobs[job.id] = job
            self.counts["submitted"] += 1
        self.store.add(job.id, spec.model_dump())
        self._queue.put(job)
        return job

    def watchable(self, run_id: str) -> Job | None:
        """The live or recently finished job ``run_id``, or None."""
        with self._lock:
            return self.jobs.get(run_id) or self.recent.get(run_id)

    def cancel(self, run_id: str) -> bool:
        """Ask a queued or running job to stop; False when it is not live."""
        with self._lock:
            job = self.jobs.get(run_id)
            if job is None or job.finished:
                return False
            job.cancelled.set()
            if job.state == "queued":
                job.state = "cancelled"
                self._waiting -= 1
            else:
                return True
        self._finish(job, "cancelled", {"message": "cancelled before it started"})
        return True

    def status(self) -> dict:
        """Workers, waiting and running jobs, and counts since start."""
        with self._lock:
            running = sum(1 for j in self.jobs.values() if j.state == "running")
            return {"workers": len(self._threads) - 1, "queue_size": self.queue_size, "waiting": self._waiting,
                    "running": running, **self.counts}

    def shutdown(self) -> None:
        """Cancel every live job and stop the threads."""
        self._stop.set()
        for run_id in list(self.jobs):
            self.cancel(run_id)
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)

    def _work(self) -> None:
        torch.set_num_threads(1)
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.state != "queued":
                    continue
                job.state = "running"
                self._waiting -= 1
            self._run(job)

    def _run(self, job: Job) -> None:
        self.store.update(job.id, "running")
        job.publish("status", {"status": "running"})
        try:
            summary, files = self.runner(job)
        except JobCancelled:
            self._finish(job, "cancelled", {"message": "cancelled"})
        except (PreimageError, ValueError, FloatingPointError, KeyError, OSError) as exc:
            self._finish(job, "failed", {"message": " ".join(str(exc).split()) or type(exc).__name__})
        except Exception as exc:  # noqa: BLE001 - a worker must survive any job
            log.exception("run %s failed", job.id)
            self._finish(job, "failed", {"message": f"internal error ({type(exc).__name__}); see the server's log"})
        else:
            self.store.update(job.id, "done", summary=summary, files=files)
            self._finish(job, "done", {"summary": summary, "files": files}, stored=True)

    def _finish(self, job: Job, status: str, data: dict, stored: bool = False) -> None:
        if not stored:
            self.store.update(job.id, status, error=data.get("message"))
        with self._lock:
            job.state = status
            self.counts[status] += 1
            self.jobs.pop(job.id, None)
            self.recent[job.id] = job
            while len(self.recent) > RECENT:
                self.recent.popitem(last=False)
        job.publish(status, {"id": job.id, "status": status, **data})

    def _janitor(self) -> None:
        """Cancel jobs that are not persistent and that nobody started watching in time."""
        while not self._stop.wait(0.5):
            now = time.monotonic()
            for job in list(self.jobs.values()):
                if not job.spec.persistent and not job.attached and now - job.created > self.attach_seconds:
                    self.cancel(job.id)
