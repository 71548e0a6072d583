"""Finding and naming models: the model search path (``--model-dir``, ``PREIMAGE_MODELS``, the
shared data, ``~/.cache/preimage/models``), ``preimage models``, what a missing model says, TFLite
files by path in every command, Python factories with ``--weights``, and preprocessing presets."""

import json
import os
import shutil
import sys
import textwrap

import pytest
import torch

from preimage.cli import main
from preimage.models import get_model, model_kind
from preimage.models.paths import ModelNotFoundError, search_path
from preimage.models.preprocess import PRESETS, PreprocessingError, make_preprocessing

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = "mobilenet_v1_0.25_128_quant.tflite"


@pytest.fixture
def no_data(tmp_path, monkeypatch):
    """No shared data, an empty user folder, no PREIMAGE_MODELS, and the current folder elsewhere."""
    monkeypatch.setenv("PREIMAGE_DATA", str(tmp_path / "no-shared"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("PREIMAGE_MODELS", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def image(tmp_path):
    from preimage.io.images import save_image
    p = tmp_path / "photo.png"
    save_image(torch.rand(3, 80, 96) * 255, p)
    return p


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("preimage: error: ")
    return err[-1]


def test_search_path_order(no_data, monkeypatch):
    a, b = no_data / "a", no_data / "b"
    monkeypatch.setenv("PREIMAGE_MODELS", f"{b}{os.pathsep}{no_data / 'c'}")
    folders = search_path(a)
    assert [p for p, _ in folders] == [a, b, no_data / "c", no_data / "no-shared" / "models",
                                       no_data / "cache" / "preimage" / "models"]
    assert [why for _, why in folders] == ["--model-dir", "PREIMAGE_MODELS", "PREIMAGE_MODELS",
                                           "shared data (PREIMAGE_DATA)", "user folder"]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_a_weights_file_as_the_model_points_to_weights(no_data, image, capsys, suffix):
    weights = no_data / f"net{suffix}"
    weights.write_bytes(b"\x80\x02not a network")  # existing or not, the suffix decides: nothing is read
    for path in (weights, no_data / f"missing{suffix}"):
        out = no_data / "out"
        assert main(["invert", str(image), "--model", str(path), "--layer", "conv1", "--out", str(out)]) == 2
        line = _err(capsys)
        assert "a weights file" in line and f"--weights {path}" in line and "package.module:factory" in line
        assert not out.exists()


def test_missing_named_model_says_where_it_looked_and_how_to_get_it(no_data, image, capsys):
    out = no_data / "out"
    assert main(["invert", str(image), "--model", "mobilenet_v2", "--layer", "block10_add", "--out", str(out)]) == 2
    line = _err(capsys)
    for needle in ("mobilenet_v2_1.0_224_quant.tflite", str(no_data / "no-shared" / "models"),
                   str(no_data / "cache" / "preimage" / "models"), "https://github.com/google-coral/test_data",
                   "--model-dir", "PREIMAGE_MODELS"):
        assert needle in line, needle
    assert not out.exists()
    with pytest.raises(ModelNotFoundError):
        get_model("mobilenet_v1_small")


def test_named_model_found_in_each_folder(no_data, shared, monkeypatch):
    src = shared / "models" / SMALL
    for folder, how in ((no_data / "flag", "flag"), (no_data / "env", "env"),
                        (no_data / "cache" / "preimage" / "models", "user")):
        folder.mkdir(parents=True)
        os.symlink(src, folder / SMALL)
        if how == "env":
            monkeypatch.setenv("PREIMAGE_MODELS", str(folder))
        net = get_model("mobilenet_v1_small", model_dir=folder if how == "flag" else None)
        assert net.sources[0] == str(folder / SMALL)
        (folder / SMALL).unlink()
        monkeypatch.delenv("PREIMAGE_MODELS", raising=False)
    # a bare file name (or its stem) is looked up on the search path too
    os.symlink(src, no_data / "cache" / "preimage" / "models" / "mine.tflite")
    assert get_model("mine").input_size == (128, 128)
    assert get_model("mine.tflite").input_size == (128, 128)


def test_models_command_lists_folders_and_files(no_data, shared, capsys):
    d = no_data / "mine"
    d.mkdir()
    os.symlink(shared / "models" / SMALL, d / SMALL)
    assert main(["models", "--model-dir", str(d)]) == 0
    out = capsys.readouterr().out
    assert str(d) in out and SMALL in out and "[--model-dir]" in out and "MISSING" in out
    assert "mobilenet_v1_small" in out and str(d / SMALL) in out
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {f["from"] for f in listing["search_path"]} >= {"user folder"}
    assert any(m["name"] == "mobilenet_v2" and m["missing"] for m in listing["named"])


def test_fresh_user_inverts_a_tflite_file_by_path(no_data, image, shared, capsys):
    path = shared / "models" / "mobilenet_v2_1.0_224_quant.tflite"
    out = no_data / "x"
    assert main(["invert", str(image), "--model", str(path), "--layer", "block10_add", "--iters", "3",
                 "--no-progress", "--out", str(out)]) == 0
    assert (out / "reconstruction.png").exists()
    settings = json.loads((out / "result.json").read_text())["model_settings"]
    assert settings["source"] == str(path) and settings["preprocessing"]["quantised_input"]


def test_tflite_path_in_layers_and_classify(shared, capsys):
    path = str(shared / "models" / SMALL)
    assert model_kind(path) == "tflite"
    assert main(["layers", path]) == 0
    assert "block13_pointwise" in capsys.readouterr().out
    img = sorted((shared / "data" / "imagenet-sample" / "eval").glob("*.JPEG"))[0]
    assert main(["classify", str(img), "--model", path, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res[0]["model"] == path and len(res[0]["predictions"]) == 5


def _patched_tflite(src, dst, code: int):
    """A copy of ``src`` whose first operator code is builtin ``code`` (an unsupported operator)."""
    import tflite
    raw = bytearray(src.read_bytes())
    oc = tflite.Model.GetRootAsModel(bytes(raw), 0).OperatorCodes(0)
    for slot, fmt in ((4, "b"), (10, "<i")):  # deprecated_builtin_code (int8), builtin_code (int32)
        off = oc._tab.Offset(slot)
        if off:
            import struct
            struct.pack_into(fmt, raw, oc._tab.Pos + off, code)
    dst.write_bytes(bytes(raw))
    return dst


def test_unsupported_tflite_operator_names_it(tmp_path, shared, image, capsys):
    bad = _patched_tflite(shared / "models" / SMALL, tmp_path / "bad.tflite", 2)  # CONCATENATION
    out = tmp_path / "o"
    assert main(["invert", str(image), "--model", str(bad), "--layer", "conv1", "--out", str(out)]) == 2
    line = _err(capsys)
    assert "CONCATENATION" in line and "supported: CONV_2D" in line and "bad.tflite" in line
    assert not out.exists()
    trunc = tmp_path / "trunc.tflite"
    trunc.write_bytes((shared / "models" / SMALL).read_bytes()[:5000])
    assert main(["layers", str(trunc)]) == 2
    assert "trunc.tflite" in _err(capsys)


# --------------------------------------------------------------------------------------------
# Python models: package.module:factory and --weights
# --------------------------------------------------------------------------------------------

FACTORY = textwrap.dedent('''
    import torch
    from torch import nn

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(16, 10))

    def not_a_module():
        return 42

    def broken():
        raise RuntimeError("boom")
''')


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "usernet.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usernet"
    sys.modules.pop("usernet", None)


def test_factory_model_with_weights(tmp_path, factory, image, capsys):
    from safetensors.torch import save_file
    import usernet
    ref = usernet.make()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(1.0)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    for w in ("w.safetensors", "w.pt"):
        net = get_model("usernet:make", weights=tmp_path / w, preprocess="raw", input_size=(32, 32))
        x = torch.rand(2, 3, 32, 32) * 255
        assert torch.allclose(net(x), ref(x), atol=1e-5)
    assert "0" in net.layer_names and net.input_size == (32, 32)
    out = tmp_path / "inv"
    assert main(["invert", str(image), "--model", "usernet:make", "--weights", str(tmp_path / "w.safetensors"),
                 "--layer", "3", "--input-size", "32,32", "--iters", "2", "--no-progress", "--out", str(out)]) == 0
    settings = json.loads((out / "result.json").read_text())["model_settings"]
    assert settings["preprocessing"]["preset"] == "torchvision" and settings["input_size"] == [32, 32]


def test_factory_errors_are_one_line(tmp_path, factory, image, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    torch.save({"conv": Evil()}, tmp_path / "evil.pt")
    torch.save({"0.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    cases = [(["--model", "usernet:not_a_module"], "returned a int, not a torch.nn.Module"),
             (["--model", "usernet:broken"], "boom"),
             (["--model", "usernet:missing"], "no callable 'missing'"),
             (["--model", "nosuchpackage.mod:make"], "cannot import module"),
             (["--model", "usernet:make", "--weights", str(tmp_path / "wrong.pt")], "wrong shapes: 0.weight"),
             (["--model", "usernet:make", "--weights", str(tmp_path / "evil.pt")], "weights_only=True"),
             (["--model", "usernet:make", "--weights", str(tmp_path / "none.pt")], "no such file")]
    for extra, needle in cases:
        out = tmp_path / "o"
        assert main(["invert", str(image), *extra, "--layer", "0", "--out", str(out)]) == 2, extra
        err = capsys.readouterr()
        assert "unpickled!" not in err.out
        line = err.err.strip().splitlines()[-1]
        assert line.startswith("preimage: error: ") and needle in line, (extra, line)
        assert not out.exists()


# --------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------

def test_presets_map_pixels_as_documented():
    x = torch.tensor([255.0, 0.0, 127.5]).view(1, 3, 1, 1)
    caffe = PRESETS["caffe"].apply(x).flatten().tolist()
    assert caffe == pytest.approx([127.5 - 104.00698793, -116.66876762, 255 - 122.67891434])
    tv = PRESETS["torchvision"].apply(x).flatten().tolist()
    assert tv == pytest.approx([(1 - .485) / .229, -.456 / .224, (.5 - .406) / .225])
    assert PRESETS["tf"].apply(x).flatten().tolist() == pytest.approx([1.0, -1.0, 0.0])
    assert PRESETS["tf"].mean_pixel == pytest.approx((127.5,) * 3)
    custom = make_preprocessing("raw", order="bgr", scale="1/255", mean="0.5", std=[1, 2, 4], input_size="64x80")
    assert custom.apply(x).flatten().tolist() == pytest.approx([0.0, -0.25, 0.125])
    assert custom.input_size == (64, 80) and custom.settings()["order"] == "BGR"
    for bad in ({"preset": "keras"}, {"scale": "-1"}, {"mean": "1,2"}, {"std": "0"}, {"order": "GBR"},
                {"input_size": "a,b"}):
        with pytest.raises(PreprocessingError):
            make_preprocessing(bad.pop("preset", None), **bad)


def test_named_models_and_quantised_inputs_refuse_preprocessing(shared, capsys):
    assert main(["layers", "caffenet", "--preprocess", "tf"]) == 2
    assert "own fixed preprocessing" in _err(capsys)
    assert main(["layers", str(shared / "models" / SMALL), "--preprocess", "tf"]) == 2
    assert "quantised" in _err(capsys)
