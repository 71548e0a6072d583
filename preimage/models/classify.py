"""ImageNet classification with the imported MobileNets (labels, preprocessing, top-k).

Preprocessing follows the usual ImageNet evaluation: resize the shorter side to
``round(size · 256 / 224)`` (bilinear, antialiased), then take the central ``size × size`` crop
(:func:`preimage.io.images.resize_and_crop`). The networks
(:class:`preimage.models.tflite.TFLiteNet`) take those pixels on 0–255 and apply their own input
quantisation, so nothing else is needed.

Label indices are those of ``imagenet_labels.txt``: 0 is "background", ImageNet class ``k``
(0-based, ILSVRC-12 synset order, ``synsets.txt`` line ``k``) is label ``k + 1``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from ..data import require_shared
from ..io.images import load_image, resize_and_crop

__all__ = ["imagenet_labels", "imagenet_synsets", "synset_class_index", "preprocess_for_classification",
           "load_for_classification", "classify", "classify_files", "format_predictions"]


@lru_cache(maxsize=1)
def _labels() -> tuple[str, ...]:
    lines = require_shared("models", "imagenet_labels.txt").read_text(encoding="utf-8").splitlines()
    labels = tuple(line.strip() for line in lines if line.strip())
    if len(labels) != 1001:
        raise ValueError(f"imagenet_labels.txt has {len(labels)} entries, expected 1001")
    return labels


def imagenet_labels() -> list[str]:
    """The 1001 label names (index 0 = ``background``, then the ILSVRC-12 classes in synset order)."""
    return list(_labels())


@lru_cache(maxsize=1)
def _synsets() -> dict[str, int]:
    lines = require_shared("data", "imagenet-sample", "synsets.txt").read_text(encoding="utf-8").splitlines()
    ids = [line.split()[0] for line in lines if line.strip()]
    return {s: k for k, s in enumerate(ids)}


def imagenet_synsets() -> list[str]:
    """The 1000 ILSVRC-12 synset ids in class order (``synsets.txt``)."""
    table = _synsets()
    return sorted(table, key=table.get)


def synset_class_index(path: str | Path) -> int | None:
    """The label index (1…1000, as in :func:`imagenet_labels`) of an image whose file name starts
    with its synset id (``n01440764_tench.JPEG`` → 1), or ``None`` when the name has none."""
    stem = Path(path).name
    synset = stem.split("_")[0].split(".")[0]
    k = _synsets().get(synset)
    return None if k is None else k + 1


def preprocess_for_classification(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """ImageNet evaluation crop.

    Args:
        image: ``(3, H, W)`` (or ``(B, 3, H, W)``) float on 0–255.
        size: crop side (an int, or ``(h, w)`` whose larger side sets the resize).

    Returns:
        ``(3, size, size)`` (or ``(B, 3, size, size)``) float32 on 0–255 (not rounded): the shorter
        side resized to ``round(size · 256 / 224)`` with antialiased bilinear interpolation, then
        the centre crop (:func:`preimage.io.images.resize_and_crop`).
    """
    th, tw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    x = image if image.dim() == 4 else image[None]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected an RGB image (3, H, W) or batch (B, 3, H, W), got {tuple(image.shape)}")
    short = round(max(th, tw) * 256 / 224)
    # clamped again: resize_and_crop leaves an image already at the resize size untouched
    x = resize_and_crop(x.float(), (th, tw), short_side=short).clamp(0.0, 255.0)
    return x if image.dim() == 4 else x[0]


def load_for_classification(paths: Sequence[str | Path], size: int | tuple[int, int]) -> torch.Tensor:
    """Image files → ``(N, 3, h, w)`` integer-valued pixels on 0–255: each file's evaluation crop
    (:func:`preprocess_for_classification`), rounded as a uint8 interpreter is fed."""
    return torch.stack([preprocess_for_classification(load_image(p), size).round() for p in paths])


def _batch(images, net, preprocessed: bool) -> torch.Tensor:
    size = tuple(net.input_size)
    items = [images] if torch.is_tensor(images) and images.dim() == 3 else list(images)
    out = []
    for im in items:
        if not preprocessed:
            im = preprocess_for_classification(im, size)
        elif tuple(im.shape[-2:]) != size:
            raise ValueError(f"preprocessed images must be {size}, got {tuple(im.shape[-2:])}")
        out.append(im)
    return torch.stack(out) if out else torch.zeros(0, 3, *size)


@torch.no_grad()
def classify(images, net, topk: int = 5, preprocessed: bool = False,
             batch_size: int = 16) -> list[list[tuple[int, str, float]]]:
    """Top-k ImageNet predictions.

    Args:
        images: ``(B, 3, H, W)`` tensor or a sequence of ``(3, H, W)`` tensors, RGB on 0–255, any
            size (each is resized and centre-cropped to ``net.input_size`` with
            :func:`preprocess_for_classification`, unless ``preprocessed``).
        net: a classifier whose output is ``(B, 1001)`` probabilities (e.g. from
            :func:`preimage.models.mobilenet.load_mobilenet`).
        topk: how many predictions per image.
        preprocessed: the images are already ``net.input_size`` crops.
        batch_size: images per forward pass.

    Returns:
        per image, ``topk`` tuples ``(label index, label name, probability)``, most probable first.
    """
    labels = _labels()
    x = _batch(images, net, preprocessed)
    results = []
    for i in range(0, x.shape[0], batch_size):
        probs = net(x[i:i + batch_size])
        probs = probs.flatten(1) if probs.dim() == 4 and probs.shape[2:] == (1, 1) else probs
        if probs.dim() != 2 or probs.shape[1] not in (len(labels), len(labels) - 1):
            raise ValueError(f"the network outputs {tuple(probs.shape)}, expected (B, {len(labels)}) or "
                             f"(B, {len(labels) - 1}) ImageNet scores")
        shift = 1 if probs.shape[1] == len(labels) - 1 else 0  # 1000 classes: no background label
        if probs.min() < 0 or not torch.allclose(probs.sum(1), torch.ones(probs.shape[0]), atol=1e-3):
            probs = torch.softmax(probs, dim=1)  # logits
        p, idx = probs.topk(min(topk, probs.shape[1]), dim=1)
        for pr, ix in zip(p.tolist(), idx.tolist()):
            results.append([(int(j) + shift, labels[j + shift], float(q)) for j, q in zip(ix, pr)])
    return results


def classify_files(paths: Sequence[str | Path], model_name: str = "mobilenet_v2", topk: int = 5,
                   emulate_quantization: bool = False, net=None) -> list[dict]:
    """Classify image files with a named MobileNet, or with ``net`` (any model of
    :func:`preimage.models.get_model` giving 1001 or 1000 ImageNet scores; ``model_name`` then
    only labels the results) (``preimage classify``).

    Returns one dict per file: ``path``, ``model``, ``predictions`` (list of ``{"index", "label",
    "probability"}``, most probable first) and ``true_index`` / ``true_label`` when the file name
    starts with a known synset id (else ``None``). Raises
    :class:`preimage.errors.ImageReadError` for unreadable images and
    :class:`preimage.errors.UnknownNameError` for an unknown model.
    """
    from .mobilenet import load_mobilenet

    if net is None:
        net = load_mobilenet(model_name, emulate_quantization=emulate_quantization)
    labels = _labels()
    images = [load_image(p, mode="rgb") for p in paths]
    preds = classify(images, net, topk=topk)
    out = []
    for p, pr in zip(paths, preds):
        try:
            true = synset_class_index(p)
        except FileNotFoundError:
            true = None
        out.append({
            "path": str(p),
            "model": model_name,
            "predictions": [{"index": i, "label": name, "probability": q} for i, name, q in pr],
            "true_index": true,
            "true_label": labels[true] if true is not None else None,
        })
    return out


def format_predictions(results: list[dict]) -> str:
    """Human-readable text for :func:`classify_files` results: per file a header line, then one
    line per prediction (``  1. 0.873  tench, Tinca tinca  [1]``), ``*`` marking the true class."""
    lines = []
    for r in results:
        head = f"{r['path']} ({r['model']})"
        if r.get("true_label") is not None:
            head += f"  true: {r['true_label']} [{r['true_index']}]"
        lines.append(head)
        for k, p in enumerate(r["predictions"], 1):
            mark = " *" if p["index"] == r.get("true_index") else ""
            lines.append(f"  {k}. {p['probability']:.3f}  {p['label']}  [{p['index']}]{mark}")
    return "\n".join(lines)
