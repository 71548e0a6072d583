"""Building a :class:`~.net.TFLiteNet` (a ``torch.fx`` graph) from a parsed :class:`~.parse.TFLiteSpec`.

:func:`build_net` walks the operators in execution order and hands each to its converter in
:data:`CONVERTERS`, a registry from TFLite operator kind to a small function that adds the op's
node(s) to the graph (weights dequantised into :class:`~.ops.TFConv2d` / :class:`~.ops.TFLinear`
submodules, NHWC options translated to NCHW). Supporting a new operator means adding its options
reader in :mod:`.parse` and its converter here.

The net starts with the model's own input quantisation (``real = scale · (pixel − zero_point)``,
as the interpreter sees a uint8 pixel). Node ``X`` is op ``X``'s output after its fused
activation; ``X_preact`` the value before it when there is an activation or emulated rounding.
With ``emulate_quantization=True`` every activation is fake-quantised with its TFLite scale and
zero point (rounded half away from zero and clamped to the integer range, the fused activation
becoming the clamp, as the integer kernels do), and convolutions, fully connected layers, ADD,
pooling, MEAN and SOFTMAX reproduce the integer kernels (:mod:`.ops`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..preprocess import PRESETS, Preprocessing
from . import naming
from .net import TFLiteNet
from .ops import (FLOAT_ACTIVATIONS, Emulation, TFConv2d, TFLinear, emulated_add, emulated_mean,
                  emulated_pool, emulated_softmax, fake_quant, round_half_away, tf_mean, tf_pool2d,
                  tf_reshape, tf_softmax, tf_squeeze, tflite_input)
from .parse import (QRANGE, SUPPORTED_OPS, TFLiteError, TFLiteOp, TFLiteSpec, TFLiteTensor,
                    UnsupportedOpError, _check, parse_tflite)

__all__ = ["build_net", "import_tflite", "CONVERTERS"]


# --------------------------------------------------------------------------------------------
# Quantisation helpers on parsed tensors
# --------------------------------------------------------------------------------------------

def _qrange(t: TFLiteTensor) -> tuple[int, int]:
    return QRANGE.get(t.dtype, (int(np.iinfo(t.dtype).min), int(np.iinfo(t.dtype).max))) \
        if np.issubdtype(t.dtype, np.integer) else (0, 0)


def _act_range(t: TFLiteTensor, act: str) -> tuple[int, int]:
    """Integer clamp range of a quantised output with a fused activation, as TFLite computes it."""
    scale, zp = t.per_tensor
    qmin, qmax = _qrange(t)
    q = lambda v: zp + int(round_half_away(torch.tensor(v / scale)).item())  # noqa: E731
    if act == "RELU":
        return max(qmin, q(0.0)), qmax
    if act == "RELU6":
        return max(qmin, q(0.0)), min(qmax, q(6.0))
    if act == "RELU_N1_TO_1":
        return max(qmin, q(-1.0)), min(qmax, q(1.0))
    return qmin, qmax


def _nhwc_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _pt(t: TFLiteTensor | None) -> float | None:
    """Scale of a per-tensor quantised (integer) activation, else None."""
    if t is None or t.per_tensor is None or not np.issubdtype(t.dtype, np.integer):
        return None
    return t.per_tensor[0]


def _emulation(op: TFLiteOp, weight_layout: tuple[int, ...], out_channels: int) -> Emulation | None:
    """Integer data for an exactly emulated conv / FC op, or None when it is not fully quantised
    (then only its output is fake-quantised)."""
    tin, tw, tout = op.inputs[0], op.inputs[1], op.outputs[0]
    tb = op.inputs[2] if len(op.inputs) > 2 else None
    if _pt(tin) is None or _pt(tout) is None or not tw.quantized or tw.data is None:
        return None
    if tb is not None and (tb.data is None or not np.issubdtype(tb.data.dtype, np.integer)):
        return None
    q = tw.data.astype(np.int64)
    zp, scale = tw.zero_point, tw.scale.astype(np.float32)
    if len(tw.scale) > 1:
        view = [1] * q.ndim
        view[tw.qdim] = -1
        zp = zp.reshape(view)
        if weight_layout[0] != tw.qdim or len(scale) != out_channels:
            return None
    else:
        zp, scale = int(zp[0]), np.full(out_channels, scale[0], np.float32)
    w_int = np.ascontiguousarray((q - zp).transpose(weight_layout))
    requant = (np.float32(_pt(tin)) * scale) / np.float32(_pt(tout))  # float32, as XNNPACK
    return Emulation(w_int, None if tb is None else tb.data.reshape(-1), _pt(tin), requant, _pt(tout))


# --------------------------------------------------------------------------------------------
# The graph under construction
# --------------------------------------------------------------------------------------------

class _Builder:
    """The graph being built: fx nodes by TFLite tensor, the submodules, and the metadata the
    finished :class:`TFLiteNet` carries (layer names, quantisation parameters, tensor names)."""

    def __init__(self, spec: TFLiteSpec, emulate: bool, preprocessing: Preprocessing | None = None):
        self.spec, self.emulate = spec, emulate
        self.names = naming.name_ops(spec.ops)
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.quant_params: dict[str, tuple] = {}
        self.tensor_names: dict[str, str] = {}
        self.layer_names: list[str] = []
        self.value: dict[int, fx.Node] = {}
        tin = spec.input
        x = self.graph.placeholder("image")
        self.preprocessing = None
        if tin.dtype == np.dtype(np.float32) and tin.per_tensor is None:
            self.preprocessing = prep = preprocessing or PRESETS["tf"]
            self.in_scale, self.mean_pixel = float(prep.coefficients()[0][0, 0]), prep.mean_pixel
            self.value[id(tin)] = self._float_input(x, prep)
            return
        if preprocessing is not None:
            raise TFLiteError(f"{spec.sources[0]}: the input is quantised ({tin.dtype}); its preprocessing is "
                              "fixed by the file's scale and zero point and cannot be changed")
        s, zp = tin.per_tensor
        self.in_scale = s
        self.mean_pixel = (float(zp + (128 if tin.dtype == np.dtype(np.int8) else 0)),) * 3
        self.value[id(tin)] = self.node(tflite_input, (x, self.in_scale, self.mean_pixel[0], emulate), "preprocess")

    def _float_input(self, x: fx.Node, prep: Preprocessing) -> fx.Node:
        """A float input: the :class:`Preprocessing` as ``flip``/``mul``/``sub`` nodes."""
        a, b = prep.coefficients()
        self.root.register_buffer("preprocess_a", a)
        self.root.register_buffer("preprocess_b", b)
        if prep.order == "BGR":
            x = self.node(torch.flip, (x, (1,)), "preprocess_bgr")
        x = self.node(torch.mul, (x, self.graph.get_attr("preprocess_a")), "preprocess_scale")
        return self.node(torch.sub, (x, self.graph.get_attr("preprocess_b")), "preprocess")

    def node(self, target, args, name: str, kind: str = "call_function") -> fx.Node:
        """A new graph node called exactly ``name``."""
        n = self.graph.create_node(kind, target, tuple(args), {}, name=name)
        if n.name != name:
            raise RuntimeError(f"fx renamed node {name!r} to {n.name!r}")
        return n

    def inp(self, op: TFLiteOp, k: int) -> fx.Node:
        """The node computing input ``k`` of ``op``."""
        t = op.inputs[k]
        if t is None or id(t) not in self.value:
            what = "missing" if t is None else f"{t.name!r}, which no earlier op produces"
            raise TFLiteError(f"{op.where}: input {k} is {what} (unsupported graph structure)")
        return self.value[id(t)]

    def const(self, op: TFLiteOp, k: int, what: str) -> np.ndarray:
        """The real value of ``op``'s constant input ``k`` (weights, bias, axes)."""
        t = op.inputs[k] if k < len(op.inputs) else None
        if t is None or t.data is None:
            raise UnsupportedOpError(f"{op.where}: {op.kind} needs a constant {what} (input {k})")
        return t.real() if t.quantized else t.data

    def finish(self, op: TFLiteOp, raw: fx.Node, name: str, act: str) -> fx.Node:
        """Fused activation / fake quantisation after the op's raw node; returns the output node."""
        out = op.outputs[0]
        if act not in ("NONE", "RELU", "RELU6", "RELU_N1_TO_1"):
            raise UnsupportedOpError(f"{op.where}: fused activation {act} of {op.kind} is not supported")
        quant = _pt(out) is not None
        self.tensor_names[name] = out.name
        if quant:
            lo, hi = _act_range(out, act)
            self.quant_params[name] = (out.per_tensor[0], out.per_tensor[1], lo, hi)
        if self.emulate and quant:
            s, zp = out.per_tensor
            res = self.node(fake_quant, (raw, s, zp, lo, hi), name)
        elif act != "NONE":
            res = self.node(FLOAT_ACTIVATIONS[act], (raw,), name)
        else:
            res = raw  # already called `name`
        self.layer_names.append(res.name)
        return res

    def module(self) -> TFLiteNet:
        """The finished net (eval mode) with its metadata."""
        spec = self.spec
        if id(spec.output) not in self.value:
            raise TFLiteError(f"{spec.sources[-1]}: the output {spec.output.name!r} is never computed")
        self.graph.output(self.value[id(spec.output)])
        self.graph.lint()
        net = TFLiteNet(self.root, self.graph, class_name="TFLiteNet")
        net.eval()
        net.input_size = (int(spec.input.shape[1]), int(spec.input.shape[2]))
        net.mean_pixel = tuple(self.mean_pixel)
        net.input_scale = float(self.in_scale)
        net.preprocessing = self.preprocessing
        net.layer_names = self.layer_names
        net.block_names = naming.block_names(self.layer_names)
        net.num_classes = int(spec.output.shape[-1]) if spec.output.shape else 0
        net.sources = spec.sources
        net.source = " + ".join(spec.sources)
        net.emulate_quantization = self.emulate
        net.quant_params = self.quant_params
        net.tensor_names = self.tensor_names
        return net


