"""Receptive fields computed from a model's own graph (no hand tables), and the graph helpers
shared with :mod:`preimage.representations.cnn`.

A model is traced with ``torch.fx`` (a ``GraphModule`` is used as it is), its tensor shapes are
propagated with a dummy ``(1, 3, H, W)`` image, and every node gets a :class:`ReceptiveField`
describing, per spatial axis (rows, columns):

* ``size``: how many input pixels one output unit sees (Caffe/paper convention: padding counts,
  so the field may be larger than the image, e.g. 355 px for CaffeNet's fc6 on a 227 px image);
* ``stride``: how many input pixels apart neighbouring output units are;
* ``start``: the input coordinate (pixel index, may be negative because of padding) of the first
  pixel seen by output unit 0. Unit ``i`` sees pixels ``start + i*stride … start + i*stride + size - 1``.

Rules (per axis, input field ``(S, J, A)``):

* convolution / pooling with kernel ``k``, stride ``s``, padding ``p``, dilation ``d``
  (``Conv*2d``, ``MaxPool2d``, ``AvgPool2d``, ``LPPool2d`` and their ``F.*`` forms, ``ceil_mode``
  included, which only changes the output shape): ``S + (d(k-1))·J``, ``J·s``, ``A - p·J``;
  ``padding="same"`` pads ``d(k-1)//2`` before;
* explicit padding (``F.pad``, ``nn.*Pad2d``): shifts ``start`` by the leading pad;
* adaptive pools: the largest window ``ceil((i+1)n/o) - floor(i n/o)`` and stride ``n/o`` (may be
  fractional);
* element-wise and channel-only operations (activations, arithmetic, BatchNorm, LRN, dropout,
  channel ``cat``/indexing/flip…): the union of the inputs' fields (inputs that do not depend on
  the image, e.g. constants and buffers, are ignored; normalisation *statistics* are ignored);
* anything that removes the spatial axes (``flatten`` + ``Linear``, a global mean, …): the field
  of every position of its input, i.e. the whole input (``S + (n-1)·J``).

An unrecognised operation that keeps the spatial shape of its input is assumed to be element-wise
(with a warning); one that changes it (e.g. upsampling) gets an unknown field (``None``) and so do
the nodes after it.
"""

from __future__ import annotations

import logging
import math
import operator
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..errors import UnknownNameError

__all__ = [
    "ReceptiveField", "TracedModel", "trace_model", "receptive_fields", "receptive_field",
    "receptive_field_box", "center_window", "model_input_size",
]


# --------------------------------------------------------------------------------------------
# Receptive field record
# --------------------------------------------------------------------------------------------

def _num(v: float) -> float | int:
    """``v`` as an int when it is integral (printing ``11`` rather than ``11.0``)."""
    return int(round(v)) if abs(v - round(v)) < 1e-9 else float(v)


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of one node; each field is ``(rows, columns)`` in input pixels.

    ``size``: pixels seen by one unit through its local window; ``stride``: pixels between
    neighbouring units; ``start``: first pixel of unit ``(0, 0)``'s window (negative with padding).
    ``spatial`` is False once the spatial axes are gone (e.g. after ``flatten``): the single unit
    then sees ``size`` pixels from ``start``. ``fixed``: ``(top, left, bottom, right)`` seen by
    *every* unit besides its window (global context broadcast back, e.g. squeeze-and-excitation),
    else ``None``. :attr:`total_size` is what tables report.
    """

    size: tuple[float, float]
    stride: tuple[float, float]
    start: tuple[float, float]
    spatial: bool = True
    fixed: tuple[float, float, float, float] | None = None

    def span(self, i: int, j: int) -> tuple[float, float, float, float]:
        """``(top, left, bottom, right)`` (bottom/right exclusive, unclipped) seen by unit ``(i, j)``."""
        top = self.start[0] + i * self.stride[0]
        left = self.start[1] + j * self.stride[1]
        box = (top, left, top + self.size[0], left + self.size[1])
        return box if self.fixed is None else _box_union(box, self.fixed)

    def center(self, i: int, j: int) -> tuple[float, float]:
        """Input coordinates (row, col) of the centre of unit ``(i, j)``'s window."""
        top = self.start[0] + i * self.stride[0]
        left = self.start[1] + j * self.stride[1]
        return top + (self.size[0] - 1) / 2, left + (self.size[1] - 1) / 2

    @property
    def total_size(self) -> tuple[float, float]:
        """``size``, or the fixed region's extent when that is larger (per axis)."""
        if self.fixed is None:
            return self.size
        return (max(self.size[0], self.fixed[2] - self.fixed[0]), max(self.size[1], self.fixed[3] - self.fixed[1]))

    def __repr__(self) -> str:
        f = lambda t: tuple(_num(v) for v in t)  # noqa: E731
        return (f"ReceptiveField(size={f(self.size)}, stride={f(self.stride)}, start={f(self.start)}"
                + ("" if self.spatial else ", spatial=False")
                + ("" if self.fixed is None else f", fixed={f(self.fixed)}") + ")")


