"""HOG: equality with VLFeat (cyvlfeat), differentiability, batching, validation, glyphs."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import eval_image_paths, seeded_noise, step_edge, vlfeat_hog
from preimage import compiled
from preimage.representations.glyph import hog_glyph
from preimage.representations import get_representation
from preimage.representations.hog import HOG

TOL = 1e-5  # max |ours - VLFeat|

#: The per-pixel stage's two forms (``HOG(kernel=...)``); the compiled one needs numba.
KERNELS = ["torch", pytest.param("compiled", marks=pytest.mark.skipif(
    not compiled.available(), reason="numba is not installed (the compiled HOG loops need it)"))]


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """One intra-op thread for this module: on a shared, oversubscribed CPU each multi-threaded op
    waits for a second core (a HOG forward measured 0.6 s with 2 threads vs 11 ms with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# (name, HOG kwargs, cyvlfeat kwargs, number of VLFeat channels compared)
CONFIGS = [
    ("hog", dict(variant="uoctti"), dict(variant="UoCTTI"), 27),
    ("hogb", dict(variant="uoctti", bilinear=True), dict(variant="UoCTTI", bilinear_interpolation=True), 27),
    ("hog31", dict(variant="uoctti", keep_texture=True), dict(variant="UoCTTI"), 31),
    ("hogb31", dict(variant="uoctti", bilinear=True, keep_texture=True),
     dict(variant="UoCTTI", bilinear_interpolation=True), 31),
    ("dt", dict(variant="dalaltriggs"), dict(variant="DalalTriggs"), 36),
    ("dtb", dict(variant="dalaltriggs", bilinear=True),
     dict(variant="DalalTriggs", bilinear_interpolation=True), 36),
]


def _eval_paths(k: int = 3):
    """k evaluation images spread over the (sorted) set."""
    paths = eval_image_paths()
    return paths[::max(1, len(paths) // k)][:k]


def _load(path, size, grey):
    """uint8-valued float32 (H, W) or (H, W, 3); size (H, W): resize, or 'crop' to 333x500."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if size == "crop":  # 333 x 500 crop (resize first if the image is smaller)
            if im.width < 500 or im.height < 333:
                im = im.resize((max(im.width, 500), max(im.height, 333)), Image.BILINEAR)
            im = im.crop((0, 0, 500, 333))
        else:
            im = im.resize((size[1], size[0]), Image.BILINEAR)
        a = np.asarray(im, dtype=np.float32)
    if grey:  # BT.601 luma: non-integer grey values
        a = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.ascontiguousarray(a)


def _ours(a: np.ndarray, **kw) -> np.ndarray:
    x = torch.from_numpy(a)
    x = x[None, None] if x.dim() == 2 else x.permute(2, 0, 1)[None]
    with torch.no_grad():
        return HOG(**kw)(x.contiguous())[0].permute(1, 2, 0).numpy()


def _compare(a, hog_kw, vl_kw, nch, cell=8):
    ref = vlfeat_hog(a, cell, **vl_kw)[..., :nch]
    ours = _ours(a, cell_size=cell, **hog_kw)
    assert ours.shape == ref.shape
    return float(np.abs(ours - ref).max())


# ---------------------------------------------------------------------------- shapes and registry
@pytest.mark.parametrize("kw, dim", [(dict(), 27), (dict(keep_texture=True), 31),
                                     (dict(variant="dalaltriggs"), 36), (dict(bilinear=True), 27),
                                     (dict(num_orientations=6), 18)])
@pytest.mark.parametrize("hw", [(227, 227), (228, 228), (333, 500), (8, 8), (11, 12)])
def test_output_shape(kw, dim, hw):
    H, W = hw
    m = HOG(**kw)
    out = m(torch.rand(2, 1, H, W) * 255)
    assert out.shape == (2, dim, (H + 4) // 8, (W + 4) // 8) == (2,) + m.output_shape(H, W)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0
    assert out[:, :27].max() <= 0.4 + 1e-6 and out.max() <= 0.2 * 9 / math.sqrt(18) + 1e-6


def test_registry_names():
    hog, hogb = get_representation("hog"), get_representation("hogb")
    assert isinstance(hog, HOG) and isinstance(hogb, HOG)
    assert (hog.variant, hog.bilinear, hogb.bilinear) == ("uoctti", False, True)
    assert hog.cell_size == 8 and hog.dim == 27
    assert tuple(hog.input_channels) == (1, 3) and hog.mean_pixel == 128.0 and hog.min_size == (8, 8)
    assert get_representation("hog", cell_size=4).min_size == (4, 4)


def test_validation():
    m = HOG()
    with pytest.raises(ValueError, match="at least 8×8"):
        m(torch.rand(1, 1, 7, 30))
    with pytest.raises(ValueError, match="channels"):
        m(torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        m(torch.rand(16, 16))
    with pytest.raises(ValueError, match="variant"):
        HOG(variant="felzenszwalb")
    with pytest.raises(ValueError, match="keep_texture"):
        HOG(variant="dalaltriggs", keep_texture=True)


# ---------------------------------------------------------------------------- equality with VLFeat
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("grey", [True, False], ids=["grey", "colour"])
@pytest.mark.parametrize("size", [(227, 227), (224, 224), "crop"], ids=["227", "224", "333x500"])
def test_matches_vlfeat_real_images(size, grey, kernel):
    worst = {}
    for path in _eval_paths(6):
        a = _load(path, size, grey)
        for name, hk, vk, nch in CONFIGS:
            worst[name] = max(worst.get(name, 0.0), _compare(a, dict(hk, kernel=kernel), vk, nch))
    assert max(worst.values()) <= TOL, worst


@pytest.mark.parametrize("grey", [True, False], ids=["grey", "colour"])
def test_matches_vlfeat_low_contrast(grey):
    # Low contrast: the 1e-4 in the block norm is no longer negligible (VLFeat's scale must be kept).
    path = _eval_paths(1)[0]
    img = _load(path, (227, 227), grey)
    a = (img * np.float32(0.01) + np.float32(100.0)).astype(np.float32)
    res = {name: _compare(a, hk, vk, nch) for name, hk, vk, nch in CONFIGS}
    assert max(res.values()) <= TOL, res
    # HOG is contrast invariant but for that epsilon: here it changes the code visibly
    assert np.abs(_ours(a) - _ours(img)).max() > 1e-3


def test_matches_vlfeat_colour_ties():
    """Ties between colour channels: VLFeat takes the first channel with the largest gradient."""
    yy, xx = np.mgrid[0:48, 0:64].astype(np.float32)
    left = xx < 32
    # equal |gradient| in differently oriented channels: (6, 8), (8, 6), (10, 0) -> R must win;
    # on the right G and B tie ((6, 8) and (8, -6)) above a weaker R -> G must win
    r = np.where(left, 3 * xx + 4 * yy, xx)
    g = np.where(left, 4 * xx + 3 * yy, 3 * xx + 4 * yy)
    b = np.where(left, 5 * xx, 4 * xx - 3 * yy + 200)
    ramps = np.ascontiguousarray(np.stack([r, g, b], axis=-1), dtype=np.float32)
    path = _eval_paths(1)[0]
    grey = _load(path, (96, 112), grey=True)
    rgb = _load(path, (96, 112), grey=False)
    tied = np.stack([grey, grey, grey], axis=-1)  # every channel equal
    partial = rgb.copy()
    partial[..., 2] = partial[..., 0]  # R == B everywhere
    for a in (ramps, 255.0 - ramps, tied, partial):
        a = np.ascontiguousarray(a, dtype=np.float32)
        res = {name: _compare(a, hk, vk, nch) for name, hk, vk, nch in CONFIGS}
        assert max(res.values()) <= TOL, res
    # the tie-break is visible: R's orientation (53°: bins 2/3) wins on the left, not G's or B's
    code = _ours(ramps)
    assert code[2, 1, :18].argmax() == 3 and code[2, 6, :18].argmax() == 3
    assert np.abs(_ours(tied) - _ours(grey)).max() == 0


@pytest.mark.parametrize("cell, orientations", [(4, 9), (6, 9), (8, 6), (5, 8)])
def test_matches_vlfeat_other_parameters(cell, orientations):
    path = _eval_paths(1)[0]
    for grey in (True, False):
        a = _load(path, (101, 87), grey)
        for name, hk, vk, nch in CONFIGS:
            nch = {27: 3 * orientations, 31: 3 * orientations + 4, 36: 4 * orientations}[nch]
            ref = vlfeat_hog(a, cell, n_orientations=orientations, **vk)[..., :nch]
            ours = _ours(a, cell_size=cell, num_orientations=orientations, **hk)
            assert ours.shape == ref.shape
            assert np.abs(ours - ref).max() <= TOL, (name, grey)


def test_matches_vlfeat_synthetic_orientations():
    """Ramps at many angles, including exact ties between bins and exact bin centres."""
    yy, xx = np.mgrid[0:40, 0:48].astype(np.float64)
    for deg in list(range(0, 360, 15)) + [10.0, 30.0, 10.0 + 1e-4, 33.3, 100.0, 271.0]:
        t = math.radians(deg)
        a = (128 + 1.7 * (np.cos(t) * xx + np.sin(t) * yy)).astype(np.float32)
        for name, hk, vk, nch in CONFIGS:
            assert _compare(a, hk, vk, nch) <= TOL, (deg, name)


def test_orientation_convention():
    """A ramp brightening to the right is bin 0, downward bin 4 (80°: 90° ties 4/5, first wins),
    leftward bin 9 (VLFeat's conventions, x right, y down)."""
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float32)
    for ramp, expected in ((xx, 0), (yy, 4), (-xx, 9)):
        code = _ours(np.ascontiguousarray(ramp * 3))
        assert code[1, 1, :18].argmax() == expected


# ---------------------------------------------------------------------------- batching, dtypes
def test_batch_equals_single_and_float64():
    torch.manual_seed(0)
    x = torch.rand(3, 3, 45, 61) * 255
    for bilinear in (False, True):
        m = HOG(bilinear=bilinear)
        batch = m(x)
        single = torch.cat([m(x[i:i + 1]) for i in range(3)])
        assert torch.allclose(batch, single, atol=1e-6, rtol=0)
        assert (m(x.double()).float() - batch).abs().max() < 1e-4
        strided = x.transpose(2, 3).contiguous().transpose(2, 3)
        for layout in (x.contiguous(memory_format=torch.channels_last), strided):
            assert torch.equal(m(layout), batch)
        half = m(x.to(torch.bfloat16))
        assert half.dtype == torch.bfloat16 and torch.isfinite(half.float()).all()


def test_flat_image_and_out_of_range_values():
    m = HOG(bilinear=True)
    x = torch.full((1, 1, 24, 24), 300.0, requires_grad=True)
    out = m(x)
    assert out.abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    y = (torch.randn(2, 3, 30, 30) * 200).requires_grad_()  # negative and > 255 values
    out = m(y)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    assert torch.isfinite(y.grad).all()
    z = torch.rand(1, 3, 20, 20) * 255
    z[0, 1, 5, 5] = float("nan")  # a diverged optimisation: NaNs propagate, no crash
    assert torch.isnan(m(z)).any()


# ---------------------------------------------------------------------------- gradients
def _preclamp(m: HOG, x: torch.Tensor) -> tuple[float, float]:
    """(min |f_b·h − 0.2|, max f_b·h) over all normalised values before the 0.2 clamp."""
    with torch.no_grad():
        hd = m._histograms(x)
    n = m.num_orientations
    hu = hd[:, :n] + hd[:, n:]
    norm = torch.nn.functional.pad((hu * hu).sum(1, keepdim=True), (1, 1, 1, 1), mode="replicate")
    blocks = norm[..., :-1, :-1] + norm[..., :-1, 1:] + norm[..., 1:, :-1] + norm[..., 1:, 1:]
    f = 1 / torch.sqrt(blocks + 1e-4)
    vals = torch.stack([f[..., i:i + hd.shape[-2], j:j + hd.shape[-1]] * torch.cat([hd, hu], 1)
                        for i in (0, 1) for j in (0, 1)])
    return float((vals - 0.2).abs().min()), float(vals.max())


def _smooth_input(C, H, W, seed):
    """A float64 image with an edge (so the 0.2 clamp is active) plus noise, chosen so that no
    pixel is near an orientation-bin boundary, a bin centre, or a colour tie."""
    x = seeded_noise((1, C, H, W), seed, scale=60, offset=60, step=120)
    gx = x[:, :, 1:-1, 2:] - x[:, :, 1:-1, :-2]
    gy = x[:, :, 2:, 1:-1] - x[:, :, :-2, 1:-1]
    n2 = gx * gx + gy * gy
    top2 = n2.topk(min(2, C), dim=1).values
    pos = torch.atan2(gy, gx) * (9 / math.pi)  # in bin units
    frac = pos - torch.floor(pos)
    ok = ((frac - 0.5).abs() > 1e-3).all() and (frac > 1e-3).all() and (frac < 1 - 1e-3).all()
    if C > 1:
        ok = ok and bool((top2[:, 0] - top2[:, 1] > 1e-3).all())
    return x, bool(ok)


@pytest.mark.parametrize("kw", [dict(), dict(bilinear=True), dict(bilinear=True, keep_texture=True),
                                dict(variant="dalaltriggs")],
                         ids=["hog", "hogb", "hogb31", "dalaltriggs"])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck(kw, C, kernel):
    _gradcheck(HOG(kernel=kernel, **kw), C, 18, 17, fast_mode=True)


@pytest.mark.parametrize("kw", [dict(), dict(bilinear=True)], ids=["hog", "hogb"])
@pytest.mark.parametrize("kernel", KERNELS)
def test_gradcheck_full_jacobian(kw, kernel):
    _gradcheck(HOG(kernel=kernel, keep_texture=True, **kw), 1, 13, 12, fast_mode=False)
    _gradcheck(HOG(kernel=kernel, **kw), 3, 11, 10, fast_mode=False)


# ---------------------------------------------------------------------------- the compiled loops
@pytest.mark.skipif(not compiled.available(), reason="numba is not installed (the compiled HOG loops need it)")
@pytest.mark.parametrize("name, hk", [(c[0], c[1]) for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_compiled_equals_torch(name, hk):
    """Codes and gradients of the compiled loops and of the torch form agree to float rounding, on
    a batch of real images (grey and colour) and on noise outside 0–255."""
    paths = _eval_paths(2)
    grey = torch.stack([torch.from_numpy(_load(p, (67, 85), True))[None] for p in paths])
    colour = torch.stack([torch.from_numpy(_load(p, (67, 85), False)).permute(2, 0, 1) for p in paths])
    noise = seeded_noise((2, 3, 40, 33), 0, scale=400, offset=-50).float()
    for x in (grey, colour, noise):
        codes, grads = [], []
        for kernel in ("torch", "compiled"):
            xi = x.clone().requires_grad_(True)
            code = HOG(kernel=kernel, **hk)(xi)
            weight = torch.linspace(-1, 1, code.numel()).view_as(code)
            (code * weight).sum().backward()
            codes.append(code.detach())
            grads.append(xi.grad)
        assert (codes[0] - codes[1]).abs().max() <= 1e-6 * codes[0].abs().max().clamp_min(1)
        assert (grads[0] - grads[1]).abs().max() <= 1e-5 * grads[0].abs().max()


@pytest.mark.skipif(not compiled.available(), reason="numba is not installed (the compiled HOG loops need it)")
def test_compiled_switch():
    """``kernel`` picks the form; ``compiled.disabled()`` turns "auto" to torch; a bad kernel is refused."""
    x = torch.rand(1, 1, 24, 24, requires_grad=True) * 255

    def backward_name(m):
        return type(m(x).grad_fn).__name__

    assert backward_name(HOG()) == "_CompiledUoCTTIBackward"
    assert backward_name(HOG(keep_texture=True)) != "_CompiledUoCTTIBackward"
    assert backward_name(HOG(kernel="torch")) == "_ClampedBlocksBackward"
    with compiled.disabled():
        assert not compiled.enabled()
        assert backward_name(HOG()) == "_ClampedBlocksBackward"
        assert backward_name(HOG(kernel="compiled")) == "_CompiledUoCTTIBackward"  # asked for by name
    assert compiled.enabled()
    with pytest.raises(ValueError, match="kernel"):
        HOG(kernel="cuda")
    probe = ("from preimage import compiled; from preimage.representations.hog import HOG; import torch; "
             "print(compiled.enabled(), type(HOG()(torch.rand(1, 1, 24, 24, requires_grad=True)).grad_fn).__name__)")
    env = dict(os.environ, PREIMAGE_COMPILED="0")
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "_ClampedBlocksBackward"]


def _gradcheck(m, C, H, W, fast_mode):
    for seed in range(50):
        x, ok = _smooth_input(C, H, W, seed)
        margin, top = _preclamp(m, x)
        # away from the clamp's kink, and the clamp active somewhere (so its gradient is exercised)
        if ok and margin > 1e-4 and top > 0.2:
            break
    else:
        pytest.fail("no smooth test input found")
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast_mode)


def test_gradients_finite_on_integer_images():
    """Integer images give gradients exactly at bin centres (acos' derivative is infinite there)."""
    path = _eval_paths(1)[0]
    x = torch.from_numpy(_load(path, (64, 64), grey=False)).permute(2, 0, 1)[None].contiguous()
    x = x.requires_grad_(True)
    for bilinear in (False, True):
        x.grad = None
        HOG(bilinear=bilinear)(x).square().sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_cuda_matches_cpu():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 67, 85) * 255
    for bilinear in (False, True):
        m = HOG(bilinear=bilinear)
        cpu = m(x)
        xc = x.cuda().requires_grad_(True)
        gpu = m(xc)
        gpu.sum().backward()
        assert gpu.device.type == "cuda" and torch.isfinite(xc.grad).all()
        assert (gpu.cpu() - cpu).abs().max() < 1e-4


# ---------------------------------------------------------------------------- glyphs
@pytest.mark.parametrize("variant", ["uoctti", "dalaltriggs"])
def test_glyph_shape_and_range(variant):
    code = HOG(variant=variant)(torch.rand(1, 3, 50, 70) * 255)[0]
    g = hog_glyph(code, cell_px=12, variant=variant)
    assert g.shape == (1, code.shape[1] * 12, code.shape[2] * 12)
    assert g.min() >= 0 and abs(float(g.max()) - 255.0) < 1e-3
    assert hog_glyph(HOG(keep_texture=True)(torch.rand(1, 1, 32, 32) * 255)[0]).shape == (1, 64, 64)
    assert hog_glyph(torch.zeros(27, 2, 3)).abs().max() == 0
    with pytest.raises(ValueError):
        hog_glyph(code[None])


@pytest.mark.parametrize("vertical", [True, False], ids=["vertical", "horizontal"])
@pytest.mark.parametrize("variant", ["uoctti", "dalaltriggs"])
def test_glyph_bars_follow_edges(vertical, variant):
    """A vertical edge gives vertical bars (perpendicular to its horizontal gradient)."""
    P = 16
    img = step_edge(vertical=vertical)
    code = HOG(variant=variant)(img)[0]
    g = hog_glyph(code, cell_px=P, variant=variant)[0]
    col = code.shape[2] // 2 - 1 if vertical else 3  # a cell next to the edge
    row = 3 if vertical else code.shape[1] // 2 - 1
    patch = g[row * P:(row + 1) * P, col * P:(col + 1) * P]
    c = P // 2
    column_energy = patch[:, c - 1:c + 1].sum()  # the central vertical strip
    row_energy = patch[c - 1:c + 1, :].sum()     # the central horizontal strip
    if not vertical:
        column_energy, row_energy = row_energy, column_energy
    assert patch.max() > 100
    assert column_energy > 3 * row_energy
    # far from the edge: nothing drawn
    assert g[:, :P].max() == 0 if vertical else g[:P, :].max() == 0
