"""Converters of the ONNX operators that move, reshape, join or reduce values: Flatten, Reshape,
Squeeze, Unsqueeze, Concat, Pad, ReduceMean, Softmax, Transpose (registered in
:data:`.convert.CONVERTERS`).

Each takes ``(builder, node, layer name)`` and returns the fx node of the output. The batch axis
is never reshaped, squeezed or reduced (a clear :class:`~.parse.UnsupportedOnnxOpError` otherwise),
so the model runs on batches of any size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F

from .parse import OnnxNode

__all__ = ["SHAPE_CONVERTERS"]


def _axes(b, n: OnnxNode, k: int, rank: int, what: str = "axes") -> tuple[int, ...] | None:
    """The node's axes (attribute, or constant input ``k`` in newer opsets), made non-negative."""
    v = n.attrs.get("axes")
    if v is None and k < len(n.inputs) and n.inputs[k]:
        v = b.const(n, k, what)
    if v is None:
        return None
    axes = tuple(sorted(int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(v).reshape(-1)))
    b.check(0 not in axes, n, f"{what} {axes} include the batch axis")
    return axes


def _flatten(b, n: OnnxNode, name: str) -> fx.Node:
    """Flatten with axis 1 → ``torch.flatten(x, 1)``."""
    axis = int(n.attrs.get("axis", 1))
    b.check(axis == 1, n, f"Flatten with axis={axis} changes the batch axis (only axis=1 is supported)")
    return b.node(torch.flatten, (b.inp(n, 0), 1), name)


def _reshape(b, n: OnnxNode, name: str) -> fx.Node:
    """Reshape to a constant shape keeping the batch axis (first entry 0, -1, or 1 for a batch of
    one) → ``torch.flatten`` or ``x.reshape(x.size(0), …)``."""
    x = b.inp(n, 0)
    shape = n.attrs.get("shape") if len(n.inputs) < 2 else b.const(n, 1, "target shape")
    b.check(shape is not None, n, "Reshape without a target shape", False)
    shape = [int(v) for v in np.asarray(shape).reshape(-1)]
    in_shape = b.shape(n.inputs[0]) or ()
    b.check(len(shape) >= 1 and (shape[0] in (0, -1) or (shape[0] == 1 and in_shape[:1] == (1,))), n,
            f"Reshape to {shape} changes the batch axis (the first entry must be 0 or -1)")
    rest = shape[1:]
    if 0 in rest and not n.attrs.get("allowzero", 0):
        b.check(len(in_shape) > max(i + 1 for i, v in enumerate(rest) if v == 0)
                and all(in_shape[i + 1] for i, v in enumerate(rest) if v == 0), n,
                "Reshape copying a dimension whose size is unknown")
        rest = [in_shape[i + 1] if v == 0 else v for i, v in enumerate(rest)]
    if rest == [-1] or (len(rest) == 1 and in_shape and None not in in_shape[1:]
                        and rest[0] == int(np.prod(in_shape[1:]))):
        return b.node(torch.flatten, (x, 1), name)
    size = b.node("size", (x, 0), f"{name}_batch", kind="call_method")
    return b.node("reshape", (x, size, *rest), name, kind="call_method")


def _squeeze(b, n: OnnxNode, name: str) -> fx.Node:
    """Squeeze (given axes, or every size-1 axis but the batch) → ``torch.squeeze``."""
    in_shape = b.shape(n.inputs[0])
    rank = len(in_shape) if in_shape is not None else 4
    axes = _axes(b, n, 1, rank)
    if axes is None:
        b.check(in_shape is not None, n, "Squeeze without axes on a value of unknown shape")
        axes = tuple(i for i, s in enumerate(in_shape) if s == 1 and i > 0)
    return b.node(torch.squeeze, (b.inp(n, 0), axes), name)


def _unsqueeze(b, n: OnnxNode, name: str) -> fx.Node:
    """Unsqueeze → one ``torch.unsqueeze`` per new axis (in increasing order)."""
    rank = b.rank(n.inputs[0])
    v = n.attrs.get("axes")
    if v is None:
        v = b.const(n, 1, "axes")
    axes = sorted(int(a) for a in np.asarray(v).reshape(-1))
    out_rank = rank + len(axes)
    axes = sorted(a + out_rank if a < 0 else a for a in axes)
    b.check(bool(axes) and 0 not in axes, n, f"axes {axes} include the batch axis")
    x = b.inp(n, 0)
    for i, a in enumerate(axes):
        x = b.node(torch.unsqueeze, (x, a), name if i == len(axes) - 1 else f"{name}_{i}")
    return x