_IDENTITY = ReceptiveField((1, 1), (1, 1), (0, 0))


def _box_union(a, b):
    return (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))


def _conv(rf: ReceptiveField, k, s, p, d=(1, 1)) -> ReceptiveField:
    size = tuple(rf.size[a] + d[a] * (k[a] - 1) * rf.stride[a] for a in range(2))
    stride = tuple(rf.stride[a] * s[a] for a in range(2))
    start = tuple(rf.start[a] - p[a] * rf.stride[a] for a in range(2))
    return ReceptiveField(size, stride, start, True, rf.fixed)


def _shift(rf: ReceptiveField, before: Sequence[float]) -> ReceptiveField:
    return ReceptiveField(rf.size, rf.stride, tuple(rf.start[a] - before[a] * rf.stride[a] for a in range(2)),
                          rf.spatial, rf.fixed)


def _collapse(rf: ReceptiveField, hw: tuple[int, int] | None) -> ReceptiveField:
    """The field of all positions of an ``hw`` map together (spatial axes removed)."""
    if not rf.spatial or hw is None:
        size, stride = rf.size, rf.stride
    else:
        size = tuple(rf.size[a] + (hw[a] - 1) * rf.stride[a] for a in range(2))
        stride = tuple(rf.stride[a] * hw[a] for a in range(2))
    box = (rf.start[0], rf.start[1], rf.start[0] + size[0], rf.start[1] + size[1])
    if rf.fixed is not None:
        box = _box_union(box, rf.fixed)
    return ReceptiveField((box[2] - box[0], box[3] - box[1]), stride, (box[0], box[1]), False)


def _union(rfs: list[ReceptiveField], spatial: bool) -> ReceptiveField:
    """Union of the inputs' fields; with a spatial output, non-spatial inputs become ``fixed``."""
    local = [r for r in rfs if r.spatial] if spatial else []
    if not local:
        starts = [min(r.start[a] for r in rfs) for a in range(2)]
        ends = [max(r.start[a] + r.size[a] for r in rfs) for a in range(2)]
        stride = tuple(max(r.stride[a] for r in rfs) for a in range(2))
        return ReceptiveField(tuple(ends[a] - starts[a] for a in range(2)), stride, tuple(starts), spatial)
    starts = [min(r.start[a] for r in local) for a in range(2)]
    ends = [max(r.start[a] + r.size[a] for r in local) for a in range(2)]
    stride = tuple(max(r.stride[a] for r in local) for a in range(2))
    fixed = None
    for r in rfs:
        boxes = ([r.fixed] if r.fixed is not None else []) + \
            ([] if r.spatial else [(r.start[0], r.start[1], r.start[0] + r.size[0], r.start[1] + r.size[1])])
        for bx in boxes:
            fixed = bx if fixed is None else _box_union(fixed, bx)
    return ReceptiveField(tuple(ends[a] - starts[a] for a in range(2)), stride, tuple(starts), True, fixed)


