"""End-to-end tests of the `preimage` command (short runs)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import waves
from preimage.cli import main


@pytest.fixture
def image_file(tmp_path):
    arr = waves(64, 72, amplitude=60, period_x=6.0, period_y=9.0).astype(np.uint8)
    p = tmp_path / "img.png"
    Image.fromarray(np.stack([arr, arr[::-1], arr[:, ::-1]], axis=2)).save(p)
    return p


@pytest.mark.parametrize("rep", ["hog", "hogb", "dsift"])
def test_invert_writes_pictures_json_and_tensors(tmp_path, image_file, rep):
    out = tmp_path / "out"
    assert main(["invert", str(image_file), "--rep", rep, "--iters", "40", "--restarts", "2",
                 "--lambda-tv", "0.5,5", "--out", str(out), "--no-progress"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["settings"]["restarts"] == 2 and result["settings"]["lambda_tv"] == [0.5, 5.0]
    assert np.array(result["relative_errors"]).shape == (2, 2)
    for name in ("summary.png", "original.png", "reconstruction_r0_tv0.5.png", "reconstruction_r1_tv5_raw.png",
                 "reconstructions.safetensors"):
        assert (out / name).is_file(), name
    summary = Image.open(out / "summary.png")
    assert summary.width > 4 * 64  # original (+ glyphs) + four reconstructions


def test_features_then_invert_the_saved_code(tmp_path, image_file):
    codes = tmp_path / "codes.npy"
    assert main(["features", str(image_file), "--rep", "hog", "--out", str(codes)]) == 0
    arr = np.load(codes)
    assert arr.shape == (27, 8, 9)
    out = tmp_path / "fromcode"
    assert main(["invert", "--code", str(codes), "--image-size", "64,72", "--rep", "hog", "--iters", "20",
                 "--out", str(out), "--no-progress"]) == 0
    assert (out / "reconstruction.png").is_file() and not (out / "original.png").exists()


def test_bad_inputs_give_one_line_errors(tmp_path, image_file, capsys):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    assert main(["invert", str(junk), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["invert", str(image_file), "--rep", "gist", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown representation 'gist'" in err and "hog, hogb, dsift" in err
    tiny = tmp_path / "tiny.png"
    Image.new("L", (5, 5)).save(tiny)
    assert main(["invert", str(tiny), "--rep", "hog", "--out", str(tmp_path / "o")]) == 2
    assert "at least 8×8" in capsys.readouterr().err
    nan_code = tmp_path / "nan.npy"
    code = np.ones((27, 8, 9), np.float32)
    code[0, 0, 0] = np.nan
    np.save(nan_code, code)
    assert main(["invert", "--code", str(nan_code), "--image-size", "64,72", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "NaN/Inf" in capsys.readouterr().err
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.ones((27, 3, 3), np.float32))
    assert main(["invert", "--code", str(wrong), "--image-size", "64,72", "--out", str(tmp_path / "o")]) == 2
    assert "does not match" in capsys.readouterr().err
    pick = tmp_path / "pickled.npy"
    np.save(pick, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert main(["invert", "--code", str(pick), "--image-size", "64,72", "--out", str(tmp_path / "o")]) == 2
    assert "cannot read a code" in capsys.readouterr().err


def test_finished_run_removes_its_checkpoint_and_an_interrupted_one_resumes(tmp_path, image_file, monkeypatch):
    def args(out):
        return ["invert", str(image_file), "--rep", "hog", "--iters", "60", "--out", str(out), "--no-progress"]

    done = tmp_path / "done"
    assert main(args(done)) == 0
    first = json.loads((done / "result.json").read_text())
    assert not (done / ".checkpoint").exists()  # a finished run leaves no optimiser state behind

    from preimage.objective import InversionObjective
    forward, calls = InversionObjective.forward, []

    def interrupted_forward(self, u, seen=None):  # Ctrl-C after the checkpoint of iteration 50
        calls.append(1)
        if len(calls) == 55:
            raise KeyboardInterrupt
        return forward(self, u, seen)

    out = tmp_path / "out"
    monkeypatch.setattr(InversionObjective, "forward", interrupted_forward)
    assert main(args(out)) == 130
    assert list((out / ".checkpoint").glob("*.safetensors"))
    assert not (out / "result.json").exists()
    monkeypatch.setattr(InversionObjective, "forward", forward)
    assert main(args(out)) == 0  # the same command resumes from iteration 50: same answer, less work
    second = json.loads((out / "result.json").read_text())
    assert np.allclose(second["relative_errors"], first["relative_errors"], rtol=1e-5)
    assert second["seconds"] < first["seconds"]
    assert not (out / ".checkpoint").exists()


def test_cnn_invert_with_neighbourhood_and_channels(tmp_path, image_file):
    out = tmp_path / "cnn"
    with pytest.warns(UserWarning):
        rc = main(["invert", str(image_file), "--model", "caffenet", "--layer", "conv2", "--iters", "4",
                   "--neighbourhood", "5", "--channels", "first-half", "--out", str(out), "--no-progress"])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["layer"] == "conv2" and result["settings"]["masked"]
    # preimage's default for CNN layers: a Fourier image with L-BFGS, the paper's weight for an
    # early layer (0.5) times the Fourier image's prior scale
    assert result["settings"]["param"] == "fourier" and result["settings"]["method"] == "lbfgs"
    assert result["settings"]["lambda_tv"] == [pytest.approx(0.0015)]
    assert main(["invert", str(image_file), "--model", "caffenet", "--layer", "conv9", "--out", str(out)]) == 2


def test_cnn_invert_leaks_by_default_and_records_the_leak(tmp_path, image_file, capsys):
    for extra, leak in (([], 0.05), (["--grad-leak", "0.02"], 0.02), (["--grad-leak", "0"], 0.0),
                        (["--method", "paper"], 0.0)):
        out = tmp_path / f"leak{len(extra)}{leak}"
        with pytest.warns(UserWarning):  # random CaffeNet weights
            rc = main(["invert", str(image_file), "--model", "caffenet", "--layer", "conv2", "--iters", "3",
                       *extra, "--out", str(out), "--no-progress"])
        assert rc == 0 and json.loads((out / "result.json").read_text())["settings"]["grad_leak"] == leak
    caffenet = ["--model", "caffenet", "--layer", "conv2"]
    for argv, message in (([*caffenet, "--grad-leak", "1.5"], "leak must be in [0, 1)"),
                          ([*caffenet, "--method", "paper", "--grad-leak", "0.05"], "exact gradient"),
                          (["--rep", "hog", "--grad-leak", "0.05"], "network layers")):
        capsys.readouterr()
        assert main(["invert", str(image_file), *argv, "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_layers_command_prints_table2(capsys):
    assert main(["layers", "caffenet"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "fc8" in out and " 355 " in out


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("preimage: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_out_naming_a_file_is_a_one_line_error(tmp_path, image_file, capsys):
    taken = tmp_path / "taken.txt"
    taken.write_text("not a folder")
    assert main(["invert", str(image_file), "--out", str(taken), "--no-progress"]) == 2
    assert "is a file, not a folder" in _one_error_line(capsys)
    assert taken.read_text() == "not a folder"


def test_device_is_checked_up_front(tmp_path, image_file, capsys, monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: False)  # a CPU-only PyTorch build
    out = tmp_path / "o"
    assert main(["invert", str(image_file), "--device", "cuda", "--out", str(out), "--no-progress"]) == 2
    assert "CUDA is not available in this PyTorch build" in _one_error_line(capsys)
    assert not out.exists()  # nothing done before the check
    assert main(["invert", str(image_file), "--device", "gpu", "--out", str(out), "--no-progress"]) == 2
    assert "not a device name" in _one_error_line(capsys)


def test_neighbourhood_larger_than_the_code_is_a_one_line_error(tmp_path, image_file, capsys):
    assert main(["invert", str(image_file), "--rep", "hog", "--neighbourhood", "500", "--out", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    assert "does not fit the code's 8×9 map" in _one_error_line(capsys)


@pytest.mark.parametrize("error", [ValueError("bad\nvalue"), FileNotFoundError(2, "No such file", "x.png"),
                                   FloatingPointError("diverged"), PermissionError(13, "Permission denied", "/o"),
                                   OSError("disk full")])
def test_user_errors_are_one_line_without_traceback(monkeypatch, capsys, error):
    import preimage.cli.layers as layers_command

    def fails(args):
        raise error

    monkeypatch.setattr(layers_command, "cmd_layers", fails)
    assert main(["layers", "caffenet"]) == 2
    assert " ".join(str(error).split()) in _one_error_line(capsys)


def test_invert_with_a_fourier_image_and_jitter(tmp_path, image_file):
    """--param and --jitter reach invert and are recorded; --method paper refuses them."""
    out = tmp_path / "fourier"
    assert main(["invert", str(image_file), "--rep", "hog", "--param", "fourier", "--jitter", "auto",
                 "--iters", "20", "--out", str(out), "--no-progress"]) == 0
    settings = json.loads((out / "result.json").read_text())["settings"]
    assert settings["param"] == "fourier" and settings["method"] == "adam" and settings["jitter"] == 2
    assert main(["invert", str(image_file), "--rep", "hog", "--method", "paper", "--param", "dip",
                 "--out", str(tmp_path / "x"), "--no-progress"]) == 2


def test_cnn_invert_method_paper_is_the_papers(tmp_path, image_file):
    """--method paper on a CNN layer: pixels, momentum, the paper's CNN schedule and weight."""
    out = tmp_path / "paper"
    with pytest.warns(UserWarning):
        rc = main(["invert", str(image_file), "--model", "caffenet", "--layer", "conv2", "--iters", "4",
                   "--method", "paper", "--out", str(out), "--no-progress"])
    assert rc == 0
    settings = json.loads((out / "result.json").read_text())["settings"]
    assert (settings["param"], settings["method"], settings["jitter"]) == ("pixel", "momentum", 1)
    assert settings["lambda_tv"] == [0.5] and settings["iterations"] == 4


