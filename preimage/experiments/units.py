"""Computing units (on a Dask worker, inline, or for :mod:`preimage.evaluate`).

:func:`run_unit` computes one unit from its parameters alone (see :mod:`.base` for the kinds and
their parameters) and returns its metrics, pictures and tensors. It imports nothing from the
runner or the store, so it runs on any worker that has the package and the shared data
(``PREIMAGE_DATA``). Networks and representations are built once per process (:func:`representation`).

Every image a unit reads goes through :func:`load_unit_image`, the one preprocessing of the
experiments (``native``, ``squash`` or ``crop``, a unit parameter).
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..invert import invert
from ..image_metrics import image_similarities
from . import scoring

__all__ = ["run_unit", "load_unit_image", "image_path", "representation", "network", "unit_device"]

_CACHE: dict[tuple, Any] = {}


def _cached(key: tuple, make: Callable[[], Any]) -> Any:
    """``make()`` once per process and ``key``."""
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------

def image_path(image: str) -> Path:
    """An image of a unit: an absolute path as given, else a file name in the shared eval set."""
    p = Path(image)
    if p.is_absolute():
        return p
    from ..data import require_shared
    return require_shared("data", "imagenet-sample", "eval", image)


def load_unit_image(image: str, mode: str, preprocess: str, size) -> torch.Tensor:
    """Image ``image`` (:func:`image_path`) as ``(C, H, W)`` on 0–255, preprocessed.

    ``mode``: ``"grey"`` (BT.601) or ``"rgb"``. ``preprocess``: ``"native"`` (the file's size;
    ``size`` an optional longest-side limit, :func:`preimage.io.images.limit_side`), ``"squash"``
    (resized to ``size = (H, W)``, aspect not kept, :func:`preimage.io.images.resize`) or
    ``"crop"`` (shorter side to ``size = S``, centre S×S crop, :func:`preimage.io.images.resize_and_crop`).
    """
    from ..io.images import limit_side, load_image, resize, resize_and_crop
    img = load_image(image_path(image), mode=mode)
    if preprocess == "native":
        return limit_side(img, size)
    if preprocess == "squash":
        return resize(img, tuple(size))
    if preprocess == "crop":
        return resize_and_crop(img, int(size))
    raise ValueError(f"unknown preprocessing {preprocess!r} (native, squash, crop)")


def _load_batch(names: Sequence[str], mode: str, preprocess: str, size) -> torch.Tensor:
    """``(N, C, H, W)`` of images that share one size after preprocessing."""
    imgs = [load_unit_image(n, mode, preprocess, size) for n in names]
    shapes = {tuple(i.shape) for i in imgs}
    if len(shapes) != 1:
        raise ValueError(f"a unit's images must share one size, got {sorted(shapes)}")
    return torch.stack(imgs)


# ----------------------------------------------------------------------------------------------
# Networks and representations
# ----------------------------------------------------------------------------------------------

def _options_key(options: dict | None) -> str | None:
    """A hashable form of a unit's model options (for the per-process caches)."""
    return json.dumps(options, sort_keys=True) if options else None


def network(name: str, purpose: str = "compute", options: dict | None = None):
    """The named network, loaded with ``options`` (a unit's model options,
    :func:`.base.unit_model_options`: keyword arguments of :func:`preimage.models.get_model`),
    cached per process; ``purpose="structure"`` gives a separate copy that stays on the CPU (graph
    tracing, layer listings) whatever device the units compute on."""
    def make():
        from ..models import get_model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_model(name, **(options or {}))
    return _cached(("model", name, purpose, _options_key(options)), make)


def _input_size(preprocess: str, size) -> tuple[int, int] | None:
    """The input size a network layer is built for: the preprocessed image's, or None (its own)."""
    if preprocess == "crop":
        return int(size), int(size)
    if preprocess == "squash":
        return int(size[0]), int(size[1])
    return None


def representation(rep: dict, preprocess: str = "native", size=None):
    """The representation of a ``rep`` parameter (:func:`.base.shallow_rep`, :func:`.base.cnn_rep`,
    a network layer's with its ``model_options`` when it has them) for images preprocessed as
    given, built once per process."""
    if rep["type"] == "shallow":
        from ..representations import get_representation
        return _cached(("shallow", rep["name"]), lambda: get_representation(rep["name"]))
    from ..representations.cnn import CNNLayer
    input_size = _input_size(preprocess, size)

    options = rep.get("model_options")

    def make():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return CNNLayer(network(rep["model"], options=options), rep["layer"], input_size=input_size)
    return _cached(("cnn", rep["model"], rep["layer"], input_size, _options_key(options)), make)


