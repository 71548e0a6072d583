"""Receptive fields computed from a model's own graph (no hand tables).

A model is traced with ``torch.fx`` and its tensor shapes are propagated with a dummy
``(1, 3, H, W)`` image (:mod:`.fx`), and every node gets a :class:`ReceptiveField` describing,
per spatial axis (rows, columns):

* ``size``: how many input pixels one output unit sees (Caffe/paper convention: padding counts,
  so the field may be larger than the image, e.g. 355 px for CaffeNet's fc6 on a 227 px image);
* ``stride``: how many input pixels apart neighbouring output units are;
* ``start``: the input coordinate (pixel index, may be negative because of padding) of the first
  pixel seen by output unit 0. Unit ``i`` sees pixels ``start + i*stride … start + i*stride + size - 1``.

Each operation's rule is found in :data:`RULES` (by module class, function or Tensor method name;
TFLite imports by their runtime classes and functions, :mod:`.tflite.ops`). Rules (per axis, input
field ``(S, J, A)``):

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

import math
import operator
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .fx import spatial_pair as _pair
from .fx import trace_model
from .tflite.ops import (TFConv2d, fake_quant, relu_n1_to_1, same_pad, tf_mean, tf_pool2d, tf_reshape, tf_softmax,
                         tf_squeeze, tflite_input)

__all__ = [
    "ReceptiveField", "RULES", "propagate_fields", "receptive_fields", "receptive_field",
    "receptive_field_box", "center_window",
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


# --------------------------------------------------------------------------------------------
# Propagation through the graph
# --------------------------------------------------------------------------------------------

class _Unknown(Exception):
    pass


_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, stacklevel=3)


def _target_name(node: fx.Node, gm: fx.GraphModule) -> str:
    if node.op == "call_module":
        return type(gm.get_submodule(node.target)).__name__
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _arg(node: fx.Node, i: int, name: str, default=None):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _hw(shape) -> tuple[int, int] | None:
    return (int(shape[-2]), int(shape[-1])) if shape is not None and len(shape) == 4 else None


def propagate_fields(gm: fx.GraphModule, shapes: dict[str, tuple | None]) -> dict[str, ReceptiveField | None]:
    """fx node name → :class:`ReceptiveField` of every node of ``gm`` (``None`` for nodes that do
    not depend on the image, and for every node after one whose field is unknown), given each
    node's output shape for a ``(1, 3, H, W)`` input (:class:`~.fx.TracedModel` ``.shapes``).
    Each node's field comes from its rule in :data:`RULES`."""
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
        site = _Site(node, gm, rfs, shapes, ins, whole)
        try:
            rf = _rule_of(site)(site)
        except _Unknown as e:
            _warn_once(str(e), f"receptive field unknown after {e} (node {node.name}); "
                       "later layers report no receptive field")
            rf = None
        if rf is None:
            unknown.add(node.name)
        rfs[node.name] = rf
    return {k: v for k, v in rfs.items()}


class _Site:
    """What a rule sees of one node: the node and its module (``mod``, for ``call_module``), its
    image-dependent inputs ``ins`` (``main`` the first, with field ``rf_in``), the spatial sizes
    ``in_hw`` / ``out_hw`` (``None`` without spatial axes), every field so far (``rfs``), the
    shapes, and ``whole``: the exact field of all units of a node together where collapsing its
    field would be inexact (adaptive pools record theirs)."""

    def __init__(self, node: fx.Node, gm: fx.GraphModule, rfs: dict, shapes: dict, ins: list, whole: dict):
        self.node, self.gm, self.rfs, self.shapes, self.ins, self.whole = node, gm, rfs, shapes, ins, whole
        self.name = _target_name(node, gm)
        self.mod = gm.get_submodule(node.target) if node.op == "call_module" else None
        self.main = ins[0]
        self.rf_in = rfs[self.main.name]
        self.in_hw = _hw(shapes.get(self.main.name))
        self.out_hw = _hw(shapes.get(node.name))


Rule = Callable[[_Site], "ReceptiveField | None"]


