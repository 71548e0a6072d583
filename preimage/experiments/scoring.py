"""The one scorer of the tables: unit results → normalised errors, through :mod:`preimage.metrics`.

Every table (the report's Table 1 and Table 3, ``preimage evaluate``, the HOGgle row) is scored
the same way:

1. an ``invert`` (or ``hoggle``) unit stores, per image, restart and setting, the distance
   ‖Φ(x*) − Φ(xᵢ)‖ between the reconstruction's code and the target code
   (:func:`code_distances`, :func:`preimage.metrics.normalised_errors` with N = 1);
2. a ``codes`` unit stores the normalisers N_Φ of the evaluated set in both conventions
   (:func:`set_normalisers`, :func:`preimage.metrics.pairwise_normaliser`), from the codes of
   the images computed in the same batches as the invert units compute their targets;
3. :func:`score_rows` gathers the distances of the set's images (in the set's order) and scores
   them with :func:`preimage.metrics.score_distances`, the scorer every table uses (HOGgle's own
   evaluation through :func:`preimage.metrics.score_set`).
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import torch

from ..metrics import CONVENTIONS, normalised_errors, pairwise_normaliser, score_distances

__all__ = ["code_distances", "set_normalisers", "row_distances", "score_rows",
           "seconds_per_image", "image_scores", "CONVENTIONS"]


def code_distances(codes: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """‖code − target‖ of every sample, in float64 (:func:`preimage.metrics.normalised_errors`
    with the normaliser 1: the paper's distance before normalisation).

    Args:
        codes: ``(N, *lead, *code)``, e.g. an inversion's ``(N, R, K, D, h, w)``.
        targets: ``(N, *code)``, broadcast over the ``lead`` axes of ``codes``.
        mask: optional 0/1 mask ``(1, *code)`` applied to both (a masked inversion's data term).
    Returns:
        ``(N, *lead)`` float64 distances.
    """
    extra = codes.dim() - targets.dim()
    t = targets.reshape(targets.shape[:1] + (1,) * extra + targets.shape[1:]).expand_as(codes)
    if mask is not None:
        m = mask.to(codes.dtype).reshape(mask.shape[1:] if mask.dim() == targets.dim() else mask.shape)
        codes, t = codes * m, t * m
    lead = codes.shape[:1 + extra]
    code_shape = codes.shape[1 + extra:]
    flat_c, flat_t = codes.reshape(-1, *code_shape), t.reshape(-1, *code_shape)
    return normalised_errors(list(flat_c), list(flat_t), normaliser=1.0, convention="paper").view(lead)


def set_normalisers(codes: Sequence[torch.Tensor]) -> dict[str, float]:
    """N_Φ of a set of codes (one per image, any shapes) in both conventions
    (:func:`preimage.metrics.pairwise_normaliser`): ``{"paper": …, "authors": …}``."""
    return {conv: pairwise_normaliser(codes, conv) for conv in CONVENTIONS}


def row_distances(row: Mapping, r: int = 0, k: int = 0) -> dict[str, float]:
    """Image name → distance of a finished ``invert`` (restart ``r``, setting ``k``) or ``hoggle``
    unit (``row``: a dict with ``params`` and ``metrics``, e.g. a store row)."""
    params, dist = row["params"], row["metrics"]["distance"]
    if params["kind"] == "hoggle":
        return dict(zip(params["images"], (float(d) for d in dist)))
    return {name: float(dist[i][r][k]) for i, name in enumerate(params["images"])}


def score_rows(rows: Iterable[Mapping], codes_row: Mapping | None, r: int = 0, k: int = 0) -> dict | None:
    """Score the units ``rows`` of one representation or layer against the set of ``codes_row``.

    The distances of the set's images (``codes_row["params"]["images"]``, in that order; images
    whose unit is not finished are left out) are scored by :func:`preimage.metrics.score_distances`. Returns
    ``{"images": [names], "paper": {…}, "authors": {…}}``, or None without a normaliser or a
    distance.
    """
    if codes_row is None:
        return None
    dist: dict[str, float] = {}
    for row in rows:
        dist.update(row_distances(row, r, k))
    order = [n for n in codes_row["params"]["images"] if n in dist]
    if not order:
        return None
    return {"images": order, **score_distances([dist[n] for n in order], codes_row["metrics"]["normaliser"])}


def image_scores(rows: Iterable[Mapping], r: int = 0, k: int = 0) -> dict[str, float]:
    """Mean image-space similarity of finished ``invert`` units' reconstructions (restart ``r``,
    setting ``k``) to their originals: ``{"ssim", "orientation"}`` (NaN where none was measured,
    e.g. HOGgle units or units stored before the measures existed)."""
    values: dict[str, list[float]] = {"ssim": [], "orientation": []}
    for row in rows:
        for key in values:
            per_image = row["metrics"].get(key) if row["params"]["kind"] == "invert" else None
            values[key] += [float(v[r][k]) for v in per_image] if per_image else []
    return {key: float(torch.tensor(v, dtype=torch.float64).nanmean()) if v else float("nan")
            for key, v in values.items()}


def seconds_per_image(rows: Iterable[Mapping]) -> float:
    """Optimisation wall time per image of finished ``invert`` units (each unit's time divided
    over its images), or per-image inversion time of ``hoggle`` units; NaN without images."""
    seconds, n = 0.0, 0
    for row in rows:
        m = row["metrics"]
        seconds += float(sum(m["seconds"])) if row["params"]["kind"] == "hoggle" else float(m["optimisation_seconds"])
        n += len(row["params"]["images"])
    return seconds / n if n else float("nan")
