"""benchmarks/bench_visualize.py: the issue's claims on all 100 eval images (slow), and a --quick
smoke run of the benchmark (slow: it loads MobileNet v2 at 224² for the class part)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_visualize.py"


def _run(tmp_path, *flags) -> dict:
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(BENCH), "--threads", "1", "--out", str(out), *flags], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    assert out.with_suffix(".md").is_file()
    return json.loads(out.read_text())


@pytest.mark.slow
def test_quick_run_writes_json_and_markdown(tmp_path, shared):
    result = _run(tmp_path, "--quick")
    b = result["batching"]
    assert b["units"] == 4 and b["speedup"] > 0 and len(b["rounds"]) == 1
    assert b["speedup"] == b["rounds"][0]["separate_seconds"] / b["rounds"][0]["batched_seconds"]
    layer = result["caricatures"]["layers"][0]
    assert layer["min_score"] == min(layer["scores"])
    assert layer["all_scores_at_least_2"] == all(v >= 2 for v in layer["scores"])


@pytest.mark.slow
def test_channels_and_classes_beat_every_eval_image(tmp_path, shared):
    # 16 channels of block8_add (64²) against their maximum over the 100 eval images; 5 class images
    result = _run(tmp_path, "--units", "16", "--iters", "50", "--rounds", "1", "--eval-images", "100",
                  "--classes", "5", "--class-iters", "40", "--parts", "batching,classes")
    assert result["eval_images"] == 100
    assert result["channels"]["exceeding"] == result["channels"]["units"] == 16
    for row in result["class_images"]["classes"]:
        assert row["exceeds_every_eval_image"] and row["classified_as_class"], row
