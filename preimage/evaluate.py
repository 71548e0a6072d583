"""The paper's Table 1: shallow-representation inversion error over the evaluation set.

Each eval image is converted to grey (BT.601) at its native size, as the authors' code did, its
code is inverted with the paper's settings (λ_α = 2.16e8 and λ_V = 5 at 227×227×3, scaled to the
image size; β = 2; 800 iterations), and the normalised error is reported in both conventions of
:mod:`preimage.metrics`. Images of the same size are optimised as one batch.
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


def evaluate_representation(rep_name: str, paths: Sequence[Path], *, iterations: int | None = None,
                            lr: float | None = None, lambda_tv: float = 5.0, max_side: int | None = None,
                            max_batch: int = 8, progress: bool = True, seed: int = 0) -> dict:
    """Invert every image's code under one shallow representation and score it.

    Returns a dict with per-image errors (both conventions), their mean ± std in percent,
    normalisers and seconds per image (optimisation wall time / number of images).
    """
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
            t0 = time.perf_counter()
            res = invert(rep, batch, lambda_tv=lam_tv, lambda_alpha=lam_alpha, iterations=iterations, lr=lr,
                         progress=False, seed=seed)
            seconds += time.perf_counter() - t0
            for j, i in enumerate(part):
                targets[i] = res.targets[j]
                recon_codes[i] = res.codes[j, 0, 0]
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
                     lambda_tv: float = 5.0, max_side: int | None = None, progress: bool = True) -> dict:
    """Table 1 over the eval set (or ``paths``): one entry per representation, plus HOGgle when
    ``"hoggle"`` is among ``reps``."""
    from .data import eval_images
    paths = list(paths) if paths is not None else eval_images()
    if limit:
        paths = paths[:limit]
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
                                                          progress=progress)
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
