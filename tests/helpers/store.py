"""Reading a result store's ``units`` table from outside the process that writes it (read-only,
as a sweep under test goes on)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def store_snapshot(db: Path) -> dict:
    """``{key: {status, finished_at, attempts, worker, metrics}}`` of every unit in ``db`` (the
    ``results.sqlite`` of a store; ``metrics`` the raw JSON text), opened read-only."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return {r[0]: {"status": r[1], "finished_at": r[2], "attempts": r[3], "worker": r[4], "metrics": r[5]}
                for r in con.execute("SELECT key, status, finished_at, attempts, worker, metrics FROM units")}
    finally:
        con.close()


def poll_snapshot(db: Path) -> dict:
    """:func:`store_snapshot` while a sweep may not have created or may be locking ``db``:
    ``{}`` then."""
    if not db.exists():
        return {}
    try:
        return store_snapshot(db)
    except sqlite3.OperationalError:
        return {}
