"""The paper's Table 1: shallow-representation inversion error over the evaluation set.

Each eval image is converted to grey (BT.601) at its native size, as the authors' code did, its
code is inverted with the paper's settings (λ_α = 2.16e8 and λ_V = 5 at 227×227×3, scaled to the
image size; β = 2; 800 iterations), and the normalised error is reported in both conventions of
:mod:`preimage.metrics`. Images of the same size are optimised as one batch.

Evaluations take long (Table 1 is about an hour on two CPU cores), so every finished batch can be
kept in a :class:`BatchCache` folder: an interrupted run given the same folder resumes after the
last finished batch.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .imageio import load_image
from .invert import invert
from .metrics import normalised_errors, pairwise_normaliser, summarise
from .objective import default_lambdas

#: The paper's Table 1 (mean ± std, percent).
PAPER_TABLE1 = {"hoggle": (66.20, 13.7), "hog": (28.10, 7.9), "hogb": (10.67, 5.2), "dsift": (10.89, 7.5)}


def _downscale(img: torch.Tensor, max_side: int | None) -> torch.Tensor:
    h, w = img.shape[-2:]
    if not max_side or max(h, w) <= max_side:
        return img
    s = max_side / max(h, w)
    return torch.nn.functional.interpolate(img[None], size=(round(h * s), round(w * s)), mode="bilinear",
                                           antialias=True, align_corners=False)[0]


class BatchCache:
    """Finished batches of an evaluation, one safetensors file each, so an interrupted run resumes.

    A batch is keyed by everything its result depends on (representation or layer, image names,
    iterations, learning rate, λ values, seed …): :meth:`get` returns the stored tensors only when
    all of them match, so a changed setting is computed afresh. Files are written atomically and
    read with safetensors (no unpickling). ``folder=None`` keeps nothing.
    """

    VERSION = 1

    def __init__(self, folder: str | Path | None):
        self.folder = Path(folder) if folder else None
        self.hits = 0

    def _path(self, params: dict) -> Path:
        from .reproduce.store import unit_key
        return self.folder / f"{unit_key({**params, 'cache_version': self.VERSION})[:24]}.safetensors"

    def get(self, params: dict) -> dict[str, torch.Tensor] | None:
        """The tensors stored for ``params``, or None."""
        if self.folder is None:
            return None
        path = self._path(params)
        if not path.is_file():
            return None
        from safetensors.torch import load_file
        try:
            tensors = load_file(str(path))
        except Exception:  # a damaged file is computed again
            return None
        self.hits += 1
        return tensors

    def put(self, params: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Store ``tensors`` (a name → tensor dict) for ``params``."""
        if self.folder is None:
            return
        from .reproduce.store import atomic_write_bytes, tensors_bytes
        atomic_write_bytes(self._path(params), tensors_bytes(tensors))

    def clear(self) -> None:
        """Remove the folder's batch files (and the folder when it is then empty)."""
        if self.folder is None or not self.folder.is_dir():
            return
        for f in self.folder.glob("*.safetensors"):
            f.unlink()
        try:
            self.folder.rmdir()
        except OSError:
            pass


def _weights_fingerprint(model: torch.nn.Module) -> str:
    """Short SHA-256 of a model's parameters and buffers, so cached batches follow its weights."""
    import hashlib
    h = hashlib.sha256()
    for name, t in list(model.state_dict().items()):
        h.update(name.encode())
        if torch.is_tensor(t):
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _run_batch(cache: BatchCache, params: dict, run) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
    """(targets, reconstruction codes, seconds) of one batch: from ``cache`` when it holds them,
    else from ``run()`` (which returns an :class:`~preimage.invert.Inversion`), then stored."""
    hit = cache.get(params)
    if hit is not None:
        return list(hit["targets"]), list(hit["codes"]), float(hit["seconds"])
    t0 = time.perf_counter()
    res = run()
    seconds = time.perf_counter() - t0
    targets = res.targets.detach().cpu()
    codes = torch.stack([c[0, 0] for c in res.codes]).detach().cpu()
    cache.put(params, {"targets": targets, "codes": codes, "seconds": torch.tensor(seconds, dtype=torch.float64)})
    return list(targets), list(codes), seconds


def spread(paths: Sequence[Path], limit: int | None) -> list[Path]:
    """``limit`` of ``paths`` spread evenly over the list (the eval set is sorted by class, so this
    keeps classes varied); all of them when ``limit`` is None or not smaller."""
    paths = list(paths)
    if limit and limit < len(paths):
        paths = [paths[round(i * len(paths) / limit)] for i in range(limit)]
    return paths


