"""Helpers shared by the tests of fx-traced networks."""

import torch
import torch.fx as fx


def node_value(net: fx.GraphModule, node: fx.Node, x: torch.Tensor) -> torch.Tensor:
    """The value ``node`` takes when the whole of ``net`` runs on ``x`` (no grad)."""
    acts = {}

    class Rec(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if n is node:
                acts["y"] = out
            return out

    with torch.no_grad():
        Rec(net).run(x)
    return acts["y"]
