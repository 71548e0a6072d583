"""The inversion objective of Mahendran & Vedaldi (2015), independent of any representation.

For a batch of optimisation variables ``u`` (mean-subtracted images in σ-normalised units, so a
natural image has ‖u‖ ≈ 1) the energy of sample ``n`` is::

    E_n(u) = ‖M ⊙ (Φ(m + σ·u_n) − Φ₀ₙ)‖² / ‖M ⊙ Φ₀ₙ‖²      (data term, masked)
           + λ_α,n · Σ |u_n|^α                             (α-norm prior, α = 6)
           + λ_V,n · Σ_ij ((u_{i,j+1} − u_ij)² + (u_{i+1,j} − u_ij)²)^{β/2}   (TV^β, over channels)

where ``m`` is the representation's ``mean_pixel`` (0–255 scale) and σ the average Euclidean
norm of natural images of this size. Every term is per sample, so N images × R restarts × K
regularisation settings are one batch whose gradients stay independent.

Scaling with image size
-----------------------
σ is proportional to √(C·H·W): the authors' value 27098.12 for a mean-subtracted 227×227×3 image
is ≈ 68.9 grey levels RMS per pixel (:data:`preimage.paper.SIGMA_PER_PIXEL`). The paper's heuristics
λ_α ≈ σ^α/(N·B^α) and λ_V ≈ σ^β/(N·(aB)^β) (N pixels, B = 128, a = 1%) therefore scale as
N^{α/2−1} and N^{β/2−1}. The defaults (:func:`default_lambdas`) are the paper's fixed values
(λ_α = 2.16e8, λ_V = 5 at β = 2) at the reference size 227×227×3, carried to other sizes by that
law, so the balance between the terms does not change with the image size. The literal heuristic
(``preset="heuristic"``) is available; with a = 1 % it gives λ_V ≈ 8.7e3 at 227×227×3, three
orders of magnitude above the paper's own choice, so it is not the default.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from . import compiled
from .errors import InvalidTargetError

from .paper import (HEURISTIC_A, HEURISTIC_B, LAMBDA_ALPHA, LAMBDA_TV, REFERENCE_SHAPE,
                    SIGMA_PER_PIXEL)


def natural_sigma(shape: Sequence[int]) -> float:
    """σ for images of ``shape = (C, H, W)``: the average norm of a natural image that size."""
    c, h, w = shape[-3:]
    return SIGMA_PER_PIXEL * math.sqrt(c * h * w)


def heuristic_lambdas(shape: Sequence[int], alpha: float = 6.0, beta: float = 2.0,
                      B: float = HEURISTIC_B, a: float = HEURISTIC_A) -> tuple[float, float]:
    """The paper's heuristics, literally: ``(σ^α/(N·B^α), σ^β/(N·(aB)^β))`` with N = C·H·W."""
    c, h, w = shape[-3:]
    n = c * h * w
    sigma = natural_sigma(shape)
    return sigma ** alpha / (n * B ** alpha), sigma ** beta / (n * (a * B) ** beta)


def default_lambdas(shape: Sequence[int], alpha: float = 6.0, beta: float = 2.0,
                    lambda_tv_reference: float = LAMBDA_TV,
                    lambda_alpha_reference: float = LAMBDA_ALPHA,
                    preset: str = "paper") -> tuple[float, float]:
    """Default ``(λ_α, λ_V)`` for images of ``shape = (C, H, W)``.

    ``preset="paper"``: the heuristics calibrated so that at 227×227×3 with α = 6, β = 2 they give
    the paper's values (``lambda_*_reference``); other sizes follow the heuristics' law
    (λ ∝ N^{p/2−1} for exponent p), other exponents the heuristic with the same calibration.
    ``preset="heuristic"``: :func:`heuristic_lambdas` as written in the paper.
    """
    if preset == "heuristic":
        return heuristic_lambdas(shape, alpha, beta)
    if preset != "paper":
        raise ValueError(f"preset must be 'paper' or 'heuristic', not {preset!r}")
    h_alpha, h_tv = heuristic_lambdas(shape, alpha, beta)
    h_alpha_ref, h_tv_ref = heuristic_lambdas(REFERENCE_SHAPE, 6.0, 2.0)
    lam_alpha = h_alpha * (lambda_alpha_reference / h_alpha_ref)
    lam_tv = h_tv * (lambda_tv_reference / h_tv_ref)
    return float(lam_alpha), float(lam_tv)