def _pair(v) -> tuple:
    if isinstance(v, (tuple, list)):
        return (v[0], v[0]) if len(v) == 1 else (v[-2], v[-1])
    return (v, v)


# --------------------------------------------------------------------------------------------
# Tracing and shapes
# --------------------------------------------------------------------------------------------

def model_input_size(model: nn.Module, input_size=None) -> tuple[int, int]:
    """``(H, W)``: ``input_size`` if given, else the model's ``input_size`` attribute, else 224."""
    size = input_size if input_size is not None else getattr(model, "input_size", None)
    if size is None:
        return (224, 224)
    h, w = _pair(size)
    return int(h), int(w)


class TracedModel:
    """A model traced with ``torch.fx`` plus per-node shapes, names and receptive fields.

    ``gm``: the ``GraphModule`` (the model itself when it already is one; it shares the model's
    parameters). ``names``: layer name → node, where a layer name is the module's qualified name
    for ``call_module`` nodes (``name#2``, ``name#3`` … for later calls of a module used several
    times) and the node name otherwise; fx node names are accepted as aliases, and so are
    qualified names of container modules (mapped to the last node computed inside them).
    ``shapes``: node name → output shape for a ``(1, 3, H, W)`` input (``None`` for non-tensors).
    """

    def __init__(self, model: nn.Module, input_size=None):
        self.model = model
        self.gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
        self.input_size = model_input_size(model, input_size)
        self.shapes, self.shape_error = _shape_prop(self.gm, self.input_size)
        self.names, self.aliases = layer_names_of(self.gm.graph)
        self.layer_name: dict[fx.Node, str] = {node: name for name, node in self.names.items()}
        self._rfs: dict[str, ReceptiveField | None] | None = None

    # ---- names ------------------------------------------------------------------------------
    def valid_names(self) -> list[str]:
        """Layer names in execution order: the model's ``layer_names`` attribute when it has one,
        else every node that produces a tensor."""
        listed = getattr(self.model, "layer_names", None) or list(self.names)
        return [n for n in listed if (node := self._find(n)) is not None and self.shapes.get(node.name) is not None]

    def _find(self, name: str) -> fx.Node | None:
        if name in self.names:
            return self.names[name]
        if name in self.aliases:
            return self.aliases[name]
        extra = getattr(self.model, "layer_aliases", None) or {}
        return self._find(extra[name]) if name in extra and extra[name] != name else None

    def node(self, name: str) -> fx.Node:
        """The node of layer ``name``; :class:`UnknownNameError` listing the valid names when there
        is none, ``ValueError`` when it does not produce a tensor for this input size."""
        node = self._find(str(name))
        if node is None:
            raise UnknownNameError(f"unknown layer {name!r} for {type(self.model).__name__}; valid layers: "
                                   + ", ".join(self.valid_names()))
        if self.shapes.get(node.name) is None:
            if node.name not in self.shapes and self.shape_error is not None:
                raise ValueError(f"layer {name!r} of {type(self.model).__name__} cannot be computed for a "
                                 f"{self.input_size[0]}×{self.input_size[1]} input: "
                                 f"{type(self.shape_error).__name__}: {self.shape_error}")
            raise UnknownNameError(f"{name!r} of {type(self.model).__name__} does not output a tensor; "
                                   "valid layers: " + ", ".join(self.valid_names()))
        return node

    # ---- receptive fields -----------------------------------------------------------------
    @property
    def rfs(self) -> dict[str, ReceptiveField | None]:
        if self._rfs is None:
            self._rfs = _propagate(self.gm, self.shapes)
        return self._rfs

    def receptive_field(self, name: str) -> ReceptiveField | None:
        return self.rfs.get(self.node(name).name)


