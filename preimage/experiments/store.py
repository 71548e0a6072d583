"""The results store of a reproduction: one SQLite database plus image/tensor files.

Layout of a store folder ``DIR``::

    DIR/results.sqlite                  one row per unit (WAL journal)
    DIR/units/<experiment>/<key16>/     the unit's files: PNGs and .safetensors

A *unit* is identified by a stable key, the SHA-256 of its canonical JSON parameters
(:func:`preimage.io.cache.stable_key`). Its row holds the experiment, the parameters (JSON), a status
(``pending`` → ``submitted`` → ``finished`` or ``failed``), the metrics (JSON), timings (JSON),
the list of its files, the number of attempts and the created / submitted / finished times.

Crash safety (a sweep may be SIGKILLed at any point and restarted):

* every file is written to a temporary name in its final folder, flushed, ``fsync``-ed and then
  ``os.replace``-d into place, so a file either exists complete or not at all;
* the row is marked ``finished`` (one transaction) only after all its files exist; a unit killed
  between its files and its row is simply computed again, overwriting the same names;
* keys are the primary key of the table, so a unit can never be recorded twice;
* leftover temporary files of a killed writer are removed when the store is opened.

Only one process writes a store at a time (the runner's client); readers may open it
concurrently (``readonly=True``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..io.cache import TMP_MARK, atomic_write_bytes, canonical_json, fsync_dir, png_bytes, tensors_bytes

__all__ = ["ResultStore", "STATUSES"]

DB_NAME = "results.sqlite"
UNITS_DIR = "units"
STATUSES = ("pending", "submitted", "finished", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS units (
    key          TEXT PRIMARY KEY,
    experiment   TEXT NOT NULL,
    kind         TEXT NOT NULL,
    params       TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending',
    metrics      TEXT,
    timings      TEXT,
    files        TEXT,
    error        TEXT,
    worker       TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    created_at   REAL NOT NULL,
    submitted_at REAL,
    finished_at  REAL
);
CREATE INDEX IF NOT EXISTS units_experiment ON units (experiment);
CREATE TABLE IF NOT EXISTS meta (
    name       TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  REAL NOT NULL,
    finished_at REAL,
    status      TEXT NOT NULL,
    info        TEXT NOT NULL
);
"""


