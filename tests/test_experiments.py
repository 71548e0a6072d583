"""`preimage reproduce`: configuration, the plan of units, the units themselves, the CLI wiring,
resuming, and (opt-in) the whole --quick run."""

import argparse
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from preimage.errors import PreimageError
from preimage.cli.reproduce import add_reproduce_parser, cmd_reproduce
from preimage.data import spread
from preimage.experiments.base import PRESETS, Config, config_from, layer_lambda
from preimage.experiments.registry import EXPERIMENTS, build_plan, resolve_only
from preimage.experiments.units import run_unit
from preimage.paper import analogue


def test_resolve_only():
    assert resolve_only(None) == list(EXPERIMENTS)
    assert resolve_only("fig4,table1") == ["table1", "fig4"]
    assert resolve_only("figs") == [e for e in EXPERIMENTS if e.startswith("fig")]
    assert resolve_only("tables,figure10") == ["table1", "table2", "table3", "fig10"]
    with pytest.raises(PreimageError, match="unknown experiment"):
        resolve_only("fig11")


def test_config_overrides():
    c = config_from("quick", ["shallow_iterations=12", "shallow_reps=hog,dsift", "cnn_size=none", "hoggle=none"])
    assert c.shallow_iterations == 12 and c.shallow_reps == ("hog", "dsift") and c.cnn_size is None
    assert c.hoggle == "none" and c.preset == "quick"
    assert config_from("full") == Config()
    with pytest.raises(PreimageError, match="unknown setting"):
        config_from("quick", ["nope=1"])
    with pytest.raises(PreimageError, match="bad value"):
        config_from("quick", ["n_images=many"])
    with pytest.raises(PreimageError, match="unknown preset"):
        config_from("fastest")


def test_layer_mapping_helpers():
    names = [f"b{i}" for i in range(1, 21)]
    assert analogue(names, 4) == "b4" and analogue(names, 20) == "b20"
    assert analogue(names[:10], 4) == "b2" and analogue(names[:3], 1) == "b1"
    assert spread(names, 4) == ["b1", "b6", "b11", "b16"]
    assert spread(names, None) == names and spread(names, 1) == ["b1"]
    assert [layer_lambda(names, n) for n in ("b1", "b6", "b7", "b12", "b13", "b20")] == [0.5, 0.5, 5, 5, 50, 50]


def test_plan_is_stable_unique_and_complete(shared):
    cfg = PRESETS["tiny"]
    p1, p2 = build_plan(cfg), build_plan(cfg)
    keys = [u.key for u in p1.units]
    assert keys == [u.key for u in p2.units]                 # deterministic
    assert len(set(keys)) == len(keys)                       # no duplicates
    exps = {u.experiment for u in p1.units} | {k.split("/")[0] for k in p1.skipped}
    assert exps == set(EXPERIMENTS)                          # every experiment planned or explained
    for u in p1.units:
        assert u.params["v"] >= 1 and u.kind in ("invert", "codes", "hoggle", "layers", "visualize")
        if u.kind == "invert":
            # one unit = one batched invert call: images × λ set × restarts
            assert u.params["images"] and u.params["lambda_tv"] and u.params["restarts"] >= 1
    sub = build_plan(cfg, "fig4,table1")
    assert {u.experiment for u in sub.units} == {"fig4", "table1"}
    assert {u.key for u in sub.units} <= set(keys)           # same parameters → same keys
    other = build_plan(config_from("tiny", ["shallow_iterations=5"]), "fig4")
    assert other.units[0].key not in set(keys)


def test_quick_plan_uses_a_subset_of_layers(shared):
    p = build_plan(PRESETS["quick"], "table3,fig5")
    t3 = [u for u in p.units if u.experiment == "table3" and u.kind == "invert"]
    if not t3:
        pytest.skip(f"MobileNet unavailable: {p.skipped}")
    layers = {u.params["rep"]["layer"] for u in t3}
    assert len(layers) == PRESETS["quick"].max_layers
    assert all(u.params["lambda_tv"] == [0.5, 5.0, 50.0] for u in t3)
    assert any("left out" in n for n in p.notes.get("table3", []))


