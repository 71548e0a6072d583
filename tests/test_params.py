"""Image parameterisations (preimage.params): the contract, each parameterisation's maths, and
the colour statistics estimated from train/."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from preimage.errors import UnknownNameError
from preimage.objective import natural_sigma
from preimage.optim import gaussian_init
from preimage.paper import SIGMA_PER_PIXEL
from preimage.params import PARAMETERISATIONS, Parameterisation, get_parameterisation
from preimage.params.base import SigmaOutput
from preimage.params.colour import (COLOUR_COVARIANCE, COLOUR_MEAN, COLOUR_SQRT, fit_colour,
                                    principal_sqrt)
from preimage.params.dip import DIPParam, parameter_count
from preimage.params.fourier import colour_matrix, spectrum_scale

SHAPE = (3, 24, 20)
SMALL = {"pixel": {}, "fourier": {}, "dip": {"channels": (4, 8, 8), "skip": 2, "noise_channels": 4}}


pytestmark = pytest.mark.usefixtures("one_thread")


def make(name, n, shape=SHAPE, **kw):
    return get_parameterisation(name, shape, n, **{**SMALL[name], **kw})


# ---------------------------------------------------------------------------------------------
# the contract, for every parameterisation
# ---------------------------------------------------------------------------------------------

def test_registry_names_and_declared_optimisers():
    assert set(PARAMETERISATIONS) == {"pixel", "fourier", "dip"}
    for name, cls in PARAMETERISATIONS.items():
        assert issubclass(cls, Parameterisation) and cls.name == name
        assert cls.recommended_optimiser in ("momentum", "adam")
        assert cls.recommended_lr is None or cls.recommended_lr > 0
    with pytest.raises(UnknownNameError, match="valid names: pixel, fourier, dip"):
        get_parameterisation("wavelet", SHAPE, 1)
    for name in PARAMETERISATIONS:  # the keywords a caller may pass to any of them
        make(name, 1, mean_pixel=(124.0, 117.0, 104.0), sigma=2e4)


@pytest.mark.parametrize("name", ["pixel", "fourier", "dip"])
@pytest.mark.parametrize("shape", [SHAPE, (1, 17, 23)])
def test_forward_shape_dtype_and_natural_scale(name, shape):
    p = make(name, 3, shape).init(0)
    u = p()
    assert u.shape == (3,) + shape and u.dtype == torch.float32 and torch.isfinite(u).all()
    norms = u.detach().flatten(1).norm(dim=1)
    assert (norms > 1e-3).all() and (norms < 3).all()  # σ-units: a natural image has norm ≈ 1
    assert {q.requires_grad for q in p.parameters()} == {True}


@pytest.mark.parametrize("name", ["pixel", "fourier", "dip"])
def test_init_is_deterministic_and_restarts_pick_draws(name):
    a = make(name, 2).init(seed=3)()
    assert torch.equal(a, make(name, 2).init(seed=3)())
    assert not torch.equal(a, make(name, 2).init(seed=4)())
    assert torch.equal(a, make(name, 2).init(seed=torch.Generator().manual_seed(3))())
    # restarts [1, 0, 1, 0]: two images sharing the same two initialisations
    b = make(name, 4).init(seed=3, restarts=[1, 0, 1, 0])()
    for i, r in enumerate([1, 0, 1, 0]):
        assert torch.allclose(b[i], a[r], atol=1e-6, rtol=0), i
    # a batch of one gives restart 1 the same values as the batch of two
    c = make(name, 1).init(seed=3, restarts=[1])()
    assert torch.allclose(c[0], a[1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="restarts"):
        make(name, 2).init(0, restarts=[0])


@pytest.mark.parametrize("name", ["pixel", "fourier", "dip"])
def test_samples_are_independent(name):
    """Sample 0's output depends on sample 0's parameters only; its gradient touches nothing else
    (every parameter's rows are sample-major: view(N, -1) row n belongs to sample n)."""
    p = make(name, 3).init(0, restarts=[0, 1, 2])
    u0 = p()[0].detach().clone()
    p.init(0, restarts=[0, 2, 1])
    assert torch.allclose(p()[0], u0, atol=1e-6, rtol=0)
    p.zero_grad()
    p()[0].pow(2).sum().backward()
    touched = 0
    for q in p.parameters():
        g = q.grad.view(3, -1)
        assert g[1:].abs().max() == 0
        touched += int(g[0].abs().max() > 0)
    assert touched > 0


@pytest.mark.parametrize("name", ["pixel", "fourier", "dip"])
def test_recommended_optimiser_reduces_a_fitting_loss(name):
    torch.manual_seed(0)
    target = 0.5 * gaussian_init(2, SHAPE, seed=9)
    p = make(name, 2).init(1)
    lr = p.recommended_lr or 0.5
    opt = (torch.optim.Adam(p.parameters(), lr=lr) if p.recommended_optimiser == "adam"
           else torch.optim.SGD(p.parameters(), lr=lr, momentum=0.9))
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = (p() - target).pow(2).flatten(1).sum(1)
        losses.append(loss.detach())
        loss.sum().backward()
        opt.step()
    assert (losses[-1] < 0.7 * losses[0]).all(), (losses[0], losses[-1])


# ---------------------------------------------------------------------------------------------
# pixel
# ---------------------------------------------------------------------------------------------

def test_pixel_init_is_gaussian_init():
    p = get_parameterisation("pixel", SHAPE, 3).init(seed=5)
    assert torch.equal(p(), gaussian_init(3, SHAPE, seed=5))
    p.init(seed=5, restarts=[1, 1, 0])
    assert torch.equal(p(), gaussian_init(2, SHAPE, seed=5)[[1, 1, 0]])


# ---------------------------------------------------------------------------------------------
# output scaling (shared by fourier and dip)
# ---------------------------------------------------------------------------------------------

def test_sigma_output_unbounded_and_bounded():
    shape = (3, 8, 8)
    sigma = natural_sigma(shape)
    y = torch.randn((2,) + shape, dtype=torch.float64).float() * 50
    assert torch.allclose(SigmaOutput(shape)(y), y / sigma)
    mp = (120.0, 110.0, 100.0)
    out = SigmaOutput(shape, bounded=True, mean_pixel=mp)
    assert torch.allclose(out(torch.zeros((1,) + shape)), torch.zeros((1,) + shape), atol=1e-6)
    eps = 1e-2  # slope 1 at y = 0: a small y passes unchanged
    assert torch.allclose(out(torch.full((1,) + shape, eps)) * sigma, torch.full((1,) + shape, eps),
                          rtol=1e-3)
    image = torch.tensor(mp).view(1, 3, 1, 1) + sigma * out(1e6 * y)
    assert image.min() >= 0 and image.max() <= 255 and image.max() > 254
    with pytest.raises(ValueError, match="inside"):
        SigmaOutput(shape, bounded=True, mean_pixel=0.0)


def test_sigma_output_margin_widens_the_range_and_keeps_slope_one():
    shape = (3, 8, 8)
    sigma = natural_sigma(shape)
    mp = (120.0, 110.0, 100.0)
    out = SigmaOutput(shape, bounded=True, mean_pixel=mp, margin=20.0)
    assert torch.allclose(out(torch.zeros((1,) + shape)), torch.zeros((1,) + shape), atol=1e-6)
    eps = 1e-2
    assert torch.allclose(out(torch.full((1,) + shape, eps)) * sigma, torch.full((1,) + shape, eps),
                          rtol=1e-3)
    big = torch.tensor([-1e6, 1e6]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    image = torch.tensor(mp).view(1, 3, 1, 1) + sigma * out(big)
    assert torch.allclose(image[..., 0], torch.full((1, 3, 1), -20.0), atol=1e-3)
    assert torch.allclose(image[..., 1], torch.full((1, 3, 1), 275.0), atol=1e-3)
    # 0 and 255 are reached with finite fields (the point of the margin)
    y = torch.tensor([-400.0, 400.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    image = torch.tensor(mp).view(1, 3, 1, 1) + sigma * out(y)
    assert (image[..., 0] < 0).all() and (image[..., 1] > 255).all()
    with pytest.raises(ValueError, match="margin"):
        SigmaOutput(shape, bounded=True, margin=-1.0)


# ---------------------------------------------------------------------------------------------
# fourier
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(16, 20), (15, 17), (9, 32)])
def test_spectrum_gives_unit_pixel_variance(hw):
    """Unit-variance coefficients → unit variance per pixel on average (the documented k)."""
    h, w = hw
    g = torch.Generator().manual_seed(0)
    c = torch.randn((4000, h, w // 2 + 1, 2), generator=g, dtype=torch.float64)
    z = torch.fft.irfft2(torch.view_as_complex(c) * spectrum_scale(h, w), s=(h, w), norm="ortho")
    assert z.var(0).mean().item() == pytest.approx(1.0, rel=0.05)


def test_spectrum_is_one_over_frequency():
    s = spectrum_scale(32, 32)
    assert s[0, 1] / s[0, 2] == pytest.approx(2.0)   # f = 1/32 vs 2/32
    assert s[0, 0] == pytest.approx(s[0, 1])         # DC floored at the lowest frequency
    flat = spectrum_scale(32, 32, decay_power=0.0)
    assert torch.allclose(flat, flat[0, 0].expand_as(flat))


def test_fourier_colours_follow_train_covariance():
    p = get_parameterisation("fourier", (3, 16, 16), 1000, init_std=1.0).init(0)
    y = p.field().detach().double()
    cov = torch.cov(y.permute(1, 0, 2, 3).flatten(1))
    a = colour_matrix(3)
    assert torch.allclose(a @ a.T, cov, rtol=0.1, atol=0.05 * SIGMA_PER_PIXEL ** 2)
    corr = torch.tensor(COLOUR_COVARIANCE)
    corr = corr / torch.outer(corr.diag().sqrt(), corr.diag().sqrt())
    assert torch.allclose(cov / torch.outer(cov.diag().sqrt(), cov.diag().sqrt()), corr.double(), atol=0.03)
    assert (a @ a.T).trace().item() / 3 == pytest.approx(SIGMA_PER_PIXEL ** 2)
    u = p().detach()
    assert u.flatten(1).norm(dim=1).mean().item() == pytest.approx(1.0, rel=0.05)


def test_fourier_options():
    grey = get_parameterisation("fourier", (1, 16, 16), 1).init(0)
    assert torch.equal(grey.colour, torch.full((1, 1), SIGMA_PER_PIXEL, dtype=torch.float32))
    plain = get_parameterisation("fourier", (3, 16, 16), 1, decorrelate=False)
    assert torch.allclose(plain.colour, SIGMA_PER_PIXEL * torch.eye(3))
    b = get_parameterisation("fourier", (3, 16, 16), 2, bounded=True, init_std=3.0,
                             mean_pixel=(124.0, 117.0, 104.0)).init(0)
    image = torch.tensor((124.0, 117.0, 104.0)).view(1, 3, 1, 1) + b.output.sigma * b()
    assert image.min() >= 0 and image.max() <= 255 and image.max() - image.min() > 100


# ---------------------------------------------------------------------------------------------
# dip
# ---------------------------------------------------------------------------------------------

def test_dip_default_size_and_limits():
    assert parameter_count() == 264_863  # documented in preimage.params.dip
    with pytest.raises(ValueError, match="too small"):
        DIPParam((3, 16, 16), 1, channels=(4, 4, 4, 4))
    p = DIPParam((3, 16, 16), 2, channels=(4, 4, 4), bounded=True).init(0)
    image = 128 + p.output.sigma * p()
    assert image.min() > 0 and image.max() < 255


def test_dip_grouped_equals_separate_networks():
    """A batch of 3 generators gives what each gives alone (grouped convolutions are per sample)."""
    together = make("dip", 3).init(7)()
    for r in range(3):
        alone = make("dip", 1).init(7, restarts=[r])()
        assert torch.allclose(alone[0], together[r], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# colour statistics
# ---------------------------------------------------------------------------------------------

def test_colour_constants_are_consistent():
    a = torch.tensor(COLOUR_SQRT, dtype=torch.float64)
    cov = torch.tensor(COLOUR_COVARIANCE, dtype=torch.float64)
    assert torch.allclose(a, a.T)
    assert torch.allclose(a @ a.T, cov, rtol=1e-6)
    assert torch.allclose(principal_sqrt(cov), a, rtol=1e-6)
    assert all(0 < m < 255 for m in COLOUR_MEAN)


def test_fit_colour_on_synthetic_images(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), rng.integers(0, 256, (4, 3, 3), dtype=np.uint8)]
    paths = []
    for i, arr in enumerate(arrays):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(arr).save(paths[-1])
    fit = fit_colour(paths)
    pixels = np.concatenate([a.reshape(-1, 3) for a in arrays]).astype(np.float64)
    assert fit["pixels"] == len(pixels) and fit["images"] == 2
    assert np.allclose(fit["mean"], pixels.mean(0))
    assert np.allclose(fit["covariance"], np.cov(pixels.T, bias=True))
    s = np.array(fit["sqrt"])
    assert np.allclose(s @ s.T, fit["covariance"]) and np.allclose(s, s.T)
    with pytest.raises(ValueError, match="no images"):
        fit_colour([])


def test_colour_constants_match_train_images(shared):
    """The stored constants are what fit_colour computes from train/ (to 1e-3, relative)."""
    fit = fit_colour()
    assert fit["images"] == 200
    for key, const in (("mean", COLOUR_MEAN), ("covariance", COLOUR_COVARIANCE), ("sqrt", COLOUR_SQRT)):
        assert np.allclose(fit[key], const, rtol=1e-3, atol=1e-3), key


def test_fit_colour_script_quick(shared, monkeypatch, capsys):
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(bench))
    monkeypatch.setattr(sys, "argv", ["fit_colour.py", "--quick"])
    runpy.run_path(str(bench / "fit_colour.py"), run_name="__main__")
    result = json.loads(capsys.readouterr().out)
    assert result["benchmark"] == "fit_colour" and result["images"] == 4
    assert np.array(result["sqrt"]).shape == (3, 3)