# --------------------------------------------------------------------------------------------
# Converters: one per operator kind
# --------------------------------------------------------------------------------------------

#: A converter adds the nodes of one op: ``(builder, op, name)``, ``name`` the op's layer name
#: (``None`` for the alias ops).
Converter = Callable[[_Builder, TFLiteOp, "str | None"], None]
#: A layer converter returns the op's raw node (before the fused activation), called ``pre``:
#: ``(builder, op, x, name, pre) -> node``, ``x`` the node of input 0.
LayerConverter = Callable[[_Builder, TFLiteOp, fx.Node, str, str], fx.Node]


def _layer(convert: LayerConverter) -> Converter:
    """A :data:`Converter` from a layer converter: input 0, then the op's raw node, then its fused
    activation / fake quantisation (:meth:`_Builder.finish`) under the op's name."""
    def run(b: _Builder, op: TFLiteOp, name: str | None) -> None:
        x = b.inp(op, 0)
        act = op.options.get("activation", "NONE")
        # a separate output node only when something follows the op itself
        pre = f"{name}_preact" if (act != "NONE" or (b.emulate and _pt(op.outputs[0]) is not None)) else name
        raw = convert(b, op, x, name, pre)
        b.value[id(op.outputs[0])] = b.finish(op, raw, name, act)
    run.__name__ = run.__qualname__ = convert.__name__
    return run