def layer_names_of(graph: fx.Graph) -> tuple[dict[str, fx.Node], dict[str, fx.Node]]:
    """``(names, aliases)`` for the operation nodes of ``graph``, in execution order.

    ``names``: layer name → node: a ``call_module`` node is named by its module's qualified name
    (``name#2``, ``name#3`` … for later calls of the same module), any other node by its fx node
    name. ``aliases``: fx node names, and qualified names of container modules (recorded in
    ``node.meta["nn_module_stack"]`` while tracing) → the last node computed inside them.
    """
    names: dict[str, fx.Node] = {}
    aliases: dict[str, fx.Node] = {}
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op == "call_module":
            k = calls[node.target] = calls.get(node.target, 0) + 1
            name = node.target if k == 1 else f"{node.target}#{k}"
        else:
            name = node.name
        names[name] = node
        aliases[node.name] = node
        for qual in (node.meta.get("nn_module_stack") or {}):
            if isinstance(qual, str) and qual:
                aliases[qual] = node  # the last node inside a container wins
    for qual in list(aliases):  # a module's own call beats the container rule
        if qual in names:
            aliases[qual] = names[qual]
    return names, aliases


def _shape_prop(gm: fx.GraphModule, hw: tuple[int, int]) -> tuple[dict[str, tuple | None], Exception | None]:
    """Every node's output shape for a dummy ``(1, 3, H, W)`` image, and the error that stopped
    the run early (nodes after it have no shape; e.g. a classifier that only accepts another
    input size), or ``None``.

    Runs on fake tensors (no arithmetic, ~ms) when torch's FakeTensorMode can run the graph, else
    runs the model for real under ``no_grad``.
    """
    try:
        p = next(gm.parameters())
        device, dtype = p.device, (p.dtype if p.is_floating_point() else torch.float32)
    except StopIteration:
        device, dtype = torch.device("cpu"), torch.float32

    def run(fake: bool):
        shapes: dict[str, tuple | None] = {}

        class _Rec(fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                shapes[n.name] = tuple(int(v) for v in out.shape) if torch.is_tensor(out) else None
                return out

        extra = [_default(n) for n in gm.graph.nodes if n.op == "placeholder"][1:]
        try:
            if fake:
                from torch._subclasses.fake_tensor import FakeTensorMode
                log = logging.getLogger("torch._subclasses.fake_tensor")
                level = log.level
                log.setLevel(logging.CRITICAL)  # it logs failing ops as errors; we handle them
                try:
                    with FakeTensorMode(allow_non_fake_inputs=True):
                        _Rec(gm).run(torch.empty((1, 3, *hw), device=device, dtype=dtype), *extra)
                finally:
                    log.setLevel(level)
            else:
                with torch.no_grad():
                    _Rec(gm).run(torch.full((1, 3, *hw), 128.0, device=device, dtype=dtype), *extra)
        except Exception as e:  # noqa: BLE001 - any failure: keep the shapes found so far
            return shapes, e
        return shapes, None

    shapes, err = run(fake=True)
    if err is not None:  # an op without a fake implementation, or a real failure: try for real
        real, real_err = run(fake=False)
        if len(real) >= len(shapes):
            shapes, err = real, real_err
    return shapes, err


def _default(node: fx.Node):
    return node.args[0] if node.args else None


def trace_model(model: nn.Module, input_size=None) -> TracedModel:
    """Trace ``model`` (``torch.fx``) and propagate shapes for a ``(1, 3, H, W)`` input.

    ``input_size``: ``(H, W)``, default the model's ``input_size`` attribute (224 when absent).
    Raises whatever ``torch.fx`` raises when the model cannot be traced.
    """
    return TracedModel(model, input_size)


# --------------------------------------------------------------------------------------------
# Propagation
# --------------------------------------------------------------------------------------------

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Threshold, nn.LogSigmoid, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm2d,
    nn.LayerNorm, nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.Identity, nn.Softmax, nn.LogSoftmax, nn.Softmax2d, nn.ChannelShuffle,
)

