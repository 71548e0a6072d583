"""A ``torch.fx.GraphModule`` that pickles node by node, and truncation of such graphs.

fx's own pickling stores the generated Python code and re-traces it when loaded. That renames the
nodes (so a layer called ``block8_add`` no longer exists in the copy) and runs every wrapped
function with ``Proxy`` arguments, which fails for functions that check their input (the TFLite
input stage does). :class:`PicklableGraphModule` instead stores the node list — op, name, target,
arguments with nodes replaced by their names — plus the submodules and attributes the graph uses,
and rebuilds the same graph when loaded. ``pickle``, ``copy.deepcopy`` of wrappers that pickle,
and ``torch.multiprocessing`` then all keep the layer names.

Only trusted pickles should ever be loaded (this is about copying models between processes, not
a file format: weights travel as safetensors).
"""

from __future__ import annotations

import copy
from typing import Any

import torch.fx as fx

__all__ = ["PicklableGraphModule", "truncate_graph_module"]


class _NodeRef(str):
    """A node's name standing for the node in a pickled graph."""

    def __reduce__(self):
        return _NodeRef, (str(self),)


class PicklableGraphModule(fx.GraphModule):
    """A GraphModule whose pickled copy has the same graph, node names included.

    Subclasses list in ``_pickled_attrs`` the instance attributes (plain data) that travel with it.
    """

    _pickled_attrs: tuple[str, ...] = ()

    def __deepcopy__(self, memo):
        res = super().__deepcopy__(memo)
        self._copy_attrs_to(res, memo)
        return res

    def _copy_attrs_to(self, other: fx.GraphModule, memo: dict | None = None) -> None:
        """Deep-copy this module's ``_pickled_attrs`` onto ``other``."""
        for k in self._pickled_attrs:
            if k in self.__dict__:
                setattr(other, k, copy.deepcopy(self.__dict__[k], memo))

    def __reduce__(self):
        def ref(n: fx.Node) -> _NodeRef:
            return _NodeRef(n.name)
        nodes = [(n.op, n.name, n.target, fx.node.map_arg(n.args, ref), fx.node.map_arg(n.kwargs, ref))
                 for n in self.graph.nodes]
        owned: dict[str, Any] = {}
        for n in self.graph.nodes:
            if n.op in ("call_module", "get_attr"):
                obj: Any = self
                for part in n.target.split("."):
                    obj = getattr(obj, part)
                owned[n.target] = obj
        attrs = {k: self.__dict__[k] for k in self._pickled_attrs if k in self.__dict__}
        base = _declared_class(self)
        return _rebuild, (base, type(self).__name__, owned, nodes, attrs, self.training)


def _declared_class(gm: fx.GraphModule) -> type:
    """``gm``'s class as declared (fx gives each GraphModule instance its own local subclass)."""
    return next(c for c in type(gm).__mro__ if "<locals>" not in c.__qualname__)


def _rebuild(cls: type, class_name: str, owned: dict, nodes: list, attrs: dict, training: bool) -> PicklableGraphModule:
    """Inverse of :meth:`PicklableGraphModule.__reduce__`."""
    graph = fx.Graph()
    made: dict[str, fx.Node] = {}

    def deref(v):
        if isinstance(v, _NodeRef):
            return made[str(v)]
        if isinstance(v, (tuple, list)):
            return type(v)(deref(a) for a in v)
        if isinstance(v, dict):
            return {k: deref(a) for k, a in v.items()}
        if isinstance(v, slice):
            return slice(deref(v.start), deref(v.stop), deref(v.step))
        return v

    for op, name, target, args, kwargs in nodes:
        node = graph.create_node(op, target, deref(args), deref(kwargs), name=name)
        if node.name != name:  # pragma: no cover - names were unique in the pickled graph
            raise RuntimeError(f"node {name!r} came back as {node.name!r}")
        made[name] = node
    gm = cls(owned, graph, class_name=class_name)
    for k, v in attrs.items():
        setattr(gm, k, v)
    return gm.train(training)


def truncate_graph_module(gm: fx.GraphModule, target: fx.Node, cls: type = PicklableGraphModule,
                          class_name: str = "Truncated") -> fx.GraphModule:
    """A new ``cls`` module computing ``gm`` up to its node ``target`` (the new output): the
    nodes after it and those it does not need are removed, node names are kept, submodules
    and parameters are shared with ``gm``, and, when ``cls`` is ``gm``'s class,
    ``gm``'s ``_pickled_attrs`` are deep-copied.

    The graph is copied node by node into a fresh graph and the module built before dead-code
    elimination, which needs the graph's owning module (a deep-copied graph has none).
    """
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            break
        env[node] = graph.node_copy(node, lambda n: env[n])
        if node is target:
            break
    if target not in env:
        raise ValueError(f"node {target.name!r} is not a computed node of this graph")
    graph.output(env[target])
    out = cls(gm, graph, class_name=class_name)
    out.graph.eliminate_dead_code()
    out.graph.lint()
    out.recompile()
    out.delete_all_unused_submodules()
    if isinstance(gm, PicklableGraphModule) and _declared_class(gm) is cls:  # same class: same metadata
        gm._copy_attrs_to(out)
    return out