def evaluate_representation(rep_name: str, paths: Sequence[Path], *, iterations: int | None = None,
                            lr: float | None = None, lambda_tv: float = 5.0, max_side: int | None = None,
                            max_batch: int = 8, progress: bool = True, seed: int = 0,
                            cache: BatchCache | None = None) -> dict:
    """Invert every image's code under one shallow representation and score it.

    Returns a dict with per-image errors (both conventions), their mean ± std in percent,
    normalisers and seconds per image (optimisation wall time / number of images). Batches found
    in ``cache`` are not recomputed (their recorded time is counted).
    """
    cache = cache or BatchCache(None)
    from .representations import get_representation

    rep = get_representation(rep_name)
    images = [_downscale(load_image(p, mode="grey"), max_side) for p in paths]
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    targets: list[torch.Tensor | None] = [None] * len(images)
    recon_codes: list[torch.Tensor | None] = [None] * len(images)
    seconds = 0.0
    bar = tqdm(total=len(images), desc=f"{rep_name}", disable=not progress, dynamic_ncols=True)
    for shape, idx in groups.items():
        for c0 in range(0, len(idx), max_batch):
            part = idx[c0:c0 + max_batch]
            batch = torch.stack([images[i] for i in part])
            lam_alpha, lam_tv = default_lambdas(shape, lambda_tv_reference=lambda_tv)
            params = {"rep": rep_name, "images": [Path(paths[i]).name for i in part], "shape": list(shape),
                      "iterations": iterations, "lr": lr, "lambda_tv": lam_tv, "lambda_alpha": lam_alpha,
                      "max_side": max_side, "seed": seed}
            tgt, rec, sec = _run_batch(cache, params, lambda: invert(
                rep, batch, lambda_tv=lam_tv, lambda_alpha=lam_alpha, iterations=iterations, lr=lr,
                progress=False, seed=seed))
            seconds += sec
            for j, i in enumerate(part):
                targets[i], recon_codes[i] = tgt[j], rec[j]
            bar.update(len(part))
    bar.close()
    out = {"representation": rep_name, "n": len(images), "seconds_per_image": seconds / max(1, len(images)),
           "images": [Path(p).name for p in paths]}
    for conv in ("paper", "authors"):
        norm = pairwise_normaliser(targets, conv)
        errs = normalised_errors(recon_codes, targets, normaliser=norm, convention=conv)
        out[conv] = {**summarise(errs), "normaliser": norm, "per_image": errs.tolist()}
    return out


def evaluate_shallow(reps: Sequence[str] = ("hog", "hogb", "dsift"), *, paths: Sequence[Path] | None = None,
                     limit: int | None = None, iterations: int | None = None, lr: float | None = None,
                     lambda_tv: float = 5.0, max_side: int | None = None, progress: bool = True,
                     cache_dir: str | Path | None = None) -> dict:
    """Table 1 over the eval set (or ``paths``): one entry per representation, plus HOGgle when
    ``"hoggle"`` is among ``reps``. With ``cache_dir``, finished batches are kept there and an
    interrupted evaluation resumes (see :class:`BatchCache`)."""
    cache = BatchCache(cache_dir)
    from .data import eval_images
    paths = spread(list(paths) if paths is not None else eval_images(), limit)
    if len(paths) < 2:
        raise ValueError("Table 1 needs at least two images (the error is normalised by pairwise distances)")
    result = {"images": len(paths), "iterations": iterations or 800, "lambda_tv": lambda_tv, "rows": {}}
    for rep in reps:
        if rep == "hoggle":
            from .hoggle import evaluate_hoggle, load_or_train_default
            result["rows"]["hoggle"] = evaluate_hoggle(paths, load_or_train_default(progress=progress))
        else:
            result["rows"][rep] = evaluate_representation(rep, paths, iterations=iterations, lr=lr,
                                                          lambda_tv=lambda_tv, max_side=max_side,
                                                          progress=progress, cache=cache)
    return result