def _convert_alias(b: _Builder, op: TFLiteOp, name: str | None) -> None:
    """QUANTIZE / DEQUANTIZE: fold constants; otherwise the same value, re-quantised to the output
    grid when emulating and the grids differ."""
    out, t_in = op.outputs[0], op.inputs[0]
    if t_in.data is not None:  # constant (e.g. float16 weights) → fold
        out.data = t_in.real() if op.kind == "DEQUANTIZE" else t_in.data
        return
    src = b.inp(op, 0)
    same = (t_in.per_tensor is not None and out.per_tensor is not None
            and math.isclose(t_in.per_tensor[0], out.per_tensor[0], rel_tol=1e-6)
            and tuple(v - t_in.per_tensor[1] for v in _qrange(t_in))
            == tuple(v - out.per_tensor[1] for v in _qrange(out)))
    if b.emulate and _pt(out) is not None and not same:
        s, zp = out.per_tensor
        qmin, qmax = _qrange(out)
        rn = f"requant{len([n for n in b.layer_names if n.startswith('requant')]) + 1}"
        b.value[id(out)] = b.node(fake_quant, (src, s, zp, qmin, qmax), rn)
        b.quant_params[rn] = (s, zp, qmin, qmax)
        b.tensor_names[rn] = out.name
        b.layer_names.append(rn)
    else:
        b.value[id(out)] = src


