"""Networks to invert, by name: :func:`get_model`.

* ``caffenet``: the Caffe reference network, the paper's CNN-A (:mod:`preimage.models.caffenet`;
  ``weights=`` a safetensors/state-dict file, random weights with a warning otherwise);
* ``mobilenet_v2``, ``mobilenet_v2_tf2``, ``mobilenet_v1``, ``mobilenet_v1_small``: the quantised
  TFLite MobileNets of the shared data, run in float (:mod:`preimage.models.mobilenet`);
* ``torchvision:NAME`` (e.g. ``torchvision:alexnet``, ``torchvision:vgg16``,
  ``torchvision:resnet50``): torchvision classifiers with their ImageNet preprocessing, when
  torchvision is installed (:mod:`preimage.models.torchvision_models`).

Every model takes an RGB batch ``(B, 3, H, W)`` on 0–255, is in eval mode and has the attributes
``input_size`` ``(H, W)`` and ``mean_pixel`` (RGB, 0–255). Pass it with a layer name to
:class:`preimage.representations.cnn.CNNLayer`; ``preimage layers MODEL`` lists the layers.
"""

from __future__ import annotations

from torch import nn

from ..errors import UnknownNameError

__all__ = ["get_model", "MODEL_NAMES", "TORCHVISION_PREFIX", "MOBILENET_MODEL_NAMES"]

MOBILENET_MODEL_NAMES = ("mobilenet_v2", "mobilenet_v2_tf2", "mobilenet_v1", "mobilenet_v1_small")
#: Valid model names; any ``torchvision:NAME`` is valid too when torchvision is installed.
MODEL_NAMES = ("caffenet",) + MOBILENET_MODEL_NAMES
TORCHVISION_PREFIX = "torchvision:"


def get_model(name: str, weights=None, **kwargs) -> nn.Module:
    """The network called ``name`` (see the module docstring), in eval mode.

    ``weights``: ``caffenet``: a ``.safetensors``/torch state-dict path (``None``: random weights,
    with a warning); ``torchvision:NAME``: torchvision's weights name (``None`` = ``"DEFAULT"``,
    ``"random"`` for untrained); MobileNets: must be ``None`` (their weights are the shared TFLite
    files). Extra keyword arguments go to the builder (e.g. ``mean_image=`` for CaffeNet,
    ``emulate_quantization=`` for the MobileNets). Unknown names raise
    :class:`~preimage.errors.UnknownNameError` listing the valid ones.
    """
    raw = str(name).strip()
    key = raw.lower().replace("-", "_")
    if key.startswith(TORCHVISION_PREFIX):
        from .torchvision_models import load_torchvision
        model = load_torchvision(raw[len(TORCHVISION_PREFIX):].strip(), weights=weights, **kwargs)
    elif key == "caffenet":
        from .caffenet import caffenet
        model = caffenet(weights=weights, **kwargs)
    elif key in MOBILENET_MODEL_NAMES:
        if weights is not None:
            raise ValueError(f"{key} reads its weights from the shared TFLite file; weights= is not supported")
        from .mobilenet import load_mobilenet
        model = load_mobilenet(key, **kwargs)
    else:
        raise UnknownNameError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}, "
                               f"{TORCHVISION_PREFIX}NAME (e.g. torchvision:alexnet, torchvision:vgg16, "
                               "torchvision:resnet50; needs torchvision)")
    for attr in ("input_size", "mean_pixel"):
        if not hasattr(model, attr):  # pragma: no cover - every builder sets them
            raise AttributeError(f"model {name!r} lacks the {attr!r} attribute")
    return model.eval()
