"""The ``visualize`` unit kind: activation maximisation and caricatures in the experiments
(:mod:`preimage.visualize`), its parameters (:func:`visualize_params`) and its computation
(:func:`run_visualize_unit`, called by :mod:`.units` on a worker).

A unit is one batched :func:`preimage.visualize.visualize` (or :func:`~preimage.visualize.caricature`)
call on one layer of a network:

* ``what="channels"``: the mean of each channel in ``units`` maximised, images ``size``² (``None``:
  the network's input size);
* ``what="classes"``: each class logit in ``units`` (label indices of
  :func:`preimage.models.classify.imagenet_labels`) maximised at the network's input size, the image
  classified afterwards (top-1 in the metrics);
* ``what="caricature"``: the caricatures of the eval ``images`` (cropped to ``size``; ``None``: to
  the network's input size, squashed when that is not square).

Pictures: ``original_n{i}`` (caricatures) and ``recon_n{i}_r0_k0`` (the i-th unit's image), named by
:func:`preimage.io.artefacts.picture_name`.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .base import cnn_rep

__all__ = ["visualize_params", "run_visualize_unit", "WHAT"]

#: The three kinds of visualisation a unit can make.
WHAT = ("channels", "classes", "caricature")


def visualize_params(experiment: str, model: str, layer: str, *, what: str, size: int | None,
                     iterations: int | None, units: Sequence[int] = (), images: Sequence[str] = (),
                     param: str | None = None, seed: int = 0, model_options: dict | None = None) -> dict:
    """Parameters of a ``visualize`` unit (see the module docstring). ``iterations`` ``None``:
    :data:`preimage.visualize.ITERATIONS`; ``param`` ``None``: the function's default;
    ``model_options``: how the network loads (:func:`.base.cnn_rep`)."""
    if what not in WHAT:
        raise ValueError(f"what must be one of {WHAT}, not {what!r}")
    if (what == "caricature") != bool(images) or (what != "caricature" and not units):
        raise ValueError("a caricature unit needs images (and no units), the others units")
    return {"experiment": experiment, "kind": "visualize", "rep": cnn_rep(model, layer, model_options), "what": what,
            "units": [int(u) for u in units], "images": list(images), "size": size, "iterations": iterations,
            "param": param, "seed": int(seed)}


def _objective(p: dict):
    """The channel or class objective of a unit."""
    from ..objectives import channel, class_logit
    if p["what"] == "channels":
        return channel(p["units"])
    from ..models.classify import imagenet_labels
    labels = imagenet_labels()
    return class_logit(p["units"], labels=[labels[k].split(",")[0] for k in p["units"]])


def run_visualize_unit(p: dict) -> dict:
    """Compute a ``visualize`` unit: metrics (scores reached and at the start, scales, labels,
    top-1 of class images), pictures, tensors (the images)."""
    from ..io.artefacts import picture_name
    from ..io.images import to_uint8
    from ..visualize import ITERATIONS, caricature, visualize
    from .units import representation, unit_device
    device = unit_device()
    size = p["size"]
    rep = representation(p["rep"], "crop" if size else "native", size).to(device)
    kw = dict(iterations=p["iterations"] or ITERATIONS, seed=p["seed"], progress=False, device=device,
              **({"param": p["param"]} if p.get("param") else {}))
    pngs = {}
    if p["what"] == "caricature":
        images = torch.stack([_caricature_image(n, size, rep.input_size).clamp(0, 255) for n in p["images"]])
        vis = caricature(rep, images, **kw)
        pngs.update({picture_name("original", i): to_uint8(im) for i, im in enumerate(images)})
    else:
        shape = (3, size, size) if size else None
        vis = visualize(rep, _objective(p), image_shape=shape, **kw)
    pngs.update({picture_name("recon", i): to_uint8(im) for i, im in enumerate(vis.images)})
    metrics = {"labels": vis.labels, "scores": vis.scores.tolist(), "start_scores": vis.start_scores.tolist(),
               "scales": vis.scales.tolist(), "settings": vis.settings, "device": device}
    if p["what"] == "classes":
        from ..models.classify import classify
        top = classify(vis.images.round(), _network(p), topk=1, preprocessed=True)
        metrics["top1"] = [{"index": t[0][0], "label": t[0][1], "probability": t[0][2]} for t in top]
    return {"metrics": metrics, "pngs": pngs, "tensors": {"images": {"images": vis.images.float()}},
            "timings": {"optimisation_seconds": vis.seconds}}


def _caricature_image(name: str, size: int | None, input_size) -> torch.Tensor:
    """Eval image ``name`` on 0–255 for a caricature: ``(3, size, size)`` cropped, or with ``size``
    ``None`` ``(3, H, W)`` for the network's ``input_size`` (224² when unknown; cropped when square,
    else squashed)."""
    from .units import load_unit_image
    if size:
        return load_unit_image(name, "rgb", "crop", size)
    h, w = tuple(input_size or (224, 224))
    return load_unit_image(name, "rgb", "crop", h) if h == w else load_unit_image(name, "rgb", "squash", (h, w))


def _network(p: dict):
    """The unit's whole network (for classifying class images), on the CPU copy of :mod:`.units`."""
    from .units import network
    return network(p["rep"]["model"], "structure", p["rep"].get("model_options"))