def _conv_layout(op: TFLiteOp, w: np.ndarray, cin: int) -> tuple[int, int, int, int, tuple[int, ...]]:
    """``(out channels, kh, kw, groups, axes)`` of a conv's TFLite weights ``w``; ``axes``
    transposes them to torch's ``(C_out, C_in/groups, kh, kw)``."""
    if op.kind == "CONV_2D":
        cout, kh, kw, cpg = w.shape
        _check(cpg > 0 and cin % cpg == 0,
               f"{op.where}: weights expect {cpg} input channels per group, input has {cin}")
        return cout, kh, kw, cin // cpg, (0, 3, 1, 2)
    _, kh, kw, cout = w.shape
    _check(cout % cin == 0, f"{op.where}: depthwise output channels {cout} not a "
                            f"multiple of input channels {cin}")
    return cout, kh, kw, cin, (3, 0, 1, 2)


def _convert_conv(b: _Builder, op: TFLiteOp, x: fx.Node, name: str, pre: str) -> fx.Node:
    """CONV_2D / DEPTHWISE_CONV_2D → a :class:`TFConv2d` submodule ``name``."""
    k = op.kind
    w = b.const(op, 1, "weight tensor")
    _check(w.ndim == 4, f"{op.where}: {k} weights have shape {w.shape}, expected 4-D")
    bias = b.const(op, 2, "bias") if len(op.inputs) > 2 and op.inputs[2] is not None else None
    cin = op.inputs[0].shape[3] if len(op.inputs[0].shape) == 4 else None
    _check(cin is not None, f"{op.where}: {k} input {op.inputs[0].name!r} is not 4-D")
    cout, kh, kw, groups, layout = _conv_layout(op, w, cin)
    weight = w.transpose(*layout)
    if op.options["padding"] not in ("SAME", "VALID"):
        raise UnsupportedOpError(f"{op.where}: padding {op.options['padding']} not supported")
    conv = TFConv2d(cin, cout, (kh, kw), stride=op.options["stride"], dilation=op.options["dilation"],
                    groups=groups, bias=bias is not None, tf_padding=op.options["padding"])
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(np.ascontiguousarray(weight)))
        if bias is not None:
            _check(bias.shape == (cout,), f"{op.where}: bias shape {bias.shape} ≠ ({cout},)")
            conv.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32)))
    if b.emulate:
        conv.emulation = _emulation(op, weight_layout=layout, out_channels=cout)
    b.root.add_module(name, conv)
    return b.node(name, (x,), pre, kind="call_module")


def _convert_fully_connected(b: _Builder, op: TFLiteOp, x: fx.Node, name: str, pre: str) -> fx.Node:
    """FULLY_CONNECTED → a :class:`TFLinear` submodule ``name``."""
    w = b.const(op, 1, "weight tensor")
    _check(w.ndim == 2, f"{op.where}: FULLY_CONNECTED weights have shape {w.shape}, expected 2-D")
    if op.options.get("weights_format", 0) != 0:
        raise UnsupportedOpError(f"{op.where}: shuffled FULLY_CONNECTED weights are not supported")
    bias = b.const(op, 2, "bias") if len(op.inputs) > 2 and op.inputs[2] is not None else None
    lin = TFLinear(w.shape[1], w.shape[0], bias=bias is not None,
                   keep_num_dims=op.options.get("keep_num_dims", False))
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w)))
        if bias is not None:
            lin.bias.copy_(torch.from_numpy(np.ascontiguousarray(bias, dtype=np.float32)))
    if b.emulate:
        lin.emulation = _emulation(op, weight_layout=(0, 1), out_channels=w.shape[0])
    b.root.add_module(name, lin)
    return b.node(name, (x,), pre, kind="call_module")


