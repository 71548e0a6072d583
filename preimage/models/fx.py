"""Tracing a model with ``torch.fx``: layer names and tensor shapes.

:func:`trace_model` traces a model (a ``GraphModule`` is used as it is), names its layers
(:func:`layer_names_of`: module qualified names for module calls, fx node names otherwise) and
propagates the shapes of a dummy ``(1, 3, H, W)`` image through it, ``(H, W)`` from
:func:`model_input_size`. The resulting :class:`TracedModel` is what
:mod:`preimage.representations.cnn` cuts layers from and what :mod:`.receptive_field` computes
receptive fields on (:attr:`TracedModel.rfs`). Pickling and truncating graphs is
:mod:`.graph_module`'s job.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.fx as fx
from torch import nn

from ..errors import UnknownNameError

if TYPE_CHECKING:
    from .receptive_field import ReceptiveField

__all__ = ["TracedModel", "trace_model", "layer_names_of", "model_input_size", "spatial_pair"]


def spatial_pair(v) -> tuple:
    """``v`` as a ``(rows, columns)`` pair: a scalar is repeated, a sequence gives its last two
    entries (its only entry twice)."""
    if isinstance(v, (tuple, list)):
        return (v[0], v[0]) if len(v) == 1 else (v[-2], v[-1])
    return (v, v)


def model_input_size(model: nn.Module, input_size=None) -> tuple[int, int]:
    """``(H, W)``: ``input_size`` if given, else the model's ``input_size`` attribute, else 224."""
    size = input_size if input_size is not None else getattr(model, "input_size", None)
    if size is None:
        return (224, 224)
    h, w = spatial_pair(size)
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
        """fx node name → :class:`~.receptive_field.ReceptiveField` (``None`` when unknown or
        not image-dependent), computed once by :func:`.receptive_field.propagate_fields`."""
        if self._rfs is None:
            from .receptive_field import propagate_fields
            self._rfs = propagate_fields(self.gm, self.shapes)
        return self._rfs

    def receptive_field(self, name: str) -> ReceptiveField | None:
        """The :class:`~.receptive_field.ReceptiveField` of layer ``name`` (see :meth:`node`)."""
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
