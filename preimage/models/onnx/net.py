"""The imported model: :class:`OnnxNet`, a float ``torch.fx`` GraphModule with its metadata.

Built by :func:`~preimage.models.onnx.convert.build_net`. Node ``X`` computes layer ``X`` (see
:mod:`.naming`); the submodule holding the weights of a Conv/Gemm/MatMul/BatchNormalization/LRN
node ``X`` is also called ``X`` (``net.conv1.weight``). :meth:`OnnxNet.truncate` cuts the graph at
any node, keeping the metadata that still applies.
"""

from __future__ import annotations

from pathlib import Path

import torch.fx as fx

from ...errors import UnknownNameError
from ..graph_module import PicklableGraphModule, truncate_graph_module

__all__ = ["OnnxNet"]

_META_ATTRS = ("input_size", "mean_pixel", "preprocessing", "layer_names", "layer_aliases", "num_classes",
               "source", "opset", "metadata", "onnx_names")


class OnnxNet(PicklableGraphModule):
    """An ONNX model as a float ``torch.fx.GraphModule`` (built by :func:`~preimage.models.onnx.load_onnx`).

    ``forward(images)``: ``(B, 3, H, W)`` RGB on 0–255 → the model's (first) output; the graph
    starts with the model's preprocessing (:class:`~preimage.models.preprocess.Preprocessing`).

    Attributes:
        input_size: ``(H, W)`` the model runs at (the file's, or the one given for a dynamic input).
        mean_pixel: RGB on 0–255, the pixel that the preprocessing maps to 0.
        preprocessing: the :class:`~preimage.models.preprocess.Preprocessing` applied first.
        layer_names: the invertible layers in order (every op but reshapes, dropout, identities).
        layer_aliases: raw ONNX node / output names → layer name.
        num_classes: size of the output's last dimension (0 when unknown).
        source: the .onnx path; ``opset``: its default-domain opset; ``metadata``: its metadata.
        onnx_names: layer name → the ONNX output name it computes.
    """

    _pickled_attrs = _META_ATTRS

    def node(self, name: str) -> fx.Node:
        """The graph node of layer ``name`` (or an alias); UnknownNameError listing the layers."""
        name = self.layer_aliases.get(name, name)
        for n in self.graph.nodes:
            if n.name == name:
                return n
        raise UnknownNameError(f"no layer {name!r} in {Path(self.source).name}; valid names: "
                               f"{', '.join(self.layer_names)}")

    def truncate(self, name: str) -> "OnnxNet":
        """A new OnnxNet computing layer ``name`` from the image, everything after it removed
        (weights shared with this module)."""
        res = truncate_graph_module(self, self.node(name), OnnxNet, "OnnxNet")
        kept = {n.name for n in res.graph.nodes}
        res.layer_names = [n for n in self.layer_names if n in kept]
        res.layer_aliases = {k: v for k, v in self.layer_aliases.items() if v in kept}
        res.onnx_names = {k: v for k, v in self.onnx_names.items() if k in kept}
        return res