def format_table1(result: dict) -> str:
    """Markdown table: ours (both conventions, seconds per image) beside the paper's row."""
    lines = [f"Table 1 — {result['images']} images, {result['iterations']} iterations, λ_V = {result['lambda_tv']}",
             "",
             "| representation | error % (paper: dist / mean pairwise dist) | error % (authors' code: squared) "
             "| s / image | paper's error % |",
             "|---|---|---|---|---|"]
    for rep, row in result["rows"].items():
        p = row["paper"]
        a = row["authors"]
        ref = PAPER_TABLE1.get(rep)
        ref_s = f"{ref[0]:.2f} ± {ref[1]:.1f}" if ref else "—"
        lines.append(f"| {rep} | {p['mean']:.2f} ± {p['std']:.1f} | {a['mean']:.2f} ± {a['std']:.1f} "
                     f"| {row['seconds_per_image']:.2f} | {ref_s} |")
    return "\n".join(lines)


def evaluate_cnn_layers(model_name: str, *, layers: Sequence[str] | None = None,
                        paths: Sequence[Path] | None = None, limit: int | None = None,
                        iterations: int | None = None, lr: float | None = None,
                        lambda_tv: float | None = None, max_batch: int = 8, progress: bool = True,
                        seed: int = 0, cache_dir: str | Path | None = None) -> dict:
    """Table-3 style evaluation of a CNN: invert each layer's code of every eval image.

    Images are RGB, resized to the network's input size without cropping (as the authors' code
    did for CaffeNet). ``layers`` defaults to the model's ``block_names`` (else every listed
    layer); ``lambda_tv`` defaults to the paper's weight for the layer's relative depth. Errors are
    normalised per layer over the set's codes, in both conventions. ``limit`` takes that many
    images spread evenly over the set. With ``cache_dir``, finished (layer, batch) pairs are kept
    there and an interrupted evaluation resumes (see :class:`BatchCache`).
    """
    cache = BatchCache(cache_dir)
    from .data import eval_images
    from .models import get_model
    from .representations.cnn import CNNLayer, list_layers

    model = get_model(model_name)
    paths = spread(list(paths) if paths is not None else eval_images(), limit)
    if len(paths) < 2:
        raise ValueError("the normalised error needs at least two images")
    names = list(layers) if layers else list(getattr(model, "block_names", None) or
                                             [info.name for info in list_layers(model)])
    rows = {}
    images = None
    weights = _weights_fingerprint(model) if cache.folder is not None else None
    bar = tqdm(total=len(names) * len(paths), desc=model_name, disable=not progress, dynamic_ncols=True)
    for name in names:
        rep = CNNLayer(model, name)
        if images is None:
            size = tuple(rep.input_size)
            images = torch.cat([torch.nn.functional.interpolate(
                load_image(p, mode="rgb")[None], size=size, mode="bilinear", antialias=True,
                align_corners=False).clamp(0, 255) for p in paths])
        lam = rep.lambda_tv if lambda_tv is None else lambda_tv
        targets, codes, seconds = [], [], 0.0
        for c0 in range(0, len(images), max_batch):
            batch = images[c0:c0 + max_batch]
            params = {"model": model_name, "layer": name, "images": [Path(p).name for p in paths[c0:c0 + max_batch]],
                      "iterations": iterations, "lr": lr, "lambda_tv": lam, "seed": seed, "weights": weights}
            tgt, rec, sec = _run_batch(cache, params, lambda: invert(
                rep, batch, lambda_tv=lam, iterations=iterations, lr=lr, progress=False, seed=seed))
            seconds += sec
            targets += tgt
            codes += rec
            bar.update(len(tgt))
        row = {"layer": name, "lambda_tv": lam, "relative_depth": rep.relative_depth,
               "seconds_per_image": seconds / len(images)}
        for conv in ("paper", "authors"):
            errs = normalised_errors(codes, targets, convention=conv)
            row[conv] = {**summarise(errs), "per_image": errs.tolist()}
        rows[name] = row
    bar.close()
    return {"model": model_name, "images": len(paths), "iterations": iterations or 400, "rows": rows}


def format_cnn_table(result: dict) -> str:
    """Markdown table of :func:`evaluate_cnn_layers` results, one row per layer."""
    lines = [f"{result['model']} — {result['images']} images, {result['iterations']} iterations, "
             "λ_V by relative depth (the paper's 0.5 / 5 / 50)", "",
             "| layer | depth | λ_V | error % (paper) | error % (authors', squared) | s / image |",
             "|---|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        p, a = row["paper"], row["authors"]
        lines.append(f"| {name} | {row['relative_depth']:.2f} | {row['lambda_tv']:g} | {p['mean']:.1f} ± {p['std']:.1f} "
                     f"| {a['mean']:.1f} ± {a['std']:.1f} | {row['seconds_per_image']:.1f} |")
    return "\n".join(lines)
