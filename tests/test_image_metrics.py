"""Image-space similarity (preimage.image_metrics): SSIM on luminance against scikit-image, and
IJCV 2016's gradient-orientation histogram intersection."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from preimage.image_metrics import (gaussian_window, histogram_intersection, orientation_histogram,
                                    orientation_histogram_intersection, ssim_luminance)
from preimage.io.images import GREY_WEIGHTS

skimage_metrics = pytest.importorskip("skimage.metrics")


def smooth_images(n, c, h, w, seed=0):
    """``(n, c, h, w)`` on 0–255 with structure at several scales (SSIM of noise is near 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, c, h // 4, w // 4), generator=g)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    x = x + 0.15 * torch.rand((n, c, h, w), generator=g)
    return (255 * x / x.amax(dim=(1, 2, 3), keepdim=True)).double()


def grey_np(x):
    x = x.numpy()
    if x.shape[0] == 3:
        return np.tensordot(np.array(GREY_WEIGHTS), x, axes=1)
    return x[0]


@pytest.mark.parametrize("c", [1, 3])
def test_ssim_matches_skimage(c):
    x = smooth_images(3, c, 40, 33, seed=1)
    y = (x + 40 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
         ).clamp(0, 255)
    ours = ssim_luminance(x, y)
    assert ours.shape == (3,) and ours.dtype == torch.float64
    for n in range(3):
        ref = skimage_metrics.structural_similarity(
            grey_np(x[n]), grey_np(y[n]), data_range=255, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False)
        assert ours[n].item() == pytest.approx(ref, abs=1e-3)
        assert 0.05 < ours[n] < 0.99


def test_ssim_properties():
    x = smooth_images(2, 3, 24, 24)
    assert torch.allclose(ssim_luminance(x, x), torch.ones(2, dtype=torch.float64))
    y = smooth_images(2, 3, 24, 24, seed=5)
    assert torch.allclose(ssim_luminance(x, y), ssim_luminance(y, x))
    one = ssim_luminance(x[:1], y)                                   # one original, N reconstructions
    assert one.shape == (2,) and torch.allclose(one[0], ssim_luminance(x[:1], y[:1])[0])
    assert ssim_luminance(x.float(), y.float()).dtype == torch.float64
    assert gaussian_window().shape == (11,) and gaussian_window().sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 11"):
        ssim_luminance(x[..., :10, :], y[..., :10, :])
    with pytest.raises(ValueError, match="differ"):
        ssim_luminance(x, y[..., :20])
    with pytest.raises(ValueError, match="broadcast"):
        ssim_luminance(x, torch.cat([y, y[:1]]))


def reference_histogram(img):
    """exp_naturalness.m's computeGlobalHOG with scipy (Sobel, nearest = MATLAB's replicate)."""
    g = grey_np(img)
    gx, gy = ndimage.sobel(g, axis=1, mode="nearest"), ndimage.sobel(g, axis=0, mode="nearest")
    mag, deg = np.hypot(gx, gy), np.degrees(np.arctan2(-gy, gx))
    edges = np.linspace(-180, 180, 19)
    hist = np.zeros(18)
    for i in range(1, 19):
        sel = (deg >= edges[i - 1]) & (deg <= edges[i]) if i == 1 else (deg > edges[i - 1]) & (deg <= edges[i])
        hist[i - 1] = mag[sel].sum()
    return hist / hist.sum()


@pytest.mark.parametrize("c", [1, 3])
def test_orientation_histogram_matches_the_reference(c):
    x = smooth_images(2, c, 30, 26, seed=3)
    ours = orientation_histogram(x)
    assert ours.shape == (2, 18) and torch.allclose(ours.sum(1), torch.ones(2, dtype=torch.float64))
    for n in range(2):
        assert np.allclose(ours[n].numpy(), reference_histogram(x[n]), atol=1e-9)


def test_orientation_histogram_bins_of_ramps():
    ramp = torch.arange(16, dtype=torch.float64).expand(1, 1, 16, 16) * 10   # brighter to the right
    assert orientation_histogram(ramp)[0].argmax() == 8                     # 0° ∈ (−20°, 0°]
    # 180°: −Gy is −0, and atan2(−0, −1) = −180° (IEEE, as in MATLAB): the closed first bin
    assert orientation_histogram(ramp.flip(-1))[0].argmax() == 0
    down = ramp.transpose(2, 3)                                             # brighter downwards
    assert orientation_histogram(down)[0].argmax() == 4                     # −90° ∈ (−100°, −80°]
    assert orientation_histogram(ramp)[0].max() == pytest.approx(1.0)
    assert orientation_histogram_intersection(ramp, down).item() == 0.0
    assert orientation_histogram_intersection(ramp, ramp).item() == pytest.approx(1.0)


def test_orientation_histogram_intersection_properties():
    x = smooth_images(3, 3, 32, 32, seed=4)
    y = smooth_images(3, 3, 20, 28, seed=6)                  # sizes may differ: histograms are global
    s = orientation_histogram_intersection(x, y)
    assert s.shape == (3,) and ((s > 0) & (s <= 1)).all()
    assert torch.allclose(s, orientation_histogram_intersection(y, x))
    assert torch.allclose(orientation_histogram_intersection(x, x), torch.ones(3, dtype=torch.float64))
    flat = torch.full((1, 3, 16, 16), 100.0)
    assert not orientation_histogram(flat).any()
    assert orientation_histogram_intersection(flat, x[:1]).item() == 0.0
    assert orientation_histogram_intersection(x[:1], y).shape == (3,)
    a = torch.tensor([[0.5, 0.5, 0.0]], dtype=torch.float64)
    assert histogram_intersection(a, torch.tensor([[0.0, 0.25, 0.75]], dtype=torch.float64)).item() == 0.25
    with pytest.raises(ValueError):
        orientation_histogram(torch.zeros(1, 2, 8, 8))


def test_image_similarities_of_inversion_results():
    """(N, R, K) measures per reconstruction: an exact copy scores 1 on both, noise far less."""
    from preimage.image_metrics import image_similarities
    torch.manual_seed(0)
    originals = F.avg_pool2d(torch.rand(2, 3, 32, 32), 5, 1, 2) * 255
    recon = torch.stack([originals, torch.rand(2, 3, 32, 32) * 255], 1)[:, :, None]  # (2, 2, 1, 3, 32, 32)
    sim = image_similarities(recon, originals)
    assert sim["ssim"].shape == (2, 2, 1) and sim["orientation"].shape == (2, 2, 1)
    assert torch.allclose(sim["ssim"][:, 0], torch.ones(2, 1, dtype=torch.float64))
    assert torch.allclose(sim["orientation"][:, 0], torch.ones(2, 1, dtype=torch.float64))
    assert (sim["ssim"][:, 1] < 0.5).all() and (sim["orientation"][:, 1] < sim["orientation"][:, 0]).all()
    small = image_similarities(recon[..., :8, :8], originals[..., :8, :8])  # too small for SSIM's window
    assert torch.isnan(small["ssim"]).all() and torch.isfinite(small["orientation"]).all()
