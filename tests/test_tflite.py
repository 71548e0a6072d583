"""The TFLite importer (preimage.models.tflite) and the shared MobileNets (preimage.models.mobilenet):
agreement with the reference interpreter, malformed files, graph structure and truncation,
gradients, TF SAME padding and weight dequantisation. Tests that need the shared models skip
without them; those comparing with the interpreter also skip without ``ai_edge_litert``."""

import copy
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from preimage.errors import UnknownNameError
from preimage.models.classify import load_for_classification
from preimage.models.tflite import (TFLiteError, TFLiteNet, UnsupportedOpError, build_net, import_tflite,
                                    parse_tflite)
from preimage.models.tflite.ops import TFConv2d, tf_pool2d
from preimage.models.tflite.parse import TFLiteTensor
from helpers import node_value

MODELS = ("mobilenet_v2", "mobilenet_v2_tf2", "mobilenet_v1", "mobilenet_v1_small")


# --------------------------------------------------------------------------------------------
# helpers and fixtures
# --------------------------------------------------------------------------------------------

def _litert():
    """Skip unless the reference interpreter (``pip install ai-edge-litert``) is importable."""
    pytest.importorskip("ai_edge_litert.interpreter",
                        reason="ai_edge_litert not installed (pip install 'preimage[test]'): "
                               "no TFLite reference interpreter to compare with")


@pytest.fixture(scope="module")
def mobilenet_v2(shared):
    from preimage.models.mobilenet import load_mobilenet
    return load_mobilenet("mobilenet_v2")


@pytest.fixture(scope="module")
def small_file(shared):
    """The smallest shared .tflite file (MobileNet v1 0.25, 128×128)."""
    from preimage.models.mobilenet import mobilenet_files
    return mobilenet_files("mobilenet_v1_small")[0]


def _subset(shared):
    """20 images spread evenly over the eval (100) and train (200) sets."""
    from preimage import data
    return data.eval_images()[::10] + data.train_images()[::20]


def _reference(name, x):
    """Interpreter output for pixels ``x``: raw uint8 scores (int64), their real values, one step."""
    from preimage.models.mobilenet import mobilenet_files
    from preimage.models.tflite import ReferenceInterpreter
    ref = ReferenceInterpreter(mobilenet_files(name))
    q = ref(x).astype(np.int64)
    s, zp = ref.output_quantization
    return q, s * (q - zp), s


@torch.no_grad()
def _run(net, x, batch=25) -> np.ndarray:
    return torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)]).double().numpy()


def _tie_aware(q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per image: the prediction is (one of) the interpreter's top-scoring classes."""
    return q[np.arange(len(q)), p.argmax(1)] == q.max(1)


def _activation(net, name, x):
    """The value of node ``name`` when the full network runs on ``x`` (torch.fx interpreter)."""
    return node_value(net, net.node(name), x)


# --------------------------------------------------------------------------------------------
# 1. agreement with the reference interpreter
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", MODELS)
def test_float_top1_agrees_with_interpreter(shared, name):
    _litert()
    from preimage.models.mobilenet import load_mobilenet
    net = load_mobilenet(name)
    assert not net.emulate_quantization and net.num_classes == 1001
    x = load_for_classification(_subset(shared), net.input_size)
    q, ref_prob, _ = _reference(name, x)
    p = _run(net, x)
    assert p.shape == q.shape == (20, 1001)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-4)
    agree = _tie_aware(q, p)
    assert agree.mean() >= 0.95, f"{name}: float top-1 agrees on {agree.mean():.0%} (images {np.nonzero(~agree)[0]})"
    # where it does not, the float choice is still among the interpreter's top 3
    rank = (q > q[np.arange(len(q)), p.argmax(1)][:, None]).sum(1)
    assert rank.max() <= 2, f"{name}: float top-1 ranks {rank.max() + 1} under the interpreter"
    # and the distributions are close (total variation, mean over the images)
    tv = 0.5 * np.abs(p - ref_prob).sum(1)
    assert tv.mean() < 0.15, f"{name}: mean total-variation distance {tv.mean():.3f}"


