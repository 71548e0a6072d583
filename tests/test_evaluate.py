"""The Table-1 and per-layer CNN evaluations (preimage.evaluate) on small synthetic sets."""

import json
import math
import warnings

import pytest
from PIL import Image

from helpers import blurred_noise
from preimage.cli import main
from preimage.data import spread
from preimage.evaluate import evaluate_cnn_layers, evaluate_shallow, format_cnn_table, format_table1


def _write_images(folder, sizes):
    """Smooth random colour images (blurred noise, so HOG has structure) of the given (h, w)."""
    paths = []
    for i, img in enumerate(blurred_noise(sizes, seed=0)):
        p = folder / f"n0000000{i}_thing.png"
        Image.fromarray(img).save(p)
        paths.append(p)
    return paths


def test_spread_takes_evenly_spaced_items():
    assert spread(list(range(10)), 3) == [0, 3, 7]
    assert spread(list(range(4)), None) == [0, 1, 2, 3]
    assert spread(list(range(4)), 9) == [0, 1, 2, 3]


def test_table1_row_on_a_synthetic_set(tmp_path):
    paths = _write_images(tmp_path, [(40, 48), (40, 48), (48, 56)])  # two sizes: two batches
    short = evaluate_shallow(("hog",), paths=paths, iterations=4, progress=False)
    longer = evaluate_shallow(("hog",), paths=paths, iterations=80, progress=False)
    row = longer["rows"]["hog"]
    assert longer["images"] == 3 and longer["iterations"] == 80 and row["n"] == 3
    for conv in ("paper", "authors"):
        assert len(row[conv]["per_image"]) == 3
        assert all(math.isfinite(e) and e >= 0 for e in row[conv]["per_image"])
    assert row["seconds_per_image"] > 0
    # optimising longer reconstructs better: the evaluation measures the optimisation, not noise
    assert row["paper"]["mean"] < short["rows"]["hog"]["paper"]["mean"]
    # image-space similarity beside the code error, in [0, 1] and better after more optimisation
    image, first = row["image"], short["rows"]["hog"]["image"]
    assert 0 < image["orientation"] <= 1 and -1 <= image["ssim"] <= 1
    assert image["orientation"] > first["orientation"]
    table = format_table1(longer)
    assert "| hog |" in table and "28.10 ± 7.9" in table  # the paper's number beside ours
    assert f"{image['ssim']:.3f} | {image['orientation']:.3f}" in table


def test_table1_with_a_fourier_image(tmp_path):
    """evaluate takes invert options (the parameterisation, jitter): the units use them and the
    table says so."""
    paths = _write_images(tmp_path, [(40, 48), (40, 48)])
    res = evaluate_shallow(("hog",), paths=paths, iterations=20, progress=False,
                           options={"param": "fourier", "jitter": "auto"})
    assert res["options"] == {"param": "fourier", "jitter": "auto"}
    assert all(math.isfinite(e) for e in res["rows"]["hog"]["paper"]["per_image"])
    assert "param=fourier, jitter=auto" in format_table1(res)


def test_table1_needs_two_images(tmp_path):
    paths = _write_images(tmp_path, [(40, 48)])
    with pytest.raises(ValueError, match="at least two images"):
        evaluate_shallow(("hog",), paths=paths, iterations=2, progress=False)


