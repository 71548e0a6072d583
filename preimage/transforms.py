"""Random, differentiable, batched transforms of the image at each optimisation step.

Applied to ``x`` ``(N, C, H, W)`` before the representation, either to the image or to ``u``
(with every padding but zeros, ``T(m + σ·u) = m + σ·T(u)``: each output pixel is a weighted mean of
input pixels); gradients flow back through them. Each
call draws its parameters from a ``torch.Generator`` (CPU) and returns the transformed batch,
same shape, and, with ``return_params=True``, a :class:`Applied` record of what it did:

* :class:`Jitter`: the IJCV 2016 jitter. For a layer of stride ``s`` the jitter is
  ``J = max(round(s/4), 1)`` (:func:`jitter_for_stride`, MATLAB rounding); offsets
  ``o ∈ {0 … J−1}`` per axis, shared by the batch (or per sample), shift the image by
  ``d = o − ⌊(J−1)/2⌋`` pixels: ``out[..., i, j] = x[..., i + dy, j + dx]``, the borders filled by
  reflection (IJCV instead optimises a canvas larger by J−1 and crops it; the offsets are the
  same). Integer shifts: no interpolation.
* :class:`RandomAffine` (and :func:`RandomScale`, :func:`RandomRotation`): zoom by a factor
  uniform in ``scale`` and rotation by an angle uniform in ``±degrees`` about the centre, by
  ``affine_grid``/``grid_sample`` (bilinear, reflection padding).
* :class:`Compose`: a list of transforms, applied in order.

Keeping the data term aligned: the transforms make the representation see a moved image, while
the target code is fixed. Two tools: (1) a strength in [0, 1] scales every transform (jitter J,
scale − 1, angle) and :func:`decay` gives a schedule that takes it to 0 over the run (``kind="step"``
is IJCV's: full jitter, then a final stage without); (2) :func:`align_code` applies the recorded
transform (:attr:`Applied.theta`, in the normalised coordinates of ``affine_grid``, the same for
the image and a code map that spans it) to the target code, so the data term compares codes of
the same scene; exact for shifts by whole multiples of a layer's stride, an interpolation
otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F


def _round_half_up(v: float) -> int:
    return int(math.floor(v + 0.5))


def jitter_for_stride(stride: int) -> int:
    """IJCV 2016's jitter for a layer of total ``stride`` (pixels): ``max(round(stride/4), 1)``,
    halves rounded up as MATLAB's ``round`` does."""
    if stride < 1:
        raise ValueError(f"stride must be at least 1, got {stride}")
    return max(_round_half_up(stride / 4), 1)


def decay(step: int, steps: int, until: float = 1.0, kind: str = "linear") -> float:
    """Transform strength in [0, 1] at ``step`` of ``steps``: 1 at step 0, reaching 0 at step
    ``until·steps`` and 0 from there on (so the last ``(1 − until)·steps`` steps are aligned).

    ``kind``: ``"linear"``, ``"cosine"`` (half a cosine) or ``"step"`` (1, then 0: IJCV 2016's
    300 jittered + 50 plain iterations are ``until = 300/350``).
    """
    if steps < 1 or not 0 < until <= 1:
        raise ValueError(f"need steps ≥ 1 and 0 < until ≤ 1, got steps={steps}, until={until}")
    t = min(max(step / (until * steps), 0.0), 1.0)
    if kind == "linear":
        return 1.0 - t
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if kind == "step":
        return 1.0 if t < 1.0 else 0.0
    raise ValueError(f"kind must be 'linear', 'cosine' or 'step', not {kind!r}")


@dataclass
class Applied:
    """What a transform did to a batch of N.

    ``theta``: ``(N, 2, 3)``, the map from output to input coordinates in ``affine_grid``'s
    normalised coordinates (``align_corners=False``): ``out(p) = x(theta·[p, 1])``.
    ``shift``: ``(N, 2)`` long, ``(dy, dx)`` in pixels, the sum of the jitters' shifts
    (``out[..., i, j] = x[..., i + dy, j + dx]`` when jitter is all there is).
    """

    theta: torch.Tensor
    shift: torch.Tensor

    @staticmethod
    def identity(n: int, device=None) -> "Applied":
        """No transform for a batch of ``n``."""
        theta = torch.eye(2, 3, device=device).expand(n, 2, 3).clone()
        return Applied(theta, torch.zeros(n, 2, dtype=torch.long, device=device))

    def then(self, other: "Applied") -> "Applied":
        """This transform followed by ``other`` (``other`` applied to this one's output)."""
        a = _homogeneous(self.theta)
        b = _homogeneous(other.theta.to(self.theta))
        return Applied((a @ b)[:, :2], self.shift + other.shift.to(self.shift.device))