@pytest.mark.parametrize("name", MODELS)
def test_emulated_quantization_reproduces_interpreter(shared, name):
    _litert()
    from preimage import data
    from preimage.models.mobilenet import load_mobilenet
    net = load_mobilenet(name, emulate_quantization=True)
    assert net.emulate_quantization
    paths = data.eval_images()[::25] + data.train_images()[7::50]   # 8 images (emulation is slow)
    x = load_for_classification(paths, net.input_size)
    q, ref_prob, step = _reference(name, x)
    p = _run(net, x)
    assert _tie_aware(q, p).all(), f"{name}: emulated top-1 differs from the interpreter"
    diff = np.abs(p - ref_prob).max()
    assert diff <= step * (1 + 1e-6), f"{name}: probabilities differ by {diff} (> one step {step})"


def test_reference_interpreter_dequantizes_with_its_output_quantization(shared):
    _litert()
    from preimage import data
    from preimage.models.mobilenet import mobilenet_files
    from preimage.models.tflite import ReferenceInterpreter
    ref = ReferenceInterpreter(mobilenet_files("mobilenet_v1_small"))
    s, zp = ref.output_quantization
    assert s > 0 and 0 <= zp <= 255
    x = load_for_classification(data.eval_images()[:2], (128, 128))
    raw = ref(x)
    assert raw.dtype == np.uint8 and raw.shape == (2, 1001)
    real = ref(x, dequantize=True)
    np.testing.assert_allclose(real, s * (raw.astype(np.float64) - zp))
    assert (real >= 0).all() and (real <= 1).all()   # quantised softmax probabilities


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_full_validation_criterion(shared, name):
    """All 300 shared images: float agreement ≥ 95 % and top-1 accuracy within 2 points of the
    interpreter's, or else emulated-quantisation agreement ≥ 99 %."""
    _litert()
    from preimage import data
    from preimage.models.classify import synset_class_index
    from preimage.models.mobilenet import load_mobilenet
    paths = data.eval_images() + data.train_images()
    assert len(paths) == 300
    truth = np.array([synset_class_index(p) for p in paths])
    net = load_mobilenet(name)
    x = load_for_classification(paths, net.input_size)
    q, _, _ = _reference(name, x)
    p = _run(net, x)
    agree = _tie_aware(q, p).mean()
    acc_ref, acc = (q.argmax(1) == truth).mean(), (p.argmax(1) == truth).mean()
    if agree >= 0.95 and abs(acc - acc_ref) <= 0.02:
        return
    emu = _tie_aware(q, _run(load_mobilenet(name, emulate_quantization=True), x)).mean()
    assert emu >= 0.99, (f"{name}: float agreement {agree:.1%}, accuracy {acc:.1%} vs interpreter "
                         f"{acc_ref:.1%}; emulated agreement {emu:.1%}")


# --------------------------------------------------------------------------------------------
# 2. malformed files and unsupported operators
# --------------------------------------------------------------------------------------------

def test_missing_empty_and_random_files(tmp_path):
    with pytest.raises(TFLiteError, match="no such file"):
        parse_tflite(tmp_path / "nope.tflite")
    with pytest.raises(TFLiteError, match="is a folder"):
        parse_tflite(tmp_path)
    empty = tmp_path / "empty.tflite"
    empty.write_bytes(b"")
    with pytest.raises(TFLiteError, match="0 bytes is too short"):
        import_tflite(empty)
    rng = np.random.default_rng(0)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 4 + b"JUNK" + rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    with pytest.raises(TFLiteError, match="not a TensorFlow Lite model"):
        import_tflite(junk)
    # random bytes that carry the TFL3 identifier: offsets point anywhere
    for k in range(10):
        body = rng.integers(0, 256, int(rng.integers(8, 4000)), dtype=np.uint8).tobytes()
        junk.write_bytes(body[:4] + b"TFL3" + body[8:])
        with pytest.raises(TFLiteError, match="malformed or truncated"):
            import_tflite(junk)
    with pytest.raises(TFLiteError, match="no .tflite file given"):
        parse_tflite([])