_POINTWISE_NAMES = {
    # torch / F / operator / Tensor-method names treated as element-wise or channel-only
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "elu", "selu", "celu", "gelu",
    "silu", "mish", "hardswish", "hardsigmoid", "sigmoid", "tanh", "softplus", "softsign", "prelu",
    "threshold", "logsigmoid", "clamp", "clamp_", "clip", "clamp_min", "clamp_max", "add", "add_",
    "sub", "sub_", "mul", "mul_", "div", "div_", "truediv", "floordiv", "rsub", "neg", "pos", "abs",
    "pow", "exp", "log", "sqrt", "rsqrt", "square", "reciprocal", "round", "floor", "ceil", "trunc",
    "sign", "maximum", "minimum", "where", "batch_norm", "instance_norm", "layer_norm", "group_norm",
    "local_response_norm", "dropout", "dropout2d", "alpha_dropout", "feature_alpha_dropout",
    "softmax", "log_softmax", "normalize", "cat", "concat", "stack", "contiguous", "to", "float",
    "double", "half", "bfloat16", "type", "type_as", "clone", "detach", "flip", "getitem", "chunk",
    "split", "narrow", "expand_as", "fake_quantize_per_tensor_affine",
    "fake_quantize_per_channel_affine", "quantize_per_tensor", "dequantize", "channel_shuffle",
    "permute", "view", "reshape", "transpose", "unsqueeze", "squeeze", "flatten", "unflatten",
    "mean", "sum", "amax", "amin", "max", "min", "linear", "matmul", "addmm", "bmm", "mm",
    "adaptive_avg_pool1d", "size", "dim", "t", "expand", "repeat", "sub_", "mul_", "add_", "relu6_",
    # TFLite imports (preimage.models.tflite)
    "tflite_input", "tf_mean", "tf_reshape", "tf_squeeze", "tf_softmax", "relu_n1_to_1", "fake_quant",
}

_warned: set[str] = set()


def _target_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, stacklevel=3)


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _propagate(gm: fx.GraphModule, shapes: dict[str, tuple | None]) -> dict[str, ReceptiveField | None]:
    rfs: dict[str, ReceptiveField | None] = {}
    unknown: set[str] = set()  # nodes whose field could not be computed
    whole: dict[str, ReceptiveField] = {}  # exact field of all units together, where collapsing is inexact
    first_input = True
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            rfs[node.name] = _IDENTITY if first_input else None
            first_input = False
            continue
        if node.op in ("get_attr", "output"):
            rfs[node.name] = None
            continue
        ins = [a for a in node.all_input_nodes if rfs.get(a.name) is not None or a.name in unknown]
        if not ins:
            rfs[node.name] = None
            continue
        if any(a.name in unknown for a in ins):
            rfs[node.name] = None
            unknown.add(node.name)
            continue
        out_shape = shapes.get(node.name)
        try:
            rf = _rule(node, gm, rfs, shapes, ins, out_shape, whole)
        except _Unknown as e:
            _warn_once(str(e), f"receptive field unknown after {e} (node {node.name}); "
                       "later layers report no receptive field")
            rf = None
        if rf is None:
            unknown.add(node.name)
        rfs[node.name] = rf
    return {k: v for k, v in rfs.items()}


class _Unknown(Exception):
    pass


def _hw(shape) -> tuple[int, int] | None:
    return (int(shape[-2]), int(shape[-1])) if shape is not None and len(shape) == 4 else None


