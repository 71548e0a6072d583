"""The results store of `preimage reproduce`: stable keys, atomic files, and resuming a sweep that
was SIGKILLed in the middle (through the real Dask runner, in a subprocess)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers.store import poll_snapshot, store_snapshot
from preimage.io.cache import TMP_MARK, atomic_write_bytes, canonical_json
from preimage.io.cache import stable_key as unit_key
from preimage.experiments.store import ResultStore


def test_unit_key_is_stable_and_order_free():
    a = {"kind": "invert", "images": ["a.JPEG", "b.JPEG"], "lambda_tv": (0.5, 5.0), "rep": {"name": "hog", "type": "s"}}
    b = {"rep": {"type": "s", "name": "hog"}, "lambda_tv": [0.5, 5.0], "images": ["a.JPEG", "b.JPEG"], "kind": "invert"}
    assert unit_key(a) == unit_key(b)
    assert len(unit_key(a)) == 64
    assert unit_key({**a, "lambda_tv": [0.5, 5.000001]}) != unit_key(a)
    assert unit_key({**a, "images": ["b.JPEG", "a.JPEG"]}) != unit_key(a)
    # a known value: the key must not change between versions of Python or runs
    assert unit_key({"x": 1}) == "5041bf1f713df204784353e82f6a4a535931cb64f1f4b4a5aeaffcb720918b22"
    assert canonical_json({"b": 1, "a": (1, 2)}) == '{"a":[1,2],"b":1}'


def _register(store, key="k" * 64, experiment="fig4", params=None):
    store.register([(key, experiment, "invert", params or {"p": 1})])
    return key


def test_finish_writes_files_then_row(tmp_path):
    with ResultStore(tmp_path) as st:
        key = _register(st)
        assert st.status(key) == "pending"
        assert st.register([(key, "fig4", "invert", {"p": 1})]) == 0  # never twice
        st.mark_submitted([key])
        row = st.get(key)
        assert row["status"] == "submitted" and row["attempts"] == 1
        img = np.arange(12 * 10 * 3, dtype=np.uint8).reshape(12, 10, 3)
        import torch
        st.finish(key, metrics={"distance": [[1.5]]}, timings={"seconds": 0.1}, pngs={"recon": img},
                  tensors={"errors": {"d": torch.tensor([1.5])}}, worker="here:1")
        row = st.get(key)
        assert row["status"] == "finished" and row["metrics"] == {"distance": [[1.5]]}
        assert sorted(row["files"]) == ["errors.safetensors", "recon.png"]
        from PIL import Image
        assert np.array_equal(np.asarray(Image.open(st.file(row, "recon.png"))), img)
        assert float(st.load_tensors(row, "errors")["d"][0]) == 1.5
        finished_at = row["finished_at"]
        # finishing again is a no-op (no duplicate, no new timestamp)
        st.finish(key, metrics={"distance": [[9.0]]})
        assert st.get(key)["finished_at"] == finished_at and st.get(key)["metrics"]["distance"] == [[1.5]]
        # marking a finished unit submitted does nothing
        st.mark_submitted([key])
        assert st.get(key)["status"] == "finished" and st.get(key)["attempts"] == 1
        assert st.counts()["finished"] == 1
    # readable read-only, concurrently
    with ResultStore(tmp_path, readonly=True) as ro:
        assert ro.finished_keys() == {key}
        with pytest.raises(sqlite3.OperationalError):
            ro.set_meta("x", 1)


def test_failed_unit_and_missing_files(tmp_path):
    with ResultStore(tmp_path) as st:
        a = _register(st, "a" * 64)
        b = _register(st, "b" * 64)
        st.fail(a, "ValueError: boom")
        assert st.get(a)["status"] == "failed" and "boom" in st.get(a)["error"]
        st.finish(b, metrics={}, pngs={"x": np.zeros((4, 4), np.uint8)})
        st.file(st.get(b), "x.png").unlink()
        assert st.verify_files() == [b]
        assert st.status(b) == "pending"


def test_temporary_files_are_atomic_and_cleaned(tmp_path):
    target = tmp_path / "units" / "fig1" / "abc" / "x.png"
    atomic_write_bytes(target, b"data")
    assert target.read_bytes() == b"data"
    assert not [p for p in target.parent.iterdir() if TMP_MARK in p.name]
    stray = target.parent / f"y.png{TMP_MARK}123-456"
    stray.write_bytes(b"half")
    ResultStore(tmp_path).close()  # opening for writing removes leftovers of a killed writer
    assert not stray.exists() and target.exists()


def test_meta_and_runs(tmp_path):
    with ResultStore(tmp_path) as st:
        st.set_meta("config", {"a": (1, 2)})
        st.set_meta("config", {"a": [3]})
        assert st.get_meta("config") == {"a": [3]}
        assert st.get_meta("nothing", 7) == 7
        rid = st.start_run({"planned": 3})
        st.end_run(rid, "finished", {"planned": 3, "computed": 2})
        runs = st.runs()
        assert runs[-1]["status"] == "finished" and runs[-1]["info"]["computed"] == 2


def test_journal_is_wal(tmp_path):
    ResultStore(tmp_path).close()
    con = sqlite3.connect(tmp_path / "results.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    con.close()


# ----------------------------------------------------------------------------------------------
# Kill -9 in the middle of a real (Dask) sweep, then resume
# ----------------------------------------------------------------------------------------------

_SWEEP = ["--preset", "tiny", "--only", "table1", "--set", "shallow_reps=hog", "--set", "hoggle=none",
          "--set", "n_images=8", "--set", "batch_images=1", "--set", "shallow_size=64",
          "--set", "shallow_iterations=500", "--workers", "1"]


def _start(out: Path, report: bool) -> subprocess.Popen:
    code = "import sys; from preimage.cli import main; sys.exit(main(['reproduce', *sys.argv[1:]]))"
    args = [sys.executable, "-c", code, *_SWEEP, "--out", str(out)] + ([] if report else ["--no-report"])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_sigkilled_sweep_resumes_without_loss_or_duplicates(shared, tmp_path):
    pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'dask[distributed]')")
    out = tmp_path / "sweep"
    db = out / "results.sqlite"
    proc = _start(out, report=False)
    before = {}
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail("the sweep ended before it could be killed:\n" + proc.stdout.read().decode()[-3000:])
            if sum(v["status"] == "finished" for v in poll_snapshot(db).values()) >= 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("no unit finished in time")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the sweep, its Dask scheduler and worker processes
        except ProcessLookupError:
            pass
        proc.wait(30)
    before = store_snapshot(db)
    done_before = {k: v for k, v in before.items() if v["status"] == "finished"}
    assert 2 <= len(done_before) < len(before), "the kill should land in the middle of the sweep"
    assert len(before) == 9  # 8 inversion units (one image each) + the normaliser unit

    proc = _start(out, report=True)
    try:
        log = proc.communicate(timeout=300)[0].decode()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log[-3000:]
    after = store_snapshot(db)
    assert set(after) == set(before)                      # nothing lost, nothing new
    assert all(v["status"] == "finished" for v in after.values()), after
    for key, v in done_before.items():                    # finished units were not recomputed
        assert after[key]["finished_at"] == v["finished_at"]
        assert after[key]["attempts"] == 1
        assert after[key]["metrics"] == v["metrics"]
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM units").fetchone() == (9, 9)
    runs = [json.loads(r[1]) | {"status": r[0]} for r in con.execute("SELECT status, info FROM runs ORDER BY id")]
    con.close()
    assert runs[0]["status"] == "running"                 # the killed run never ended
    assert runs[-1]["already_finished"] == len(done_before)
    assert runs[-1]["computed"] == 9 - len(done_before)
    with ResultStore(out, readonly=True) as st:
        for row in st.rows():                             # every unit's files exist, exactly once
            folder = st.unit_dir(row["experiment"], row["key"])
            assert sorted(p.name for p in folder.iterdir()) == sorted(row["files"])
        assert st.verify_files() == []
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
