"""Load test of ``preimage serve`` on this machine: C concurrent API clients submit small jobs
(a 64×64 image's HOG, 50 iterations) for a fixed time against a server on 127.0.0.1.

Each client loops until the time is up: submit; on HTTP 429 wait a moment and try again; on 202
follow the job's server-sent events to its end, noting the latency from the submission to the
first progress event. Afterwards every accepted job must have finished (``done``) exactly once
and be in the gallery; the server's resident memory is sampled throughout.

    python benchmarks/bench_serve.py [--clients 50] [--seconds 60] [--workers N] [--queue 16]
                                     [--out FILE]   (FILE.md gets a Markdown table)

Prints one JSON object: jobs submitted, accepted, done, refused (429), lost, duplicated,
jobs/s, latency to the first progress event (median, p90, max), peak and final RSS (MiB).
Bounded: localhost only, ``--seconds`` of submissions plus at most ``--drain`` seconds to finish.
"""

from __future__ import annotations

import io
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import _harness

from preimage.serve.local import LocalServer


def test_image(side: int = 64) -> bytes:
    """A ``side``×``side`` grey PNG with some structure (rings)."""
    import numpy as np
    from PIL import Image
    yy, xx = np.mgrid[0:side, 0:side] - side / 2
    arr = (127.5 + 100 * np.cos(np.hypot(yy, xx) / 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class MemorySampler(threading.Thread):
    """Samples a process's resident memory (bytes) every ``every`` seconds until stopped."""

    def __init__(self, pid: int, every: float = 0.25):
        super().__init__(daemon=True)
        import psutil
        self.proc, self.every, self.samples = psutil.Process(pid), every, []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append((time.monotonic(), self.proc.memory_info().rss))
            except Exception:  # noqa: BLE001 - the process ended
                return
            self._stop_event.wait(self.every)

    def stop(self) -> list[tuple[float, int]]:
        """Stop sampling; the ``(time, rss)`` samples."""
        self._stop_event.set()
        self.join(5)
        return self.samples


def _client(server: LocalServer, spec: dict, deadline: float, drain: float, log: list, lock: threading.Lock) -> None:
    """One client: submit until ``deadline``; follow each accepted job to its end."""
    rng = random.Random(threading.get_ident())
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        try:
            status, headers, raw = server.request("POST", "/api/runs", json.dumps(spec).encode(),
                                                  {"content-type": "application/json"}, timeout=30)
            body = json.loads(raw)
        except (OSError, ValueError) as exc:
            with lock:
                log.append({"kind": "error", "error": str(exc)})
            continue
        if status == 429:  # back off as the server asks (Retry-After), with jitter
            with lock:
                log.append({"kind": "refused"})
            time.sleep(float(headers.get("retry-after", 1)) * rng.uniform(0.5, 1.5))
            continue
        if status != 202:
            with lock:
                log.append({"kind": "error", "error": f"HTTP {status} {body}"})
            continue
        first, first_run, final = None, None, None
        try:
            for event, data, _ in server.events(body["id"], timeout=deadline - time.monotonic() + drain):
                if event == "progress" and first is None:
                    first, first_run = time.monotonic() - t0, data["seconds"]
                if event in ("done", "failed", "cancelled", "interrupted"):
                    final = event
        except OSError as exc:
            final = f"error: {exc}"
        with lock:
            log.append({"kind": "accepted", "id": body["id"], "first_progress": first, "final": final,
                        "first_progress_running": first_run,
                        "seconds": time.monotonic() - t0})


def load_test(server: LocalServer, clients: int, seconds: float, iterations: int = 50, side: int = 64,
              drain: float = 120.0) -> dict:
    """Run the load test against a started ``server``; returns the measured figures (see the
    module docstring) and ``ids`` (every accepted run id) for further checks."""
    status, up = server.upload(test_image(side))
    if status != 200:
        raise RuntimeError(f"upload failed: HTTP {status} {up}")
    spec = {"upload": up["id"], "representation": "hog", "iterations": iterations, "max_side": side,
            "lambda_tv": [5.0]}
    sampler = MemorySampler(server.process.pid)
    sampler.start()
    log: list[dict] = []
    lock = threading.Lock()
    t0 = time.monotonic()
    deadline = t0 + seconds
    threads = [threading.Thread(target=_client, args=(server, spec, deadline, drain, log, lock), daemon=True)
               for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + drain + 30)
    wall = time.monotonic() - t0
    samples = sampler.stop()
    return summarise(server, log, samples, wall, seconds)


def summarise(server: LocalServer, log: list[dict], samples: list, wall: float, seconds: float) -> dict:
    """The figures of one load test from the clients' ``log`` and the memory ``samples``; checks
    every accepted id against the server's store (lost: not done there; duplicated: seen twice)."""
    accepted = [e for e in log if e["kind"] == "accepted"]
    ids = [e["id"] for e in accepted]
    stored = {run_id: server.json("GET", f"/api/runs/{run_id}")[1].get("status") for run_id in set(ids)}
    lat = sorted(e["first_progress"] for e in accepted if e["first_progress"] is not None)
    run_lat = sorted(e["first_progress_running"] for e in accepted if e["first_progress_running"] is not None)
    rss = [r for _, r in samples] or [0]
    mib = 1024 * 1024
    done = sum(1 for e in accepted if e["final"] == "done")
    _, info = server.json("GET", "/api/info")
    return {
        "submitted": len(accepted) + sum(e["kind"] == "refused" for e in log),
        "accepted": len(accepted), "done": done, "refused_429": sum(e["kind"] == "refused" for e in log),
        "errors": [e["error"] for e in log if e["kind"] == "error"][:5],
        "not_done": [(e["id"], e["final"]) for e in accepted if e["final"] != "done"][:5],
        "lost": sum(1 for s in stored.values() if s != "done"), "duplicated": len(ids) - len(set(ids)),
        "jobs_per_second": round(done / wall, 3), "wall_seconds": round(wall, 2), "submit_seconds": seconds,
        "first_progress_seconds": {"median": round(statistics.median(lat), 3) if lat else None,
                                   "p90": round(lat[int(0.9 * (len(lat) - 1))], 3) if lat else None,
                                   "max": round(lat[-1], 3) if lat else None},
        "first_progress_after_start_seconds": {"median": round(statistics.median(run_lat), 3) if run_lat else None,
                                               "max": round(run_lat[-1], 3) if run_lat else None},
        "rss_mib": {"start": round(rss[0] / mib, 1), "peak": round(max(rss) / mib, 1),
                    "end": round(rss[-1] / mib, 1), "samples": len(rss)},
        "server_counts": info["scheduler"],
        "ids": ids,
    }


def markdown(out: dict) -> str:
    """The result as a small Markdown table."""
    s = out["settings"]
    lat, rss = out["first_progress_seconds"], out["rss_mib"]
    rows = [("clients", s["clients"]), ("submitting for", f"{s['seconds']} s"), ("workers / queue", f"{s['workers']} / {s['queue']}"),
            ("jobs", f"{s['side']}×{s['side']} HOG, {s['iterations']} iterations"),
            ("accepted / done", f"{out['accepted']} / {out['done']}"), ("refused (429)", out["refused_429"]),
            ("lost / duplicated", f"{out['lost']} / {out['duplicated']}"), ("jobs/s", out["jobs_per_second"]),
            ("first progress event after submitting (median / p90 / max)", f"{lat['median']} / {lat['p90']} / {lat['max']} s"),
            ("first progress event after the job started (median / max)",
             f"{out['first_progress_after_start_seconds']['median']} / {out['first_progress_after_start_seconds']['max']} s"),
            ("server RSS (start / peak / end)", f"{rss['start']} / {rss['peak']} / {rss['end']} MiB")]
    return "| load test of `preimage serve` | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"


def main() -> None:
    """Parse the flags, start the server, run the load test, emit JSON (+ Markdown)."""
    from preimage.serve.config import default_workers
    ap = _harness.parser(__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--iterations", type=int, default=50)
    ap.add_argument("--side", type=int, default=64)
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--queue", type=int, default=16)
    ap.add_argument("--drain", type=float, default=120.0, help="seconds allowed to finish after the last submission")
    args = _harness.quick(ap.parse_args(), clients=8, seconds=5.0)
    _harness.setup(args)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        with LocalServer(Path(tmp), "--workers", str(args.workers), "--queue", str(args.queue)) as server:
            result = load_test(server, args.clients, args.seconds, args.iterations, args.side, args.drain)
    result.pop("ids")
    out = _harness.emit("serve", args, result)
    if args.out:
        Path(args.out).with_suffix(".md").write_text(markdown(out))


if __name__ == "__main__":
    main()