def unit_device() -> str:
    """Where units compute: ``$PREIMAGE_DEVICE``, else CUDA when available, else the CPU (not a
    unit parameter: results agree across devices up to float rounding)."""
    return os.environ.get("PREIMAGE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def _rep_info(rep_obj) -> dict:
    """Depth, channels, code shape and receptive field of a network layer (empty for shallow ones)."""
    from ..representations.cnn import CNNLayer
    if not isinstance(rep_obj, CNNLayer):
        return {}
    rf = rep_obj.receptive_field
    return {"layer_depth": float(rep_obj.relative_depth), "channels": int(rep_obj.info.channels),
            "code_shape": list(rep_obj.output_shape or []),
            "rf_size": [float(v) for v in rf.total_size] if rf is not None else None}


# ----------------------------------------------------------------------------------------------
# The unit kinds
# ----------------------------------------------------------------------------------------------

def _lambdas(p: dict, shape: tuple) -> tuple[list[float], list[float] | None]:
    """``(λ_V list, λ_α list or None)`` passed to invert for the unit's ``lambda_scaling``."""
    if p.get("lambda_scaling", "image") == "none":
        return list(p["lambda_tv"]), None
    from ..objective import default_lambdas
    pairs = [default_lambdas(shape, p["alpha"], p["beta"], lambda_tv_reference=v) for v in p["lambda_tv"]]
    return [t for _, t in pairs], [a for a, _ in pairs]


def _pictures(p: dict, rep, res, images: torch.Tensor, metrics: dict) -> dict[str, np.ndarray]:
    """The unit's PNGs (:func:`preimage.io.artefacts.inversion_pictures`) as uint8 arrays."""
    from ..io.artefacts import inversion_pictures
    from ..io.images import to_uint8
    save = p.get("save", "all")
    if save == "none":
        return {}
    box = None
    if p.get("box"):
        box = rep.receptive_field_box(int(metrics.get("window") or p.get("window") or 5))
        metrics["box"] = list(box) if box is not None else None  # (top, left, bottom, right), exclusive
    pics = inversion_pictures(res, images, code_picture=rep.render_code if p.get("code_picture") else None,
                              box=box, images=range(len(images)) if save == "all" else range(1))
    return {name: to_uint8(t) for name, t in pics.items()}


def _unit_invert(p: dict) -> dict:
    """One batched inversion: distances and errors per (image, restart, setting), pictures."""
    from ..masks import code_mask
    device = unit_device()
    rep = representation(p["rep"], p["preprocess"], p["size"]).to(device)
    images = _load_batch(p["images"], p["mode"], p["preprocess"], p["size"])
    shape = tuple(images.shape[1:])
    lam_tv, lam_alpha = _lambdas(p, shape)
    mask, window = None, p.get("window")
    if window or p.get("channels"):
        with torch.no_grad():
            code_shape = tuple(rep(images[:1].to(device)).shape[1:])
        if window and len(code_shape) == 3:
            window = min(int(window), *code_shape[1:])  # a map smaller than the window: all of it
        mask = code_mask(code_shape, window, p.get("channels"))
    kwargs = dict(restarts=p["restarts"], lambda_tv=lam_tv, lambda_alpha=lam_alpha, alpha=p["alpha"], beta=p["beta"],
                  iterations=p["iterations"], lr=p.get("lr"), mask=mask, seed=p["seed"], progress=False, device=device)
    # a unit without options is the paper's method (as every unit stored before the new defaults)
    res = invert(rep, images, **{**kwargs, **(p.get("options") or {"method": "paper"})})
    n, r, k = res.relative_errors.shape
    dist = scoring.code_distances(res.codes, res.targets, mask)
    tnorm = scoring.code_distances(res.targets, torch.zeros_like(res.targets), mask)
    metrics = {
        "distance": dist.tolist(), "relative_error": res.relative_errors.tolist(),
        "energy": {key: v.tolist() for key, v in res.energy.items()}, "target_norm": tnorm.tolist(),
        "lambda_tv_actual": [float(v) for v in res.lambda_tv], "lambda_alpha_actual": [float(v) for v in res.lambda_alpha],
        "image_shape": list(shape), "code_shape": list(res.targets.shape[1:]), "optimisation_seconds": res.seconds,
        "iterations": res.settings.get("iterations"), "lr": res.settings.get("lr"),
        "schedule": res.settings.get("schedule"), "shape": [n, r, k], "device": device, **_rep_info(rep),
    }
    if window:
        metrics["window"] = window
    similar = image_similarities(res.reconstructions, images)  # image space, beside the code error
    metrics.update({key: v.tolist() for key, v in similar.items()})
    pngs = _pictures(p, rep, res, images, metrics)
    tensors = {"errors": {"distance": dist, "relative_error": res.relative_errors,
                          **{f"energy_{key}": v for key, v in res.energy.items()}}}
    if p.get("save", "all") == "all":
        tensors["reconstructions"] = {"reconstructions": res.reconstructions.float(), "targets": res.targets.float()}
    return {"metrics": metrics, "pngs": pngs, "tensors": tensors,
            "timings": {"optimisation_seconds": res.seconds, "seconds_per_image": res.seconds / max(1, n)}}


def _unit_codes(p: dict) -> dict:
    """The codes of a set of images, batch by batch (as the invert units compute their targets),
    and their pairwise normalisers in both conventions (:func:`.scoring.set_normalisers`)."""
    device = unit_device()
    rep = representation(p["rep"], p["preprocess"], p["size"]).to(device)
    codes: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in p["batches"]:
            out = rep(_load_batch(batch, p["mode"], p["preprocess"], p["size"]).to(device)).detach().cpu()
            codes.update(zip(batch, out))
    ordered = [codes[n] for n in p["images"]]
    norms = torch.stack([c.double().flatten().norm() for c in ordered])
    metrics = {"normaliser": scoring.set_normalisers(ordered), "n": len(ordered),
               "code_norm_mean": float(norms.mean()), **_rep_info(rep)}
    return {"metrics": metrics, "pngs": {}, "tensors": {"norms": {"code_norm": norms}},
            "timings": {"forward_seconds": time.perf_counter() - t0}}


def _hoggle_dictionary(which: str):
    """The HOGgle dictionary ``default`` (trained once, cached on disk) or ``tiny`` (for quick runs)."""
    from ..baselines.hoggle import load_or_train_default, train_hoggle

    def make():
        if which == "default":
            return load_or_train_default(progress=False)
        if which == "tiny":
            from ..data import train_images
            return train_hoggle(train_images()[:8], n_atoms=32, windows_per_image=24, n_iter=6, seed=0,
                                progress=False, batch_size=64)
        raise ValueError(f"unknown HOGgle dictionary {which!r} (default, tiny)")
    return _cached(("hoggle", which), make)


def _unit_hoggle(p: dict) -> dict:
    """HOGgle on a batch of grey images: HOG-space distances (scored like the HOG row), pictures."""
    from ..baselines.hoggle import hoggle_invert_image
    from ..io.artefacts import picture_name
    from ..io.images import to_uint8
    t0 = time.perf_counter()
    dictionary = _hoggle_dictionary(p["dictionary"])
    dictionary.lasso_setup()  # once per dictionary, not counted per image
    dict_seconds = time.perf_counter() - t0
    hog = representation({"type": "shallow", "name": "hog"}).to("cpu")
    dist, rel, secs, pngs = [], [], [], {}
    for i, name in enumerate(p["images"]):
        img = load_unit_image(name, "grey", p["preprocess"], p["size"])
        t1 = time.perf_counter()
        recon = torch.as_tensor(hoggle_invert_image(img, dictionary)).float().reshape(img.shape)
        secs.append(time.perf_counter() - t1)
        with torch.no_grad():
            c0, c1 = hog(img[None]), hog(recon[None])
        d = float(scoring.code_distances(c1, c0)[0])
        dist.append(d)
        rel.append(d / max(float(c0.double().norm()), 1e-30))
        if p.get("save", "all") != "none":
            pngs[picture_name("original", i)] = to_uint8(img)
            pngs[picture_name("recon", i)] = to_uint8(recon)
    meta = dictionary.metadata or {}
    keep = ("n_atoms", "alpha", "n_iter", "n_train_images", "windows_per_image", "training_seconds")
    return {"metrics": {"distance": dist, "relative_error": rel, "seconds": secs,
                        "dictionary": {k: meta.get(k) for k in keep if k in meta}, "dictionary_seconds": dict_seconds},
            "pngs": pngs, "tensors": {"errors": {"distance": torch.tensor(dist, dtype=torch.float64)}},
            "timings": {"seconds_per_image": sum(secs) / max(1, len(secs)), "dictionary_seconds": dict_seconds}}


def _unit_layers(p: dict) -> dict:
    """A network's layers (the blocks when it names them): type, output shape, channels, receptive field."""
    from ..representations.cnn import list_layers
    model = network(p["model"], "structure", p.get("model_options"))
    size = p.get("size")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        infos = list_layers(model, None if size is None else (size, size))
    blocks = getattr(model, "block_names", None)
    if blocks:
        keep = set(blocks)
        infos = [i for i in infos if i.name in keep]
    rows = [{"name": i.name, "type": i.type, "output_shape": list(i.output_shape), "channels": int(i.channels),
             "rf_size": [float(v) for v in i.rf_size] if i.rf_size else None,
             "rf_stride": [float(v) for v in i.rf_stride] if i.rf_stride else None}
            for i in infos]
    from ..models.fx import model_input_size
    return {"metrics": {"layers": rows, "input_size": list(model_input_size(model))},
            "pngs": {}, "tensors": {}, "timings": {}}


def _unit_visualize(p: dict) -> dict:
    """Activation maximisation or caricatures (:mod:`.visualisation`)."""
    from .visualisation import run_visualize_unit
    return run_visualize_unit(p)


_KINDS: dict[str, Callable[[dict], dict]] = {
    "invert": _unit_invert, "codes": _unit_codes, "hoggle": _unit_hoggle, "layers": _unit_layers,
    "visualize": _unit_visualize,
}


#: glibc's ``mallopt`` parameters (malloc.h) and the values :func:`restore_malloc_thresholds` sets
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES = 32 << 20, 256 << 20
_MALLOC_RESTORED = False


def restore_malloc_thresholds() -> bool:
    """Undo Dask's ``MALLOC_TRIM_THRESHOLD_`` in this process (glibc only; True when it did).

    A Dask nanny starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
    ``distributed.nanny.pre-spawn-environ``). Setting it freezes glibc's mmap threshold at
    128 KiB, so every activation and gradient buffer of an inversion is a fresh ``mmap`` whose pages
    the kernel zeroes, and each free returns memory to the system: measured on a Table 1 HOGb unit,
    3.2× the CPU time, most of it in the kernel. Once per process, this sets the mmap threshold to
    32 MiB and the trim threshold to 256 MiB (about where glibc's own adaptive thresholds settle)."""
    global _MALLOC_RESTORED
    if _MALLOC_RESTORED or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
              and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    except (OSError, AttributeError):  # not glibc: nothing to undo
        return False
    _MALLOC_RESTORED = bool(ok)
    return _MALLOC_RESTORED


def run_unit(params: dict, torch_threads: int | None = None) -> dict:
    """Compute one unit: a pure function of ``params`` (see :mod:`.base`).

    Returns ``{"metrics", "pngs" (name → uint8 ``(H, W, C)`` array, names from
    :func:`preimage.io.artefacts.picture_name`), "tensors" (name → {name: tensor}), "timings"
    (seconds), "worker", "computed_at"}``. ``torch_threads`` sets the intra-op threads of this
    process (not part of the parameters).
    """
    restore_malloc_thresholds()
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    torch.manual_seed(int(params.get("seed", 0)))
    t0 = time.perf_counter()
    out = _KINDS[params["kind"]](params)
    out["timings"] = {**out.get("timings", {}), "seconds": time.perf_counter() - t0}
    out["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    out["computed_at"] = time.time()
    if not all(math.isfinite(float(v)) for v in _flat_numbers(out["metrics"])):
        out["metrics"]["non_finite"] = True
    return out


def _flat_numbers(obj) -> list[float]:
    """Every number in a nested dict/list structure."""
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _flat_numbers(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _flat_numbers(v)]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [float(obj)]
    return []
