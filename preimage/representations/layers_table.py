"""The text table printed by ``preimage layers MODEL``: :func:`format_layers`, a view of
:func:`preimage.representations.cnn.list_layers`."""

from __future__ import annotations

import warnings

from torch import nn

from ..models import get_model
from .cnn import list_layers

__all__ = ["format_layers"]


def _fmt_num(v: float) -> str:
    return str(int(round(v))) if abs(v - round(v)) < 1e-9 else f"{v:.3g}"


def _fmt_pair(p) -> str:
    if p is None:
        return "?"
    a, b = p
    return _fmt_num(a) if abs(a - b) < 1e-9 else f"{_fmt_num(a)}×{_fmt_num(b)}"


def format_layers(model, input_size=None) -> str:
    """Table of a model's layers: index, name, op type, output shape ``C×h×w``, channels,
    receptive field size and stride (input pixels; ``a×b`` when rows and columns differ, ``?``
    when unknown, ``-`` for the stride of a single-position output), relative depth and the
    paper's TV weight for that depth.

    ``model``: a name for :func:`preimage.models.get_model` (CaffeNet without weights is built
    with random weights, which do not change the table) or an ``nn.Module`` taking RGB 0–255.
    ``input_size``: ``(H, W)``, default the model's. Returns the table as one string.
    """
    if isinstance(model, nn.Module):
        net, title = model, getattr(model, "model_spec", None) or type(model).__name__
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*random weights.*")
            net = get_model(str(model))
        title = str(model)
    infos = list_layers(net, input_size)
    size = input_size or getattr(net, "input_size", None) or (224, 224)
    mean = getattr(net, "mean_pixel", None)
    mean_s = "" if mean is None else ", mean pixel " + (
        "(" + ", ".join(f"{float(v):.2f}" for v in mean) + ")" if isinstance(mean, (tuple, list))
        else f"{float(mean):.2f}")
    head = ("#", "layer", "type", "output", "channels", "field", "stride", "depth", "λ_TV")
    rows = []
    for i in infos:
        single = len(i.output_shape) != 3 or tuple(i.output_shape[1:]) == (1, 1)  # one position: no stride
        rows.append((str(i.index), i.name, i.type, "×".join(str(int(v)) for v in i.output_shape),
                     str(i.channels), _fmt_pair(i.rf_size), "-" if single else _fmt_pair(i.rf_stride),
                     f"{i.depth:.2f}",
                     f"{i.lambda_tv:g}"))
    widths = [max(len(h), *(len(r[c]) for r in rows)) if rows else len(h) for c, h in enumerate(head)]
    right = {0, 4, 5, 6, 7, 8}

    def line(cells):
        return "  ".join(c.rjust(w) if k in right else c.ljust(w) for k, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [f"{title}: {len(infos)} layers, input {size[0]}×{size[1]} RGB 0–255{mean_s}",
           "field/stride: receptive field size and stride in input pixels (padding counted, not "
           "clipped to the image); λ_TV: the paper's TV weight for the layer's depth",
           line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)
