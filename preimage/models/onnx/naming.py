"""Layer names for the nodes of an ONNX graph: the node's own name, else its output's name.

:func:`name_nodes` gives every node a unique Python identifier (what ``--layer`` takes):

* a named node keeps its name, made an identifier: PyTorch exports' scope paths lose their
  repeated scopes and punctuation (``/layer1/layer1.0/conv1/Conv`` → ``layer1_0_conv1_Conv``);
* an unnamed node takes its output's name. The ONNX model zoo's Caffe conversions (CaffeNet,
  AlexNet: unnamed nodes, outputs ``conv1_1``, ``conv1_2`` …) give Caffe's own layer names: a
  blob's ``_k`` suffix is dropped (``conv1_1`` → ``conv1``, ``prob_1`` → ``prob``) and an op that
  Caffe ran in place on blob ``conv1``/``fc6`` is named after its type and the blob's number
  (``relu1``, ``relu6``, ``drop6``), as in Caffe's prototxt;
* repeated names get ``_2``, ``_3`` …

:func:`aliases` maps the raw node and output names to the layer names, so both can be passed too.
:data:`PLUMBING_OPS` are not listed as layers (they only move or reshape values).
"""

from __future__ import annotations

import keyword
import re

from .parse import OnnxNode

__all__ = ["name_nodes", "aliases", "sanitize", "PLUMBING_OPS"]

#: Ops that are not listed among the layers (they only reshape or pass values on).
PLUMBING_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Dropout", "Identity", "Constant")
_INPLACE_PREFIX = {"Relu": "relu", "Dropout": "drop", "LeakyRelu": "relu", "Clip": "relu",
                   "Sigmoid": "sigmoid", "Tanh": "tanh", "BatchNormalization": "bn"}
_BLOB = re.compile(r"^(.*?)_(\d+)$")


def sanitize(raw: str, fallback: str) -> str:
    """``raw`` as a Python identifier (``fallback`` when nothing is left): scope paths lose
    scopes repeated by the next one (``/layer1/layer1.0/Conv`` → ``layer1_0_Conv``)."""
    parts = [p for p in raw.strip("/").split("/") if p]
    kept = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
    s = re.sub(r"[^0-9A-Za-z_]+", "_", "_".join(kept)).strip("_")
    s = re.sub(r"_+", "_", s)
    if not s:
        s = fallback
    if s[0].isdigit():
        s = f"{fallback}_{s}"
    if keyword.iskeyword(s):
        s += "_"
    return s


def _caffe_name(node: OnnxNode, producer_stem: dict[str, str]) -> str | None:
    """Caffe's layer name for an unnamed node with a ``blob_k`` output (ONNX zoo conversions)."""
    m = _BLOB.match(node.outputs[0]) if node.outputs else None
    if m is None:
        return None
    stem = m.group(1)
    src = producer_stem.get(node.inputs[0]) if node.inputs else None
    if src == stem and node.op in _INPLACE_PREFIX:  # in place on the same blob in Caffe
        num = re.search(r"(\d+)$", stem)
        return f"{_INPLACE_PREFIX[node.op]}{num.group(1) if num else ''}"
    return stem


def name_nodes(nodes: list[OnnxNode]) -> list[str]:
    """One unique identifier per node, in order (see the module docstring)."""
    stems: dict[str, str] = {}
    names: list[str] = []
    for node in nodes:
        fallback = node.op.lower()
        if node.name.strip():
            base = sanitize(node.name, fallback)
        else:
            base = _caffe_name(node, stems) or sanitize(node.outputs[0] if node.outputs else "", fallback)
            base = sanitize(base, fallback)
        if node.outputs and (m := _BLOB.match(node.outputs[0])):
            stems[node.outputs[0]] = m.group(1)
        names.append(base)
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            seen[n] += 1
            names[i] = f"{n}_{seen[n]}"
            while names[i] in seen:
                seen[n] += 1
                names[i] = f"{n}_{seen[n]}"
        seen.setdefault(names[i], 1)
    return names


def aliases(nodes: list[OnnxNode], names: list[str]) -> dict[str, str]:
    """Raw ONNX node names and output names → layer name (those that differ from it); ``mpoolN``
    → ``poolN`` too (the paper's spelling of Caffe's pooling layers)."""
    out: dict[str, str] = {}
    for node, name in zip(nodes, names):
        extra = [f"m{name}"] if re.fullmatch(r"pool\d+", name) else []  # the paper's spelling: mpool5
        for raw in [node.name, *node.outputs[:1], *extra]:
            if raw and raw != name and raw not in names:
                out.setdefault(raw, name)
    return out