def _rule(node, gm, rfs, shapes, ins, out_shape, whole) -> ReceptiveField | None:
    name = _target_name(node, gm)
    out_hw = _hw(out_shape)
    main = ins[0]
    rf_in = rfs[main.name]
    in_hw = _hw(shapes.get(main.name))

    mod = gm.get_submodule(node.target) if node.op == "call_module" else None
    fn = node.target if node.op == "call_function" else None

    # ---- convolutions and pools -----------------------------------------------------------
    conv_like = None  # (kernel, stride, padding, dilation)
    if isinstance(mod, nn.Conv2d):
        k = _pair(mod.kernel_size)
        pad = _same_pad(k, _pair(mod.dilation)) if mod.padding == "same" else \
            ((0, 0) if mod.padding == "valid" else _pair(mod.padding))
        if str(getattr(mod, "tf_padding", "")).upper() == "SAME":  # TensorFlow SAME (e.g. TFLite imports)
            pad = tuple(p + q for p, q in zip(pad, _tf_same_pad(in_hw, k, _pair(mod.stride), _pair(mod.dilation))))
        conv_like = (k, _pair(mod.stride), pad, _pair(mod.dilation))
    elif name == "tf_pool2d" and node.op == "call_function":  # TF pooling: (x, kind, kernel, stride, padding)
        k, st = _pair(_arg(node, 2, "kernel")), _pair(_arg(node, 3, "stride"))
        same = str(_arg(node, 4, "padding", "VALID")).upper() == "SAME"
        conv_like = (k, st, _tf_same_pad(in_hw, k, st, (1, 1)) if same else (0, 0), (1, 1))
    elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)):
        k = _pair(mod.kernel_size)
        s = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
        conv_like = (k, s, _pair(getattr(mod, "padding", 0)), _pair(getattr(mod, "dilation", 1)))
    elif fn in (F.conv2d, torch.conv2d):
        wshape = shapes.get(node.args[1].name) if isinstance(node.args[1], fx.Node) else None
        if wshape is None:
            w = _arg(node, 1, "weight")
            wshape = tuple(w.shape) if torch.is_tensor(w) else None
        if wshape is None:
            raise _Unknown("conv2d with an unknown kernel")
        k = (wshape[-2], wshape[-1])
        d = _pair(_arg(node, 5, "dilation", 1))
        p = _arg(node, 4, "padding", 0)
        pad = _same_pad(k, d) if p == "same" else ((0, 0) if p == "valid" else _pair(p))
        conv_like = (k, _pair(_arg(node, 3, "stride", 1)), pad, d)
    elif fn in (F.max_pool2d, torch.max_pool2d, F.avg_pool2d, torch._C._nn.avg_pool2d,
                F.max_pool2d_with_indices, F.lp_pool2d):
        if fn is F.lp_pool2d:
            k = _pair(_arg(node, 2, "kernel_size"))
            s = _arg(node, 3, "stride", None)
            conv_like = (k, _pair(s if s is not None else k), (0, 0), (1, 1))
        else:
            k = _pair(_arg(node, 1, "kernel_size"))
            s = _arg(node, 2, "stride", None)
            s = _pair(s if s not in (None, [], ()) else k)
            d = _pair(_arg(node, 4, "dilation", 1)) if fn is not F.avg_pool2d and fn is not torch._C._nn.avg_pool2d else (1, 1)
            conv_like = (k, s, _pair(_arg(node, 3, "padding", 0)), d)
    if conv_like is not None:
        if not rf_in.spatial:
            raise _Unknown(f"{name} on a non-spatial tensor")
        return _conv(rf_in, *conv_like)

    if isinstance(mod, (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                        nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle,
                        nn.PixelUnshuffle, nn.Unfold, nn.Fold)) or fn in (F.interpolate, F.conv_transpose2d,
                                                                          F.pixel_shuffle, F.grid_sample):
        raise _Unknown(name)

    # ---- padding ----------------------------------------------------------------------------
    pad = None
    if isinstance(mod, (nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
                        getattr(nn, "CircularPad2d", nn.ZeroPad2d))):
        pad = tuple(mod.padding)
    elif fn in (F.pad, torch.constant_pad_nd) or (node.op == "call_method" and node.target == "pad"):
        pad = tuple(_arg(node, 1, "pad"))
    if pad is not None:
        if not rf_in.spatial:
            raise _Unknown(f"{name} on a non-spatial tensor")
        left = pad[0] if len(pad) >= 1 else 0
        top = pad[2] if len(pad) >= 3 else 0
        return _shift(rf_in, (top, left))

    # ---- adaptive pools ---------------------------------------------------------------------
    if isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)) or fn in (
            F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
            F.adaptive_max_pool2d_with_indices):
        if not rf_in.spatial or in_hw is None or out_hw is None:
            raise _Unknown(f"{name} on a non-spatial tensor")
        ks, ss = [], []
        for a in range(2):
            n, o = in_hw[a], out_hw[a]
            ks.append(max(math.ceil((i + 1) * n / o) - math.floor(i * n / o) for i in range(o)))
            ss.append(n / o)
        size = tuple(rf_in.size[a] + (ks[a] - 1) * rf_in.stride[a] for a in range(2))
        stride = tuple(rf_in.stride[a] * ss[a] for a in range(2))
        # the windows tile the input exactly: together they see what the whole input sees
        whole[node.name] = whole.get(main.name) or _collapse(rf_in, in_hw)
        return ReceptiveField(size, stride, rf_in.start, True, rf_in.fixed)

    # ---- spatial cropping by indexing: x[:, :, a:b, c:d], x[..., a:b, :] --------------------
    if fn is operator.getitem and in_hw is not None and out_hw is not None and in_hw != out_hw \
            and rf_in.spatial:
        idx = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
        if sum(1 for i in idx if i is Ellipsis) == 1:
            k = idx.index(Ellipsis)
            idx = idx[:k] + (slice(None),) * (4 - len(idx) + 1) + idx[k + 1:]
        idx = idx + (slice(None),) * (4 - len(idx))
        if len(idx) != 4 or any(not isinstance(i, slice) or i.step not in (None, 1) for i in idx[2:]) \
                or any(i is None for i in idx):
            raise _Unknown(f"spatial indexing {node.args[1]!r}")
        before = []
        for a, sl in enumerate(idx[2:]):
            start = sl.start or 0
            if not isinstance(start, int):
                raise _Unknown("spatial indexing with a computed start")
            before.append(-(max(start + in_hw[a], 0) if start < 0 else start))
        return _shift(rf_in, before)

    # ---- everything else: element-wise / reshaping / reductions --------------------------
    known = (isinstance(mod, _POINTWISE_MODULES) or isinstance(mod, (nn.Flatten, nn.Unflatten, nn.Linear))
             or fn in (operator.add, operator.sub, operator.mul, operator.truediv, operator.getitem,
                       operator.neg, operator.floordiv, operator.pow)
             or name in _POINTWISE_NAMES)
    in_rfs = []
    for a in ins:
        r = rfs[a.name]
        a_hw = _hw(shapes.get(a.name))
        if a.name in whole and (out_hw is None or a_hw != out_hw):
            in_rfs.append(whole[a.name])
        elif out_hw is None or not r.spatial:
            in_rfs.append(_collapse(r, a_hw))
        elif a_hw == out_hw:
            in_rfs.append(r)
        elif a_hw is not None and a_hw != (1, 1) and out_hw == (1, 1):
            in_rfs.append(_collapse(r, a_hw))          # global reduction with keepdim
        elif a_hw == (1, 1):
            in_rfs.append(_collapse(r, a_hw))          # broadcast of a 1x1 map
        else:
            raise _Unknown(f"{name} (spatial shape {a_hw} -> {out_hw})")
    if out_hw is not None and not known:
        _warn_once(name, f"preimage.receptive_field: assuming {name!r} is element-wise "
                   "(its output keeps its input's spatial shape)")
    if out_hw is not None and isinstance(mod, nn.Linear):
        raise _Unknown("Linear over the last spatial axis")
    return _union(in_rfs, spatial=out_hw is not None)