def _compiled_for(u: torch.Tensor):
    """The priors' compiled loops (:mod:`preimage.objective_numba`) when ``u`` is a CPU
    float32/float64 tensor and they are available (:mod:`preimage.compiled`); else ``None``."""
    if u.device.type != "cpu" or u.dtype not in (torch.float32, torch.float64):
        return None
    return compiled.load("objective_numba")


def _compiled_value(kernel, u: torch.Tensor, rows: bool = True) -> torch.Tensor:
    """``(N,)`` per-sample values of a compiled prior of ``u`` ``(N, ...)``, in ``u``'s dtype."""
    out = torch.empty(u.shape[0], dtype=torch.float64)
    arr = u.detach().contiguous().numpy()
    kernel(arr.reshape(u.shape[0], -1) if rows else arr, out.numpy())
    return out.to(u.dtype)


def _compiled_grad(kernel, u: torch.Tensor, grad: torch.Tensor, rows: bool = True) -> torch.Tensor:
    """The gradient ``(N, ...)`` of a compiled prior of the saved ``u``, scaled per sample by
    ``grad`` ``(N,)``."""
    out = torch.empty_like(u)
    arr, g = u.numpy(), out.numpy()
    scale = grad.detach().to(u.dtype).contiguous().numpy()
    kernel(arr.reshape(u.shape[0], -1) if rows else arr, scale, g.reshape(u.shape[0], -1) if rows else g)
    return out


class _SixthPower(torch.autograd.Function):
    """Σ u⁶ per sample, ``(N, ...)`` → ``(N,)``, in multiplications with a written-out backward
    (6u⁵): on CPU ``pow`` goes through a general power routine, several times slower per element;
    with numba, one compiled pass each way."""

    @staticmethod
    def forward(ctx, u):
        kernels = _compiled_for(u)
        if kernels is not None:
            u = u.detach().contiguous()
            ctx.save_for_backward(u, None)
            return _compiled_value(kernels.sixth_power, u)
        u2 = u * u
        u4 = u2 * u2
        ctx.save_for_backward(u, u4)
        return torch.linalg.vecdot(u4.flatten(1), u2.flatten(1))

    @staticmethod
    def backward(ctx, grad):
        u, u4 = ctx.saved_tensors
        if u4 is None:
            return _compiled_grad(compiled.load("objective_numba", force=True).sixth_power_grad, u, grad)
        return u4.mul(u).mul_(grad.view((-1,) + (1,) * (u.dim() - 1)) * 6)


class _SquaredVariation(torch.autograd.Function):
    """TV² per sample, ``(N, C, H, W)`` → ``(N,)``: Σ (forward differences)² along W and H, the
    last row/column adding nothing; the backward pass is written out (the divergence of the
    differences, ``2·(Dₓᵀdx + D_yᵀdy)``) instead of autograd's four zero-padded slice gradients."""

    @staticmethod
    def forward(ctx, u):
        kernels = _compiled_for(u) if u.dim() == 4 else None
        if kernels is not None:
            u = u.detach().contiguous()
            ctx.save_for_backward(u, None)
            return _compiled_value(kernels.squared_variation, u, rows=False)
        dx = u[..., :, 1:] - u[..., :, :-1]
        dy = u[..., 1:, :] - u[..., :-1, :]
        ctx.save_for_backward(dx, dy)
        return torch.linalg.vecdot(dx.flatten(1), dx.flatten(1)) + torch.linalg.vecdot(dy.flatten(1), dy.flatten(1))

    @staticmethod
    def backward(ctx, grad):
        dx, dy = ctx.saved_tensors
        if dy is None:  # dx is u: the compiled loops
            return _compiled_grad(compiled.load("objective_numba", force=True).squared_variation_grad, dx, grad,
                                  rows=False)
        g = grad.view((-1,) + (1,) * (dx.dim() - 1)) * 2
        dx, dy = dx * g, dy * g
        out = dx.new_zeros(dx.shape[:-1] + (dx.shape[-1] + 1,))
        out[..., :, 1:] = dx
        out[..., :, :-1] -= dx
        out[..., 1:, :] += dy
        out[..., :-1, :] -= dy
        return out


