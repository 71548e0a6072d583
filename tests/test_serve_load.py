"""A short load test of ``preimage serve`` (benchmarks/bench_serve.py's, bounded to a few
seconds): 50 concurrent clients submit 64×64 HOG jobs against a small queue; every job is either
refused with 429 or done exactly once, nothing is lost, the server's memory stays bounded."""


import pytest

pytest.importorskip("fastapi")
pytest.importorskip("psutil")

from helpers.bench import bench_module  # noqa: E402
from preimage.serve.local import LocalServer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def bench():
    """The benchmark module ``benchmarks/bench_serve.py``."""
    return bench_module("bench_serve")


def test_fifty_clients_every_job_done_or_refused(bench, tmp_path):
    with LocalServer(tmp_path, "--workers", "2", "--queue", "4") as server:
        out = bench.load_test(server, clients=50, seconds=4, iterations=50, side=64, drain=60)
        runs = server.json("GET", "/api/runs?limit=500")[1]["runs"]
    assert out["errors"] == [] and out["not_done"] == []
    assert out["accepted"] >= 4 and out["refused_429"] > 0  # the queue overflowed and said so
    assert out["done"] == out["accepted"] and out["lost"] == 0 and out["duplicated"] == 0
    counts = out["server_counts"]
    assert (counts["submitted"], counts["refused"], counts["done"]) == (out["accepted"], out["refused_429"], out["done"])
    assert sorted(r["id"] for r in runs if r["spec"].get("iterations") == 50) == sorted(out["ids"])
    assert out["first_progress_seconds"]["median"] is not None
    assert out["rss_mib"]["peak"] < out["rss_mib"]["start"] + 400, out["rss_mib"]
    md = bench.markdown({**out, "settings": {"clients": 50, "seconds": 4, "workers": 2, "queue": 4, "side": 64,
                                             "iterations": 50}})
    assert "| refused (429) |" in md
