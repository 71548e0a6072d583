"""Networks to invert, by name or by file: :func:`get_model`.

* ``caffenet``: the Caffe reference network, the paper's CNN-A (:mod:`preimage.models.caffenet`;
  ``weights=`` a safetensors/state-dict file, random weights with a warning otherwise);
* ``mobilenet_v2``, ``mobilenet_v2_tf2``, ``mobilenet_v1``, ``mobilenet_v1_small``: the quantised
  TFLite MobileNets, found on the model search path (:mod:`preimage.models.paths`: ``model_dir=``,
  ``PREIMAGE_MODELS``, the shared data, ``~/.cache/preimage/models``), run in float
  (:mod:`preimage.models.mobilenet`);
* a path to an ``.onnx`` file (:func:`load_onnx`, :mod:`preimage.models.onnx`) or a ``.tflite``
  file (:func:`~preimage.models.tflite.import_tflite`); a bare file name (or stem) is looked up on
  the search path too;
* ``package.module:factory``: the user's own network, ``factory()`` returning an ``nn.Module``
  (:mod:`preimage.models.python_models`; ``weights=`` a safetensors / weights-only torch file);
* ``torchvision:NAME`` (e.g. ``torchvision:alexnet``, ``torchvision:vgg16``,
  ``torchvision:resnet50``): torchvision classifiers with their ImageNet preprocessing, when
  torchvision is installed (:mod:`preimage.models.torchvision_models`).

Every model takes an RGB batch ``(B, 3, H, W)`` on 0–255 (its preprocessing is part of it:
:mod:`preimage.models.preprocess`), is in eval mode and has the attributes ``input_size``
``(H, W)`` and ``mean_pixel`` (RGB, 0–255). Pass it with a layer name to
:class:`preimage.representations.cnn.CNNLayer`; ``preimage layers MODEL`` lists the layers.
:func:`model_settings` is what results record about it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch import nn

from ..errors import PreimageError, UnknownNameError
from .onnx import load_onnx
from .paths import MODEL_SUFFIXES, ModelNotFoundError, describe_search_path, find_model_file
from .preprocess import Preprocessing, make_preprocessing, parse_input_size

__all__ = ["get_model", "load_onnx", "model_kind", "model_settings", "MODEL_NAMES", "TORCHVISION_PREFIX",
           "MOBILENET_MODEL_NAMES"]

MOBILENET_MODEL_NAMES = ("mobilenet_v2", "mobilenet_v2_tf2", "mobilenet_v1", "mobilenet_v1_small")
#: Valid model names; any ``torchvision:NAME`` is valid too when torchvision is installed, and so
#: are paths to .onnx/.tflite files and ``package.module:factory``.
MODEL_NAMES = ("caffenet",) + MOBILENET_MODEL_NAMES
TORCHVISION_PREFIX = "torchvision:"
#: Suffixes of weight files (checkpoints, state dicts): ``--model`` refuses them with a hint to ``--weights``.
WEIGHTS_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".pkl", ".pickle", ".h5", ".npz")


def model_kind(name) -> str:
    """What ``name`` names: ``"torchvision"``, ``"named"`` (caffenet, the MobileNets), ``"onnx"``,
    ``"tflite"`` (a path, existing or not, by its suffix or its first bytes), ``"factory"``
    (``package.module:factory``) or ``"unknown"``."""
    from .python_models import is_factory_spec
    raw = str(name).strip()
    key = raw.lower().replace("-", "_")
    if key.startswith(TORCHVISION_PREFIX):
        return "torchvision"
    if key in MODEL_NAMES:
        return "named"
    suffix = Path(raw).suffix.lower()
    if suffix in MODEL_SUFFIXES:
        return suffix[1:]
    if Path(raw).is_file():
        with open(raw, "rb") as f:
            head = f.read(8)
        return "tflite" if head[4:8] == b"TFL3" else "onnx"
    if is_factory_spec(raw):
        return "factory"
    return "unknown"


def _refuse_weights_file(raw: str) -> None:
    """A :class:`PreimageError` for a weights file given as the network (its suffix in
    :data:`WEIGHTS_SUFFIXES`): weights alone do not say the architecture, and this library never
    unpickles model files."""
    suffix = Path(raw).suffix.lower()
    if suffix in WEIGHTS_SUFFIXES:
        raise PreimageError(f"{raw}: a weights file ({suffix}), not a network. --model takes a model name, a "
                            ".onnx or .tflite file, or package.module:factory (a function returning the "
                            f"nn.Module); give these weights with --weights {raw}")


def _locate(raw: str, model_dir) -> Path:
    """A model file: the path itself when it exists, else a bare file name (or a stem, trying
    each suffix) found on the search path; a :class:`ModelNotFoundError` saying where it looked."""
    p = Path(raw).expanduser()
    if p.exists() or p.parent != Path("."):
        return p
    names = [raw] if p.suffix.lower() in MODEL_SUFFIXES else [raw + s for s in MODEL_SUFFIXES]
    for n in names:
        found = find_model_file(n, model_dir)
        if found is not None:
            return found
    where = describe_search_path(model_dir)
    if p.suffix.lower() in MODEL_SUFFIXES:
        raise ModelNotFoundError(f"model file {raw!r} not found in the current folder nor in: {where}")
    raise UnknownNameError(f"unknown model {raw!r}; valid names: {', '.join(MODEL_NAMES)}, "
                           f"{TORCHVISION_PREFIX}NAME (needs torchvision), a path to a .onnx/.tflite file, "
                           f"package.module:factory, or the name of a .onnx/.tflite file in: {where}")


def _preprocessing(preprocess) -> Preprocessing | None:
    """``preprocess`` (None, a preset name, a Preprocessing, or a mapping with ``preset``,
    ``order``, ``scale``, ``mean``, ``std``) → a Preprocessing or None."""
    if preprocess is None or isinstance(preprocess, Preprocessing):
        return preprocess
    if isinstance(preprocess, Mapping):
        opts = {k: v for k, v in preprocess.items() if v is not None}
        if not opts:
            return None
        return make_preprocessing(opts.pop("preset", None), **opts)
    return make_preprocessing(str(preprocess))


def _from_file(kind: str, path: Path, weights, prep, input_size, **kwargs) -> nn.Module:
    if weights is not None:
        raise PreimageError(f"{path}: a {kind} file holds its own weights; --weights/weights= is not supported")
    if kind == "onnx":
        overrides = {}
        if prep is not None:
            overrides = dict(order=prep.order, scale=prep.scale, mean=prep.mean, std=prep.std)
        return load_onnx(path, input_size=input_size, preprocess=prep.preset if prep else None, **overrides)
    from .tflite import import_tflite
    net = import_tflite(path, preprocessing=prep, **kwargs)
    if input_size is not None:
        net.input_size = parse_input_size(input_size)
    return net


def _from_factory(spec: str, weights, prep, input_size) -> nn.Module:
    from .python_models import load_factory, load_weights_into, with_preprocessing
    net = load_factory(spec)
    if weights is not None:
        load_weights_into(net, weights)
    prep = prep or make_preprocessing("torchvision")
    size = parse_input_size(input_size) if input_size is not None else \
        tuple(getattr(net, "input_size", None) or (224, 224))
    return with_preprocessing(net, make_preprocessing(prep, input_size=size), size)


def get_model(name: str, weights=None, *, model_dir=None, preprocess=None, input_size=None, **kwargs) -> nn.Module:
    """The network ``name`` names (see the module docstring), in eval mode.

    ``weights``: ``caffenet``: a ``.safetensors``/torch state-dict path (``None``: random weights,
    with a warning); ``torchvision:NAME``: torchvision's weights name (``None`` = ``"DEFAULT"``,
    ``"random"`` for untrained); ``package.module:factory``: a safetensors / weights-only torch
    state dict (keys and shapes must match); MobileNets and files: must be ``None``.
    ``model_dir``: folder(s) searched first for model files. ``preprocess``: for ONNX / float
    TFLite files and factories, a preset name (``caffe``, ``torchvision``, ``tf``, ``raw``), a
    :class:`~preimage.models.preprocess.Preprocessing` or a mapping (``preset``, ``order``,
    ``scale``, ``mean``, ``std``); default the file's own (metadata) or a documented default.
    ``input_size``: ``(H, W)`` to run at (required for ONNX files with a dynamic size).
    Extra keyword arguments go to the builder (e.g. ``mean_image=`` for CaffeNet,
    ``emulate_quantization=`` for the MobileNets and TFLite files). Unknown names raise
    :class:`~preimage.errors.UnknownNameError` listing the valid ones; a missing named file a
    :class:`~preimage.models.paths.ModelNotFoundError` saying where it looked and how to get it.
    """
    raw = str(name).strip()
    key = raw.lower().replace("-", "_")
    kind = model_kind(raw)
    prep = _preprocessing(preprocess)
    if prep is not None and kind in ("named", "torchvision"):
        raise PreimageError(f"model {raw!r} has its own fixed preprocessing; --preprocess and its options "
                            "apply to .onnx/.tflite files and package.module:factory models")
    if kind == "torchvision":
        from .torchvision_models import load_torchvision
        model = load_torchvision(raw[len(TORCHVISION_PREFIX):].strip(), weights=weights, **kwargs)
    elif key == "caffenet":
        from .caffenet import caffenet
        model = caffenet(weights=weights, **kwargs)
    elif key in MOBILENET_MODEL_NAMES:
        if weights is not None:
            raise ValueError(f"{key} reads its weights from its TFLite file; weights= is not supported")
        from .mobilenet import load_mobilenet
        model = load_mobilenet(key, model_dir=model_dir, **kwargs)
    elif kind == "factory":
        model = _from_factory(raw, weights, prep, input_size)
    else:
        _refuse_weights_file(raw)
        path = _locate(raw, model_dir)
        kind = model_kind(path)
        model = _from_file(kind, path, weights, prep, input_size, **kwargs)
    if input_size is not None and kind in ("named", "torchvision"):
        model.input_size = parse_input_size(input_size)
    for attr in ("input_size", "mean_pixel"):
        if not hasattr(model, attr):  # pragma: no cover - every builder sets them
            raise AttributeError(f"model {name!r} lacks the {attr!r} attribute")
    model.model_spec = raw
    return model.eval()


def model_settings(model: nn.Module) -> dict:
    """What a result records about ``model``: its spec (``--model``), source file, input size,
    mean pixel and preprocessing (a dict; for a quantised TFLite input, its scale)."""
    prep = getattr(model, "preprocessing", None)
    out = {"model": getattr(model, "model_spec", type(model).__name__),
           "input_size": list(getattr(model, "input_size", ()) or ()),
           "mean_pixel": [float(v) for v in (getattr(model, "mean_pixel", ()) or ())]}
    if getattr(model, "source", None):
        out["source"] = str(model.source)
    if isinstance(prep, Preprocessing):
        out["preprocessing"] = prep.settings()
    elif hasattr(model, "input_scale"):
        out["preprocessing"] = {"quantised_input": True, "input_scale": float(model.input_scale),
                                "mean_pixel": out["mean_pixel"]}
    return out