def _convert_add(b: _Builder, op: TFLiteOp, x: fx.Node, name: str, pre: str) -> fx.Node:
    """ADD of two same-shape activations (no broadcasting, no constant operand)."""
    _check(len(op.inputs) == 2, f"{op.where}: ADD has {len(op.inputs)} inputs, expected 2")
    if any(t is not None and t.data is not None for t in op.inputs):
        raise UnsupportedOpError(f"{op.where}: ADD with a constant operand is not supported")
    _check(tuple(op.inputs[0].shape) == tuple(op.inputs[1].shape),
           f"{op.where}: broadcasting ADD {op.inputs[0].shape} + {op.inputs[1].shape} "
           f"is not supported")
    scales = [_pt(t) for t in (op.inputs[0], op.inputs[1], op.outputs[0])]
    if b.emulate and all(scales):
        return b.node(emulated_add, (x, b.inp(op, 1), *scales), pre)
    return b.node(torch.add, (x, b.inp(op, 1)), pre)


def _convert_pool(b: _Builder, op: TFLiteOp, x: fx.Node, name: str, pre: str) -> fx.Node:
    """AVERAGE_POOL_2D / MAX_POOL_2D → :func:`~.ops.tf_pool2d`."""
    if op.options["padding"] not in ("SAME", "VALID"):
        raise UnsupportedOpError(f"{op.where}: padding {op.options['padding']} not supported")
    args = (x, "avg" if op.kind == "AVERAGE_POOL_2D" else "max", op.options["kernel"],
            op.options["stride"], op.options["padding"])
    scales = [_pt(op.inputs[0]), _pt(op.outputs[0])]
    if b.emulate and all(scales):
        return b.node(emulated_pool, args + tuple(scales), pre)
    return b.node(tf_pool2d, args, pre)


def _convert_mean(b: _Builder, op: TFLiteOp, x: fx.Node, name: str, pre: str) -> fx.Node:
    """MEAN over constant NHWC axes (never the batch) → :func:`~.ops.tf_mean`."""
    axes = np.asarray(b.const(op, 1, "reduction axes")).reshape(-1)
    rank = len(op.inputs[0].shape)
    axes = tuple(sorted(_nhwc_axis(int(a), rank) for a in axes))
    _check(0 not in axes, f"{op.where}: MEAN over the batch dimension is not supported")
    scales = [_pt(op.inputs[0]), _pt(op.outputs[0])]
    if b.emulate and all(scales):
        return b.node(emulated_mean, (x, axes, op.options["keep_dims"], *scales), pre)
    return b.node(tf_mean, (x, axes, op.options["keep_dims"]), pre)


def _convert_reshape(b: _Builder, op: TFLiteOp, x: fx.Node, name: str, pre: str) -> fx.Node:
    """RESHAPE keeping the batch dimension → :func:`~.ops.tf_reshape`."""
    shape = op.options.get("new_shape")
    if len(op.inputs) > 1 and op.inputs[1] is not None and op.inputs[1].data is not None:
        shape = [int(v) for v in op.inputs[1].data.reshape(-1)]
    if shape is None:
        shape = list(op.outputs[0].shape)
    _check(len(shape) >= 1 and shape[0] in (1, -1),
           f"{op.where}: RESHAPE to {shape} changes the batch dimension (unsupported)")
    return b.node(tf_reshape, (x, tuple(shape[1:])), pre)


def _convert_squeeze(b: _Builder, op: TFLiteOp, x: fx.Node, name: str, pre: str) -> fx.Node:
    """SQUEEZE (the given NHWC dims, or every size-1 dim but the batch) → :func:`~.ops.tf_squeeze`."""
    dims = op.options["squeeze_dims"]
    rank = len(op.inputs[0].shape)
    dims = [_nhwc_axis(d, rank) for d in dims] or [i for i, s in enumerate(op.inputs[0].shape)
                                                   if s == 1 and i > 0]
    _check(0 not in dims, f"{op.where}: SQUEEZE of the batch dimension is not supported")
    return b.node(tf_squeeze, (x, tuple(dims)), pre)


