"""`preimage reproduce --scheduler` against a real Dask cluster, used as one is used: a `dask scheduler`
and two `dask worker` processes on 127.0.0.1 (separate processes, their own ports, started from
another folder, so they get the package from the installed environment and the images from
PREIMAGE_DATA), the client a `preimage reproduce` subprocess. One test SIGKILLs a worker in the
middle of the sweep, the other SIGKILLs the client and restarts it; both check that every unit is
stored exactly once. Every process is killed at the end, whatever happens."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.store import poll_snapshot, store_snapshot
from preimage.experiments.store import ResultStore

pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'dask[distributed]')")

DASK = Path(sys.executable).with_name("dask")
REPO = Path(__file__).resolve().parents[1]
# 9 units (8 one-image HOG inversions + the normaliser), each ~1-3 s of one core: long enough to
# kill something in the middle, short enough for the test to stay well under a minute.
SWEEP = ["--preset", "tiny", "--only", "table1", "--set", "shallow_reps=hog", "--set", "hoggle=none",
         "--set", "n_images=8", "--set", "batch_images=1", "--set", "shallow_size=64",
         "--set", "shallow_iterations=300"]
N_UNITS = 9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _spawn(args: list, log: Path, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(a) for a in args], stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=cwd,
                            env=_env(), start_new_session=True)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started and its process group, then reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # pragma: no cover
            pass
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:  # pragma: no cover
        pass


def _wait_for_workers(address: str, n: int, timeout: float = 90) -> None:
    from distributed import Client
    with Client(address, timeout="30s") as client:
        client.wait_for_workers(n, timeout=timeout)


@pytest.fixture
def cluster(shared, tmp_path):
    """``{"address", "workers": [Popen, Popen], "logs"}``: a scheduler and two single-thread workers
    (no nanny: a killed worker stays dead, as a lost machine), torn down at the end."""
    if not DASK.exists():
        pytest.skip(f"no dask command next to {sys.executable} (pip install 'dask[distributed]')")
    run_dir = tmp_path / "cluster"
    run_dir.mkdir()
    port, dashboard = _free_port(), _free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = []
    try:
        procs.append(_spawn([DASK, "scheduler", "--host", "127.0.0.1", "--port", port, "--dashboard-address",
                             f"127.0.0.1:{dashboard}", "--idle-timeout", "600"], run_dir / "scheduler.log", run_dir))
        workers = []
        for i in range(2):
            w = _spawn([DASK, "worker", address, "--host", "127.0.0.1", "--worker-port", _free_port(), "--nthreads", 1,
                        "--nworkers", 1, "--no-nanny", "--no-dashboard", "--name", f"w{i}",
                        "--local-directory", run_dir / f"w{i}"], run_dir / f"worker{i}.log", run_dir)
            procs.append(w)
            workers.append(w)
        try:
            _wait_for_workers(address, 2)
        except Exception as exc:  # noqa: BLE001
            logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in sorted(run_dir.glob("*.log")))
            pytest.fail(f"the cluster did not start: {exc}\n{logs}")
        yield {"address": address, "workers": workers, "logs": run_dir, "dashboard": dashboard}
    finally:
        for p in reversed(procs):
            _kill(p)


def _client(address: str, out: Path, log: Path) -> subprocess.Popen:
    code = "import sys; from preimage.cli import main; sys.exit(main(['reproduce', *sys.argv[1:]]))"
    return _spawn([sys.executable, "-c", code, *SWEEP, "--scheduler", address, "--out", out], log, REPO)


def _wait_finished(db: Path, proc: subprocess.Popen, n: int, log: Path, timeout: float = 120) -> dict:
    """Poll the store until ``n`` units are finished (fails if the client ends first)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the client ended (rc {proc.returncode}) before the kill:\n{log.read_text()[-3000:]}")
        snap = poll_snapshot(db)
        if sum(v["status"] == "finished" for v in snap.values()) >= n:
            return snap
        time.sleep(0.05)
    pytest.fail(f"{n} units did not finish in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _check_complete(out: Path) -> dict:
    """Every planned unit finished, stored exactly once, with exactly its files; returns the rows."""
    db = out / "results.sqlite"
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM units").fetchone() == (N_UNITS, N_UNITS)
    finally:
        con.close()
    snap = store_snapshot(db)
    assert all(v["status"] == "finished" for v in snap.values()), snap
    with ResultStore(out, readonly=True) as st:
        for row in st.rows():
            folder = st.unit_dir(row["experiment"], row["key"])
            assert sorted(p.name for p in folder.iterdir()) == sorted(row["files"])
        assert st.verify_files() == []
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    return snap


def test_worker_sigkilled_mid_sweep(cluster, tmp_path):
    out, log = tmp_path / "sweep", tmp_path / "client.log"
    client = _client(cluster["address"], out, log)
    try:
        _wait_finished(out / "results.sqlite", client, 1, log)
        victim = cluster["workers"][0]
        os.kill(victim.pid, signal.SIGKILL)           # a machine lost in the middle of the sweep
        victim.wait(20)
        rc = client.wait(150)
    finally:
        _kill(client)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    snap = _check_complete(out)
    # computed by the cluster's workers (host:pid), not by the client or a LocalCluster
    pids = {int(v["worker"].rsplit(":", 1)[1]) for v in snap.values()}
    assert pids <= {w.pid for w in cluster["workers"]}, (pids, text[-2000:])
    assert cluster["workers"][1].pid in pids
    assert all(v["attempts"] == 1 for v in snap.values())  # one client run: each unit submitted once
    assert f"{N_UNITS}/{N_UNITS} units done, 0 failed" in text   # the progress line
    assert f"Dask dashboard: http://127.0.0.1:{cluster['dashboard']}/status" in text
    runs = ResultStore(out, readonly=True).runs()
    assert runs[-1]["status"] == "finished" and runs[-1]["info"]["cluster"]["scheduler"] == cluster["address"]


def test_client_sigkilled_and_restarted(cluster, tmp_path):
    out, db = tmp_path / "sweep", tmp_path / "sweep" / "results.sqlite"
    log1, log2 = tmp_path / "client1.log", tmp_path / "client2.log"
    first = _client(cluster["address"], out, log1)
    try:
        _wait_finished(db, first, 2, log1)
    finally:
        _kill(first)                                   # the client dies; scheduler and workers stay up
    before = store_snapshot(db)
    done_before = {k: v for k, v in before.items() if v["status"] == "finished"}
    assert 2 <= len(done_before) < N_UNITS, "the kill should land in the middle of the sweep"
    second = _client(cluster["address"], out, log2)
    try:
        rc = second.wait(150)
    finally:
        _kill(second)
    text = log2.read_text()
    assert rc == 0, text[-3000:]
    after = _check_complete(out)
    assert set(after) == set(before)
    for key, v in done_before.items():                 # finished units were not computed again
        assert after[key]["finished_at"] == v["finished_at"] and after[key]["attempts"] == 1
    assert f"{len(done_before)} already finished" in text
    con = sqlite3.connect(db)
    runs = [json.loads(r[1]) | {"status": r[0]} for r in con.execute("SELECT status, info FROM runs ORDER BY id")]
    con.close()
    assert runs[0]["status"] == "running" and runs[-1]["status"] == "finished"   # the killed run never ended
    assert runs[-1]["computed"] == N_UNITS - len(done_before)
