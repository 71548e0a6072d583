"""benchmarks/bench_priors.py: method specs, lucent's transforms on a fixed frame, the equal-time
iteration count, the report, and a --quick run on the shared data."""

import json

import pytest
import torch
from helpers.bench import bench_module


@pytest.fixture(scope="module")
def bp():
    """The benchmark module ``benchmarks/bench_priors.py``."""
    return bench_module("bench_priors")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_parse_method_defaults_and_options(bp):
    m = bp.parse_method("fourier")
    assert (m.param, m.optimiser, m.lr, m.jitter, m.tv, m.sched) == ("fourier", "adam", 0.05, None, 0.003, "const")
    m = bp.parse_method("fourier+jitter:lr=0.02:tv=0.1:sched=const")
    assert (m.label, m.jitter, m.lr, m.tv, m.sched) == ("fourier+jitter:lr=0.02:tv=0.1:sched=const", "auto",
                                                        0.02, 0.1, "const")
    lucent = bp.parse_method("lucent")
    assert lucent.bounded and lucent.tv == 0 and lucent.alpha == 0 and lucent.sched == "const"
    # lucent differentiates the network exactly; preimage's recipes take the layer's leak
    assert lucent.leak == 0.0 and m.leak is None and bp.parse_method("fourier:leak=0.02").leak == 0.02
    assert bp.parse_method("lucent+transforms").transforms
    assert bp.cost_key(lucent) == bp.cost_key(bp.parse_method("default")) != bp.cost_key(bp.parse_method("dip"))
    for bad in ("nope", "fourier:speed=2", "paper:lr=1", "default:lr=1", "fourier:sched=fast"):
        with pytest.raises(ValueError):
            bp.parse_method(bad)


def test_lucent_transforms_keep_the_frame(bp):
    x = torch.randn(2, 3, 40, 48)
    identity = bp.PadCrop(12, bp.ChoiceAffine((1.0,), (0,)))
    assert torch.allclose(identity(x), x, atol=1e-4)
    t = bp.lucent_transforms()
    a = t(x, torch.Generator().manual_seed(3))
    b = t(x, torch.Generator().manual_seed(3))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.allclose(a, x)
    u = torch.randn(1, 3, 32, 32, requires_grad=True)
    t(u, torch.Generator().manual_seed(0)).sum().backward()
    assert u.grad is not None and torch.isfinite(u.grad).all()


def test_iterations_match_the_papers_cost(bp, monkeypatch):
    """Interleaved timing: the paper costs 0.2 s per iteration (+0.1 s fixed), the method 0.4 s
    (+0.5 s fixed): 400 paper iterations (80.1 s) buy ⌊(400 + 0.5 − 2.5) / 2⌋ = 199 of the method's."""
    cost = {"paper": (0.2, 0.1), "fourier": (0.4, 0.5)}
    calls = []

    def timed(rep, x, m, k):
        calls.append((m.base, k))
        per, fixed = cost[m.base]
        return None, 99.0, fixed + per * k

    monkeypatch.setattr(bp, "timed", timed)
    plan = bp.iterations_for(None, None, bp.parse_method("fourier"), 400, (3, 10), rounds=3)
    assert plan["iterations"] == 199 and plan["cost_ratio"] == pytest.approx(2.0)
    assert plan["cpu_seconds_per_iteration"] == pytest.approx(0.4)
    assert plan["cpu_fixed_seconds"] == pytest.approx(0.5)
    # warm-ups, then rounds that alternate the paper's runs and the method's
    assert calls[2:6] == [("paper", 3), ("paper", 10), ("fourier", 3), ("fourier", 10)] and len(calls) == 14
    assert bp.iterations_for(None, None, bp.parse_method("fourier"), 1, (3, 10))["iterations"] == 1
    calls.clear()  # the paper's warm-up takes 0.3 s: 6 s of timing need 20 iterations
    plan = bp.iterations_for(None, None, bp.parse_method("fourier"), 400, (3, 10), min_seconds=6.0, rounds=1)
    assert plan["timing_iterations"] == [3, 20] and ("paper", 20) in calls


def _row(block, method, err, ssim):
    return {"block": block, "method": method, "normalised_error_mean": err, "relative_code_error_mean": err,
            "ssim_mean": ssim, "orientation_intersection_mean": 0.9, "iterations": 10,
            "seconds_per_inversion": 1.0, "cpu_seconds_per_inversion": 1.0}