def _homogeneous(theta: torch.Tensor) -> torch.Tensor:
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=theta.dtype, device=theta.device)
    return torch.cat([theta, bottom.expand(theta.shape[0], 1, 3)], 1)


class Transform:
    """Base class: ``t(x, generator=None, strength=1.0, return_params=False)``.

    ``x``: ``(N, C, H, W)``; returns the transformed ``(N, C, H, W)``, and the :class:`Applied`
    record when ``return_params``. ``strength`` ∈ [0, 1] scales the transform (0: identity).
    ``generator``: a CPU ``torch.Generator`` (default: torch's global one).
    """

    def apply(self, x: torch.Tensor, generator: torch.Generator | None,
              strength: float) -> tuple[torch.Tensor, Applied]:
        """The transform of ``x`` ``(N, C, H, W)`` and its record; what subclasses implement."""
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None,
                 strength: float = 1.0, return_params: bool = False):
        if x.dim() != 4:
            raise ValueError(f"transforms take (N, C, H, W) batches, got shape {tuple(x.shape)}")
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must lie in [0, 1], got {strength}")
        out, applied = self.apply(x, generator, float(strength))
        return (out, applied) if return_params else out


class Jitter(Transform):
    """Random integer shift by ``d ∈ {−⌊(J−1)/2⌋ … J−1−⌊(J−1)/2⌋}`` per axis (see the module
    docstring); at strength t the jitter is ``1 + round((J − 1)·t)``.

    Args:
        jitter: J ≥ 1 (1: no shift); :func:`jitter_for_stride` gives IJCV's value for a layer.
        per_sample: an independent shift per sample (default: one for the batch, as IJCV).
        pad_mode: how the uncovered border is filled: ``"reflect"``, ``"replicate"``,
            ``"circular"`` or ``"constant"`` (zeros), as :func:`torch.nn.functional.pad`.
    """

    def __init__(self, jitter: int, per_sample: bool = False, pad_mode: str = "reflect"):
        if int(jitter) < 1:
            raise ValueError(f"jitter must be at least 1, got {jitter}")
        self.jitter, self.per_sample, self.pad_mode = int(jitter), bool(per_sample), pad_mode

    def apply(self, x, generator, strength):
        """Shift ``x`` ``(N, C, H, W)``; the record's ``shift`` is ``(dy, dx)`` per sample."""
        n, _, h, w = x.shape
        j = 1 + _round_half_up((self.jitter - 1) * strength)
        if j == 1:
            return x, Applied.identity(n, x.device)
        c = (j - 1) // 2
        o = torch.randint(j, (n if self.per_sample else 1, 2), generator=generator)
        o = o.expand(n, 2).to(x.device)
        pad = (c, j - 1 - c, c, j - 1 - c)
        xp = F.pad(x, pad, mode=self.pad_mode)
        rows = o[:, 0:1] + torch.arange(h, device=x.device)  # (N, H)
        cols = o[:, 1:2] + torch.arange(w, device=x.device)  # (N, W)
        if self.per_sample:
            idx = torch.arange(n, device=x.device)[:, None, None]
            out = xp[idx, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        else:
            oy, ox = int(o[0, 0]), int(o[0, 1])
            out = xp[..., oy:oy + h, ox:ox + w]
        shift = o - c
        theta = torch.eye(2, 3, device=x.device).repeat(n, 1, 1)
        theta[:, 0, 2] = 2.0 * shift[:, 1].float() / w
        theta[:, 1, 2] = 2.0 * shift[:, 0].float() / h
        return out, Applied(theta, shift)


class RandomAffine(Transform):
    """Random zoom and rotation about the image centre (see the module docstring).

    Args:
        scale: ``(lo, hi)``, zoom factors (> 1 magnifies); at strength t, ``1 + (s − 1)·t``.
        degrees: largest rotation angle; at strength t, ``degrees·t``.
        per_sample: independent parameters per sample (default: one draw for the batch).
        padding_mode: ``grid_sample``'s: ``"reflection"``, ``"border"`` or ``"zeros"``.
    """

    def __init__(self, scale: tuple[float, float] = (1.0, 1.0), degrees: float = 0.0,
                 per_sample: bool = False, padding_mode: str = "reflection"):
        lo, hi = (float(s) for s in scale)
        if not 0 < lo <= hi or degrees < 0:
            raise ValueError(f"need 0 < scale[0] ≤ scale[1] and degrees ≥ 0, got {scale}, {degrees}")
        self.scale, self.degrees = (lo, hi), float(degrees)
        self.per_sample, self.padding_mode = bool(per_sample), padding_mode

    def apply(self, x, generator, strength):
        """Zoom and rotate ``x`` ``(N, C, H, W)``; the record's ``theta`` is the map applied."""
        n, _, h, w = x.shape
        lo, hi = (1.0 + (s - 1.0) * strength for s in self.scale)
        deg = self.degrees * strength
        if lo == hi == 1.0 and deg == 0.0:
            return x, Applied.identity(n, x.device)
        m = n if self.per_sample else 1
        r = torch.rand((m, 2), generator=generator, dtype=torch.float64).expand(n, 2)
        s = lo + (hi - lo) * r[:, 0]
        a = torch.deg2rad(deg * (2.0 * r[:, 1] - 1.0))
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        # out(p) = x(A·p) in pixel units about the centre, A = R(a)/s; in normalised units
        # (x/(W/2), y/(H/2)) the matrix is D⁻¹·A·D with D = diag(W/2, H/2)
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w
        theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
        theta = theta.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
        out = warp(x, theta, self.padding_mode)
        return out, Applied(theta.float(), torch.zeros(n, 2, dtype=torch.long, device=x.device))


def RandomScale(scale: tuple[float, float], per_sample: bool = False) -> RandomAffine:
    """A :class:`RandomAffine` that zooms only, by a factor uniform in ``scale``."""
    return RandomAffine(scale=scale, per_sample=per_sample)


def RandomRotation(degrees: float, per_sample: bool = False) -> RandomAffine:
    """A :class:`RandomAffine` that rotates only, by an angle uniform in ``±degrees``."""
    return RandomAffine(degrees=degrees, per_sample=per_sample)


class Compose(Transform):
    """Transforms applied in order (a list works too: ``Compose([Jitter(2), RandomScale(...)])``);
    the record composes theirs (:meth:`Applied.then`). One ``generator`` and ``strength`` for all."""

    def __init__(self, transforms: Sequence[Transform]):
        self.transforms = list(transforms)

    def apply(self, x, generator, strength):
        """Each transform in turn on ``x`` ``(N, C, H, W)``; the records composed."""
        applied = Applied.identity(x.shape[0], x.device)
        for t in self.transforms:
            x, a = t.apply(x, generator, strength)
            applied = applied.then(a)
        return x, applied


def warp(x: torch.Tensor, theta: torch.Tensor, padding_mode: str = "reflection") -> torch.Tensor:
    """``out(p) = x(theta·[p, 1])``: ``x`` ``(N, C, H, W)``, ``theta`` ``(N, 2, 3)`` (normalised
    coordinates, ``align_corners=False``), bilinear → ``(N, C, H, W)``."""
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def align_code(code: torch.Tensor, applied: Applied, padding_mode: str = "border") -> torch.Tensor:
    """The target code moved as the image was: ``code`` ``(N, K, h, w)`` (a spatial map spanning
    the image) → ``(N, K, h, w)`` warped by ``applied.theta``; codes without a spatial grid
    (``(N, K)``) are returned unchanged. Exact for jitter by whole multiples of the layer's stride
    (away from the borders), bilinear interpolation of the code otherwise."""
    if code.dim() != 4:
        return code
    if torch.equal(applied.theta, Applied.identity(code.shape[0], applied.theta.device).theta):
        return code
    return warp(code, applied.theta, padding_mode)