def test_priors_figure_plans_every_prior_at_four_depths(shared):
    """The priors figure: pixel (the paper's), Fourier, DIP and the lucent configuration, each at
    the same four blocks; the prior's invert settings are part of each unit's key."""
    from preimage.baselines.lucent import LUCENT
    p = build_plan(PRESETS["quick"], "priors")
    units = [u for u in p.units if u.experiment == "priors"]
    if not units:
        pytest.skip(f"MobileNet unavailable: {p.skipped}")
    assert len(units) == 16 and len({u.key for u in units}) == 16
    assert len({u.params["rep"]["layer"] for u in units}) == 4
    params = {u.params["options"]["param"] for u in units}
    assert params == {"pixel", "fourier", "dip"}
    assert sum(u.params["options"] == LUCENT for u in units) == 4


def test_missing_model_is_skipped_with_a_reason(shared, monkeypatch):
    from preimage.experiments import base

    def boom(self, name):
        raise FileNotFoundError(f"no {name} here")
    monkeypatch.setattr(base.Context, "model", boom)
    p = build_plan(PRESETS["tiny"], "table3,fig1,fig4")
    assert "no mobilenet_v2 here" in p.skipped["fig1"]
    assert "table3" in p.skipped
    assert [u.experiment for u in p.units] == ["fig4"]


def test_invert_unit(shared):
    plan = build_plan(config_from("tiny", ["shallow_iterations=3"]), "fig4")
    (u,) = plan.units
    out = run_unit(u.params, torch_threads=1)
    m = out["metrics"]
    assert m["shape"] == [1, 1, 3] and m["iterations"] == 3
    d = np.asarray(m["distance"])
    rel = np.asarray(m["relative_error"])
    assert d.shape == (1, 1, 3) and np.all(np.isfinite(d))
    np.testing.assert_allclose(d[0, 0] / m["target_norm"][0], rel[0, 0], rtol=1e-4)
    assert set(out["pngs"]) == {"original_n0", "recon_n0_r0_k0", "recon_n0_r0_k1", "recon_n0_r0_k2"}
    assert all(a.dtype == np.uint8 and a.shape[:2] == (32, 32) for a in out["pngs"].values())
    assert out["tensors"]["reconstructions"]["reconstructions"].shape == (1, 1, 3, 1, 32, 32)
    assert out["timings"]["seconds"] > 0 and ":" in out["worker"]
    again = run_unit(u.params, torch_threads=1)  # a pure function of the parameters
    np.testing.assert_allclose(np.asarray(again["metrics"]["distance"]), d, rtol=1e-5)


def test_codes_unit_normaliser_matches_metrics(shared):
    from preimage.metrics import pairwise_normaliser
    from preimage.representations import get_representation
    from preimage.experiments.units import load_unit_image
    plan = build_plan(config_from("tiny", ["shallow_reps=hog", "hoggle=none", "n_images=3"]), "table1")
    u = next(u for u in plan.units if u.kind == "codes")
    out = run_unit(u.params)
    rep = get_representation("hog")
    codes = [rep(load_unit_image(n, "grey", "crop", 32)[None])[0] for n in u.params["images"]]
    for conv in ("paper", "authors"):
        assert math.isclose(out["metrics"]["normaliser"][conv], pairwise_normaliser(codes, conv), rel_tol=1e-6)


def test_masked_unit_with_receptive_field_box(shared):
    plan = build_plan(PRESETS["tiny"], "fig8")
    if not plan.units:
        pytest.skip(f"MobileNet unavailable: {plan.skipped}")
    u = plan.units[0]
    out = run_unit(u.params, torch_threads=1)
    top, left, bottom, right = out["metrics"]["box"]
    assert 0 <= top < bottom <= 64 and 0 <= left < right <= 64
    assert "boxed_n0_r0_k0" in out["pngs"]
    assert u.params["window"] == 5 and out["metrics"]["target_norm"][0] > 0  # the masked target is not empty