def _rule_of(site: _Site) -> Rule:
    """The node's rule: its module class (or the nearest base class) for ``call_module``, its
    function for ``call_function``, its method name for ``call_method`` (:data:`RULES`); else the
    element-wise fallback, which warns once for an operation it does not know."""
    node = site.node
    if site.mod is not None:
        for cls in type(site.mod).__mro__:
            if cls in RULES:
                return RULES[cls]
    elif node.op == "call_function" and _hashable(node.target) in RULES:
        return RULES[node.target]
    elif node.op == "call_method" and ("method", node.target) in RULES:
        return RULES[("method", node.target)]
    return _assumed_elementwise


def _hashable(target):
    try:
        hash(target)
    except TypeError:
        return None
    return target


# --------------------------------------------------------------------------------------------
# Rules: windows (convolutions, pools)
# --------------------------------------------------------------------------------------------

def _same_pad(k, d) -> tuple[int, int]:
    """Leading padding of PyTorch's ``padding="same"``."""
    return tuple((d[a] * (k[a] - 1)) // 2 for a in range(2))


def _tf_same_pad(hw, k, s, d) -> tuple[int, int]:
    """Leading padding of TensorFlow's SAME (the odd extra pixel goes after)."""
    if hw is None:
        raise _Unknown("SAME padding of an input of unknown size")
    return tuple(same_pad(hw[a], k[a], s[a], d[a])[0] for a in range(2))


def _torch_pad(k, d, padding) -> tuple:
    """Leading padding of a PyTorch conv's ``padding`` (``"same"``, ``"valid"``, int or pair)."""
    return _same_pad(k, d) if padding == "same" else ((0, 0) if padding == "valid" else _pair(padding))


def _windowed(site: _Site, k, s, p, d=(1, 1)) -> ReceptiveField:
    """The field after a window of kernel ``k``, stride ``s``, leading padding ``p``, dilation ``d``."""
    if not site.rf_in.spatial:
        raise _Unknown(f"{site.name} on a non-spatial tensor")
    return _conv(site.rf_in, k, s, p, d)


def _conv_module(site: _Site) -> ReceptiveField:
    """``nn.Conv2d``."""
    mod = site.mod
    k, d = _pair(mod.kernel_size), _pair(mod.dilation)
    return _windowed(site, k, _pair(mod.stride), _torch_pad(k, d, mod.padding), d)


def _tf_conv_module(site: _Site) -> ReceptiveField:
    """:class:`~.tflite.ops.TFConv2d`: TensorFlow SAME padding, computed for the input size."""
    mod = site.mod
    k, s, d = _pair(mod.kernel_size), _pair(mod.stride), _pair(mod.dilation)
    pad = _torch_pad(k, d, mod.padding)
    if str(mod.tf_padding).upper() == "SAME":
        pad = tuple(p + q for p, q in zip(pad, _tf_same_pad(site.in_hw, k, s, d)))
    return _windowed(site, k, s, pad, d)


def _pool_module(site: _Site) -> ReceptiveField:
    """``nn.MaxPool2d`` / ``nn.AvgPool2d`` / ``nn.LPPool2d``."""
    mod = site.mod
    k = _pair(mod.kernel_size)
    s = _pair(mod.stride if mod.stride is not None else mod.kernel_size)
    return _windowed(site, k, s, _pair(getattr(mod, "padding", 0)), _pair(getattr(mod, "dilation", 1)))


def _tf_pool(site: _Site) -> ReceptiveField:
    """:func:`~.tflite.ops.tf_pool2d` ``(x, kind, kernel, stride, padding)``."""
    node = site.node
    k, st = _pair(_arg(node, 2, "kernel")), _pair(_arg(node, 3, "stride"))
    same = str(_arg(node, 4, "padding", "VALID")).upper() == "SAME"
    return _windowed(site, k, st, _tf_same_pad(site.in_hw, k, st, (1, 1)) if same else (0, 0), (1, 1))


def _conv_function(site: _Site) -> ReceptiveField:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)``."""
    node = site.node
    wshape = site.shapes.get(node.args[1].name) if isinstance(node.args[1], fx.Node) else None
    if wshape is None:
        w = _arg(node, 1, "weight")
        wshape = tuple(w.shape) if torch.is_tensor(w) else None
    if wshape is None:
        raise _Unknown("conv2d with an unknown kernel")
    k = (wshape[-2], wshape[-1])
    d = _pair(_arg(node, 5, "dilation", 1))
    return _windowed(site, k, _pair(_arg(node, 3, "stride", 1)), _torch_pad(k, d, _arg(node, 4, "padding", 0)), d)


def _pool_function(site: _Site, dilated: bool) -> ReceptiveField:
    """``F.max_pool2d`` / ``F.avg_pool2d(x, kernel_size, stride, padding[, dilation])``."""
    node = site.node
    k = _pair(_arg(node, 1, "kernel_size"))
    s = _arg(node, 2, "stride", None)
    s = _pair(s if s not in (None, [], ()) else k)
    d = _pair(_arg(node, 4, "dilation", 1)) if dilated else (1, 1)
    return _windowed(site, k, s, _pair(_arg(node, 3, "padding", 0)), d)


def _lp_pool_function(site: _Site) -> ReceptiveField:
    """``F.lp_pool2d(x, norm_type, kernel_size, stride)``."""
    k = _pair(_arg(site.node, 2, "kernel_size"))
    s = _arg(site.node, 3, "stride", None)
    return _windowed(site, k, _pair(s if s is not None else k), (0, 0), (1, 1))


def _adaptive_pool(site: _Site) -> ReceptiveField:
    """Adaptive pools: the largest window ``ceil((i+1)n/o) - floor(i n/o)``, stride ``n/o``."""
    rf_in, in_hw, out_hw = site.rf_in, site.in_hw, site.out_hw
    if not rf_in.spatial or in_hw is None or out_hw is None:
        raise _Unknown(f"{site.name} on a non-spatial tensor")
    ks, ss = [], []
    for a in range(2):
        n, o = in_hw[a], out_hw[a]
        ks.append(max(math.ceil((i + 1) * n / o) - math.floor(i * n / o) for i in range(o)))
        ss.append(n / o)
    size = tuple(rf_in.size[a] + (ks[a] - 1) * rf_in.stride[a] for a in range(2))
    stride = tuple(rf_in.stride[a] * ss[a] for a in range(2))
    # the windows tile the input exactly: together they see what the whole input sees
    site.whole[site.node.name] = site.whole.get(site.main.name) or _collapse(rf_in, in_hw)
    return ReceptiveField(size, stride, rf_in.start, True, rf_in.fixed)


def _unsupported(site: _Site) -> None:
    """Operations that resample (upsampling, transposed convolutions, …): the field is unknown."""
    raise _Unknown(site.name)


# --------------------------------------------------------------------------------------------
# Rules: padding, cropping, element-wise
# --------------------------------------------------------------------------------------------

def _padded(site: _Site, pad: Sequence) -> ReceptiveField:
    """Explicit padding ``(left, right, top, bottom, …)``: shifts ``start`` by the leading pad."""
    if not site.rf_in.spatial:
        raise _Unknown(f"{site.name} on a non-spatial tensor")
    left = pad[0] if len(pad) >= 1 else 0
    top = pad[2] if len(pad) >= 3 else 0
    return _shift(site.rf_in, (top, left))


def _pad_module(site: _Site) -> ReceptiveField:
    """``nn.ZeroPad2d`` / ``ConstantPad2d`` / ``ReflectionPad2d`` / ``ReplicationPad2d`` / ``CircularPad2d``."""
    return _padded(site, tuple(site.mod.padding))


def _pad_function(site: _Site) -> ReceptiveField:
    """``F.pad(x, pad)``, ``torch.constant_pad_nd``, ``x.pad(pad)``."""
    return _padded(site, tuple(_arg(site.node, 1, "pad")))


def _getitem(site: _Site) -> ReceptiveField:
    """Indexing: a spatial crop ``x[:, :, a:b, c:d]`` / ``x[..., a:b, :]`` shifts ``start``; any
    other indexing is channel-only (element-wise)."""
    node, in_hw, out_hw = site.node, site.in_hw, site.out_hw
    if in_hw is None or out_hw is None or in_hw == out_hw or not site.rf_in.spatial:
        return _elementwise(site)
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
    return _shift(site.rf_in, before)


def _input_fields(site: _Site) -> list[ReceptiveField]:
    """Each input's field as seen by an element-wise output of spatial size ``out_hw``: as is when
    the sizes match, the whole input's field when the output has no spatial axes, is 1×1 (a global
    reduction) or broadcasts a 1×1 input."""
    out_hw, in_rfs = site.out_hw, []
    for a in site.ins:
        r = site.rfs[a.name]
        a_hw = _hw(site.shapes.get(a.name))
        if a.name in site.whole and (out_hw is None or a_hw != out_hw):
            in_rfs.append(site.whole[a.name])
        elif out_hw is None or not r.spatial:
            in_rfs.append(_collapse(r, a_hw))
        elif a_hw == out_hw:
            in_rfs.append(r)
        elif a_hw is not None and a_hw != (1, 1) and out_hw == (1, 1):
            in_rfs.append(_collapse(r, a_hw))          # global reduction with keepdim
        elif a_hw == (1, 1):
            in_rfs.append(_collapse(r, a_hw))          # broadcast of a 1x1 map
        else:
            raise _Unknown(f"{site.name} (spatial shape {a_hw} -> {out_hw})")
    return in_rfs


def _elementwise(site: _Site) -> ReceptiveField:
    """Element-wise, channel-only, reshaping and reducing operations: the union of the inputs'
    fields (the whole input's where the spatial axes are reduced away)."""
    return _union(_input_fields(site), spatial=site.out_hw is not None)


def _assumed_elementwise(site: _Site) -> ReceptiveField:
    """An operation without a rule: element-wise, with a warning (once) when it keeps spatial
    axes, unless its name is one of the element-wise torch names (:data:`_POINTWISE_NAMES`)."""
    in_rfs = _input_fields(site)
    if site.out_hw is not None and site.name not in _POINTWISE_NAMES:
        _warn_once(site.name, f"preimage.receptive_field: assuming {site.name!r} is element-wise "
                   "(its output keeps its input's spatial shape)")
    return _union(in_rfs, spatial=site.out_hw is not None)


def _linear(site: _Site) -> ReceptiveField:
    """``nn.Linear`` (and :class:`~.tflite.ops.TFLinear`): the whole input, unless it runs over
    the last spatial axis (unknown)."""
    rf = _elementwise(site)
    if site.out_hw is not None:
        raise _Unknown("Linear over the last spatial axis")
    return rf


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Softsign,
    nn.Threshold, nn.LogSigmoid, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm2d,
    nn.LayerNorm, nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
    nn.FeatureAlphaDropout, nn.Identity, nn.Softmax, nn.LogSoftmax, nn.Softmax2d, nn.ChannelShuffle,
    nn.Flatten, nn.Unflatten,
)

