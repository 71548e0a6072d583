"""End-to-end tests of the `preimage` command (short runs)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from preimage.cli import main


@pytest.fixture
def image_file(tmp_path):
    y, x = np.mgrid[0:64, 0:72]
    arr = (128 + 60 * np.sin(x / 6.0) * np.cos(y / 9.0)).astype(np.uint8)
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


def test_rerun_resumes_from_checkpoint(tmp_path, image_file):
    out = tmp_path / "out"
    args = ["invert", str(image_file), "--rep", "hog", "--iters", "60", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    first = json.loads((out / "result.json").read_text())
    assert list((out / ".checkpoint").glob("*.safetensors"))
    assert main(args) == 0  # finds the finished state: nothing recomputed, same answer
    second = json.loads((out / "result.json").read_text())
    assert np.allclose(second["relative_errors"], first["relative_errors"], rtol=1e-5)
    assert second["seconds"] < first["seconds"]


def test_cnn_invert_with_neighbourhood_and_channels(tmp_path, image_file):
    out = tmp_path / "cnn"
    with pytest.warns(UserWarning):
        rc = main(["invert", str(image_file), "--model", "caffenet", "--layer", "conv2", "--iters", "4",
                   "--neighbourhood", "5", "--channels", "first-half", "--out", str(out), "--no-progress"])
    assert rc == 0
    result = json.loads((out / "result.json").read_text())
    assert result["layer"] == "conv2" and result["settings"]["masked"]
    assert result["settings"]["lambda_tv"] == [0.5]  # the paper's weight for an early layer
    assert main(["invert", str(image_file), "--model", "caffenet", "--layer", "conv9", "--out", str(out)]) == 2


def test_layers_command_prints_table2(capsys):
    assert main(["layers", "caffenet"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "fc8" in out and " 355 " in out
