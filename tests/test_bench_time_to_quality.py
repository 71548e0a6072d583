"""benchmarks/bench_time_to_quality.py (the time-to-reference bookkeeping, a --quick run on the shared
data) and preimage.baselines.cnn_visualizations (the published settings, the loss and the step)."""

import json

import pytest
import torch
from helpers.bench import bench_module
from torch import nn

from preimage.baselines import cnn_visualizations as cv
from preimage.optim import minimise


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tq():
    """The benchmark module ``benchmarks/bench_time_to_quality.py``."""
    return bench_module("bench_time_to_quality")


# ----------------------------------------------------------------------------------------------
# pytorch-cnn-visualizations, re-expressed
# ----------------------------------------------------------------------------------------------

def test_cnn_visualizations_published_settings():
    s = cv.CNN_VISUALIZATIONS
    assert (s["lr"], s["momentum"], s["iterations"]) == (1e4, 0.9, 201)
    assert (s["data_weight"], s["alpha"], s["lambda_alpha"], s["beta"], s["lambda_tv"]) == (0.1, 6.0, 1e-7, 2.0, 1e-8)
    assert s["init_std"] == 0.1 and s["input_std"] == (0.229, 0.224, 0.225)
    assert cv.BEST_RATES == (1e3, 1e2)
    # the rate divided by 10 after iterations 0, 40, 80, 120, 160
    assert cv.schedule() == ((1, 1.0), (40, 0.1), (40, 0.01), (40, 1e-3), (40, 1e-4), (40, 1e-5))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.Conv2d(4, 5, 3)).eval()


def _published_loss(net, z, target):
    """The published loss, written from its description (TV over rows and columns)."""
    x = 255 * (torch.tensor(cv.CNN_VISUALIZATIONS["input_mean"]).view(1, 3, 1, 1)
               + torch.tensor(cv.CNN_VISUALIZATIONS["input_std"]).view(1, 3, 1, 1) * z)
    data = (net(x) - target).pow(2).sum() / target.pow(2).sum()
    dx, dy = torch.zeros_like(z), torch.zeros_like(z)
    dx[..., :, :-1] = z[..., :, 1:] - z[..., :, :-1]
    dy[..., :-1, :] = z[..., 1:, :] - z[..., :-1, :]
    return 0.1 * data + 1e-7 * z.pow(6).sum() + 1e-8 * (dx * dx + dy * dy).sum()


def test_cnn_visualizations_loss_and_step_match_the_published_algorithm():
    """preimage's energy is the published loss / 0.1, and its momentum step at rate 0.1·η is
    SGD's step on the published loss at η."""
    net = _net()
    images = 255 * torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(1))
    obj = cv.objective(net, images)
    z0 = cv.initial(1, (3, 20, 20), seed=3)
    assert z0.std().item() == pytest.approx(0.1, rel=0.2)
    assert torch.allclose(obj.representation.normalise(obj.representation.pixels(z0)), z0, atol=1e-5)
    with torch.no_grad():
        target = net(images)
        assert float(obj(z0).total.sum()) * 0.1 == pytest.approx(float(_published_loss(net, z0, target)), rel=1e-5)
    z = z0.clone().requires_grad_(True)
    _published_loss(net, z, target).backward()
    lr = 30.0
    expected = z0 - lr * z.grad
    res = minimise(obj, z0, lr=lr * 0.1, schedule=[(1, 1.0)], method="momentum", progress=False,
                   stop_on_divergence=False)
    assert torch.allclose(res.u, expected, rtol=1e-4, atol=1e-6)


def test_cnn_visualizations_inverts_a_batch():
    net = _net()
    images = 255 * torch.rand(2, 3, 20, 20, generator=torch.Generator().manual_seed(2))
    seen = []
    res = cv.invert_cnn_visualizations(net, images, lr=300.0, iterations=12, callback=lambda k, z: seen.append(k),
                                       record_every=5)
    assert res.reconstructions.shape == (2, 1, 1, 3, 20, 20) and res.relative_errors.shape == (2, 1, 1)
    assert torch.isfinite(res.relative_errors).all() and (res.relative_errors < 1.5).all()
    assert seen == [5, 10, 12] and res.settings["lr"] == 300.0 and res.settings["iterations"] == 12
    # every image starts from the same noise: batch and single runs agree
    single = cv.invert_cnn_visualizations(net, images[1:], lr=300.0, iterations=12)
    assert torch.allclose(single.reconstructions[0], res.reconstructions[1], atol=1e-3)
    with pytest.raises(ValueError):
        cv.invert_cnn_visualizations(net, images[:, :1], iterations=3)


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------

def test_first_reach_waits_for_every_sample(tq):
    t = tq.Tracker()
    t.steps, t.wall, t.cpu = [10, 20, 30], [1.0, 2.0, 3.0], [0.5, 1.0, 1.5]
    t.errors = [torch.tensor([0.5, 0.9]), torch.tensor([0.3, float("nan")]), torch.tensor([0.35, 0.4])]
    hit = t.first_reach(torch.tensor([0.4, 0.4]))
    assert (hit["step"], hit["wall"], hit["cpu"], hit["per_sample_step"]) == (30, 3.0, 1.5, [20, 30])
    miss = t.first_reach(torch.tensor([0.4, 0.3]))
    assert "step" not in miss and miss["reached"] == 1 and miss["per_sample_step"] == [20, None]


