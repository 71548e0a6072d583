"""Readable layer names for the operators of a TFLite model (MobileNet v1/v2 conventions).

:func:`name_ops` gives every non-alias operator of a :class:`~.parse.TFLiteSpec` a unique valid
identifier, derived from the TF scopes in its tensor names:

* ``conv1`` (``conv2`` …): convolutions before the first block (the stem);
* ``block{k}_{part}``: the ops of block ``k`` (1-based, in execution order), ``part`` taken from the
  TF scope: MobileNet v2 inverted residuals ``expand`` / ``depthwise`` / ``project`` / ``add``
  (``expanded_conv`` → block 1, ``expanded_conv_1`` → block 2 in TF1 exports; TF2 exports number
  from 1 already), MobileNet v1 separable blocks ``depthwise`` / ``pointwise`` (``Conv2d_k_*`` →
  block ``k``);
* ``conv_last``: the convolution after the last block; ``avgpool``: the global pooling;
  ``classifier``: the 1×1 convolution / fully connected layer giving the class scores;
  ``logits``: the scores as ``(B, num_classes)`` (the tensor fed to the softmax); ``softmax``;
* other ops fall back to ``{op}{k}`` (e.g. ``add3``); repeated names get ``_2``, ``_3`` ….

:func:`block_names` picks the main block outputs from the resulting layer names.
"""

from __future__ import annotations

import re

from .parse import TFLiteOp, TFLiteTensor

__all__ = ["ALIAS_OPS", "name_ops", "block_names"]

_V2_BLOCK = re.compile(r"(?:^|/)expanded_conv(?:_(\d+))?/(expand|depthwise|project|add)(?:/|$)", re.I)
_V1_BLOCK = re.compile(r"(?:^|/)conv2d_(\d+)_(depthwise|pointwise)(?:/|$)", re.I)
#: Operators that only carry a value across (re-quantisation): no name, no layer.
ALIAS_OPS = ("QUANTIZE", "DEQUANTIZE")
_CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _scopes(op: TFLiteOp) -> list[str]:
    names = []
    if op.kind in _CONV_OPS and len(op.inputs) > 1 and op.inputs[1] is not None:
        names.append(op.inputs[1].name)
    names.append(op.outputs[0].name)
    return [n.split(";")[0] for n in names]


def _block_ops(ops: list[TFLiteOp], names: dict[int, str]) -> dict[int, int]:
    """Name the ops inside blocks (``block{k}_{part}``) from their TF scopes; returns id(op) → k.
    MobileNet v2 TF1 exports start with a bare ``expanded_conv`` (→ block 1)."""
    bare_v2 = {op.part for op in ops for s in _scopes(op)
               if (m := _V2_BLOCK.search(s)) and m.group(1) is None}
    block_of: dict[int, int] = {}
    for op in ops:
        if op.kind in ALIAS_OPS:
            continue
        for s in _scopes(op):
            if m := _V2_BLOCK.search(s):
                k = int(m.group(1) or 0) + (1 if op.part in bare_v2 else 0)
                names[id(op)] = f"block{k}_{m.group(2).lower()}"
                block_of[id(op)] = k
                break
            if m := _V1_BLOCK.search(s):
                names[id(op)] = f"block{int(m.group(1))}_{m.group(2).lower()}"
                block_of[id(op)] = int(m.group(1))
                break
    return block_of


def _head_ops(ops: list[TFLiteOp], names: dict[int, str]) -> None:
    """Name the classifier head: ``softmax`` ← ``logits`` ← ``classifier``."""
    producer = {id(op.outputs[0]): op for op in ops}

    def source_op(t: TFLiteTensor) -> TFLiteOp | None:
        op = producer.get(id(t))
        while op is not None and op.kind in ALIAS_OPS:
            op = producer.get(id(op.inputs[0]))
        return op

    final = source_op(ops[-1].outputs[0])
    soft = [op for op in ops if op.kind == "SOFTMAX"]
    for op in soft:
        names.setdefault(id(op), "softmax")
    logits = source_op(soft[-1].inputs[0]) if soft else final
    if logits is not None and id(logits) not in names:
        names[id(logits)] = "logits"
        if logits.kind in ("RESHAPE", "SQUEEZE"):
            cls = source_op(logits.inputs[0])
            if cls is not None and cls.kind in _CONV_OPS and id(cls) not in names:
                names[id(cls)] = "classifier"


def _other_ops(ops: list[TFLiteOp], names: dict[int, str], block_of: dict[int, int]) -> None:
    """Name the remaining ops: stem convs, ``conv_last``, pools after the blocks, ``{op}{k}``."""
    block_pos = [i for i, op in enumerate(ops) if id(op) in block_of]
    first_block = block_pos[0] if block_pos else len(ops)
    last_block = block_pos[-1] if block_pos else -1
    counters: dict[str, int] = {}
    for i, op in enumerate(ops):
        if id(op) in names or op.kind in ALIAS_OPS:
            continue
        if op.kind in ("AVERAGE_POOL_2D", "MEAN") and i > last_block:
            base = "avgpool"
        elif op.kind == "MAX_POOL_2D" and i > last_block:
            base = "maxpool"
        elif op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D") and i < first_block:
            counters["conv"] = counters.get("conv", 0) + 1
            base = f"conv{counters['conv']}"
        elif op.kind == "CONV_2D" and i > last_block and block_pos:
            base = "conv_last"
        else:
            key = op.kind.lower().replace("_2d", "").replace("_", "")
            counters[key] = counters.get(key, 0) + 1
            base = f"{key}{counters[key]}"
        names[id(op)] = base


def _make_unique(ops: list[TFLiteOp], names: dict[int, str]) -> None:
    """Suffix repeated names, in execution order: ``x``, ``x_2``, ``x_3`` …."""
    seen: dict[str, int] = {}
    for op in ops:
        if id(op) not in names:
            continue
        n = names[id(op)]
        if n in seen:
            seen[n] += 1
            names[id(op)] = f"{n}_{seen[n]}"
        else:
            seen[n] = 1


def name_ops(ops: list[TFLiteOp]) -> dict[int, str]:
    """``id(op)`` → readable unique identifier for every op of ``ops`` except the aliases
    (:data:`ALIAS_OPS`); see the module docstring for the scheme."""
    names: dict[int, str] = {}
    block_of = _block_ops(ops, names)
    _head_ops(ops, names)
    _other_ops(ops, names, block_of)
    _make_unique(ops, names)
    return names


def block_names(layer_names: list[str]) -> list[str]:
    """The main block outputs among ``layer_names``, in order: stem convs, the last op of each
    block, ``conv_last``, pooling and ``logits``."""
    out: list[str] = []
    last_of_block: dict[str, str] = {}
    for n in layer_names:
        if m := re.match(r"(block\d+)_", n):
            last_of_block[m.group(1)] = n
    for n in layer_names:
        if re.fullmatch(r"conv\d+|conv_last(_\d+)?|avgpool(_\d+)?|logits", n):
            out.append(n)
        elif (m := re.match(r"(block\d+)_", n)) and last_of_block[m.group(1)] == n:
            out.append(n)
    return out