def test_cnn_layer_table_on_a_synthetic_set(tmp_path):
    paths = _write_images(tmp_path, [(60, 80), (64, 64)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CaffeNet with random weights warns
        result = evaluate_cnn_layers("caffenet", layers=["conv1", "relu1"], paths=paths, iterations=3,
                                     progress=False, options={"method": "paper"})
        default = evaluate_cnn_layers("caffenet", layers=["conv1"], paths=paths, iterations=3, progress=False)
    assert result["images"] == 2 and list(result["rows"]) == ["conv1", "relu1"]
    row = result["rows"]["conv1"]
    assert row["lambda_tv"] == 0.5  # the paper's weight for the first layers
    # preimage's default: a Fourier image, the paper's weight times its prior scale
    assert default["options"] == {"param": "fourier"} and default["rows"]["conv1"]["lambda_tv"] == pytest.approx(0.0015)
    assert default["rows"]["conv1"]["paper"]["per_image"] != row["paper"]["per_image"]
    assert 0 < row["relative_depth"] < 0.1
    assert len(row["paper"]["per_image"]) == 2
    assert row["iterations"] == 3 and result["iterations"] == 3
    table = format_cnn_table(result)
    assert "| conv1 |" in table and "| relu1 |" in table and "3 iterations" in table


def test_evaluate_cli_writes_the_table_and_json(shared, tmp_path, capsys):
    out = tmp_path / "t1.json"
    rc = main(["evaluate", "--reps", "hog", "--limit", "2", "--iters", "4", "--max-side", "48",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| hog |" in printed
    result = json.loads(out.read_text())
    assert result["images"] == 2 and result["rows"]["hog"]["n"] == 2
    assert not (tmp_path / "t1.json.parts").exists()  # the resume folder goes once the JSON is written


def _refuse_to_invert(*args, **kwargs):
    raise AssertionError("a cached batch was computed again")


def _batch_files(cache):
    """The files of the finished batches (invert units) in an evaluation's cache store."""
    return sorted(cache.glob("units/*/*/errors.safetensors"))


def test_an_interrupted_table1_resumes_from_its_finished_batches(tmp_path, monkeypatch):
    import preimage.experiments.units as ev
    paths = _write_images(tmp_path, [(40, 48), (40, 48), (48, 56)])  # two sizes: two batches
    cache = tmp_path / "parts"
    first = evaluate_shallow(("hog",), paths=paths, iterations=6, progress=False, cache_dir=cache)
    assert len(_batch_files(cache)) == 2
    # "interrupt": lose one batch; the rerun computes only that one and gives the same table
    _batch_files(cache)[0].unlink()
    calls = []
    real_invert = ev.invert
    monkeypatch.setattr(ev, "invert", lambda *a, **k: calls.append(1) or real_invert(*a, **k))
    again = evaluate_shallow(("hog",), paths=paths, iterations=6, progress=False, cache_dir=cache)
    assert len(calls) == 1
    assert again["rows"]["hog"]["paper"]["per_image"] == pytest.approx(first["rows"]["hog"]["paper"]["per_image"])
    # every batch cached: nothing is inverted; a changed setting is not served from the cache
    monkeypatch.setattr(ev, "invert", _refuse_to_invert)
    evaluate_shallow(("hog",), paths=paths, iterations=6, progress=False, cache_dir=cache)
    with pytest.raises(AssertionError, match="computed again"):
        evaluate_shallow(("hog",), paths=paths, iterations=7, progress=False, cache_dir=cache)


def test_cnn_layer_table_resumes_per_layer(tmp_path, monkeypatch):
    import preimage.experiments.units as ev
    paths = _write_images(tmp_path, [(60, 80), (64, 64)])
    cache = tmp_path / "parts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CaffeNet with random weights warns
        first = evaluate_cnn_layers("caffenet", layers=["conv1"], paths=paths, iterations=3, progress=False,
                                    cache_dir=cache)
        monkeypatch.setattr(ev, "invert", _refuse_to_invert)
        again = evaluate_cnn_layers("caffenet", layers=["conv1"], paths=paths, iterations=3, progress=False,
                                    cache_dir=cache)
    assert again["rows"]["conv1"]["paper"]["per_image"] == pytest.approx(first["rows"]["conv1"]["paper"]["per_image"])


# ----------------------------------------------------------------------------------------------
# A model's loading options (issue 11, items 5-6): part of evaluate's and reproduce's units
# ----------------------------------------------------------------------------------------------

def _tiny_onnx(folder):
    """A two-convolution ONNX network at 32×32 (no preprocessing metadata)."""
    pytest.importorskip("onnx")
    import torch
    from torch import nn

    from helpers.onnx_nets import export
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.ReLU()).eval()
    return export(net, folder / "tiny.onnx", 32)


def test_units_without_model_options_keep_their_params():
    from preimage.experiments.base import cnn_rep, model_options_for, unit_model_options
    assert cnn_rep("caffenet", "conv1") == {"type": "cnn", "model": "caffenet", "layer": "conv1"}
    assert cnn_rep("caffenet", "conv1", None) == cnn_rep("caffenet", "conv1", {})
    assert unit_model_options() is None and unit_model_options(preprocess={"preset": None}) is None
    opts = unit_model_options(preprocess={"preset": "Caffe", "order": "bgr", "mean": (1, 2, 3)}, input_size="48x64")
    assert opts == {"preprocess": {"preset": "caffe", "order": "BGR", "mean": [1, 2, 3]}, "input_size": [48, 64]}
    assert json.loads(json.dumps(opts)) == opts  # JSON values only
    # a reproduction's options reach the user's files, not the named networks with their own settings
    assert model_options_for("caffenet", opts, strict=False) is None
    assert model_options_for("net.onnx", opts, strict=False) == opts


def test_evaluate_cli_model_preprocessing_reaches_the_units(shared, tmp_path, capsys):
    from preimage.experiments.store import ResultStore
    net = _tiny_onnx(tmp_path)
    cache, outs = tmp_path / "cache", {}
    common = ["evaluate", "--model", str(net), "--layers", "conv_2_Conv", "--limit", "2", "--iters", "2",
              "--resume-dir", str(cache), "--no-progress"]
    for name, extra in (("caffe", ["--preprocess", "caffe"]), ("default", [])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the file names no preprocessing: torchvision's, with a warning
            assert main(common + extra + ["--out", str(tmp_path / f"{name}.json")]) == 0
        outs[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert "model loaded with preprocess preset=caffe" in capsys.readouterr().out
    caffe, default = outs["caffe"], outs["default"]
    assert caffe["model_options"] == {"preprocess": {"preset": "caffe"}} and "model_options" not in default
    assert caffe["model_settings"]["preprocessing"]["preset"] == "caffe"
    assert caffe["model_settings"]["preprocessing"]["order"] == "BGR"
    assert default["model_settings"]["preprocessing"]["preset"] == "torchvision"
    assert caffe["rows"]["conv_2_Conv"]["paper"]["per_image"] != default["rows"]["conv_2_Conv"]["paper"]["per_image"]
    with ResultStore(cache, readonly=True) as store:
        rows = store.rows(status="finished")
    by_options = {}
    for r in rows:  # one codes and one invert unit per run: the second run reused none of the first's
        by_options.setdefault(json.dumps(r["params"]["rep"].get("model_options")), set()).add(r["key"])
    assert sorted(by_options) == ["null", '{"preprocess": {"preset": "caffe"}}']
    assert [len(keys) for keys in by_options.values()] == [2, 2] and len(rows) == 4


def test_evaluate_model_options_need_a_model(capsys):
    assert main(["evaluate", "--reps", "hog", "--preprocess", "caffe", "--limit", "2"]) == 2
    assert "are for --model" in capsys.readouterr().err


def test_reproduce_plans_the_users_model_with_its_options(shared, tmp_path, capsys):
    from preimage.experiments import build_plan, config_from
    net = _tiny_onnx(tmp_path)
    config = config_from("tiny", [f"table3_models={net}", f"figure_model={net}"],
                         model_options={"preprocess": {"preset": "caffe"}, "input_size": "32,32"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = build_plan(config, "table2,table3,fig4")
    want = {"preprocess": {"preset": "caffe"}, "input_size": [32, 32]}
    table3 = [u for u in plan.units if u.experiment == "table3"]
    assert table3 and "table3" not in plan.skipped
    assert all((u.params.get("rep") or u.params)["model_options"] == want for u in table3)
    # CaffeNet (Table 2) keeps its own settings: its unit is the one stored without options
    assert all("model_options" not in u.params for u in plan.units if u.experiment == "table2")
    # an option no model of the run takes is an error, not silently ignored
    assert main(["reproduce", "--out", str(tmp_path / "r"), "--preset", "tiny", "--preprocess", "caffe"]) == 2
    assert "applies to none of this run's models" in capsys.readouterr().err