def test_cli_wiring(tmp_path):
    parser = argparse.ArgumentParser(prog="preimage")
    sub = parser.add_subparsers(dest="command")
    add_reproduce_parser(sub)
    args = parser.parse_args(["reproduce", "--quick", "--only", "table1,fig4", "--workers", "2", "--out", str(tmp_path),
                              "--set", "n_images=2"])
    assert args.func is cmd_reproduce and args.quick and args.workers == 2 and args.only == "table1,fig4"
    args = parser.parse_args(["reproduce", "--scheduler", "tcp://10.0.0.1:8786", "--out", "x"])
    assert args.scheduler == "tcp://10.0.0.1:8786" and not args.quick
    with pytest.raises(SystemExit):
        parser.parse_args(["reproduce", "--quick"])  # --out is required
    bad = parser.parse_args(["reproduce", "--quick", "--preset", "full", "--out", str(tmp_path)])
    with pytest.raises(PreimageError, match="disagree"):
        cmd_reproduce(bad)


def test_inline_run_resumes_and_reports(shared, tmp_path):
    from preimage.experiments.runner import run
    from preimage.experiments.store import ResultStore
    cfg = config_from("tiny", ["shallow_iterations=3"])
    lines = []
    s1 = run(cfg, tmp_path, only="fig4,table1", scheduler="inline", torch_threads=1, log=lines.append)
    assert s1["failed"] == 0 and s1["computed"] == s1["planned"] > 0
    with ResultStore(tmp_path) as st:
        stamps = {r["key"]: r["finished_at"] for r in st.rows()}
    s2 = run(cfg, tmp_path, only="fig4,table1", scheduler="inline", log=lines.append)
    assert s2["computed"] == 0 and s2["already_finished"] == s1["planned"]
    with ResultStore(tmp_path) as st:
        assert {r["key"]: r["finished_at"] for r in st.rows()} == stamps
        assert len(st.runs()) == 2
    html = (tmp_path / "report.html").read_text()
    assert "Table 1" in html and "Figure 4" in html


@pytest.mark.slow
def test_quick_reproduction_under_five_minutes(shared, tmp_path):
    """The whole `preimage reproduce --quick` on Dask (LocalCluster), timed."""
    pytest.importorskip("distributed")
    from preimage.cli import main
    t0 = time.perf_counter()
    rc = main(["reproduce", "--quick", "--out", str(tmp_path)])
    seconds = time.perf_counter() - t0
    assert rc == 0
    assert seconds < 300, f"--quick took {seconds:.0f} s"
    html = (tmp_path / "report.html").read_text()
    for exp in ("Table 1", "Table 2", "Table 3", *(f"Figure {i} " for i in range(1, 11))):
        assert exp in html


def test_one_object_per_experiment():
    from preimage.experiments.registry import REGISTRY
    assert tuple(REGISTRY) == EXPERIMENTS
    for name, exp in REGISTRY.items():
        assert exp.name == name and exp.title and exp.text


def test_the_scorer_is_the_library_metrics():
    """Distances stored by the units, scored by experiments.scoring, equal preimage.metrics on the codes."""
    import torch

    from preimage.experiments import scoring
    from preimage.metrics import normalised_errors, pairwise_normaliser, score_distances, summarise
    g = torch.Generator().manual_seed(0)
    targets = torch.randn(5, 3, 4, 4, generator=g)
    codes = targets[:, None, None] + torch.randn(5, 2, 3, 3, 4, 4, generator=g)  # (N, R, K, code)
    dist = scoring.code_distances(codes, targets)
    assert dist.shape == (5, 2, 3)
    norms = scoring.set_normalisers(list(targets))
    scored = score_distances(dist[:, 1, 2].tolist(), norms)
    for conv in ("paper", "authors"):
        assert norms[conv] == pairwise_normaliser(list(targets), conv)
        errs = normalised_errors(list(codes[:, 1, 2]), list(targets), convention=conv)
        assert scored[conv]["per_image"] == errs.tolist()
        assert scored[conv]["mean"] == summarise(errs)["mean"]


# ----------------------------------------------------------------------------------------------
# Presets, progress, partial reports, devices
# ----------------------------------------------------------------------------------------------

