"""benchmarks/bench_execution.py: the execution names, the ratios, and a --quick run on MobileNet v2."""

import json

import pytest
from helpers.bench import bench_module

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def be():
    """The benchmark module ``benchmarks/bench_execution.py``."""
    return bench_module("bench_execution")


def test_execution_names(be):
    from preimage.representations.cnn import CPU_CHUNK_BYTES
    assert be.execution_options("nchw") == {"channels_last": False, "chunk_bytes": None}
    assert be.execution_options("channels-last") == {"channels_last": True, "chunk_bytes": None}
    assert be.execution_options("chunked:2")["chunk_bytes"] == 2 << 20
    assert be.execution_options("chunked:default")["chunk_bytes"] == CPU_CHUNK_BYTES
    with pytest.raises(ValueError, match="unknown execution"):
        be.execution_options("fast")


def test_ratios_against_nchw(be):
    rows = [{"layer": "a", "size": 64, "batch": b, "execution": e, "ms_per_image": ms}
            for b, e, ms in [(1, "nchw", 10.0), (1, "chunked:1", 8.0), (8, "nchw", 12.0), (8, "chunked:1", 4.0)]]
    be.add_ratios(rows)
    got = {(r["batch"], r["execution"]): (r["vs_nchw"], r["vs_nchw_batch1"]) for r in rows}
    assert got == {(1, "nchw"): (1.0, 1.0), (1, "chunked:1"): (0.8, 0.8),
                   (8, "nchw"): (1.0, 1.2), (8, "chunked:1"): (pytest.approx(1 / 3), 0.4)}


def test_quick_run(be, shared, tmp_path, capsys):
    out = tmp_path / "exec.json"
    assert be.main(["--quick", "--executions", "nchw,channels-last,chunked:0.01", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["batch"], r["execution"]): r for r in result["rows"]}
    assert set(rows) == {(b, e) for b in (1, 2) for e in ("nchw", "channels-last", "chunked:0.01")}
    assert rows[(2, "chunked:0.01")]["images_per_pass"] == 1 and rows[(2, "channels-last")]["images_per_pass"] == 2
    for r in result["rows"]:  # the same codes up to float rounding
        assert r["ms_per_image"] > 0 and r["max_abs_difference"] <= 1e-4 * max(r["code_scale"], 1.0)
    assert rows[(2, "nchw")]["vs_nchw"] == 1.0
    md = out.with_suffix(".md").read_text()
    assert md.count("| block3_add | 32² |") == 6
    capsys.readouterr()
