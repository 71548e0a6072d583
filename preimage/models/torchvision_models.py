"""torchvision classifiers as preimage models (``torchvision:NAME``), imported only when asked.

torchvision is an optional dependency (``pip install 'preimage[torchvision]'`` on a machine whose
torch has a matching torchvision build). :func:`load_torchvision` builds the model with
torchvision's own weights API (``weights="DEFAULT"``, a weights enum member name such as
``"IMAGENET1K_V1"``, or ``"ResNet50_Weights.IMAGENET1K_V2"``; ``"random"`` for untrained weights),
then :func:`wrap_imagenet` puts the ImageNet preprocessing in front of it, so the result takes RGB
``(B, 3, H, W)`` on 0–255 like every preimage model: ``x / 255``, then ``(x - mean) / std``.

When the network can be traced with ``torch.fx`` the result is a ``GraphModule`` with the
preprocessing nodes inserted after the input: layer names are the torchvision module names
(``features.0``, ``layer3.5.conv2``, ``layer4`` …). Otherwise the model is wrapped in
:class:`ImageNetModel` (layer names prefixed with ``net.``).
"""

from __future__ import annotations

import operator
import warnings
from typing import Sequence

import torch
import torch.fx as fx
from torch import nn

from ..errors import PreimageError, UnknownNameError
from .fx import layer_names_of

__all__ = ["TorchvisionMissingError", "load_torchvision", "wrap_imagenet", "ImageNetModel",
           "IMAGENET_MEAN", "IMAGENET_STD", "torchvision_model_names"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MISSING = ("torchvision is not installed; pip install 'preimage[torchvision]' on a machine with a "
            "matching torch")


class TorchvisionMissingError(PreimageError, ImportError):
    """torchvision is needed for ``torchvision:NAME`` models but cannot be imported."""


def _torchvision():
    try:
        import torchvision
    except ImportError as e:
        raise TorchvisionMissingError(_MISSING) from e
    except Exception as e:  # e.g. a torchvision built for another torch fails while registering ops
        raise TorchvisionMissingError(f"{_MISSING} (importing it failed: {type(e).__name__}: {e})") from e
    return torchvision


def torchvision_model_names() -> list[str]:
    """torchvision's classification model names (needs torchvision)."""
    tv = _torchvision()
    try:
        return list(tv.models.list_models(module=tv.models))
    except TypeError:
        return list(tv.models.list_models())


class ImageNetModel(nn.Module):
    """Fallback wrapper for networks fx cannot trace: RGB 0–255 → ``net((x/255 - mean)/std)``."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.net = net
        self.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, H, W)`` RGB on 0–255 → the network's output."""
        return self.net((x / 255.0 - self.input_mean) / self.input_std)


def wrap_imagenet(net: nn.Module, input_size: tuple[int, int] = (224, 224),
                  mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                  num_classes: int | None = None) -> nn.Module:
    """``net`` (expecting normalised RGB) → a model taking RGB ``(B, 3, H, W)`` on 0–255.

    ``mean``/``std``: per-channel on the 0–1 scale. The result is in eval mode and has
    ``input_size``, ``mean_pixel`` (``255·mean``), ``num_classes`` and, when traced,
    ``layer_names`` (the network's own layers, the preprocessing left out).
    """
    net = net.eval()
    try:
        gm = fx.symbolic_trace(net)
    except Exception:  # data-dependent control flow etc.: hook-based layers only
        model: nn.Module = ImageNetModel(net, mean, std)
    else:
        gm.register_buffer("input_mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        gm.register_buffer("input_std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        g = gm.graph
        ph = next(n for n in g.nodes if n.op == "placeholder")
        with g.inserting_after(ph):
            m = g.get_attr("input_mean")
        with g.inserting_after(m):
            s = g.get_attr("input_std")
        with g.inserting_after(s):
            scaled = g.call_function(operator.truediv, (ph, 255.0))
        with g.inserting_after(scaled):
            centred = g.call_function(operator.sub, (scaled, m))
        with g.inserting_after(centred):
            normed = g.call_function(operator.truediv, (centred, s))
        ph.replace_all_uses_with(normed, delete_user_cb=lambda n: n is not scaled)
        g.lint()
        gm.recompile()
        names = layer_names_of(g)[0]
        pre = {scaled, centred, normed}
        gm.layer_names = [k for k, n in names.items() if n not in pre]
        model = gm
    model.input_size = (int(input_size[0]), int(input_size[1]))
    model.mean_pixel = tuple(255.0 * float(v) for v in mean)
    model.num_classes = num_classes
    return model.eval()


def load_torchvision(name: str, weights: str | None = "DEFAULT") -> nn.Module:
    """torchvision classifier ``name`` (e.g. ``alexnet``, ``vgg16``, ``resnet50``) wrapped by
    :func:`wrap_imagenet`: RGB ``(B, 3, H, W)`` on 0–255 → logits ``(B, num_classes)``.

    ``weights``: ``"DEFAULT"`` (also for ``None``), a weights enum member name, or ``"random"``
    (untrained, with a warning). Input size and normalisation come from the weights' transforms.
    Raises :class:`TorchvisionMissingError` without torchvision and
    :class:`~preimage.errors.UnknownNameError` for unknown model or weights names.
    """
    tv = _torchvision()
    models = tv.models
    valid = torchvision_model_names()
    if name not in valid:
        raise UnknownNameError(f"unknown torchvision model {name!r}; valid names: "
                               + ", ".join(f"torchvision:{n}" for n in valid))
    w = None
    if weights is None or str(weights).lower() not in ("random", "none"):
        enum = models.get_model_weights(name)
        key = "DEFAULT" if weights is None else str(weights)
        try:
            w = enum.verify(key)
        except (KeyError, ValueError, TypeError):
            choices = ["DEFAULT"] + [m.name for m in enum]
            raise UnknownNameError(f"unknown weights {weights!r} for torchvision:{name}; valid: "
                                   + ", ".join(choices) + ", random") from None
    else:
        warnings.warn(f"torchvision:{name} has random weights: reconstructions from it are meaningless",
                      stacklevel=2)
    net = models.get_model(name, weights=w)
    size, mean, std, ncls = (224, 224), IMAGENET_MEAN, IMAGENET_STD, None
    if w is not None:
        try:
            t = w.transforms()
            crop = getattr(t, "crop_size", None)
            if crop:
                size = (int(crop[0]), int(crop[-1]))
            mean = tuple(getattr(t, "mean", mean))
            std = tuple(getattr(t, "std", std))
        except Exception:
            pass
        cats = (getattr(w, "meta", None) or {}).get("categories")
        ncls = len(cats) if cats else None
    model = wrap_imagenet(net, size, mean, std, num_classes=ncls)
    model.weights_name = None if w is None else f"{type(w).__name__}.{w.name}"
    return model