#: torch / F / operator / Tensor-method names treated as element-wise or channel-only when they
#: have no rule (no warning is given for them).
_POINTWISE_NAMES = {
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
}

_UNSUPPORTED = (
    nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Upsample,
    nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.PixelShuffle, nn.PixelUnshuffle, nn.Unfold,
    nn.Fold, F.interpolate, F.conv_transpose2d, F.pixel_shuffle, F.grid_sample,
)

#: Operation → rule giving the node's :class:`ReceptiveField` (or raising when it is unknown).
#: Keys: module classes (a module uses the rule of its nearest registered base class), functions
#: (torch's and the TFLite runtime's, :mod:`.tflite.ops`), and ``("method", name)`` for Tensor
#: methods. Operations without a rule are assumed element-wise (:func:`_assumed_elementwise`).
RULES: dict[Any, Rule] = {
    **{k: _elementwise for k in _POINTWISE_MODULES},
    **{k: _unsupported for k in _UNSUPPORTED},
    nn.Conv2d: _conv_module,
    nn.MaxPool2d: _pool_module, nn.AvgPool2d: _pool_module, nn.LPPool2d: _pool_module,
    nn.AdaptiveAvgPool2d: _adaptive_pool, nn.AdaptiveMaxPool2d: _adaptive_pool,
    nn.ZeroPad2d: _pad_module, nn.ConstantPad2d: _pad_module, nn.ReflectionPad2d: _pad_module,
    nn.ReplicationPad2d: _pad_module, getattr(nn, "CircularPad2d", nn.ZeroPad2d): _pad_module,
    nn.Linear: _linear,
    F.conv2d: _conv_function, torch.conv2d: _conv_function,
    F.max_pool2d: partial(_pool_function, dilated=True), torch.max_pool2d: partial(_pool_function, dilated=True),
    F.max_pool2d_with_indices: partial(_pool_function, dilated=True),
    F.avg_pool2d: partial(_pool_function, dilated=False), torch._C._nn.avg_pool2d: partial(_pool_function, dilated=False),
    F.lp_pool2d: _lp_pool_function,
    F.adaptive_avg_pool2d: _adaptive_pool, F.adaptive_max_pool2d: _adaptive_pool,
    F.adaptive_max_pool2d_with_indices: _adaptive_pool,
    F.pad: _pad_function, torch.constant_pad_nd: _pad_function, ("method", "pad"): _pad_function,
    operator.getitem: _getitem,
    **{k: _elementwise for k in (operator.add, operator.sub, operator.mul, operator.truediv, operator.neg,
                                 operator.floordiv, operator.pow)},
    # the TFLite runtime (preimage.models.tflite.ops)
    TFConv2d: _tf_conv_module,
    tf_pool2d: _tf_pool,
    **{k: _elementwise for k in (tflite_input, tf_mean, tf_reshape, tf_squeeze, tf_softmax, relu_n1_to_1,
                                 fake_quant)},
}


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


