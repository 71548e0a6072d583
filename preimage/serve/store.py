"""The gallery: every run's state in SQLite (``runs.sqlite`` in the data folder), so that a
restarted server still lists and serves every finished run.

A run is a row ``(id, created, status, spec, summary, error, files)``; ``status`` is one of
:data:`STATUSES`. Runs that were queued or running when the server stopped are marked
``interrupted`` when it starts again (:meth:`RunStore.recover`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

#: A run's life: queued → running → done / failed / cancelled (interrupted: the server stopped).
STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
FINISHED = ("done", "failed", "cancelled", "interrupted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    summary TEXT,
    error TEXT,
    files TEXT
)
"""


class RunStore:
    """Thread-safe access to the runs table of ``path`` (created when missing)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def add(self, run_id: str, spec: dict) -> None:
        """A new queued run with its job ``spec`` (JSON-serialisable)."""
        with self._lock:
            self._db.execute("INSERT INTO runs (id, created, status, spec) VALUES (?, ?, 'queued', ?)",
                             (run_id, time.time(), json.dumps(spec)))

    def update(self, run_id: str, status: str, *, summary: dict | None = None, error: str | None = None,
               files: list[str] | None = None) -> None:
        """Set a run's status (and, when given, its summary, error message and file names)."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self._lock:
            self._db.execute(
                "UPDATE runs SET status = ?, summary = COALESCE(?, summary), error = COALESCE(?, error), "
                "files = COALESCE(?, files) WHERE id = ?",
                (status, None if summary is None else json.dumps(summary), error,
                 None if files is None else json.dumps(files), run_id))

    def get(self, run_id: str) -> dict | None:
        """One run as a dict (``spec``, ``summary`` and ``files`` decoded), or None."""
        with self._lock:
            row = self._db.execute("SELECT id, created, status, spec, summary, error, files FROM runs WHERE id = ?",
                                   (run_id,)).fetchone()
        return _row(row) if row else None

    def list(self, limit: int = 100, offset: int = 0) -> list[dict]:
        """The newest runs first."""
        with self._lock:
            rows = self._db.execute("SELECT id, created, status, spec, summary, error, files FROM runs "
                                    "ORDER BY created DESC LIMIT ? OFFSET ?", (int(limit), int(offset))).fetchall()
        return [_row(r) for r in rows]

    def count(self) -> dict[str, int]:
        """Runs per status."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall()
        return {s: n for s, n in rows}

    def recover(self) -> int:
        """Mark runs left queued or running by a stopped server as interrupted; returns how many."""
        with self._lock:
            cur = self._db.execute("UPDATE runs SET status = 'interrupted', error = 'the server stopped before "
                                   "this run finished' WHERE status IN ('queued', 'running')")
        return cur.rowcount


def _row(row) -> dict:
    run_id, created, status, spec, summary, error, files = row
    return {"id": run_id, "created": created, "status": status, "spec": json.loads(spec),
            "summary": json.loads(summary) if summary else None, "error": error,
            "files": json.loads(files) if files else []}
