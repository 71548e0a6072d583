"""The preprocessing an ONNX file asks for: from its metadata, else from its layout.

Read, in order:

1. ``metadata_props`` written by preimage or by hand: ``preprocess`` (a preset name of
   :data:`~preimage.models.preprocess.PRESETS`) and/or ``channel_order`` (RGB/BGR), ``scale``,
   ``mean``, ``std`` (numbers separated by commas);
2. the ONNX image metadata convention (``Image.BitmapPixelFormat``: ``Bgr8``/``Rgb8``;
   ``Image.NominalPixelRange``: ``NominalRange_0_255``, ``Normalized_0_1``, ``Normalized_1_1``);
3. the ONNX model zoo's Caffe conversions (unnamed nodes with ``blob_k`` outputs, a ``conv1``,
   LRN): the ``caffe`` preset (BGR, 0–255, minus the ILSVRC-12 mean pixel);
4. otherwise ``torchvision`` (RGB 0–1, ImageNet mean/std), the most common export, with a warning
   saying how to choose another.
"""

from __future__ import annotations

import warnings

from ..preprocess import PRESETS, Preprocessing, PreprocessingError, make_preprocessing
from .parse import OnnxError, OnnxSpec

__all__ = ["default_preprocessing", "resolve_preprocessing"]

_RANGES = {"nominalrange_0_255": ("raw", None), "normalized_0_1": ("raw", 1 / 255), "normalized_1_1": ("tf", None)}


def _from_props(meta: dict) -> Preprocessing | None:
    keys = {k.lower(): v for k, v in meta.items() if isinstance(v, str)}
    fields = {k: keys.get(k) for k in ("channel_order", "scale", "mean", "std")}
    preset = keys.get("preprocess") or keys.get("preprocessing")
    if preset is None and all(v is None for v in fields.values()):
        return None
    return make_preprocessing(preset, order=fields["channel_order"], scale=fields["scale"], mean=fields["mean"],
                              std=fields["std"])


def _from_image_convention(meta: dict) -> Preprocessing | None:
    fmt = meta.get("Image.BitmapPixelFormat")
    rng = meta.get("Image.NominalPixelRange")
    if fmt is None and rng is None:
        return None
    preset, scale = _RANGES.get(str(rng).lower(), ("raw", None))
    order = {"bgr8": "BGR", "rgb8": "RGB"}.get(str(fmt).lower())
    return make_preprocessing(preset, order=order, scale=scale)


def _looks_like_caffe(spec: OnnxSpec) -> bool:
    ops = {n.op for n in spec.nodes}
    unnamed = all(not n.name for n in spec.nodes)
    outs = {n.outputs[0] for n in spec.nodes if n.outputs}
    return unnamed and "LRN" in ops and any(o.startswith("conv1_") for o in outs)


def default_preprocessing(spec: OnnxSpec) -> tuple[Preprocessing, str]:
    """The file's own preprocessing and where it comes from (``"metadata"``, ``"Caffe layout"``,
    ``"default"``); see the module docstring."""
    try:
        found = _from_props(spec.metadata) or _from_image_convention(spec.metadata)
    except PreprocessingError as exc:
        raise OnnxError(f"{spec.source}: unusable preprocessing metadata ({exc})") from None
    if found is not None:
        return found, "metadata"
    if _looks_like_caffe(spec):
        return PRESETS["caffe"], "Caffe layout"
    return PRESETS["torchvision"], "default"


def resolve_preprocessing(spec: OnnxSpec, preset=None, **overrides) -> Preprocessing:
    """The preprocessing to build with: ``preset`` (name or :class:`Preprocessing`) and
    ``overrides`` (``order``, ``scale``, ``mean``, ``std``) over the file's own
    (:func:`default_preprocessing`), with ``input_size`` recorded. Warns when nothing was given
    and the file says nothing either."""
    given = {k: v for k, v in overrides.items() if v is not None}
    base, why = default_preprocessing(spec)
    if preset is None and not given and why == "default":
        warnings.warn(f"{spec.source}: the file does not say how to preprocess images; assuming 'torchvision' "
                      "(RGB 0–1, ImageNet mean/std). Choose with --preprocess caffe|torchvision|tf|raw "
                      "(or preprocess=…).", stacklevel=3)
    prep = make_preprocessing(preset, default=base, **given)
    return make_preprocessing(prep, input_size=(spec.input_shape[2], spec.input_shape[3]))