def alpha_norm(u: torch.Tensor, alpha: float = 6.0) -> torch.Tensor:
    """Σ |u|^α per sample. ``u``: ``(N, C, H, W)`` → ``(N,)`` (α = 6, the paper's: in
    multiplications, equal to ``u.pow(6)`` up to float rounding)."""
    if alpha == 6:
        return _SixthPower.apply(u)
    if alpha % 2 == 0:
        return u.pow(int(alpha)).flatten(1).sum(1)
    return u.abs().pow(alpha).flatten(1).sum(1)


def total_variation(u: torch.Tensor, beta: float = 2.0, eps: float = 1e-12) -> torch.Tensor:
    """TV^β per sample, summed over colour channels. ``u``: ``(N, C, H, W)`` → ``(N,)``.

    Differences use replicate padding (the last row/column has zero forward difference), as the
    authors' code does. For β < 2 a tiny ``eps`` inside the power keeps the gradient finite at 0.
    """
    if beta == 2.0:  # the squares add up: no padded copies (equal up to float rounding)
        return _SquaredVariation.apply(u)
    dx = torch.zeros_like(u)
    dy = torch.zeros_like(u)
    dx[..., :, :-1] = u[..., :, 1:] - u[..., :, :-1]
    dy[..., :-1, :] = u[..., 1:, :] - u[..., :-1, :]
    return (dx * dx + dy * dy + eps).pow(beta / 2.0).flatten(1).sum(1)


# ----------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------

@dataclass
class EnergyTerms:
    """Per-sample terms of the objective, each ``(N,)``: ``data`` (normalised, masked loss),
    ``alpha`` and ``tv`` (already multiplied by their λ), and ``total``."""

    data: torch.Tensor
    alpha: torch.Tensor
    tv: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.data + self.alpha + self.tv


def _per_sample(value: float | Sequence[float] | torch.Tensor, n: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).flatten()
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"{name} has {t.numel()} values for a batch of {n}")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must be finite and non-negative, got {t.tolist()}")
    return t.clone()


def check_target(target: torch.Tensor) -> None:
    """Raise :class:`InvalidTargetError` for a target code containing NaN/Inf or all zeros."""
    if not torch.is_tensor(target):
        raise InvalidTargetError(f"target code must be a tensor, got {type(target).__name__}")
    bad = ~torch.isfinite(target)
    if bad.any():
        raise InvalidTargetError(
            f"target code contains {int(bad.sum())} NaN/Inf values of {target.numel()}; "
            "it cannot be inverted (check how it was computed or loaded)")
    norms = target.flatten(1).norm(dim=1) if target.dim() > 1 else target.norm().view(1)
    if (norms == 0).any():
        raise InvalidTargetError("target code is all zeros (the normalised loss is undefined); "
                                 "a blank image has no HOG/SIFT code worth inverting")


