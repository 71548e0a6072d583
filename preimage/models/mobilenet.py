"""The ImageNet MobileNets shipped in the shared data (``models/*.tflite``), by name.

``load_mobilenet(name)`` imports the quantised TensorFlow Lite file(s) as a float
:class:`~preimage.models.tflite.TFLiteNet` (a ``torch.fx`` GraphModule mapping ``(B, 3, H, W)`` RGB
on 0–255 to ``(B, 1001)`` softmax probabilities; label 0 is background). Parsing is cached per
name; every call returns a fresh module with its own copy of the weights, so callers may modify it.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import UnknownNameError
from .paths import named_model_files
from .tflite import TFLiteNet, TFLiteSpec, build_net, parse_tflite

__all__ = ["MOBILENETS", "MOBILENET_NAMES", "load_mobilenet", "mobilenet_files"]

#: name → (files under shared/models, run in sequence; description)
MOBILENETS: dict[str, tuple[tuple[str, ...], str]] = {
    "mobilenet_v2": (("mobilenet_v2_1.0_224_quant.tflite",),
                     "MobileNet v2 1.0, 224×224, TF1 quantisation-aware training, uint8 per tensor"),
    "mobilenet_v2_tf2": (("tf2_mobilenet_v2_1.0_224_ptq.tflite",),
                         "MobileNet v2 1.0, 224×224, TF2 post-training quantisation, int8 per channel "
                         "(uint8 input/output)"),
    "mobilenet_v1": (("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
                      "mobilenet_quant_v1_224_head_layers.tflite"),
                     "MobileNet v1 1.0, 224×224, uint8 per tensor (embedding extractor + head, composed)"),
    "mobilenet_v1_small": (("mobilenet_v1_0.25_128_quant.tflite",),
                           "MobileNet v1 0.25, 128×128, uint8 per tensor"),
}

MOBILENET_NAMES = tuple(MOBILENETS)


def _key(name: str) -> str:
    key = str(name).lower().strip().replace("-", "_")
    if key not in MOBILENETS:
        raise UnknownNameError(f"unknown model {name!r}; valid names: {', '.join(MOBILENET_NAMES)}")
    return key


def mobilenet_files(name: str, model_dir=None) -> list:
    """The .tflite paths of a named model, found on the model search path
    (:func:`preimage.models.paths.search_path`; ``model_dir``: extra folder(s) searched first).
    Raises UnknownNameError / :class:`~preimage.models.paths.ModelNotFoundError` (where it looked,
    how to get the file)."""
    return named_model_files(_key(name), model_dir)


@lru_cache(maxsize=None)
def _spec_of(paths: tuple) -> TFLiteSpec:
    return parse_tflite(list(paths))


def _spec(key: str, model_dir=None) -> TFLiteSpec:
    return _spec_of(tuple(str(p) for p in mobilenet_files(key, model_dir)))


def load_mobilenet(name: str, emulate_quantization: bool = False, model_dir=None) -> TFLiteNet:
    """A fresh float MobileNet by name (see :data:`MOBILENETS`), in eval mode.

    Args:
        name: ``mobilenet_v2``, ``mobilenet_v2_tf2``, ``mobilenet_v1`` or ``mobilenet_v1_small``.
        emulate_quantization: fake-quantise activations as the TFLite interpreter does.
        model_dir: extra folder(s) searched first for the files (see :mod:`preimage.models.paths`).

    Returns:
        :class:`TFLiteNet`: ``(B, 3, H, W)`` RGB on 0–255 (``H, W = net.input_size``) →
        ``(B, 1001)`` probabilities. Parsing is cached; the module and its weights are new.

    Raises:
        UnknownNameError: unknown name (the message lists the valid ones).
        ModelNotFoundError: a file is on none of the search path's folders.
    """
    return build_net(_spec(_key(name), model_dir), emulate_quantization)
