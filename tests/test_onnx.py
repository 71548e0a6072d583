"""The ONNX importer (preimage.models.onnx): networks built here and exported with
``torch.onnx.export`` agree with onnxruntime on real eval images; a CaffeNet laid out like the ONNX
model zoo's gives the paper's layers and Table 2's receptive fields; single operators agree with
onnxruntime; bad files give one-line errors; a fuzz run over corrupted files never crashes."""

import json
import time

import numpy as np
import pytest
import torch

from preimage.cli import main
from preimage.models import get_model
from preimage.models.caffenet import LAYER_NAMES
from preimage.models.onnx import OnnxError, UnsupportedOnnxOpError, load_onnx
from preimage.paper import TABLE2
from helpers.onnx_nets import caffenet_like, caffenet_zoo_onnx, export, mobilenet_like, small_resnet

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install -e '.[test]')")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NETS = {"caffenet_like": (caffenet_like, 227), "mobilenet_like": (mobilenet_like, 224),
        "small_resnet": (small_resnet, 224)}


def _ort():
    return pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e '.[test]')")


def _run_ort(path, x: np.ndarray) -> np.ndarray:
    ort = _ort()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    out = {k: export(fn(), d / f"{k}.onnx", size) for k, (fn, size) in NETS.items()}
    out["zoo"] = caffenet_zoo_onnx(d / "caffenet_zoo.onnx", fc=256)
    return out


@pytest.fixture(scope="module")
def images(shared):
    from preimage.data import eval_images, spread
    from preimage.io.images import load_image
    return [load_image(p, mode="rgb") for p in spread(eval_images(), 4)]


@pytest.mark.parametrize("name", list(NETS))
def test_exported_networks_agree_with_onnxruntime(files, images, name):
    from preimage.io.images import resize
    size = NETS[name][1]
    net = load_onnx(files[name], preprocess="torchvision")
    x = torch.stack([resize(im, (size, size)) for im in images])
    with torch.no_grad():
        y = net(x).numpy()
    ref = _run_ort(files[name], net.preprocessing.apply(x).numpy())
    assert y.shape == ref.shape == (len(images), 1000)
    assert np.abs(y - ref).max() <= 1e-4 * np.abs(ref).max()
    assert (y.argmax(1) == ref.argmax(1)).all()


def test_layers_truncate_and_have_receptive_fields(files):
    from preimage.data import spread
    from preimage.representations.cnn import CNNLayer, list_layers
    net = load_onnx(files["small_resnet"], preprocess="torchvision")
    assert all(i.rf_size is not None for i in list_layers(net))
    x = torch.rand(1, 3, 224, 224) * 255
    for layer in spread(net.layer_names, 3):
        rep = CNNLayer(net, layer)
        assert rep(x).shape[0] == 1
    assert net.layer_aliases["/0/Conv"] == net.layer_names[0]  # the raw ONNX node name works too
    sub = net.truncate("/0/Conv")
    assert sub.layer_names == [net.layer_names[0]]


def test_zoo_caffenet_gives_the_paper_layers_and_table2(files, capsys):
    net = get_model(str(files["zoo"]))
    assert net.layer_names == list(LAYER_NAMES) + ["prob"]
    assert net.preprocessing.preset == "caffe" and net.preprocessing.order == "BGR"
    assert main(["layers", str(files["zoo"])]) == 0
    rows = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines()[4:]}
    for name, (_, channels, field) in zip(LAYER_NAMES, TABLE2):
        row = rows[name]
        assert int(row[5]) == field, name
        if not name.startswith("fc") and name not in ("relu6", "relu7"):
            assert int(row[4]) == channels, name
    assert rows["fc8"][4] == "1000"


@pytest.mark.slow
def test_full_size_zoo_caffenet_channels(tmp_path):
    net = get_model(str(caffenet_zoo_onnx(tmp_path / "full.onnx")))
    from preimage.representations.cnn import list_layers
    infos = {i.name: i for i in list_layers(net)}
    for name, (_, channels, field) in zip(LAYER_NAMES, TABLE2):
        assert infos[name].channels == channels and infos[name].rf_size == (field, field)


def test_invert_pool5_of_the_zoo_caffenet(files, tmp_path, shared):
    from preimage.data import eval_images
    out = tmp_path / "inv"
    assert main(["invert", str(eval_images()[0]), "--model", str(files["zoo"]), "--layer", "pool5",
                 "--iters", "3", "--no-progress", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["model_settings"]["preprocessing"]["preset"] == "caffe"
    assert (out / "reconstruction.png").exists()


# --------------------------------------------------------------------------------------------
# single operators against onnxruntime (hand-made graphs)
# --------------------------------------------------------------------------------------------

def _graph(tmp_path, nodes, inits, out_shape, opset=13, in_shape=(1, 3, 12, 12), name="g.onnx", meta=None):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(np.asarray(v, np.float32 if v.dtype.kind == "f" else v.dtype), k)
                           for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    if out_shape is None:  # let ONNX shape inference fill the output's shape in
        m = onnx.shape_inference.infer_shapes(m)
    for k, v in (meta or {}).items():
        helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props}, k: v})
    path = tmp_path / name
    onnx.save(m, str(path))
    return path