class InversionObjective(nn.Module):
    """E(u) for a batch, see the module docstring.

    Args:
        representation: module mapping ``(N, C, H, W)`` images on 0–255 to codes ``(N, ...)``;
            frozen (its parameters get no gradient).
        target: target codes ``(N, ...)``, the shape the representation produces.
        image_shape: ``(C, H, W)`` of the images to reconstruct.
        lambda_alpha, lambda_tv: scalars or per-sample sequences of length N.
        alpha, beta: exponents (6 and 2 by default).
        mask: optional 0/1 tensor broadcastable to ``target`` (see :func:`central_window_mask`,
            :func:`channel_mask`); the loss normalisation uses the masked target only.
        sigma: image-norm scale; defaults to :func:`natural_sigma` of ``image_shape``.
        mean_pixel: value(s) on 0–255 added to σ·u before Φ; defaults to the representation's
            ``mean_pixel`` (declared by :class:`preimage.representations.base.Representation`;
            128 for a plain module). :func:`preimage.invert.invert` always passes it.
    """

    def __init__(self, representation: nn.Module, target: torch.Tensor, image_shape: Sequence[int],
                 lambda_alpha: float | Sequence[float] | torch.Tensor = LAMBDA_ALPHA,
                 lambda_tv: float | Sequence[float] | torch.Tensor = LAMBDA_TV,
                 alpha: float = 6.0, beta: float = 2.0, mask: torch.Tensor | None = None,
                 sigma: float | None = None, mean_pixel: float | Sequence[float] | None = None):
        super().__init__()
        check_target(target)
        self.representation = representation
        for p in representation.parameters():
            p.requires_grad_(False)
        n = target.shape[0]
        self.image_shape = tuple(int(s) for s in image_shape[-3:])
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.sigma = float(sigma) if sigma is not None else natural_sigma(self.image_shape)
        if mean_pixel is None:
            mean_pixel = getattr(representation, "mean_pixel", 128.0)
        mp = torch.as_tensor(mean_pixel, dtype=torch.float32).flatten()
        if mp.numel() not in (1, self.image_shape[0]):
            raise ValueError(f"mean_pixel has {mp.numel()} values for {self.image_shape[0]} channels")
        self.register_buffer("mean_pixel", mp.view(1, -1, 1, 1))
        self.register_buffer("target", target.detach().clone())
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=target.dtype)
            try:
                ok = torch.broadcast_shapes(mask.shape, target.shape) == target.shape
            except RuntimeError:
                ok = False
            if not ok:
                raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the "
                                 f"code's shape {tuple(target.shape)}")
            mask = mask.expand_as(target).clone()
            if (mask.flatten(1).sum(1) == 0).any():
                raise ValueError("mask selects nothing of the code")
            self.register_buffer("mask", mask)
            norm_target = target * mask
        else:
            self.mask = None
            norm_target = target
        check_target(norm_target)
        self.register_buffer("target_norm2", norm_target.flatten(1).pow(2).sum(1))
        self.register_buffer("lambda_alpha", _per_sample(lambda_alpha, n, "lambda_alpha").float())
        self.register_buffer("lambda_tv", _per_sample(lambda_tv, n, "lambda_tv").float())

    @property
    def batch_size(self) -> int:
        return self.target.shape[0]

    def subset(self, index: torch.Tensor) -> "InversionObjective":
        """The objective of samples ``index`` ``(M,)`` int64 only: sample j of the result is
        sample ``index[j]`` of this one (targets, mask, normalisers and λ's indexed, the same
        values; the representation shared)."""
        sub = copy.copy(self)
        sub._buffers = dict(self._buffers)
        sub._modules = dict(self._modules)
        for name in ("target", "mask", "target_norm2", "lambda_alpha", "lambda_tv"):
            if sub._buffers.get(name) is not None:
                sub._buffers[name] = self._buffers[name][index.to(self._buffers[name].device)]
        return sub

    def image(self, u: torch.Tensor) -> torch.Tensor:
        """Optimisation variable ``(N, C, H, W)`` → image on the 0–255 scale, m + σ·u."""
        return self.mean_pixel.to(u.dtype) + self.sigma * u

    def data_term(self, code: torch.Tensor) -> torch.Tensor:
        """Normalised (masked) squared distance ``(N,)`` of codes ``(N, ...)`` to the target."""
        diff = code - self.target.to(code.dtype)
        if self.mask is not None:
            diff = diff * self.mask.to(code.dtype)
        flat = diff.flatten(1)  # a row-wise dot: pow(2)'s backward is ~3× slower on CPU
        return torch.linalg.vecdot(flat, flat) / self.target_norm2.to(code.dtype)

    def forward(self, u: torch.Tensor, seen: torch.Tensor | None = None) -> EnergyTerms:
        """Per-sample energy terms of ``u`` ``(N, C, H, W)``; the data term compares the code of
        ``seen`` (a transformed ``u``, same shape: jitter and the like) when it is given, the
        priors always act on ``u``."""
        code = self.representation(self.image(u if seen is None else seen))
        if code.shape != self.target.shape:
            raise ValueError(f"representation gives codes of shape {tuple(code.shape)}, "
                             f"target has {tuple(self.target.shape)}")
        data = self.data_term(code)
        reg_a = self.lambda_alpha.to(u.dtype) * alpha_norm(u, self.alpha)
        reg_v = self.lambda_tv.to(u.dtype) * total_variation(u, self.beta)
        return EnergyTerms(data=data, alpha=reg_a, tv=reg_v)