def test_truncated_file(tmp_path, small_file):
    raw = small_file.read_bytes()
    bad = tmp_path / "cut.tflite"
    for n in (6, 12, 100, len(raw) // 4, len(raw) // 2):
        bad.write_bytes(raw[:n])
        with pytest.raises(TFLiteError, match="too short|malformed or truncated|truncated or corrupt") as e:
            import_tflite(bad)
        assert str(bad) in str(e.value)


def _patch_opcode(raw: bytes, old: str, new: int) -> bytes:
    """Rewrite, in place in the flatbuffer, the operator code whose builtin is ``old`` to ``new``
    (both the int8 ``deprecated_builtin_code`` and the int32 ``builtin_code`` fields)."""
    import tflite
    from tflite.utils import BUILTIN_OPCODE2NAME
    b = bytearray(raw)
    model = tflite.Model.GetRootAsModel(raw, 0)
    for i in range(model.OperatorCodesLength()):
        oc = model.OperatorCodes(i)
        if BUILTIN_OPCODE2NAME[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())] != old:
            continue
        dep, cur = oc._tab.Offset(4), oc._tab.Offset(10)
        assert dep and cur, "the fields to patch are stored"
        struct.pack_into("<b", b, oc._tab.Pos + dep, new)
        struct.pack_into("<i", b, oc._tab.Pos + cur, new)
        return bytes(b)
    raise AssertionError(f"no {old} operator code")


def test_unsupported_operator_is_named(tmp_path, small_file):
    bad = tmp_path / "tanh.tflite"
    bad.write_bytes(_patch_opcode(small_file.read_bytes(), "AVERAGE_POOL_2D", 28))  # 28 = TANH
    with pytest.raises(UnsupportedOpError, match=r"operator \d+: operator TANH is not supported") as e:
        import_tflite(bad)
    assert "tanh.tflite" in str(e.value) and "CONV_2D" in str(e.value)  # where, and what is supported
    assert isinstance(e.value, TFLiteError)


def test_unsupported_fused_activation_is_named(small_file):
    spec = parse_tflite(small_file)      # a fresh spec (load_mobilenet's is cached)
    op = next(o for o in spec.ops if o.kind == "DEPTHWISE_CONV_2D")
    op.options["activation"] = "TANH"
    with pytest.raises(UnsupportedOpError, match="fused activation TANH of DEPTHWISE_CONV_2D"):
        build_net(spec)


# --------------------------------------------------------------------------------------------
# 3. structure and truncation
# --------------------------------------------------------------------------------------------

def test_mobilenet_v2_names(mobilenet_v2):
    m = mobilenet_v2
    assert isinstance(m, TFLiteNet) and m.input_size == (224, 224) and m.mean_pixel == (128.0,) * 3
    names = m.layer_names
    assert names[0] == "conv1" and names[1:3] == ["block1_depthwise", "block1_project"]
    assert names[-6:] == ["block17_project", "conv_last", "avgpool", "classifier", "logits", "softmax"]
    assert {"block2_expand", "block3_add", "block17_depthwise"} <= set(names)
    assert len(set(names)) == len(names)
    assert m.block_names[0] == "conv1" and m.block_names[-3:] == ["conv_last", "avgpool", "logits"]
    assert "block17_project" in m.block_names and "block3_add" in m.block_names
    assert "block3_project" not in m.block_names and set(m.block_names) <= set(names)
    nodes = {n.name for n in m.graph.nodes}
    assert set(names) <= nodes and "conv1_preact" in nodes
    assert m.block3_expand.weight.shape == (144, 24, 1, 1)


def test_truncate_equals_intermediate_activation(mobilenet_v2):
    m = mobilenet_v2
    x = torch.rand(2, 3, 224, 224) * 255
    for name in ("block6_add", "block3_project", "conv1_preact", "logits"):
        t = m.truncate(name)
        assert isinstance(t, TFLiteNet) and len(t.graph.nodes) < len(m.graph.nodes)
        with torch.no_grad():
            y = t(x)
        torch.testing.assert_close(y, _activation(m, name, x))
        if name in m.layer_names:
            assert t.layer_names[-1] == name
        else:                          # a pre-activation node: not listed, nor anything after it
            assert t.layer_names == [] and name == "conv1_preact"
    t = m.truncate("block6_add")
    assert t.layer_names == m.layer_names[:m.layer_names.index("block6_add") + 1]
    assert "conv_last" not in dict(t.named_modules()) and "conv_last" not in t.quant_params
    assert t.block6_expand.weight is m.block6_expand.weight          # weights shared
    assert t.input_size == m.input_size and t.source == m.source
    assert tuple(t(x[:1]).shape) == (1, 32, 28, 28)