def _concat(b, n: OnnxNode, name: str) -> fx.Node:
    """Concat of computed values along a non-batch axis → ``torch.cat``."""
    rank = b.rank(n.inputs[0])
    axis = int(n.attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    b.check(axis != 0, n, "Concat along the batch axis is not supported")
    return b.node(torch.cat, ([b.inp(n, k) for k in range(len(n.inputs))], axis), name)


def _pad(b, n: OnnxNode, name: str) -> fx.Node:
    """Pad of H and W (constant, reflect or edge) → ``F.pad``."""
    mode = str(n.attrs.get("mode", "constant"))
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate"}
    b.check(mode in modes, n, f"pad mode {mode!r} is not supported ({', '.join(modes)})")
    pads = n.attrs.get("pads") if b.spec.opset < 11 else b.const(n, 1, "pads")
    pads = [int(v) for v in np.asarray(pads).reshape(-1)]
    value = n.attrs.get("value", 0.0)
    if b.spec.opset >= 11 and len(n.inputs) > 2 and n.inputs[2]:
        value = float(np.asarray(b.const(n, 2, "pad value")).reshape(-1)[0])
    b.check(len(pads) == 8 and min(pads) >= 0 and pads[:2] == [0, 0] and pads[4:6] == [0, 0], n,
            f"pads {pads}: only non-negative padding of H and W of an NCHW value is supported")
    kwargs = {"mode": modes[mode]}
    if mode == "constant":
        kwargs["value"] = float(value)
    return b.node(F.pad, (b.inp(n, 0), (pads[3], pads[7], pads[2], pads[6])), name, kwargs=kwargs)


def _reduce_mean(b, n: OnnxNode, name: str) -> fx.Node:
    """ReduceMean over non-batch axes → ``torch.mean``."""
    rank = b.rank(n.inputs[0])
    axes = _axes(b, n, 1, rank)
    b.check(axes is not None, n, "ReduceMean over every axis (including the batch) is not supported")
    return b.node(torch.mean, (b.inp(n, 0), axes), name, kwargs={"keepdim": bool(n.attrs.get("keepdims", 1))})


def _softmax(b, n: OnnxNode, name: str) -> fx.Node:
    """Softmax → ``torch.softmax`` over the node's axis (before opset 13: over the flattened axes
    from ``axis`` on, supported when that is the last axis or only size-1 axes follow)."""
    shape = b.shape(n.inputs[0])
    rank = len(shape) if shape is not None else 2
    axis = int(n.attrs.get("axis", 1 if b.spec.opset < 13 else -1))
    axis = axis + rank if axis < 0 else axis
    if b.spec.opset < 13 and axis != rank - 1:
        b.check(shape is not None and all(s == 1 for s in shape[axis + 1:]), n,
                f"Softmax over the flattened axes {axis}.. of a rank-{rank} value is not supported")
    b.check(axis != 0, n, "Softmax over the batch axis is not supported")
    return b.node(torch.softmax, (b.inp(n, 0), axis), name)


def _transpose(b, n: OnnxNode, name: str) -> fx.Node | None:
    """Transpose keeping the batch axis → ``torch.permute``; NHWC → NCHW of the (NHWC) graph input
    folds away (the image is NCHW already)."""
    x = b.inp(n, 0)
    perm = [int(v) for v in (n.attrs.get("perm") or [])]
    b.check(bool(perm) and perm[0] == 0, n, f"Transpose with perm {perm or 'reversed'} moves the batch axis")
    if x.name == "preprocess_nhwc" and perm == [0, 3, 1, 2]:
        b.value[n.outputs[0]] = b.image
        return None
    return b.node(torch.permute, (x, tuple(perm)), name)


#: Op type → converter for the reshaping / joining / reducing operators.
SHAPE_CONVERTERS = {
    "Flatten": _flatten, "Reshape": _reshape, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze,
    "Concat": _concat, "Pad": _pad, "ReduceMean": _reduce_mean, "Softmax": _softmax, "Transpose": _transpose,
}