def _tf_same_pad(hw, k, s, d) -> tuple[int, int]:
    """Leading padding of TensorFlow's SAME (the odd extra pixel goes after)."""
    if hw is None:
        raise _Unknown("SAME padding of an input of unknown size")
    out = []
    for a in range(2):
        n = hw[a]
        total = max((math.ceil(n / s[a]) - 1) * s[a] + d[a] * (k[a] - 1) + 1 - n, 0)
        out.append(total // 2)
    return tuple(out)


def _same_pad(k, d) -> tuple[int, int]:
    return tuple((d[a] * (k[a] - 1)) // 2 for a in range(2))


# --------------------------------------------------------------------------------------------
# Public helpers
# --------------------------------------------------------------------------------------------

def receptive_fields(model: nn.Module, input_size=None) -> dict[str, ReceptiveField | None]:
    """Layer name → :class:`ReceptiveField` (``None`` when unknown) for every layer of ``model``,
    for an input of ``input_size`` ``(H, W)`` (default the model's ``input_size``)."""
    t = trace_model(model, input_size)
    return {name: t.rfs.get(t.node(name).name) for name in t.valid_names()}


def receptive_field(model: nn.Module, layer: str, input_size=None) -> ReceptiveField | None:
    """The :class:`ReceptiveField` of ``layer`` (``None`` if an operation before it is not
    understood). Unknown layer names raise :class:`~preimage.errors.UnknownNameError`."""
    return trace_model(model, input_size).receptive_field(layer)


def center_window(h: int, w: int, n: int) -> tuple[int, int, int, int]:
    """The central ``n×n`` window of an ``h×w`` feature map: ``(r0, r1, c0, c1)`` with exclusive
    ends (``code[..., r0:r1, c0:c1]``), clipped to the map; ``r0 = (h - n) // 2`` (an odd excess
    puts the window at the lower index), the same window as
    :func:`preimage.objective.central_window_mask`."""
    nh, nw = min(n, h), min(n, w)
    r0, c0 = (h - nh) // 2, (w - nw) // 2
    return r0, r0 + nh, c0, c0 + nw


def _window(ci, cj, h, w, n):
    """The ``n×n`` window around unit ``(ci, cj)`` (``(n-1)//2`` units before it), clipped."""
    r0, c0 = max(0, ci - (n - 1) // 2), max(0, cj - (n - 1) // 2)
    r1, c1 = min(h, ci - (n - 1) // 2 + n), min(w, cj - (n - 1) // 2 + n)
    return r0, r1, c0, c1


def receptive_field_box(model: nn.Module, layer: str, center: tuple[int, int] | None = None, n: int = 5,
                        input_size=None) -> tuple[int, int, int, int]:
    """Input-pixel box ``(top, left, bottom, right)`` seen by the ``n×n`` units of ``layer``
    around ``center`` (a ``(row, col)`` index into the layer's ``(h, w)`` map, the window
    starting ``(n-1)//2`` units before it; ``None``: the central window of
    :func:`center_window`, the one :func:`preimage.objective.central_window_mask` selects). ``bottom``/``right`` are exclusive and the box is
    clipped to the ``(H, W)`` input (default the model's ``input_size``), so
    ``image[..., top:bottom, left:right]`` is the region. Layers without spatial axes (fc) see
    the whole image. ``n=1`` gives the field of a single unit.
    """
    t = trace_model(model, input_size)
    node = t.node(layer)
    rf = t.rfs.get(node.name)
    H, W = t.input_size
    if rf is None:
        raise ValueError(f"the receptive field of layer {layer!r} is unknown (an operation before it "
                         "is not understood)")
    shape = t.shapes.get(node.name)
    hw = _hw(shape)
    if not rf.spatial or hw is None:
        top, left, bottom, right = rf.span(0, 0)
    else:
        h, w = hw
        if center is None:
            r0, r1, c0, c1 = center_window(h, w, n)
        else:
            ci, cj = center
            if not (0 <= ci < h and 0 <= cj < w):
                raise ValueError(f"center {center} is outside the {h}×{w} map of layer {layer!r}")
            r0, r1, c0, c1 = _window(ci, cj, h, w, n)
        top, left, _, _ = rf.span(r0, c0)
        _, _, bottom, right = rf.span(r1 - 1, c1 - 1)
    clip = lambda v, hi: int(min(max(math.floor(v + 1e-9), 0), hi))  # noqa: E731
    return clip(top, H), clip(left, W), clip(math.ceil(bottom - 1e-9), H), clip(math.ceil(right - 1e-9), W)