def test_standard_preset_plans_the_papers_method_on_stated_samples(shared):
    cfg = config_from("standard")
    assert cfg.preset == "standard" and cfg.layer_images >= 20 and cfg.n_images == 100
    plan = build_plan(cfg)
    assert plan.skipped == {}, plan.skipped
    by = plan.by_experiment()
    assert set(by) >= {"table1", "table2", "table3", *(f"fig{i}" for i in range(1, 11))}
    from preimage.data import eval_images
    every = [p.name for p in eval_images()]
    inv1 = [u for u in by["table1"] if u.kind == "invert"]
    assert len(every) == 100 and {n for u in inv1 for n in u.params["images"]} == set(every)
    inv3 = [u for u in by["table3"] if u.kind == "invert"]
    names3 = [n for u in inv3 if u.params["rep"]["layer"] == inv3[0].params["rep"]["layer"] for n in u.params["images"]]
    assert names3 == spread(every, cfg.layer_images)                       # evenly spread over the set
    assert all(u.params["lambda_tv"] == [0.5, 5.0, 50.0] for u in inv3)
    # the paper's method: no options, the library's schedules (iterations None)
    for u in inv1 + inv3:
        assert "options" not in u.params and u.params["iterations"] is None
    # quick stays what it was, --quick its alias
    assert config_from("quick") == PRESETS["quick"] and PRESETS["quick"].layer_images is None


def test_preset_flags(tmp_path):
    parser = argparse.ArgumentParser(prog="preimage")
    add_reproduce_parser(parser.add_subparsers(dest="command"))
    for flag in ("quick", "standard", "full"):
        assert parser.parse_args(["reproduce", "--preset", flag, "--out", "x"]).preset == flag
    args = parser.parse_args(["reproduce", "--quick", "--preset", "quick", "--device", "cpu", "--out", "x"])
    assert args.quick and args.device == "cpu"
    bad = parser.parse_args(["reproduce", "--preset", "standard", "--device", "tpu", "--out", str(tmp_path)])
    with pytest.raises(PreimageError, match="unknown device"):
        cmd_reproduce(bad)


def test_progress_line_counts_and_eta():
    from preimage.experiments.runner import Progress, format_seconds
    a = {"experiment": "table1", "kind": "invert", "rep": {"name": "hog"}, "images": ["x", "y"]}
    b = {"experiment": "table3", "kind": "invert", "rep": {"layer": "block5_add"}, "images": ["x", "y"]}
    todo = [a] * 4 + [b] * 2
    workers = [2]
    p = Progress(total=10, already=4, todo=todo, workers=lambda: workers[0])
    assert p.eta() is None and p.line() == "4/10 units done, 0 failed, ETA ?"
    p.update(a, 10.0, True)
    assert p.eta() == pytest.approx(5 * 10.0 / 2)            # no b finished yet: the overall mean
    p.update(b, 100.0, True)
    p.update(a, None, False)
    assert p.eta() == pytest.approx((2 * 10.0 + 1 * 100.0) / 2)  # per kind/layer means
    workers[0] = 1                                            # a worker lost: the ETA follows
    assert p.eta() == pytest.approx(120.0)
    assert p.line() == "6/10 units done, 1 failed, ETA 2 min"
    assert format_seconds(30) == "30 s" and format_seconds(3 * 3600 + 300) == "3 h 05 min"


def test_partial_report_states_what_is_missing(shared, tmp_path):
    from preimage.experiments.report import write_report
    from preimage.experiments.runner import _prepare, _record
    from preimage.experiments.store import ResultStore
    cfg = config_from("tiny", ["shallow_iterations=3", "shallow_reps=hog", "hoggle=none"])
    with ResultStore(tmp_path) as st:
        plan, todo = _prepare(st, cfg, "fig4,table1", lambda s: None)
        for u in todo:
            if u.experiment == "fig4":
                _record(st, u, run_unit(u.params, 1))
        write_report(tmp_path, store=st)
    md = (tmp_path / "report.md").read_text()
    n1 = len(plan.by_experiment()["table1"])
    assert f"Partial run — unfinished: table1 (0/{n1} units)" in md
    assert f"Incomplete: 0 of {n1} units finished (0 failed, {n1} not computed yet)" in md
    assert "preset “tiny”; sample: 0 of 2 eval images finished" in md      # table 1's caption
    assert "preset “tiny”; sample: 1 eval image]" in md                    # the finished figure