def test_truncate_after_copy_truncate_and_cnn_layer(mobilenet_v2):
    """Regression: truncate() on a deep copy, on a truncated net, and a CNNLayer of a truncated
    net used to fail with 'owning_module not set for purity check' (a deep-copied fx graph has
    no owning module, which dead-code elimination needs)."""
    from preimage.representations.cnn import PLAIN_EXECUTION, CNNLayer
    m = mobilenet_v2
    x = torch.rand(1, 3, 224, 224) * 255
    ref = _activation(m, "block3_add", x)
    t1 = m.truncate("block6_add").truncate("block3_add")
    t2 = copy.deepcopy(m).truncate("block3_add")
    t3 = copy.deepcopy(m.truncate("block6_add")).truncate("block3_add")
    for t in (t1, t2, t3):
        with torch.no_grad():
            torch.testing.assert_close(t(x), ref)
        assert t.layer_names[-1] == "block3_add"
    rep = CNNLayer(m.truncate("block6_add"), "block3_add", **PLAIN_EXECUTION)  # the plain NCHW pass
    assert rep.output_shape == (24, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(rep(x), ref)
    with pytest.raises(UnknownNameError, match="valid names: .*block3_add"):
        t1.truncate("block6_add")     # cut away


def test_pickled_copies_keep_names_and_outputs(mobilenet_v2):
    """A TFLiteNet, a truncated one and a CNNLayer on it survive pickle (e.g. to worker processes)
    with every node name; fx's own pickling re-traced the code and failed in the input check."""
    import pickle
    from preimage.representations.cnn import CNNLayer
    m = mobilenet_v2
    x = torch.rand(2, 3, 224, 224) * 255
    for obj in (m, m.truncate("block3_add"), CNNLayer(m, "block8_add")):
        copy_ = pickle.loads(pickle.dumps(obj))
        with torch.no_grad():
            torch.testing.assert_close(copy_(x), obj(x), rtol=0, atol=0)
    back = pickle.loads(pickle.dumps(m))
    assert [n.name for n in back.graph.nodes] == [n.name for n in m.graph.nodes]
    assert back.block_names == m.block_names and back.input_size == m.input_size
    assert back.truncate("block8_add").layer_names[-1] == "block8_add"


def test_unknown_layer_lists_valid_names(mobilenet_v2):
    with pytest.raises(UnknownNameError) as e:
        mobilenet_v2.truncate("block99_add")
    msg = str(e.value)
    assert "block99_add" in msg and "valid names:" in msg
    assert "conv1" in msg and "block17_project" in msg and "logits" in msg
    with pytest.raises(UnknownNameError):
        mobilenet_v2.node("nope")


# --------------------------------------------------------------------------------------------
# 4. gradients
# --------------------------------------------------------------------------------------------

def test_gradients_reach_the_input(mobilenet_v2):
    t = mobilenet_v2.truncate("block3_add")
    x = (torch.rand(1, 3, 224, 224) * 255).requires_grad_()
    t(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_straight_through_gradients_with_emulated_quantization(shared):
    from preimage.models.mobilenet import load_mobilenet
    m = load_mobilenet("mobilenet_v2", emulate_quantization=True)
    t = m.truncate("block3_add")
    x = (torch.rand(1, 3, 224, 224) * 255).requires_grad_()
    y = t(x)
    # the forward value is on the TFLite grid of the op's output, inside its clamp range
    s, zp, lo, hi = m.quant_params["block3_add"]
    qv = y.detach().double() / s + zp
    torch.testing.assert_close(qv, qv.round(), rtol=0, atol=1e-4)
    assert lo <= qv.round().min() and qv.round().max() <= hi
    y.pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# --------------------------------------------------------------------------------------------
# 5. TF SAME padding
# --------------------------------------------------------------------------------------------

def test_same_padding_puts_the_extra_row_and_column_last():
    conv = TFConv2d(3, 4, 3, stride=2, tf_padding="SAME")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = conv(x)
        ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, conv.bias, stride=2)
        sym = F.conv2d(x, conv.weight, conv.bias, stride=2, padding=1)   # PyTorch-style padding
    assert y.shape == (2, 4, 4, 4)
    torch.testing.assert_close(y, ref)
    assert not torch.allclose(y, sym[..., :4, :4]) and sym.shape[-1] == 4
    # odd size: symmetric; stride 1: output keeps the size; VALID: no padding
    x7 = torch.randn(1, 3, 7, 7)
    with torch.no_grad():
        torch.testing.assert_close(conv(x7), F.conv2d(x7, conv.weight, conv.bias, stride=2, padding=1))
        c1 = TFConv2d(3, 4, (3, 3), stride=1, tf_padding="SAME")
        assert c1(x).shape == (2, 4, 8, 8)
        cv = TFConv2d(3, 4, 3, stride=2, tf_padding="VALID")
        torch.testing.assert_close(cv(x), F.conv2d(x, cv.weight, cv.bias, stride=2))


def test_same_average_pooling_ignores_the_padding():
    x = torch.rand(1, 2, 6, 6) + 1
    y = tf_pool2d(torch.ones(1, 2, 6, 6), "avg", (3, 3), (2, 2), "SAME")
    torch.testing.assert_close(y, torch.ones(1, 2, 3, 3))
    m = tf_pool2d(x, "max", (3, 3), (2, 2), "SAME")
    torch.testing.assert_close(m, F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=-1.0), 3, 2))


