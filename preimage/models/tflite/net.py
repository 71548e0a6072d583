"""The imported model: :class:`TFLiteNet`, a float ``torch.fx`` GraphModule with its metadata.

Built by :func:`~preimage.models.tflite.convert.build_net`. Node ``X`` is the output of op ``X``
*after* its fused activation; ``X_preact`` the value before the activation / rounding when there is
one; the submodule holding the weights of op ``X`` is also called ``X``
(``net.block3_expand.weight``). :meth:`TFLiteNet.truncate` cuts the graph at any node, keeping the
metadata that still applies.
"""

from __future__ import annotations

from pathlib import Path

import torch.fx as fx

from ...errors import UnknownNameError
from ..graph_module import PicklableGraphModule, truncate_graph_module

__all__ = ["TFLiteNet"]

_META_ATTRS = ("input_size", "mean_pixel", "input_scale", "preprocessing", "layer_names", "block_names",
               "num_classes", "source", "sources", "emulate_quantization", "quant_params", "tensor_names")


class TFLiteNet(PicklableGraphModule):
    """A TFLite model as a float ``torch.fx.GraphModule`` (built by :func:`import_tflite`).

    ``forward(images)``: ``(B, 3, H, W)`` RGB on 0–255 → the model output (for the MobileNets:
    softmax probabilities ``(B, num_classes)``, summing to 1).

    Attributes:
        input_size: ``(H, W)`` the model was exported for (other sizes run too, SAME padding is
            recomputed; the global pooling of these MobileNets has a fixed window, though).
        mean_pixel: ``(m, m, m)`` on 0–255, the pixel value that maps to real 0 (e.g. 128).
        input_scale: real value of one pixel step (e.g. 1/128).
        preprocessing: a float-input model's :class:`~preimage.models.preprocess.Preprocessing`
            (``None`` for a quantised input, whose scale and zero point say it all).
        layer_names: node names of every op output, in execution order (invertible layers).
        block_names: the main block outputs (stem conv, each block, last conv, pooling, logits).
        num_classes: size of the output's last dimension.
        source: the .tflite path (paths joined by `` + `` for a chain); ``sources``: the tuple.
        emulate_quantization: whether activations are fake-quantised.
        quant_params: node name → ``(scale, zero_point, qmin, qmax)`` of the op's TFLite output
            (``qmin``/``qmax``: the integer clamp including the fused activation).
        tensor_names: node name → name of the TFLite tensor it computes.
    """

    _pickled_attrs = _META_ATTRS

    def node(self, name: str) -> fx.Node:
        """The graph node called ``name`` (raises UnknownNameError listing the layer names)."""
        for n in self.graph.nodes:
            if n.name == name:
                return n
        raise UnknownNameError(f"no layer {name!r} in {Path(self.source).name}; valid names: "
                               f"{', '.join(self.layer_names)}")

    def truncate(self, name: str) -> "TFLiteNet":
        """A new TFLiteNet computing node ``name`` (any node, e.g. a block name or ``X_preact``)
        from the image, everything after it removed (copy the graph, make ``name`` the output,
        eliminate dead code). Weights are shared with this module."""
        res = truncate_graph_module(self, self.node(name), TFLiteNet, "TFLiteNet")  # node() validates
        kept = {n.name for n in res.graph.nodes}
        res.layer_names = [n for n in self.layer_names if n in kept]
        res.block_names = [n for n in self.block_names if n in kept]
        res.quant_params = {k: v for k, v in self.quant_params.items() if k in kept}
        res.tensor_names = {k: v for k, v in self.tensor_names.items() if k in kept}
        return res