def test_ratios_and_throughput(tq):
    rows = [{"rep": "hog", "batch": b, "method": m, "time_to_reference_s": t, "time_to_reference_cpu_s": t,
             "time_to_reference_wall_s": t and 2 * t, "images_per_second": ips, "ms_per_iteration": ms}
            for b, m, t, ips, ms in [(1, "paper", 4.0, 0.25, 5.0), (1, "adam", 1.0, 0.5, 4.0),
                                     (8, "paper", 8.0, 1.0, 20.0), (8, "adam", None, 2.0, 16.0)]]
    tq.add_ratios(rows)
    assert [r["ratio_to_paper"] for r in rows] == [1.0, 0.25, 1.0, None]
    assert rows[1]["ratio_to_paper_wall"] == 0.25
    tp = {t["method"]: t for t in tq.throughput(rows)}
    assert tp["paper"]["ratio"] == 4.0 and tp["adam"]["ms_per_iteration_per_image"] == [4.0, 2.0]
    assert tq.against_today(rows) == []  # no paper-nchw row: nothing to compare with
    for r in rows:
        r["images_per_second_to_reference"] = r["batch"] / r["time_to_reference_s"] if r["time_to_reference_s"] else None
    today = [dict(r, method="paper-nchw", images_per_second=r["images_per_second"] / 2,
                  images_per_second_to_reference=0.125) for r in rows if r["method"] == "paper"]
    vs = {(t["batch"], t["method"]): t for t in tq.against_today(rows + today)}
    assert vs[(8, "paper")]["ratio"] == 2.0 and vs[(1, "adam")]["ratio"] == 4.0
    assert vs[(1, "adam")]["ratio_to_reference"] == 8.0 and vs[(8, "adam")]["ratio_to_reference"] is None


def test_quick_run(tq, shared, tmp_path, capsys):
    out = tmp_path / "ttq.json"
    assert tq.main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["benchmark"] == "bench_time_to_quality" and len(result["images"]) == 2
    rows = result["rows"]
    assert all("error" not in r for r in rows)
    got = {(r["rep"], r["batch"], r["method"]) for r in rows}
    hog = {"paper", "paper-torch", "default", "adam", "lbfgs", "early"}  # momentum is HOG's default
    cnn = {"paper", "paper-nchw", "default", "exact", "momentum", "adam", "early", "cnnvis", "cnnvis-best"}  # lbfgs: the default
    assert got == {("hog", b, m) for b in (1, 2) for m in hog} | {("mobilenet_v2:conv1", b, m)
                                                                  for b in (1, 2) for m in cnn}
    for r in rows:
        assert r["iterations"] == 10 and r["seconds_cpu"] > 0 and r["ms_per_iteration"] > 0
        assert len(r["final_errors"]) == r["batch"] and r["passes"] >= r["batch"]
        if r["method"] == "paper":  # the reference is its own final error, reached by definition
            assert r["reached"] == r["batch"] and r["ratio_to_paper"] == 1.0
            assert r["final_errors"] == r["reference_errors"]
    cnn_rows = [r for r in rows if r["rep"].startswith("mobilenet")]
    assert all(0 < r["peak_fraction"] < 1 for r in cnn_rows)
    assert all(r["peak_fraction"] is None for r in rows if r["rep"] == "hog")
    assert result["matmul"]["peak_gflops"] > 0
    case = {c["rep"]: c for c in result["cases"]}["mobilenet_v2:conv1"]
    assert case["flops_per_pass"] > 1e7 and case["cnnvis_best"]["chosen"] in cv.BEST_RATES
    assert len(result["throughput"]) == len(hog) + len(cnn)
    today = {(t["rep"], t["batch"], t["method"]): t for t in result["against_today"]}
    assert set(today) == ({("mobilenet_v2:conv1", b, m) for b in (1, 2) for m in cnn}
                          | {("hog", b, m) for b in (1, 2) for m in hog})
    assert today[("mobilenet_v2:conv1", 1, "paper-nchw")]["ratio"] == 1.0
    assert today[("hog", 2, "paper-torch")]["ratio"] == 1.0
    for rep, plain in (("mobilenet_v2:conv1", "paper-nchw"), ("hog", "paper-torch")):
        old = {r["batch"]: r for r in rows if r["rep"] == rep and r["method"] == plain}
        paper = {r["batch"]: r for r in rows if r["rep"] == rep and r["method"] == "paper"}
        for b in (1, 2):  # the same algorithm: another execution changes only the rounding
            assert old[b]["final_errors"] == pytest.approx(paper[b]["final_errors"], rel=1e-3)
    exact = {r["batch"]: r for r in cnn_rows if r["method"] == "exact"}
    default = {r["batch"]: r for r in cnn_rows if r["method"] == "default"}
    assert exact[2]["final_errors"] != default[2]["final_errors"]  # another gradient (no leak), another path
    md = out.with_suffix(".md").read_text()
    assert md.count("\n| hog | ") == 2 * len(hog) + len(hog) + 2 * len(hog) and "cnnvis-best (lr" in md
    capsys.readouterr()