def _convert_softmax(b: _Builder, op: TFLiteOp, x: fx.Node, name: str, pre: str) -> fx.Node:
    """SOFTMAX over the channels → :func:`~.ops.tf_softmax`."""
    scales = [_pt(op.inputs[0]), _pt(op.outputs[0])]
    if b.emulate and all(scales):
        return b.node(emulated_softmax, (x, op.options["beta"], *scales), pre)
    return b.node(tf_softmax, (x, op.options["beta"]), pre)


#: TFLite operator kind → converter (its keys are :data:`.parse.SUPPORTED_OPS`).
CONVERTERS: dict[str, Converter] = {
    "CONV_2D": _layer(_convert_conv),
    "DEPTHWISE_CONV_2D": _layer(_convert_conv),
    "AVERAGE_POOL_2D": _layer(_convert_pool),
    "MAX_POOL_2D": _layer(_convert_pool),
    "MEAN": _layer(_convert_mean),
    "ADD": _layer(_convert_add),
    "RESHAPE": _layer(_convert_reshape),
    "SQUEEZE": _layer(_convert_squeeze),
    "FULLY_CONNECTED": _layer(_convert_fully_connected),
    "SOFTMAX": _layer(_convert_softmax),
    "QUANTIZE": _convert_alias,
    "DEQUANTIZE": _convert_alias,
}

if set(CONVERTERS) != set(SUPPORTED_OPS):  # pragma: no cover - a programming error, caught on import
    raise RuntimeError(f"the parser accepts {sorted(SUPPORTED_OPS)} but converters exist for {sorted(CONVERTERS)}")


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------

def build_net(spec: TFLiteSpec, emulate_quantization: bool = False,
              preprocessing: Preprocessing | None = None) -> TFLiteNet:
    """A fresh :class:`TFLiteNet` from a parsed :class:`TFLiteSpec` (weights copied): a module
    mapping ``(B, 3, H, W)`` RGB on 0–255 to the model output, in eval mode.

    ``preprocessing``: for a float-input model, how pixels become its input (default the ``tf``
    preset, RGB to [−1, 1]); a quantised input's is fixed by the file (an error when given).

    Raises :class:`UnsupportedOpError` for an operator without a converter (naming it and listing
    :data:`CONVERTERS`), or an activation / option the converter does not translate, and
    :class:`TFLiteError` for an inconsistent graph.
    """
    b = _Builder(spec, bool(emulate_quantization), preprocessing)
    for op in spec.ops:
        convert = CONVERTERS.get(op.kind)
        if convert is None:
            raise UnsupportedOpError(f"{op.where}: operator {op.kind} is not supported "
                                     f"(supported: {', '.join(CONVERTERS)})")
        convert(b, op, b.names.get(id(op)))
    return b.module()


def import_tflite(path: str | Path | Sequence[str | Path], emulate_quantization: bool = False,
                  preprocessing: Preprocessing | None = None) -> TFLiteNet:
    """Import a TensorFlow Lite classifier as a float :class:`TFLiteNet` (a ``torch.fx``
    GraphModule; see :mod:`preimage.models.tflite` for the naming scheme and the supported operators).

    Args:
        path: a ``.tflite`` file, or a sequence of files run one after the other (e.g. an
            embedding extractor then its head), composed into one graph.
        emulate_quantization: fake-quantise every activation with its TFLite scale / zero point
            (and round the input pixels), to reproduce the integer interpreter's results.
        preprocessing: a float-input model's :class:`~preimage.models.preprocess.Preprocessing`
            (default ``tf``: RGB to [−1, 1]); quantised inputs carry their own.

    Returns:
        a module mapping ``(B, 3, H, W)`` RGB images on 0–255 to the model output (the MobileNets:
        ``(B, num_classes)`` probabilities), in eval mode.

    Raises:
        TFLiteError: unreadable / malformed / truncated file, or an inconsistent chain.
        UnsupportedOpError: an operator, activation or option that is not translated.
    """
    return build_net(parse_tflite(path), emulate_quantization, preprocessing)