def units_box(rf: ReceptiveField, hw: tuple[int, int] | None, input_size: tuple[int, int],
              units: tuple[int, int, int, int] | None = None) -> tuple[int, int, int, int]:
    """Input-pixel box ``(top, left, bottom, right)`` seen by the units ``rows r0:r1, cols c0:c1``
    (``units = (r0, r1, c0, c1)``, exclusive ends) of a layer with field ``rf`` and map ``hw``;
    a layer without spatial axes (``hw`` None, or a field that is not spatial) sees the field of its
    unit 0. Bottom/right are exclusive, the box clipped to ``input_size = (H, W)``."""
    if not rf.spatial or hw is None or units is None:
        top, left, bottom, right = rf.span(0, 0)
    else:
        r0, r1, c0, c1 = units
        top, left, _, _ = rf.span(r0, c0)
        _, _, bottom, right = rf.span(r1 - 1, c1 - 1)
    H, W = input_size
    clip = lambda v, hi: int(min(max(v, 0), hi))  # noqa: E731
    return (clip(math.floor(top + 1e-9), H), clip(math.floor(left + 1e-9), W),
            clip(math.ceil(bottom - 1e-9), H), clip(math.ceil(right - 1e-9), W))


def receptive_field_box(model: nn.Module, layer: str, center: tuple[int, int] | None = None, n: int = 5,
                        input_size=None) -> tuple[int, int, int, int]:
    """Input-pixel box ``(top, left, bottom, right)`` seen by the ``n×n`` units of ``layer``
    around ``center`` (a ``(row, col)`` index into the layer's ``(h, w)`` map, the window
    starting ``(n-1)//2`` units before it; ``None``: the central window of
    :func:`center_window`, the one :func:`preimage.masks.central_window_mask` selects).
    ``bottom``/``right`` are exclusive and the box is clipped to the ``(H, W)`` input (default
    the model's ``input_size``), so ``image[..., top:bottom, left:right]`` is the region. Layers
    without spatial axes (fc) see the whole image. ``n=1`` gives the field of a single unit.
    """
    t = trace_model(model, input_size)
    node = t.node(layer)
    rf = t.rfs.get(node.name)
    if rf is None:
        raise ValueError(f"the receptive field of layer {layer!r} is unknown (an operation before it "
                         "is not understood)")
    hw = _hw(t.shapes.get(node.name))
    units = None
    if hw is not None:
        h, w = hw
        if center is None:
            units = center_window(h, w, n)
        else:
            ci, cj = center
            if not (0 <= ci < h and 0 <= cj < w):
                raise ValueError(f"center {center} is outside the {h}×{w} map of layer {layer!r}")
            units = _window(ci, cj, h, w, n)
    return units_box(rf, hw, t.input_size, units)