def test_cuda_device_needs_a_gpu_here():
    import torch
    from preimage.experiments.runner import check_device
    assert check_device("auto", local=True) is None and check_device("cpu", local=True) == "cpu"
    assert check_device("cuda", local=False) == "cuda"          # a remote cluster's workers may have one
    if not torch.cuda.is_available():
        with pytest.raises(PreimageError, match="no CUDA device"):
            check_device("cuda", local=True)


def test_units_run_on_cuda(shared, tmp_path):
    import torch
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine (torch.cuda.is_available() is False)")
    from preimage.experiments.runner import run
    from preimage.experiments.store import ResultStore
    cfg = config_from("tiny", ["shallow_iterations=3"])
    s = run(cfg, tmp_path, only="fig4,fig7", scheduler="inline", device="cuda", log=lambda s: None)
    assert s["failed"] == 0 and s["computed"] == s["planned"] > 0
    with ResultStore(tmp_path, readonly=True) as st:
        devices = {r["metrics"].get("device") for r in st.rows() if r["kind"] == "invert"}
    assert devices == {"cuda"}


def test_hoggle_units_do_not_all_train_the_dictionary_at_once():
    from preimage.experiments.base import Unit
    from preimage.experiments.runner import submission_order
    inv = [Unit({"experiment": "table1", "kind": "invert", "i": i}) for i in range(3)]
    hog = [Unit({"experiment": "table1", "kind": "hoggle", "i": i}) for i in range(3)]
    order = submission_order([inv[0], hog[0], inv[1], hog[1], inv[2], hog[2]])
    assert [u.key for u in order] == [u.key for u in [hog[0], *inv, hog[1], hog[2]]]
    assert submission_order(inv) == inv


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_units_undo_dasks_malloc_trim_threshold():
    """A Dask worker's MALLOC_TRIM_THRESHOLD_ is undone once per process; without it nothing is done."""
    code = ("from preimage.experiments.units import restore_malloc_thresholds as r; "
            "print(r(), r())")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    dask = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_TRIM_THRESHOLD_": "65536"},
                          capture_output=True, text=True, timeout=120)
    assert plain.stdout.split() == ["False", "False"], plain.stderr
    assert dask.stdout.split() == ["True", "False"], dask.stderr


def test_a_caricature_unit_at_the_networks_own_size(shared):
    """The standard and full presets leave the CNN size at the network's (size None): a caricature
    unit then crops its images to the network's input size."""
    from preimage.experiments.visualisation import run_visualize_unit, visualize_params
    from preimage.data import eval_images
    p = visualize_params("maximise", "mobilenet_v2", "block2_project", what="caricature", size=None,
                         iterations=2, images=[eval_images()[1].name])
    out = run_visualize_unit(p)
    assert len(out["pngs"]) == 2 and all(im.shape[:2] == (224, 224) for im in out["pngs"].values())
    assert out["tensors"]["images"]["images"].shape == (1, 3, 224, 224)
    assert out["metrics"]["scores"][0] > 0


def test_a_stored_inversion_of_preimages_own_recipe_is_keyed_by_the_recipe_version():
    from preimage.experiments.base import Unit, invert_params
    from preimage.invert import RECIPE_VERSION
    common = dict(mode="rgb", preprocess="squash", size=[224, 224], lambdas=[5.0], iterations=None)
    paper = invert_params("t", {"kind": "cnn"}, ["a.jpg"], options={"method": "paper"}, **common)
    own = invert_params("t", {"kind": "cnn"}, ["a.jpg"], options={"param": "fourier"}, **common)
    assert "recipe" not in paper and own["recipe"] == RECIPE_VERSION
    assert Unit(dict(own)).key != Unit({**own, "recipe": RECIPE_VERSION - 1}).key
