"""Random differentiable transforms (preimage.transforms): the IJCV jitter rule, shifts, affine
maps, composition, the decay schedule and re-aligning a target code."""

import math

import pytest
import torch
import torch.nn.functional as F

from preimage.transforms import (Applied, Compose, Jitter, RandomAffine, RandomRotation, RandomScale,
                                 align_code, decay, jitter_for_stride, warp)


pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_jitter_for_stride_is_a_quarter_rounded_as_matlab():
    assert [jitter_for_stride(s) for s in (1, 2, 4, 6, 8, 10, 16, 32)] == [1, 1, 1, 2, 2, 3, 4, 8]
    with pytest.raises(ValueError):
        jitter_for_stride(0)


def test_decay_schedules():
    assert decay(0, 100) == 1.0 and decay(50, 100) == pytest.approx(0.5) and decay(100, 100) == 0.0
    assert decay(40, 100, until=0.8) == pytest.approx(0.5) and decay(90, 100, until=0.8) == 0.0
    assert decay(50, 100, kind="cosine") == pytest.approx(0.5) and decay(0, 100, kind="cosine") == 1.0
    assert decay(299, 350, until=300 / 350, kind="step") == 1.0
    assert decay(300, 350, until=300 / 350, kind="step") == 0.0
    with pytest.raises(ValueError, match="kind"):
        decay(0, 10, kind="exp")
    with pytest.raises(ValueError):
        decay(0, 10, until=0)


def _shifted(x, dy, dx):
    """x[..., i + dy, j + dx] on the interior that stays inside the image."""
    h, w = x.shape[-2:]
    return x[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]


def _interior(out, dy, dx):
    h, w = out.shape[-2:]
    return out[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]


@pytest.mark.parametrize("per_sample", [False, True])
def test_jitter_shifts_by_the_recorded_offsets(per_sample):
    x = torch.randn(6, 2, 12, 10)
    t = Jitter(5, per_sample=per_sample)
    seen = set()
    for seed in range(8):
        out, a = t(x, gen(seed), return_params=True)
        assert out.shape == x.shape and a.shift.shape == (6, 2) and a.theta.shape == (6, 2, 3)
        if not per_sample:
            assert (a.shift == a.shift[0]).all()
        for n in range(6):
            dy, dx = a.shift[n].tolist()
            assert -2 <= dy <= 2 and -2 <= dx <= 2
            seen.add((dy, dx))
            assert torch.equal(_interior(out[n], dy, dx), _shifted(x[n], dy, dx))
    assert len(seen) > 5
    out2, a2 = t(x, gen(7), return_params=True)
    assert torch.equal(out2, out) and torch.equal(a2.shift, a.shift)  # seeded


def test_jitter_theta_is_the_same_shift_in_normalised_coordinates():
    x = torch.randn(4, 1, 9, 14)
    out, a = Jitter(4, per_sample=True, pad_mode="replicate")(x, gen(1), return_params=True)
    assert a.shift.abs().sum() > 0
    assert torch.allclose(warp(x, a.theta, "border"), out, atol=1e-5)


def test_jitter_strength_and_gradient():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out, a = Jitter(7)(x, gen(), strength=0.0, return_params=True)
    assert out is x and not a.shift.any()
    for seed in range(5):  # strength ½: J = 1 + round(6·½) = 4, shifts in {−1 … 2}
        _, a = Jitter(7)(x, gen(seed), strength=0.5, return_params=True)
        assert a.shift.min() >= -1 and a.shift.max() <= 2
    out = Jitter(3, pad_mode="circular")(x, gen())
    out.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))  # a circular shift moves every pixel once
    with pytest.raises(ValueError):
        Jitter(0)
    with pytest.raises(ValueError, match="strength"):
        Jitter(2)(x, strength=1.5)


def test_affine_identity_and_record():
    x = torch.randn(3, 2, 10, 16)
    out, a = RandomAffine()(x, gen(), return_params=True)
    assert out is x
    assert torch.allclose(warp(x, a.theta), x, atol=1e-5)
    out, a = RandomAffine(scale=(0.8, 1.25), degrees=30)(x, gen(), strength=0.0, return_params=True)
    assert out is x