def test_noise_larger_than_the_difference_counts_all_time_per_iteration(bp, monkeypatch):
    """A longer timed run that came out no slower (noise at --quick's 1 and 2 iterations) gives a
    per-iteration cost from the longer run alone, not the 1e-6 floor that made the matched method
    run 39,339 iterations."""
    times = {("paper", 1): 0.30, ("paper", 2): 0.29, ("fourier", 1): 0.5, ("fourier", 2): 0.9}

    def timed(rep, x, m, k):
        return None, 99.0, times[(m.base, k)]

    monkeypatch.setattr(bp, "timed", timed)
    plan = bp.iterations_for(None, None, bp.parse_method("fourier"), 4, (1, 2), rounds=1)
    assert plan["cost_ratio"] == pytest.approx(0.4 / 0.145)
    assert plan["iterations"] == int((4 + 0.0 - 0.1 / 0.145) // (0.4 / 0.145))


def test_report_counts_wins(bp):
    rows = [_row("a", "paper", 0.5, 0.2), _row("a", "lucent", 0.3, 0.3), _row("a", "fourier", 0.2, 0.35),
            _row("b", "paper", 0.5, 0.2), _row("b", "lucent", 0.3, 0.3), _row("b", "fourier", 0.4, 0.35),
            {"block": "b", "method": "dip", "error": "FloatingPointError: diverged"}]
    lines = bp.comparison_lines(rows)
    assert "- `fourier`: 1/2 · 2/2 · 1/2" in lines
    table = bp.table_lines(rows)
    assert len(table) == 2 + len(rows) and "failed" in table[-1]


def test_quick_run(bp, shared, tmp_path, capsys):
    out = tmp_path / "priors.json"
    assert bp.main(["--quick", "--methods", "paper,lucent,default,lucent+transforms", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "bench_priors" and len(result["images"]) == 2
    assert [r["method"] for r in result["rows"]][:4] == ["paper", "lucent", "default", "lucent+transforms"]
    assert all("error" not in r and r["iterations"] >= 1 for r in result["rows"])
    rows = {r["method"]: r for r in result["rows"][:4]}  # the default is given lucent's iterations
    assert rows["default"]["timed_with"] == "lucent" and rows["default"]["iterations"] == rows["lucent"]["iterations"]
    assert out.with_suffix(".md").read_text().count("\n| ") == 2 * 4 + 1
    capsys.readouterr()


def _merged(bp, tmp_path, *runs):
    """Write ``runs`` as JSON files and ``--merge`` them: ``(paths, out path, merged JSON)``."""
    paths = [tmp_path / f"run{i}.json" for i in range(len(runs))]
    for path, run in zip(paths, runs):
        path.write_text(json.dumps(run))
    out = tmp_path / "all.json"
    assert bp.main(["--merge", *map(str, paths), "--out", str(out)]) == 0
    return paths, out, json.loads(out.read_text())


def test_merge_runs_over_disjoint_blocks(bp, tmp_path, monkeypatch):
    """Runs split with --only-blocks merge into one JSON and table, rows in order of depth."""
    monkeypatch.setattr(bp, "get_model_blocks", lambda: ["conv1", "block4_project", "conv_last"])
    base = {"benchmark": "bench_priors", "machine": {"torch_threads": 1, "cpu": "x", "load_average_1min": 1.0},
            "settings": {"split": "eval"}, "images": ["a.jpg", "b.jpg"]}
    a = dict(base, blocks=["conv_last"], total_seconds=5.0,
             rows=[_row("conv_last", "paper", 0.2, 0.3), _row("conv_last", "default", 0.1, 0.3)])
    b = dict(base, blocks=["conv1", "block4_project"], total_seconds=7.0,
             rows=[_row("conv1", "paper", 0.3, 0.8), _row("block4_project", "paper", 0.2, 0.5)])
    paths, out, merged = _merged(bp, tmp_path, a, b)
    assert merged["blocks"] == ["conv1", "block4_project", "conv_last"] and merged["total_seconds"] == 12.0
    assert [(r["block"], r["method"]) for r in merged["rows"]] == [
        ("conv1", "paper"), ("block4_project", "paper"), ("conv_last", "paper"), ("conv_last", "default")]
    assert "| conv_last | default | 10.0 |" in out.with_suffix(".md").read_text()
    b["images"] = ["c.jpg", "b.jpg"]
    paths[1].write_text(json.dumps(b))
    with pytest.raises(SystemExit):
        bp.main(["--merge", *map(str, paths)])


def test_merge_keeps_one_row_per_block_and_method(bp, tmp_path, monkeypatch):
    """Runs split over methods with --reference repeat the reused paper row: the merge keeps one
    row per (block, method), preferring a row run over one reused; a reference JSON without
    total_seconds merges too."""
    monkeypatch.setattr(bp, "get_model_blocks", lambda: ["conv1", "conv_last"])
    base = {"benchmark": "bench_priors", "images": ["a.jpg", "b.jpg"]}
    ref = dict(base, blocks=["conv1"], rows=[_row("conv1", "paper", 0.3, 0.8), _row("conv1", "lucent", 0.05, 0.9)])
    later = dict(base, blocks=["conv1"], total_seconds=4.0, settings={"split": "eval"},
                 machine={"torch_threads": 1, "cpu": "x", "load_average_1min": 1.0},
                 rows=[dict(_row("conv1", "paper", 0.9, 0.1), reused=True), _row("conv1", "default", 0.03, 0.95)])
    merged = _merged(bp, tmp_path, later, ref)[2]
    assert [(r["block"], r["method"]) for r in merged["rows"]] == [
        ("conv1", "paper"), ("conv1", "default"), ("conv1", "lucent")]
    assert merged["rows"][0]["normalised_error_mean"] == 0.3 and merged["total_seconds"] == 4.0


def test_reference_plans_share_iterations_by_cost_class(bp):
    rows = [_row("conv1", "paper", 0.3, 0.8), dict(_row("conv1", "lucent", 0.02, 0.99), iterations=311),
            _row("conv1", "fourier:speed=3", 0.1, 0.9)]
    plans = bp._reference_plans(rows)
    assert list(plans) == [bp.cost_key(bp.parse_method("default"))]
    assert plans[bp.cost_key(bp.parse_method("lucent"))]["iterations"] == 311
