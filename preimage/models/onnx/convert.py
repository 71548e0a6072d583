"""Building an :class:`~.net.OnnxNet` (a ``torch.fx`` graph) from a parsed :class:`~.parse.OnnxSpec`.

:func:`build_net` starts the graph with the model's preprocessing (plain ``flip``/``mul``/``sub``
nodes), then walks the nodes in order and hands each to its converter in :data:`CONVERTERS`, a
registry from ONNX op type to a small function adding the node's fx node(s): weights become real
``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` / ``nn.LocalResponseNorm`` / pooling submodules,
everything else a standard torch function, so :mod:`preimage.models.receptive_field` knows every
operation. Supporting a new operator means adding its name to :data:`.parse.SUPPORTED_OPS` and its
converter here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..preprocess import Preprocessing
from ..tflite.ops import TFConv2d, tf_pool2d
from . import naming
from .net import OnnxNet
from .parse import SUPPORTED_OPS, OnnxError, OnnxNode, OnnxSpec, UnsupportedOnnxOpError
from .shape_ops import SHAPE_CONVERTERS

__all__ = ["build_net", "CONVERTERS"]


class _Builder:
    """The graph being built: fx nodes by ONNX value name, the submodules, the layer names."""

    def __init__(self, spec: OnnxSpec, prep: Preprocessing):
        self.spec, self.prep = spec, prep
        self.graph = fx.Graph()
        self.root = nn.Module()
        self.names = naming.name_nodes(spec.nodes)
        self.value: dict[str, fx.Node] = {}
        self.layer_names: list[str] = []
        self.onnx_names: dict[str, str] = {}
        self._buffers = 0
        x = self.graph.placeholder("image")
        a, b = prep.coefficients()
        if prep.order == "BGR":
            x = self.node(torch.flip, (x, (1,)), "preprocess_bgr")
        x = self.node(torch.mul, (x, self.buffer(a, "preprocess_a")), "preprocess_scale")
        self.image = self.node(torch.sub, (x, self.buffer(b, "preprocess_b")), "preprocess")
        self.value[spec.input_name] = self.image
        if spec.input_layout == "NHWC":  # the file wants NHWC: permute (a Transpose back folds away)
            self.value[spec.input_name] = self.node(torch.permute, (self.image, (0, 2, 3, 1)), "preprocess_nhwc")

    def where(self, n: OnnxNode) -> str:
        """``"net.onnx, node 3 (Conv 'conv1')"``."""
        from pathlib import Path
        return f"{Path(self.spec.source).name}, {n.where}"

    def node(self, target, args, name: str, kind: str = "call_function", kwargs=None) -> fx.Node:
        """A new graph node, called ``name`` unless fx has to rename it (then fx's name)."""
        return self.graph.create_node(kind, target, tuple(args), kwargs or {}, name=name)

    def buffer(self, value, name: str) -> fx.Node:
        """A constant tensor as a buffer of the module and its ``get_attr`` node."""
        attr = naming.sanitize(name, "const")
        if hasattr(self.root, attr):
            self._buffers += 1
            attr = f"{attr}_{self._buffers}"
        t = torch.as_tensor(np.array(value) if isinstance(value, np.ndarray) else value)
        self.root.register_buffer(attr, t.float() if t.is_floating_point() else t)
        return self.graph.get_attr(attr)

    def is_const(self, name: str) -> bool:
        return name in self.spec.constants

    def inp(self, n: OnnxNode, k: int) -> fx.Node:
        """The fx node computing input ``k`` of ``n`` (not a constant)."""
        name = n.inputs[k] if k < len(n.inputs) else ""
        if name in self.value:
            return self.value[name]
        if self.is_const(name):
            raise UnsupportedOnnxOpError(f"{self.where(n)}: input {k} ({name!r}) is a constant; only "
                                         "computed values are supported there")
        raise OnnxError(f"{self.where(n)}: input {k} ({name!r}) is computed by no earlier node "
                        "(unsupported graph structure)")

    def const(self, n: OnnxNode, k: int, what: str, required: bool = True) -> np.ndarray | None:
        """Constant input ``k`` of ``n`` (weights, axes …), or ``None`` when absent and optional."""
        name = n.inputs[k] if k < len(n.inputs) else ""
        if not name:
            if required:
                raise OnnxError(f"{self.where(n)}: missing {what} (input {k})")
            return None
        if not self.is_const(name):
            raise UnsupportedOnnxOpError(f"{self.where(n)}: the {what} (input {k}, {name!r}) must be a "
                                         "constant (an initializer)")
        return self.spec.constants[name]

    def shape(self, value: str) -> tuple | None:
        """Static shape of an ONNX value from shape inference (``None`` when unknown)."""
        return self.spec.shapes.get(value)

    def rank(self, value: str, default: int = 4) -> int:
        s = self.shape(value)
        return len(s) if s is not None else default

    def check(self, cond: bool, n: OnnxNode, msg: str, unsupported: bool = True) -> None:
        if not cond:
            raise (UnsupportedOnnxOpError if unsupported else OnnxError)(f"{self.where(n)}: {msg}")

    def module(self) -> OnnxNet:
        """The finished net (eval mode) with its metadata."""
        spec = self.spec
        out = spec.outputs[0]
        if out not in self.value:
            raise OnnxError(f"{spec.source}: the output {out!r} is never computed")
        self.graph.output(self.value[out])
        self.graph.lint()
        net = OnnxNet(self.root, self.graph, class_name="OnnxNet")
        net.eval()
        net.input_size = (int(spec.input_shape[2]), int(spec.input_shape[3]))
        net.preprocessing = self.prep
        net.mean_pixel = self.prep.mean_pixel
        net.layer_names = self.layer_names
        net.layer_aliases = naming.aliases(spec.nodes, self.names)
        oshape = self.shape(out)
        net.num_classes = int(oshape[-1]) if oshape and oshape[-1] else 0
        net.source, net.opset, net.metadata = spec.source, spec.opset, dict(spec.metadata)
        net.onnx_names = self.onnx_names
        return net


#: A converter adds the fx node(s) of one ONNX node and returns the node of its first output
#: (``None`` when it only forwards its input): ``(builder, node, layer name) -> fx.Node | None``.
Converter = Callable[[_Builder, OnnxNode, str], "fx.Node | None"]


def _tensor(a: np.ndarray) -> torch.Tensor:
    """A float32 torch copy of ``a`` (one copy; ``a`` may be read-only)."""
    return torch.from_numpy(np.array(a, dtype=np.float32, order="C", copy=True))


def _ints(v, n: int, default: int) -> tuple:
    return tuple(int(x) for x in v) if v is not None else (default,) * n


def _pads(b: _Builder, n: OnnxNode, k: tuple) -> tuple[str, tuple[int, int, int, int]]:
    """``(auto_pad, (top, left, bottom, right))`` of a 2-D conv / pool."""
    auto = str(n.attrs.get("auto_pad", "NOTSET"))
    b.check(auto in ("NOTSET", "VALID", "SAME_UPPER"), n, f"auto_pad {auto} is not supported "
            "(NOTSET, VALID, SAME_UPPER)")
    pads = _ints(n.attrs.get("pads"), 4, 0) if auto == "NOTSET" else (0, 0, 0, 0)
    b.check(len(pads) == 4 and min(pads) >= 0, n, f"pads {pads} are not 2-D non-negative pads")
    return auto, pads


def _conv(b: _Builder, n: OnnxNode, name: str) -> fx.Node:
    """Conv (2-D, any groups, dilations, explicit or SAME_UPPER padding) → ``nn.Conv2d`` ``name``."""
    x = b.inp(n, 0)
    w = b.const(n, 1, "weight tensor")
    b.check(w.ndim == 4, n, f"weights of shape {w.shape}: only 2-D convolutions are supported")
    bias = b.const(n, 2, "bias", required=False)
    groups = int(n.attrs.get("group", 1))
    cout, cpg, kh, kw = (int(v) for v in w.shape)
    b.check(groups >= 1 and cout % groups == 0, n, f"{cout} filters cannot form {groups} groups", False)
    ks = _ints(n.attrs.get("kernel_shape"), 2, 0)
    b.check(n.attrs.get("kernel_shape") is None or ks == (kh, kw), n,
            f"kernel_shape {ks} ≠ weight shape {(kh, kw)}", False)
    in_shape = b.shape(n.inputs[0])
    b.check(in_shape is None or in_shape[1] in (None, cpg * groups), n,
            f"the input has {in_shape[1] if in_shape else '?'} channels, the weights expect {cpg * groups}", False)
    stride, dil = _ints(n.attrs.get("strides"), 2, 1), _ints(n.attrs.get("dilations"), 2, 1)
    auto, (t, l, bo, r) = _pads(b, n, (kh, kw))
    common = dict(stride=stride, dilation=dil, groups=groups, bias=bias is not None)
    if auto == "SAME_UPPER":
        conv: nn.Conv2d = TFConv2d(cpg * groups, cout, (kh, kw), tf_padding="SAME", **common)
    else:
        if (t, l) != (bo, r):
            x = b.node(F.pad, (x, (l, r, t, bo)), f"{name}_pad")
            t = l = 0
        conv = nn.utils.skip_init(nn.Conv2d, cpg * groups, cout, (kh, kw), padding=(t, l), **common)
    conv.weight = nn.Parameter(_tensor(w))
    if bias is not None:
        b.check(bias.size == cout, n, f"bias of {bias.size} values for {cout} filters", False)
        conv.bias = nn.Parameter(_tensor(bias).reshape(-1))
    b.root.add_module(name, conv)
    return b.node(name, (x,), name, kind="call_module")


def _pool(b: _Builder, n: OnnxNode, name: str) -> fx.Node:
    """MaxPool / AveragePool (2-D) → ``nn.MaxPool2d`` / ``nn.AvgPool2d`` ``name`` (explicit pads,
    ``ceil_mode``), or the TF-style pool for SAME_UPPER."""
    x = b.inp(n, 0)
    b.check(len(n.outputs) == 1 or not n.outputs[1], n, "the indices output of MaxPool is not supported")
    k = _ints(n.attrs.get("kernel_shape"), 2, 0)
    b.check(len(k) == 2 and min(k) > 0, n, f"kernel_shape {k}: only 2-D pooling is supported")
    stride, dil = _ints(n.attrs.get("strides"), 2, 1), _ints(n.attrs.get("dilations"), 2, 1)
    ceil, is_max = bool(n.attrs.get("ceil_mode", 0)), n.op == "MaxPool"
    include = bool(n.attrs.get("count_include_pad", 0))
    auto, (t, l, bo, r) = _pads(b, n, k)
    if auto == "SAME_UPPER":
        b.check(dil == (1, 1) and not ceil, n, "SAME_UPPER pooling with dilations or ceil_mode is not supported")
        return b.node(tf_pool2d, (x, "max" if is_max else "avg", k, stride, "SAME"), name)
    symmetric = (t, l) == (bo, r) and t <= k[0] // 2 and l <= k[1] // 2
    if not symmetric:
        b.check(is_max or include, n, "asymmetric padding with count_include_pad=0 is not supported")
        x = b.node(F.pad, (x, (l, r, t, bo)), f"{name}_pad", kwargs={"value": -float("inf") if is_max else 0.0})
        t = l = 0
    if is_max:
        pool: nn.Module = nn.MaxPool2d(k, stride, (t, l), dil, ceil_mode=ceil)
    else:
        b.check(dil == (1, 1), n, "dilated AveragePool is not supported")
        pool = nn.AvgPool2d(k, stride, (t, l), ceil_mode=ceil, count_include_pad=include)
    b.root.add_module(name, pool)
    return b.node(name, (x,), name, kind="call_module")


def _global_pool(b: _Builder, n: OnnxNode, name: str) -> fx.Node:
    """GlobalAveragePool / GlobalMaxPool → ``torch.mean`` / ``torch.amax`` over H, W (kept)."""
    fn = torch.mean if n.op == "GlobalAveragePool" else torch.amax
    return b.node(fn, (b.inp(n, 0), (2, 3)), name, kwargs={"keepdim": True})


def _lrn(b: _Builder, n: OnnxNode, name: str) -> fx.Node:
    """LRN → ``nn.LocalResponseNorm`` (same formula: ``x / (bias + α/size · Σ x²)^β``)."""
    size = n.attrs.get("size")
    b.check(isinstance(size, int) and size > 0, n, "LRN needs a positive 'size'", False)
    m = nn.LocalResponseNorm(size, alpha=float(n.attrs.get("alpha", 1e-4)), beta=float(n.attrs.get("beta", 0.75)),
                             k=float(n.attrs.get("bias", 1.0)))
    b.root.add_module(name, m)
    return b.node(name, (b.inp(n, 0),), name, kind="call_module")


def _batch_norm(b: _Builder, n: OnnxNode, name: str) -> fx.Node:
    """BatchNormalization (inference) → ``nn.BatchNorm2d`` / ``nn.BatchNorm1d`` in eval mode."""
    b.check(not n.attrs.get("training_mode", 0) and (len(n.outputs) == 1 or not any(n.outputs[1:])), n,
            "training-mode BatchNormalization is not supported")
    scale, bias, mean, var = (np.asarray(b.const(n, k, w), np.float32).reshape(-1)
                              for k, w in ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    c = scale.size
    b.check(bias.size == mean.size == var.size == c, n, "scale/bias/mean/variance sizes differ", False)
    rank = b.rank(n.inputs[0])
    bn = (nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d)(c, eps=float(n.attrs.get("epsilon", 1e-5)))
    with torch.no_grad():
        for t, v in ((bn.weight, scale), (bn.bias, bias), (bn.running_mean, mean), (bn.running_var, var)):
            t.copy_(torch.from_numpy(np.array(v)))
    bn.eval()
    b.root.add_module(name, bn)
    return b.node(name, (b.inp(n, 0),), name, kind="call_module")


def _linear(b: _Builder, n: OnnxNode, name: str) -> fx.Node:
    """Gemm (``A·B`` with a constant B, any transB, alpha, beta, a bias row) / MatMul by a constant
    2-D matrix → ``nn.Linear`` ``name``."""
    x = b.inp(n, 0)
    w = np.asarray(b.const(n, 1, "weight matrix"))
    b.check(w.ndim == 2, n, f"weight matrix of shape {w.shape}: only 2-D constant matrices are supported")
    bias = None
    if n.op == "Gemm":
        b.check(not n.attrs.get("transA", 0), n, "Gemm with transA=1 is not supported")
        w = w if n.attrs.get("transB", 0) else w.T
        alpha = float(n.attrs.get("alpha", 1.0))
        w = w if alpha == 1.0 else w * np.float32(alpha)
        c = b.const(n, 2, "bias", required=False)
        if c is not None:
            c = np.asarray(c, np.float32) * float(n.attrs.get("beta", 1.0))
            b.check(c.size in (1, w.shape[0]), n, f"bias of shape {c.shape} for {w.shape[0]} outputs")
            bias = np.broadcast_to(c.reshape(-1), (w.shape[0],))
    else:
        w = w.T
    lin = nn.utils.skip_init(nn.Linear, w.shape[1], w.shape[0], bias=bias is not None)
    lin.weight = nn.Parameter(_tensor(w))
    if bias is not None:
        lin.bias = nn.Parameter(_tensor(bias))
    b.root.add_module(name, lin)
    return b.node(name, (x,), name, kind="call_module")


_ARITH = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}


def _arith(b: _Builder, n: OnnxNode, name: str) -> fx.Node:
    """Add / Sub / Mul / Div of computed values and constants (numpy broadcasting; a legacy
    ``broadcast``/``axis`` attribute aligns the constant at ``axis``)."""
    b.check(len(n.inputs) == 2, n, f"{len(n.inputs)} inputs, expected 2", False)
    args = []
    for k in (0, 1):
        if b.is_const(n.inputs[k]):
            c = np.asarray(b.spec.constants[n.inputs[k]], np.float32)
            if "axis" in n.attrs and n.attrs.get("broadcast", 0) and k == 1:
                rank, axis = b.rank(n.inputs[0]), int(n.attrs["axis"])
                axis = axis + rank if axis < 0 else axis
                c = c.reshape((1,) * axis + c.shape + (1,) * max(rank - axis - c.ndim, 0))
            args.append(float(c.reshape(-1)[0]) if c.size == 1 and c.ndim <= 1 else
                        b.buffer(c, f"{name}_const{k}"))
        else:
            args.append(b.inp(n, k))
    b.check(any(isinstance(a, fx.Node) and a.op != "get_attr" for a in args), n,
            "both operands are constants (fold them before exporting)")
    return b.node(_ARITH[n.op], tuple(args), name)


def _unary(fn, **kwargs) -> Converter:
    def convert(b: _Builder, n: OnnxNode, name: str) -> fx.Node:
        return b.node(fn, (b.inp(n, 0),), name, kwargs=dict(kwargs))
    convert.__name__ = f"_{getattr(fn, '__name__', 'unary')}"
    return convert


def _leaky_relu(b: _Builder, n: OnnxNode, name: str) -> fx.Node:
    """LeakyRelu → ``F.leaky_relu`` with the node's ``alpha``."""
    return b.node(F.leaky_relu, (b.inp(n, 0), float(n.attrs.get("alpha", 0.01))), name)


def _hard_sigmoid(b: _Builder, n: OnnxNode, name: str) -> fx.Node:
    """HardSigmoid with α = 1/6, β = 1/2 (PyTorch's) → ``F.hardsigmoid``."""
    a, c = float(n.attrs.get("alpha", 0.2)), float(n.attrs.get("beta", 0.5))
    b.check(abs(a - 1 / 6) < 1e-6 and abs(c - 0.5) < 1e-6, n, f"HardSigmoid alpha={a}, beta={c} (only 1/6, 1/2)")
    return b.node(F.hardsigmoid, (b.inp(n, 0),), name)


def _clip(b: _Builder, n: OnnxNode, name: str) -> fx.Node:
    """Clip (bounds as attributes before opset 11, constant inputs after) → ``torch.clamp``."""
    lo, hi = n.attrs.get("min"), n.attrs.get("max")
    if b.spec.opset >= 11:
        lo, hi = (b.const(n, k, w, required=False) for k, w in ((1, "min"), (2, "max")))
    lo = None if lo is None else float(np.asarray(lo).reshape(-1)[0])
    hi = None if hi is None else float(np.asarray(hi).reshape(-1)[0])
    return b.node(torch.clamp, (b.inp(n, 0), lo, hi), name)


def _alias(b: _Builder, n: OnnxNode, name: str) -> None:
    """Dropout (inference) / Identity: the same value under the output's name."""
    b.check(len(n.outputs) == 1 or not any(n.outputs[1:]), n, "the mask output of Dropout is not supported")
    b.value[n.outputs[0]] = b.inp(n, 0)
    return None


#: ONNX op type → converter (its keys are :data:`.parse.SUPPORTED_OPS`, Constant aside).
CONVERTERS: dict[str, Converter] = {
    "Conv": _conv, "Relu": _unary(torch.relu), "LeakyRelu": _leaky_relu, "Clip": _clip,
    "Sigmoid": _unary(torch.sigmoid), "Tanh": _unary(torch.tanh), "HardSigmoid": _hard_sigmoid,
    "HardSwish": _unary(F.hardswish), "MaxPool": _pool, "AveragePool": _pool,
    "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool, "LRN": _lrn,
    "BatchNormalization": _batch_norm, "Gemm": _linear, "MatMul": _linear,
    **{k: _arith for k in _ARITH}, **SHAPE_CONVERTERS, "Dropout": _alias, "Identity": _alias,
}

if set(CONVERTERS) | {"Constant"} != set(SUPPORTED_OPS):  # pragma: no cover - a programming error
    raise RuntimeError(f"the parser accepts {sorted(SUPPORTED_OPS)} but converters exist for {sorted(CONVERTERS)}")


def build_net(spec: OnnxSpec, preprocessing: Preprocessing) -> OnnxNet:
    """A fresh :class:`OnnxNet` from a parsed :class:`OnnxSpec` (weights copied): ``(B, 3, H, W)``
    RGB on 0–255 → the model's first output, starting with ``preprocessing``; eval mode.

    Raises :class:`UnsupportedOnnxOpError` for an operator, attribute or structure that is not
    translated, :class:`OnnxError` for an inconsistent graph.
    """
    b = _Builder(spec, preprocessing)
    for n, name in zip(spec.nodes, b.names):
        out = CONVERTERS[n.op](b, n, name)
        if out is None:
            continue
        b.value[n.outputs[0]] = out
        b.onnx_names[out.name] = n.outputs[0]
        if n.op not in naming.PLUMBING_OPS:
            b.layer_names.append(out.name)
    return b.module()
