"""HOG glyph pictures: each cell drawn as a star of oriented bars (like VLFeat's ``vl_hog('render')``
and the glyphs of the paper's Fig. 3).

A bar is drawn *perpendicular* to its gradient orientation, i.e. along the image edge that produced
it: a vertical edge (gradient pointing right, orientation bin 0) gives a vertical bar. Bar k's
brightness is the cell's undirected histogram value for orientation k.
"""

from __future__ import annotations

import math

import torch

_VARIANTS = ("uoctti", "dalaltriggs")


def _bar_stencils(num_orientations: int, size: int, dtype: torch.dtype, device) -> torch.Tensor:
    """``(n, size, size)`` anti-aliased bars, 1 px wide, through the centre, in [0, 1].

    Bar k runs along the direction k·π/n + π/2, angles measured with x to the right and y downward
    (VLFeat's convention), so it is perpendicular to gradient orientation k.
    """
    c = (size - 1) / 2.0
    coords = torch.arange(size, dtype=torch.float64) - c
    v, u = torch.meshgrid(coords, coords, indexing="ij")  # v: row (down), u: column (right)
    phi = torch.arange(num_orientations, dtype=torch.float64) * math.pi / num_orientations + math.pi / 2
    dx, dy = torch.cos(phi).view(-1, 1, 1), torch.sin(phi).view(-1, 1, 1)
    across = (-u * dy + v * dx).abs()  # distance from the bar's axis
    along = (u * dx + v * dy).abs()    # distance from the centre along the bar
    half = size / 2.0
    stencil = (1.0 - across).clamp(0.0, 1.0) * (half + 0.5 - along).clamp(0.0, 1.0)
    return stencil.to(dtype=dtype, device=device)


def hog_glyph(code: torch.Tensor, cell_px: int = 16, variant: str = "uoctti",
              num_orientations: int | None = None) -> torch.Tensor:
    """Render one HOG code as a glyph picture.

    Args:
        code: ``(D, h, w)`` HOG of one image, channels first as :class:`~preimage.representations.hog.HOG`
            returns it (``code[0]`` of a batch). UoCTTI: D = 3n (the paper's 27) or 3n + 4 (31);
            Dalal–Triggs: D = 4n (36). Values ≥ 0 (negative weights are drawn as 0).
        cell_px: side of one cell's glyph in pixels.
        variant: ``"uoctti"`` (bar weights: the undirected channels 2n … 3n−1) or ``"dalaltriggs"``
            (bar weights: the mean over the 4 blocks).
        num_orientations: n; inferred from D when ``None``.

    Returns:
        ``(1, h·cell_px, w·cell_px)`` float tensor on 0–255 (same dtype/device as ``code``): white bars
        on black, scaled so that the brightest bar is 255 (all black when the code is 0). As in
        VLFeat, overlapping bars inside a cell are clipped to that cell's largest bar weight.
    """
    if not torch.is_tensor(code) or code.dim() != 3:
        shape = tuple(code.shape) if torch.is_tensor(code) else type(code).__name__
        raise ValueError(f"hog_glyph expects one code (D, h, w), got {shape}; pass code[0] for a batch")
    variant = str(variant).lower().replace("-", "").replace("_", "")
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
    if int(cell_px) != cell_px or cell_px < 1:
        raise ValueError(f"cell_px must be a positive integer, got {cell_px!r}")
    cell_px = int(cell_px)
    D, h, w = code.shape
    if num_orientations is None:
        if variant == "dalaltriggs":
            num_orientations = D // 4 if D % 4 == 0 else 0
        else:
            num_orientations = D // 3 if D % 3 == 0 else (D - 4) // 3 if (D - 4) % 3 == 0 else 0
    n = int(num_orientations)
    expected = (3 * n, 3 * n + 4) if variant == "uoctti" else (4 * n,)
    if n < 1 or D not in expected:
        raise ValueError(f"a {variant} code with {D} channels does not match {n} orientations "
                         f"(expected D in {expected})")
    code = code.detach()
    if not code.is_floating_point():
        code = code.float()
    if variant == "uoctti":
        weights = code[2 * n:3 * n]
    else:
        weights = code.reshape(4, n, h, w).mean(0)
    weights = weights.clamp_min(0.0)  # (n, h, w)
    stencils = _bar_stencils(n, cell_px, code.dtype, code.device)  # (n, P, P)
    img = torch.einsum("khw,kpq->hpwq", weights, stencils)  # (h, P, w, P)
    cell_max = weights.amax(0).view(h, 1, w, 1)
    img = torch.minimum(img, cell_max)
    img = img.reshape(1, h * cell_px, w * cell_px)
    top = img.max()
    if top > 0:
        img = img * (255.0 / top)
    return img


__all__ = ["hog_glyph"]
