"""Reconstruction error metrics.

Two conventions, named for what they are:

* ``paper``: the paper's normalised error of image i, ‖Φ(x*) − Φ(xᵢ)‖ / N_Φ, with N_Φ the mean
  Euclidean distance between the codes of distinct images of the evaluation set (i ≠ j).
* ``authors``: what the authors' code computes, ‖Φ(x*) − Φ(xᵢ)‖² / N²_Φ with N²_Φ the mean
  *squared* pairwise distance, the diagonal (i = j, zero) included.

Codes of different sizes (images of different sizes) are flattened and zero-padded to the longest,
as the authors' code does. Both return fractions (multiply by 100 for the paper's percentages).
"""

from __future__ import annotations

from typing import Sequence

import torch

CONVENTIONS = ("paper", "authors")


def relative_error(code: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample ‖code − target‖ / ‖target‖. ``(N, ...)`` × ``(N, ...)`` → ``(N,)``."""
    diff = (code - target).flatten(1).norm(dim=1)
    return diff / target.flatten(1).norm(dim=1).clamp_min(1e-30)


def _stack_padded(codes: Sequence[torch.Tensor]) -> torch.Tensor:
    flat = [c.detach().reshape(-1).double().cpu() for c in codes]
    n = max(f.numel() for f in flat)
    out = torch.zeros(len(flat), n, dtype=torch.float64)
    for i, f in enumerate(flat):
        out[i, :f.numel()] = f
    return out


def pairwise_normaliser(codes: Sequence[torch.Tensor], convention: str = "paper") -> float:
    """N_Φ of a set of codes (each one image's code, any shape).

    ``paper``: mean distance over pairs i ≠ j; ``authors``: mean squared distance over all pairs
    (i = j included).
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}, not {convention!r}")
    x = _stack_padded(codes)
    n = x.shape[0]
    if n < 2:
        raise ValueError("the normaliser needs at least two codes")
    sq = x.pow(2).sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * x @ x.T).clamp_min(0)
    if convention == "authors":
        return float(d2.mean())
    off = ~torch.eye(n, dtype=torch.bool)
    return float(d2.sqrt()[off].mean())


def normalised_errors(recon_codes: Sequence[torch.Tensor], target_codes: Sequence[torch.Tensor],
                      normaliser: float | None = None, convention: str = "paper",
                      set_codes: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Normalised error of each reconstruction.

    Args:
        recon_codes: Φ(x*) per image (any shape, each the same shape as its target).
        target_codes: Φ(xᵢ) per image.
        normaliser: N_Φ in the chosen convention; computed from ``set_codes`` (default: the
            targets) when ``None``.
        convention: ``"paper"`` (distance / mean pairwise distance) or ``"authors"`` (squared).
    Returns:
        ``(len(recon_codes),)`` float64 tensor of fractions.
    """
    if len(recon_codes) != len(target_codes):
        raise ValueError("as many reconstructions as targets are needed")
    if normaliser is None:
        normaliser = pairwise_normaliser(set_codes if set_codes is not None else target_codes, convention)
    d = torch.tensor([float((r.double().cpu() - t.double().cpu()).norm()) for r, t in zip(recon_codes, target_codes)],
                     dtype=torch.float64)
    return d.pow(2) / normaliser if convention == "authors" else d / normaliser


def score_distances(distances: Sequence[float], normalisers: dict[str, float]) -> dict[str, dict]:
    """A table row's errors in both conventions from its code distances ‖Φ(x*) − Φ(xᵢ)‖ and the
    set's normalisers (``{"paper": N_Φ, "authors": N²_Φ}``, :func:`pairwise_normaliser`).

    Returns ``{conv: {"mean", "std", "n" (percent, :func:`summarise`), "normaliser",
    "per_image" (fractions)}}``; each error is :func:`normalised_errors` of the distance as a
    one-number code against 0 (‖[d] − [0]‖ = d exactly), so both conventions use one formula.
    """
    d = [torch.tensor([float(v)], dtype=torch.float64) for v in distances]
    zeros = [torch.zeros(1, dtype=torch.float64)] * len(d)
    out = {}
    for conv in CONVENTIONS:
        errs = normalised_errors(d, zeros, normaliser=normalisers[conv], convention=conv)
        out[conv] = {**summarise(errs), "normaliser": normalisers[conv], "per_image": errs.tolist()}
    return out


def score_set(recon_codes: Sequence[torch.Tensor], target_codes: Sequence[torch.Tensor]) -> dict[str, dict]:
    """:func:`score_distances` of reconstructions against their targets, normalised over the
    targets themselves (one code per image, any shapes)."""
    norms = {conv: pairwise_normaliser(target_codes, conv) for conv in CONVENTIONS}
    dist = [float((r.detach().double().cpu() - t.detach().double().cpu()).norm())
            for r, t in zip(recon_codes, target_codes)]
    return score_distances(dist, norms)


def summarise(errors: torch.Tensor) -> dict[str, float]:
    """Mean and standard deviation (of the errors, not of the mean) in percent."""
    e = errors.double() * 100
    return {"mean": float(e.mean()), "std": float(e.std(unbiased=False)) if e.numel() > 1 else 0.0,
            "n": int(e.numel())}