# --------------------------------------------------------------------------------------------
# 6. dequantisation
# --------------------------------------------------------------------------------------------

def _conv_ops(spec):
    return [op for op in spec.ops if op.kind == "CONV_2D"]


def _weight_of(net: TFLiteNet, op) -> torch.Tensor:
    name = next(k for k, v in net.tensor_names.items() if v == op.outputs[0].name)
    return net.get_submodule(name).weight.detach()


def test_per_channel_dequantization(shared):
    from preimage.models.mobilenet import mobilenet_files
    spec = parse_tflite(mobilenet_files("mobilenet_v2_tf2"))
    net = build_net(spec)
    per_channel = [op for op in _conv_ops(spec) if len(op.inputs[1].scale) > 1]
    assert per_channel, "the TF2 export quantises conv weights per channel"
    w = per_channel[len(per_channel) // 2].inputs[1]
    assert w.dtype == np.int8 and w.qdim == 0 and len(w.scale) == w.shape[0]
    assert len(np.unique(w.scale)) > 1
    real = w.real()
    for c in (0, 1, w.shape[0] - 1):
        np.testing.assert_allclose(real[c], w.scale[c] * (w.data[c].astype(np.float64) - w.zero_point[c]),
                                   rtol=1e-6)
    # the built conv holds exactly these weights (NHWC-kernel OHWI → OIHW)
    op = per_channel[len(per_channel) // 2]
    torch.testing.assert_close(_weight_of(net, op), torch.from_numpy(real.transpose(0, 3, 1, 2)))


def test_per_tensor_dequantization(shared):
    from preimage.models.mobilenet import mobilenet_files
    spec = parse_tflite(mobilenet_files("mobilenet_v2"))
    net = build_net(spec)
    ops = _conv_ops(spec)
    assert all(len(op.inputs[1].scale) == 1 for op in ops)
    op = ops[3]
    w = op.inputs[1]
    assert w.dtype == np.uint8 and w.per_tensor is not None
    s, zp = w.per_tensor
    np.testing.assert_allclose(w.real(), s * (w.data.astype(np.float64) - zp), rtol=1e-6)
    torch.testing.assert_close(_weight_of(net, op), torch.from_numpy(w.real().transpose(0, 3, 1, 2)))


def test_dequantization_of_a_small_tensor():
    q = np.array([[0, 10, -4], [3, -128, 127]], np.int8)
    t = TFLiteTensor("w", (2, 3), np.dtype(np.int8), np.array([0.5, 2.0]), np.array([1, -1]), 0, q)
    np.testing.assert_allclose(t.real(), [[-0.5, 4.5, -2.5], [8.0, -254.0, 256.0]])
    t1 = TFLiteTensor("w", (2, 3), np.dtype(np.int8), np.array([0.25]), np.array([2]), 0, q)
    np.testing.assert_allclose(t1.real(), 0.25 * (q.astype(np.float64) - 2))
    bad = TFLiteTensor("w", (2, 3), np.dtype(np.int8), np.array([1.0, 1.0, 1.0]), np.array([0, 0, 0]), 0, q)
    with pytest.raises(TFLiteError, match="3 per-channel scales do not match dimension 0"):
        bad.real()