class ResultStore:
    """The SQLite + files store of one reproduction folder.

    Args:
        root: the folder (created when missing unless ``readonly``).
        readonly: open the database read-only (no schema changes, no clean-up).
    """

    def __init__(self, root: str | Path, readonly: bool = False):
        self.root = Path(root)
        self.readonly = readonly
        self.db_path = self.root / DB_NAME
        if readonly:
            if not self.db_path.is_file():
                raise FileNotFoundError(f"no results store at {self.db_path}")
            uri = f"file:{self.db_path}?mode=ro"
            self._db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None,
                                       check_same_thread=False)
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.db_path), timeout=30, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self.remove_temporary_files()
        self._db.row_factory = sqlite3.Row

    # -- plumbing ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def __enter__(self) -> "ResultStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _transaction(self):
        """One immediate (write-locking) transaction, rolled back on any exception."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    def remove_temporary_files(self) -> int:
        """Delete temporary files left by a killed writer; returns how many."""
        n = 0
        units = self.root / UNITS_DIR
        if units.is_dir():
            for p in units.rglob(f"*{TMP_MARK}*"):
                try:
                    p.unlink()
                    n += 1
                except OSError:  # pragma: no cover
                    pass
        return n

    # -- units ---------------------------------------------------------------------------------
    def unit_dir(self, experiment: str, key: str) -> Path:
        """Folder of a unit's files: ``units/<experiment>/<key[:16]>``."""
        return self.root / UNITS_DIR / experiment / key[:16]

    def register(self, units: Iterable[tuple[str, str, str, Mapping]]) -> int:
        """Insert ``(key, experiment, kind, params)`` rows as ``pending`` unless present.

        Returns the number of new rows. Existing rows (any status) are left untouched.
        """
        now = time.time()
        new = 0
        with self._transaction() as db:
            for key, experiment, kind, params in units:
                cur = db.execute(
                    "INSERT OR IGNORE INTO units (key, experiment, kind, params, status, created_at) "
                    "VALUES (?, ?, ?, ?, 'pending', ?)", (key, experiment, kind, canonical_json(params), now))
                new += cur.rowcount
        return new

    def mark_submitted(self, keys: Iterable[str]) -> None:
        """Record that these units are being computed (status ``submitted``, attempts + 1)."""
        now = time.time()
        with self._transaction() as db:
            for key in keys:
                db.execute("UPDATE units SET status='submitted', attempts=attempts+1, submitted_at=?, "
                           "error=NULL WHERE key=? AND status!='finished'", (now, key))

    def finish(self, key: str, *, metrics: Mapping, timings: Mapping | None = None,
               pngs: Mapping[str, np.ndarray] | None = None,
               tensors: Mapping[str, Mapping[str, Any]] | None = None, worker: str | None = None) -> None:
        """Write a unit's files atomically, then mark its row ``finished`` with its metrics.

        Args:
            key: the unit's key (must be registered).
            metrics: JSON-serialisable numbers of the unit.
            timings: JSON-serialisable timings (seconds).
            pngs: ``name → uint8 (H, W[, C]) array`` written as ``name.png``.
            tensors: ``name → {tensor name: tensor}`` written as ``name.safetensors``.
            worker: where it was computed (host:pid).
        """
        row = self._db.execute("SELECT experiment, status FROM units WHERE key=?", (key,)).fetchone()
        if row is None:
            raise KeyError(f"unit {key} is not registered")
        if row["status"] == "finished":
            return  # never record a unit twice
        folder = self.unit_dir(row["experiment"], key)
        files = []
        for name, arr in (pngs or {}).items():
            atomic_write_bytes(folder / f"{name}.png", png_bytes(arr))
            files.append(f"{name}.png")
        for name, group in (tensors or {}).items():
            atomic_write_bytes(folder / f"{name}.safetensors", tensors_bytes(group))
            files.append(f"{name}.safetensors")
        if files:
            fsync_dir(folder)
        with self._transaction() as db:
            db.execute("UPDATE units SET status='finished', metrics=?, timings=?, files=?, worker=?, error=NULL, "
                       "finished_at=? WHERE key=? AND status!='finished'",
                       (canonical_json(metrics), canonical_json(timings or {}), canonical_json(sorted(files)),
                        worker, time.time(), key))

    def fail(self, key: str, error: str, timings: Mapping | None = None) -> None:
        """Mark a unit ``failed`` with an error message (it is retried by the next run)."""
        with self._transaction() as db:
            db.execute("UPDATE units SET status='failed', error=?, timings=? WHERE key=? AND status!='finished'",
                       (str(error)[:4000], canonical_json(timings or {}), key))

    def verify_files(self) -> list[str]:
        """Reset finished units whose files went missing to ``pending``; returns their keys."""
        lost = []
        for row in self._db.execute("SELECT key, experiment, files FROM units WHERE status='finished'").fetchall():
            folder = self.unit_dir(row["experiment"], row["key"])
            if any(not (folder / f).is_file() for f in json.loads(row["files"] or "[]")):
                lost.append(row["key"])
        if lost and not self.readonly:
            with self._transaction() as db:
                for key in lost:
                    db.execute("UPDATE units SET status='pending' WHERE key=?", (key,))
        return lost

    # -- reading -------------------------------------------------------------------------------
    @staticmethod
    def _row(row: sqlite3.Row) -> dict:
        """A database row as a dict with its JSON columns decoded."""
        d = dict(row)
        for k in ("params", "metrics", "timings", "files"):
            d[k] = json.loads(d[k]) if d.get(k) else ({} if k != "files" else [])
        return d

    def get(self, key: str) -> dict | None:
        """The row of a unit as a dict (JSON columns decoded), or ``None``."""
        row = self._db.execute("SELECT * FROM units WHERE key=?", (key,)).fetchone()
        return self._row(row) if row else None

    def status(self, key: str) -> str | None:
        """The status of a unit (:data:`STATUSES`), or None when it is not registered."""
        row = self._db.execute("SELECT status FROM units WHERE key=?", (key,)).fetchone()
        return row["status"] if row else None

    def finished_keys(self) -> set[str]:
        """Keys of every finished unit."""
        return {r[0] for r in self._db.execute("SELECT key FROM units WHERE status='finished'")}

    def rows(self, experiment: str | None = None, status: str | None = None) -> list[dict]:
        """Rows (decoded), in creation order, optionally filtered."""
        sql, args = "SELECT * FROM units", []
        cond = []
        if experiment is not None:
            cond.append("experiment=?")
            args.append(experiment)
        if status is not None:
            cond.append("status=?")
            args.append(status)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        sql += " ORDER BY created_at, rowid"
        return [self._row(r) for r in self._db.execute(sql, args).fetchall()]

    def counts(self) -> dict[str, int]:
        """Number of units per status."""
        out = {s: 0 for s in STATUSES}
        for r in self._db.execute("SELECT status, COUNT(*) FROM units GROUP BY status"):
            out[r[0]] = r[1]
        return out

    def file(self, row: Mapping, name: str) -> Path:
        """Path of one of a unit's files (``name`` with its extension)."""
        return self.unit_dir(row["experiment"], row["key"]) / name

    def load_tensors(self, row: Mapping, name: str) -> dict:
        """The tensors of ``name.safetensors`` of a unit."""
        from safetensors.torch import load_file
        return load_file(str(self.file(row, f"{name}.safetensors")))

    # -- meta and runs -------------------------------------------------------------------------
    def set_meta(self, name: str, value: Any) -> None:
        """Store a JSON-serialisable value under ``name`` (the plan, the configuration, versions)."""
        with self._transaction() as db:
            db.execute("INSERT INTO meta (name, value, updated_at) VALUES (?, ?, ?) "
                       "ON CONFLICT(name) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at",
                       (name, canonical_json(value), time.time()))

    def get_meta(self, name: str, default: Any = None) -> Any:
        """The value stored under ``name``, or ``default``."""
        row = self._db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return json.loads(row["value"]) if row else default

    def start_run(self, info: Mapping) -> int:
        """Record the start of a run (status ``running``); returns its id."""
        with self._transaction() as db:
            cur = db.execute("INSERT INTO runs (started_at, status, info) VALUES (?, 'running', ?)",
                             (time.time(), canonical_json(info)))
            return int(cur.lastrowid)

    def end_run(self, run_id: int, status: str, info: Mapping) -> None:
        """Record the end of run ``run_id`` with its status and final information."""
        with self._transaction() as db:
            db.execute("UPDATE runs SET finished_at=?, status=?, info=? WHERE id=?",
                       (time.time(), status, canonical_json(info), run_id))

    def runs(self) -> list[dict]:
        """Every run of the store, oldest first (``info`` decoded)."""
        out = []
        for r in self._db.execute("SELECT * FROM runs ORDER BY id").fetchall():
            d = dict(r)
            d["info"] = json.loads(d["info"])
            out.append(d)
        return out