_R = np.random.default_rng(0)
CASES = {
    "batchnorm": ([helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], epsilon=1e-3)],
                  {"s": _R.random(3) + .5, "b": _R.random(3), "m": _R.random(3), "v": _R.random(3) + .5}),
    "same_upper_conv": ([helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", strides=[2, 2])],
                        {"w": _R.standard_normal((4, 3, 3, 3))}),
    "asym_pad_conv": ([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[0, 1, 2, 1], dilations=[2, 1],
                                        group=3)],
                      {"w": _R.standard_normal((6, 1, 3, 3)), "b": _R.standard_normal(6)}),
    "avgpool_excl_pad": ([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                           strides=[2, 2], ceil_mode=1)], {}),
    "pad_reflect_max": ([helper.make_node("Pad", ["x", "p"], ["t"], mode="reflect"),
                         helper.make_node("GlobalMaxPool", ["t"], ["y"])], {"p": np.array([0, 0, 1, 2, 0, 0, 2, 1])}),
    "clip_concat_mean": ([helper.make_node("Clip", ["x", "lo", "hi"], ["a"]), helper.make_node("Sigmoid", ["x"], ["c"]),
                          helper.make_node("Concat", ["a", "c"], ["t"], axis=1),
                          helper.make_node("ReduceMean", ["t"], ["y"], axes=[2, 3], keepdims=0)],
                         {"lo": np.array(0.2), "hi": np.array(0.6)}),
    "matmul_softmax": ([helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Squeeze", ["p", "ax"], ["q"]),
                        helper.make_node("MatMul", ["q", "w"], ["r"]), helper.make_node("Add", ["r", "b"], ["s"]),
                        helper.make_node("Softmax", ["s"], ["y"])],
                       {"ax": np.array([2, 3]), "w": _R.standard_normal((3, 5)), "b": _R.standard_normal(5)}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_single_operators_agree_with_onnxruntime(tmp_path, case):
    nodes, inits = CASES[case]
    path = _graph(tmp_path, nodes, inits, None)
    net = load_onnx(path, preprocess="raw")
    x = np.random.default_rng(1).random((2, 3, 12, 12)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    ref = _run_ort(path, x)
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() <= 1e-5 * max(1.0, np.abs(ref).max())


def test_nhwc_input_of_a_tensorflow_export(tmp_path):
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["t", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["c"], ["y"], perm=[0, 2, 3, 1])]
    path = _graph(tmp_path, nodes, {"w": _R.standard_normal((5, 3, 3, 3))}, None, in_shape=(1, 12, 12, 3))
    net = load_onnx(path, preprocess="raw")
    assert net.input_size == (12, 12) and net.layer_names == [net.layer_names[0]]
    x = np.random.default_rng(2).random((2, 3, 12, 12)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).numpy()
    ref = _run_ort(path, x.transpose(0, 2, 3, 1).copy())
    assert np.abs(y - ref).max() <= 1e-5 * np.abs(ref).max()


def test_preprocessing_from_metadata_and_flags(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"])]
    path = _graph(tmp_path, nodes, {}, None, meta={"Image.BitmapPixelFormat": "Bgr8",
                                                     "Image.NominalPixelRange": "Normalized_0_1"})
    net = load_onnx(path)
    assert net.preprocessing.order == "BGR" and net.preprocessing.scale == pytest.approx(1 / 255)
    x = torch.zeros(1, 3, 12, 12)
    x[:, 0] = 255.0  # pure red → channel 2 in BGR, value 1
    assert float(net(x)[0, 2].mean()) == pytest.approx(1.0) and float(net(x)[0, 0].max()) == 0.0
    net = load_onnx(path, preprocess="tf", order="RGB")
    assert float(net(x)[0, 0].mean()) == pytest.approx(1.0) and float(net(x)[0, 1].mean()) == 0.0  # relu(-1)
    assert net.mean_pixel == pytest.approx((127.5, 127.5, 127.5))


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------

def test_dynamic_input_needs_a_size(tmp_path, files, capsys):
    dyn = export(small_resnet(), tmp_path / "dyn.onnx", 224, dynamic=True)
    with pytest.raises(OnnxError, match="dynamic size"):
        load_onnx(dyn)
    assert main(["layers", str(dyn)]) == 2
    assert "--input-size" in capsys.readouterr().err
    net = load_onnx(dyn, input_size=(160, 160), preprocess="torchvision")
    assert net.input_size == (160, 160) and net(torch.rand(2, 3, 160, 160) * 255).shape == (2, 1000)


def _expect_cli_error(args, capsys, *needles):
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("preimage: error: ") and "Traceback" not in err
    for n in needles:
        assert n in lines[-1], (n, lines[-1])


def test_bad_files_give_one_line_errors_and_write_nothing(tmp_path, files, capsys):
    from preimage.io.images import save_image
    img = tmp_path / "img.png"
    save_image(torch.full((3, 32, 32), 128.0), img)
    raw = files["small_resnet"].read_bytes()
    bad = {"truncated.onnx": raw[: len(raw) // 2], "flipped.onnx": raw[:40] + bytes(b ^ 0xFF for b in raw[40:90])
           + raw[90:], "text.onnx": b"hello, this is not a model\n" * 4, "empty.onnx": b""}
    for name, data in bad.items():
        (tmp_path / name).write_bytes(data)
    unsupported = _graph(tmp_path, [helper.make_node("Neg", ["x"], ["y"])], {}, None, name="unsupported.onnx")
    cases = [(n, [n]) for n in bad] + [("unsupported.onnx", ["operator Neg", "supported:", "Conv"])]
    for fname, needles in cases:
        out = tmp_path / f"out_{fname}"
        _expect_cli_error(["invert", str(img), "--model", str(tmp_path / fname), "--layer", "x", "--out", str(out)],
                          capsys, *needles)
        assert not out.exists()
    _expect_cli_error(["layers", str(tmp_path / "missing.onnx")], capsys, "missing.onnx")
    with pytest.raises(UnsupportedOnnxOpError, match="Neg"):
        load_onnx(unsupported)
    with pytest.raises(OnnxError):
        load_onnx(tmp_path / "truncated.onnx")


def test_external_data_is_refused(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    path = _graph(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"])], {}, None, name="ext.onnx")
    m = onnx.load(str(path))
    m.graph.initializer.append(w)
    onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    with pytest.raises(OnnxError, match="external"):
        load_onnx(path, preprocess="raw")


def _variants(raw: bytes, n: int, seed: int):
    """``n`` corrupted copies of ``raw``: truncations, runs of flipped bytes, random bytes."""
    rng = np.random.default_rng(seed)
    for k in range(n):
        kind = k % 3
        if kind == 0:
            yield raw[: int(rng.integers(0, len(raw)))]
        else:
            b = bytearray(raw)
            for _ in range(int(rng.integers(1, 8))):
                i = int(rng.integers(0, len(b)))
                for j in range(i, min(len(b), i + int(rng.integers(1, 4)))):
                    b[j] = (b[j] ^ 0xFF) if kind == 1 else int(rng.integers(0, 256))
            yield bytes(b)


def _fuzz(tmp_path, raw: bytes, suffix: str, n: int, load) -> dict:
    """Load each variant with ``load`` (a module to run, or ``None`` when only parsed): a module,
    or a one-line PreimageError; never another exception, a crash or more than 10 s."""
    from preimage.errors import PreimageError
    outcomes = {"ran": 0, "parsed": 0, "error": 0}
    slowest = 0.0
    for k, data in enumerate(_variants(raw, n, seed=len(raw))):
        p = tmp_path / f"v{k}{suffix}"
        p.write_bytes(data)
        t0 = time.perf_counter()
        try:
            net = load(p)
        except PreimageError as exc:
            assert str(exc).strip() and "\n" not in str(exc).strip()
            outcomes["error"] += 1
        else:
            if net is None:
                outcomes["parsed"] += 1
            else:
                try:
                    with torch.no_grad():
                        net(torch.full((1, 3, *net.input_size), 100.0))
                except RuntimeError:  # corrupted weights or shapes may not run; never a crash
                    pass
                outcomes["ran"] += 1
        slowest = max(slowest, time.perf_counter() - t0)
        p.unlink()
    assert slowest < 10.0
    return outcomes


def test_fuzzed_onnx_files_never_crash(tmp_path):
    import warnings
    small = export(small_resnet(classes=10), tmp_path / "small.onnx", 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcomes = _fuzz(tmp_path, small.read_bytes(), ".onnx", 210, lambda p: load_onnx(p, preprocess="raw"))
    assert outcomes["error"] > 50 and sum(outcomes.values()) == 210


def test_fuzzed_tflite_files_never_crash(tmp_path, shared):
    from preimage.models.tflite import build_net, parse_tflite
    raw = (shared / "models" / "mobilenet_v1_0.25_128_quant.tflite").read_bytes()
    built = []

    def load(p):  # parse every variant; build and run the first 15 that parse (to stay fast)
        spec = parse_tflite(p)
        if len(built) >= 15:
            return None
        built.append(p)
        return build_net(spec)

    outcomes = _fuzz(tmp_path, raw, ".tflite", 200, load)
    assert outcomes["error"] > 50 and sum(outcomes.values()) == 200
