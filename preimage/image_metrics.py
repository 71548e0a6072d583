"""How close a reconstruction is to the original in image space, beside the code-space error.

The paper's error is measured on codes, and an unnatural image can match a code; these measures
compare pixels. Both take batches ``(N, C, H, W)`` on the 0–255 scale (C = 1 or 3; colour images
are reduced to BT.601 luma with :func:`preimage.io.images.to_grey`) and return ``(N,)`` float64.
A batch of one broadcasts against a batch of N (one original against N reconstructions).

* :func:`ssim_luminance`: SSIM (Wang et al. 2004) of the luminances, Gaussian window 11×11 with
  σ = 1.5, K₁ = 0.01, K₂ = 0.03, L = 255, population (co)variances, averaged over the positions
  where the window lies wholly inside the image: the same number as
  ``skimage.metrics.structural_similarity(a, b, data_range=255, gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)``. 1 for identical images, lower is less similar (can be < 0).
* :func:`orientation_histogram_intersection`: IJCV 2016's naturalness measure
  (nnpreimage ``experiments/exp_naturalness.m``): the 18-bin histogram of gradient orientations
  over (−180°, 180°], each pixel weighted by its gradient magnitude (MATLAB's ``imgradient``: Sobel,
  replicated borders, direction ``atan2(−Gy, Gx)`` with y pointing down), L1-normalised; the
  similarity is the histogram intersection ``Σ min(h₁, h₂)`` ∈ [0, 1], 1 for identical
  histograms. An image without any gradient has an all-zero histogram (intersection 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .io.images import to_grey


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as float64 luminances ``(N, 1, H, W)``, the batch axis broadcast."""
    for name, t in (("x", x), ("y", y)):
        if t.dim() != 4 or t.shape[1] not in (1, 3):
            raise ValueError(f"{name} must be (N, C, H, W) with C = 1 or 3, got {tuple(t.shape)}")
    if x.shape[0] != y.shape[0] and 1 not in (x.shape[0], y.shape[0]):
        raise ValueError(f"batches of {x.shape[0]} and {y.shape[0]} images do not broadcast")
    gx, gy = to_grey(x.double()), to_grey(y.double())
    n = max(gx.shape[0], gy.shape[0])
    return gx.expand(n, -1, -1, -1), gy.expand(n, -1, -1, -1)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian ``(size,)`` float64 centred on the middle tap."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of ``(N, 1, H, W)`` by ``g`` ``(k,)`` → ``(N, 1, H−k+1, W−k+1)``."""
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k))
    return F.conv2d(x, g.view(1, 1, k, 1))


def ssim_luminance(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0,
                   window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM ``(N,)`` of the luminances of ``x`` and ``y`` ``(N, C, H, W)`` on 0–``data_range``
    (see the module docstring); H and W must be at least ``window``."""
    a, b = _pair(x, y)
    if a.shape[-2:] != b.shape[-2:]:
        raise ValueError(f"images of sizes {tuple(a.shape[-2:])} and {tuple(b.shape[-2:])} differ")
    if min(a.shape[-2:]) < window:
        raise ValueError(f"SSIM needs images of at least {window}×{window}, got {tuple(a.shape[-2:])}")
    g = gaussian_window(window, sigma).to(a.device)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    var_a = _blur(a * a, g) - mu_a * mu_a
    var_b = _blur(b * b, g) - mu_b * mu_b
    cov = _blur(a * b, g) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.flatten(1).mean(1)


_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def orientation_histogram(x: torch.Tensor, bins: int = 18) -> torch.Tensor:
    """Magnitude-weighted histogram of gradient orientations ``(N, bins)`` float64, L1-normalised
    (zero for a flat image), of ``x`` ``(N, C, H, W)`` on 0–255 (grey: BT.601 luma). Bin k covers
    (−180° + k·w, −180° + (k+1)·w], w = 360°/bins, the first bin also −180° (IJCV 2016's binning)."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x must be (N, C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    g = F.pad(to_grey(x.double()), (1, 1, 1, 1), mode="replicate")
    kx = torch.tensor(_SOBEL_X, dtype=torch.float64, device=g.device).view(1, 1, 3, 3)
    gx = F.conv2d(g, kx)                      # right − left
    gy = F.conv2d(g, kx.transpose(2, 3))      # below − above
    mag = torch.hypot(gx, gy).flatten(1)
    deg = torch.rad2deg(torch.atan2(-gy, gx)).flatten(1)
    width = 360.0 / bins
    idx = (torch.ceil((deg + 180.0) / width) - 1).clamp(0, bins - 1).long()
    hist = torch.zeros(x.shape[0], bins, dtype=torch.float64, device=g.device)
    hist.scatter_add_(1, idx, mag)
    total = hist.sum(1, keepdim=True)
    return torch.where(total > 0, hist / total.clamp_min(1e-300), torch.zeros_like(hist))


def histogram_intersection(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Σ_k min(a_k, b_k)`` ``(N,)`` of histograms ``(N, K)`` (``(1, K)`` broadcasts)."""
    return torch.minimum(a, b).sum(-1)


def orientation_histogram_intersection(x: torch.Tensor, y: torch.Tensor, bins: int = 18) -> torch.Tensor:
    """IJCV 2016's naturalness similarity ``(N,)`` ∈ [0, 1] of ``x`` and ``y`` ``(N, C, H, W)``
    on 0–255 (their sizes may differ: the histograms are global); see the module docstring."""
    if x.dim() != 4 or y.dim() != 4:
        raise ValueError("x and y must be (N, C, H, W) batches")
    if x.shape[0] != y.shape[0] and 1 not in (x.shape[0], y.shape[0]):
        raise ValueError(f"batches of {x.shape[0]} and {y.shape[0]} images do not broadcast")
    return histogram_intersection(orientation_histogram(x, bins), orientation_histogram(y, bins))


def image_similarities(reconstructions: torch.Tensor, originals: torch.Tensor) -> dict[str, torch.Tensor]:
    """Both image-space measures of reconstructions against their originals, beside the code error.

    Args:
        reconstructions: ``(N, R, K, C, H, W)`` on 0–255 (clamped to it here, as they are shown).
        originals: ``(N, C, H, W)`` on 0–255, the same size.
    Returns:
        ``{"ssim": (N, R, K), "orientation": (N, R, K)}`` float64: :func:`ssim_luminance` (needs
        H, W ≥ 11; NaN for smaller images) and :func:`orientation_histogram_intersection`.
    """
    n, r, k = reconstructions.shape[:3]
    flat = reconstructions.detach().reshape(n * r * k, *reconstructions.shape[3:]).double().clamp(0, 255)
    ref = originals.detach().double().repeat_interleave(r * k, dim=0)
    if min(flat.shape[-2:]) >= 11:
        ssim = ssim_luminance(flat, ref)
    else:
        ssim = torch.full((n * r * k,), float("nan"), dtype=torch.float64)
    orient = orientation_histogram_intersection(flat, ref)
    return {"ssim": ssim.view(n, r, k), "orientation": orient.double().view(n, r, k)}