def test_visualize_and_caricature_take_the_model_options(tmp_path, image_file):
    """--model-dir (and the other loading options) reach visualize and caricature as they do invert."""
    from preimage.data import missing_reason, shared_dir
    root = shared_dir()
    if root is None:
        pytest.skip(missing_reason())
    source = root / "models" / "mobilenet_v2_1.0_224_quant.tflite"
    if not source.is_file():
        pytest.skip(f"{source} is missing")
    models = tmp_path / "mine"
    models.mkdir()
    (models / "renamed.tflite").write_bytes(source.read_bytes())
    common = ["--model", "renamed.tflite", "--model-dir", str(models), "--layer", "block2_project",
              "--iters", "2", "--no-progress"]
    assert main(["visualize", *common, "--channels", "0:2", "--size", "32,32", "--out", str(tmp_path / "v")]) == 0
    assert len(json.loads((tmp_path / "v" / "result.json").read_text())["units"]) == 2
    assert main(["caricature", str(image_file), *common, "--out", str(tmp_path / "c")]) == 0
    assert (tmp_path / "c" / "caricature.png").is_file()
    with pytest.raises(SystemExit) as exc:  # argparse: an unknown preset is exit 2
        main(["visualize", "--model", "renamed.tflite", "--preprocess", "nonsense"])
    assert exc.value.code == 2