@pytest.mark.parametrize("per_sample", [False, True])
def test_affine_theta_is_a_rotation_and_zoom_in_pixels(per_sample):
    h, w = 10, 16
    x = torch.randn(5, 1, h, w, requires_grad=True)
    out, a = RandomAffine(scale=(0.8, 1.25), degrees=30, per_sample=per_sample)(
        x, gen(3), return_params=True)
    d = torch.diag(torch.tensor([w / 2, h / 2]))
    m = d @ a.theta[:, :, :2].double().float() @ torch.linalg.inv(d)  # pixel units
    s = 1 / torch.linalg.det(m).sqrt()
    assert ((s >= 0.8 - 1e-5) & (s <= 1.25 + 1e-5)).all()
    r = m * s[:, None, None]
    assert torch.allclose(r @ r.transpose(1, 2), torch.eye(2).expand(5, 2, 2), atol=1e-5)
    angle = torch.rad2deg(torch.atan2(r[:, 1, 0], r[:, 0, 0]))
    assert (angle.abs() <= 30 + 1e-4).all()
    assert (a.theta[:, :, 2] == 0).all()
    assert (angle.unique().numel() == 1) != per_sample
    out.sum().backward()
    assert x.grad.abs().sum() > 0


def test_warp_rotates_a_square_image_exactly_by_90_degrees():
    x = torch.randn(1, 2, 8, 8)
    theta = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]]])  # out(p) = x(R(90°)·p)
    out = warp(x, theta)
    assert torch.allclose(out, torch.rot90(x, 1, dims=(2, 3)), atol=1e-5)  # anticlockwise on screen


def test_scale_and_rotation_helpers():
    s = RandomScale((0.9, 1.1))
    assert s.scale == (0.9, 1.1) and s.degrees == 0
    r = RandomRotation(10, per_sample=True)
    assert r.scale == (1.0, 1.0) and r.degrees == 10 and r.per_sample
    with pytest.raises(ValueError):
        RandomAffine(scale=(1.2, 1.1))


def test_compose_records_the_composition():
    x = torch.randn(2, 1, 12, 12)
    out, a = Compose([Jitter(5), Jitter(5)])(x, gen(2), return_params=True)
    g = gen(2)
    _, a1 = Jitter(5)(x, g, return_params=True)
    _, a2 = Jitter(5)(x, g, return_params=True)
    assert torch.equal(a.shift, a1.shift + a2.shift)
    assert torch.allclose(a.theta, a1.then(a2).theta)
    assert torch.allclose(a.theta[:, :, 2], a1.theta[:, :, 2] + a2.theta[:, :, 2])
    zoom = Applied(torch.tensor([[[0.5, 0.0, 0.0], [0.0, 0.5, 0.0]]]), torch.zeros(1, 2, dtype=torch.long))
    shift = Applied(torch.tensor([[[1.0, 0.0, 0.2], [0.0, 1.0, 0.0]]]), torch.zeros(1, 2, dtype=torch.long))
    # zoom, then shift its output: out(p) = x(0.5·(p + t))
    assert torch.allclose(zoom.then(shift).theta, torch.tensor([[[0.5, 0.0, 0.1], [0.0, 0.5, 0.0]]]))
    out, _ = Compose([Jitter(3), RandomAffine(scale=(0.9, 1.1), degrees=5)])(x, gen(), return_params=True)
    assert out.shape == x.shape


def test_align_code_realigns_a_strided_code():
    """A stride-4 code of a jittered image equals the aligned target code wherever the shift is a
    multiple of the stride (away from the borders)."""
    stride = 4
    x = torch.randn(16, 3, 32, 32)
    code = F.avg_pool2d(x, stride)                       # (16, 3, 8, 8)
    out, a = Jitter(9, per_sample=True)(x, gen(5), return_params=True)
    aligned = align_code(code, a)
    moved = F.avg_pool2d(out, stride)
    checked = 0
    for n in range(16):
        dy, dx = a.shift[n].tolist()
        if dy % stride or dx % stride:
            continue
        cy, cx = dy // stride, dx // stride
        assert torch.allclose(_interior(moved[n], cy, cx), _interior(aligned[n], cy, cx), atol=1e-5)
        checked += (dy, dx) != (0, 0)
    assert checked > 0
    flat = torch.randn(16, 10)
    assert align_code(flat, a) is flat
    assert align_code(code, Applied.identity(16)) is code


def test_transforms_reject_bad_input():
    with pytest.raises(ValueError, match="N, C, H, W"):
        Jitter(2)(torch.zeros(3, 8, 8))
    assert math.isclose(decay(5, 10), 0.5)
