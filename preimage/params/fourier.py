"""Fourier parameterisation with colour decorrelation (Olah et al., Distill 2017).

The parameters are, per sample and channel, the coefficients of a real 2-D FFT,
``coeffs`` ``(N, C, H, W//2+1, 2)`` (real and imaginary parts). The image is built as::

    z = irfft2(s ⊙ coeffs)          per channel, orthonormal transform, (N, C, H, W)
    y = A · z                        per pixel, colours mixed by the 3×3 matrix A (C = 3 only)
    u = y / σ                        σ-units (or the bounded sigmoid of :class:`SigmaOutput`)

**Spectrum** (scale-dependent): with ``f = √(fy² + fx²)`` the frequency of a coefficient in cycles
per pixel (``fy = fftfreq(H)``, ``fx = rfftfreq(W)``),
``s(f) = k / max(f, 1/max(H, W))^decay_power`` (``decay_power`` 1 by default, lucent's): a 1/f
spectrum, floored at the image's lowest frequency so the DC term stays finite, which makes every
frequency band equally easy to change for an optimiser whose steps have a fixed size per
parameter (Adam). ``k`` normalises the spectrum so that coefficients of unit variance give ``z``
unit variance per pixel on average: ``k² · Σ m·s₀² = H·W``, ``s₀`` the unfloored-spectrum values
and ``m`` = 4 for a coefficient whose column has a conjugate twin (0 < fx < ½) and 1 for the
columns ``fx = 0`` and (W even) ``fx = ½``, whose imaginary parts the real inverse transform
drops in part (expected energies of the orthonormal c2r transform).

**Colour** (C = 3): ``A`` is :data:`preimage.params.colour.COLOUR_SQRT` (``A·Aᵀ`` = the covariance
of the mean-subtracted RGB pixels of ``train/``), rescaled so that its per-channel RMS is the
paper's natural RMS per pixel (:data:`preimage.paper.SIGMA_PER_PIXEL` ≈ 68.9 grey levels): the
statistics of train/ give the correlation, the paper's σ the scale. C = 1 (or ``decorrelate=False``)
multiplies by that RMS alone. So unit-variance coefficients give ‖u‖ ≈ 1, a natural image's norm.

``init``: coefficients ~ N(0, ``init_std``²), ``init_std`` = 0.01 (lucent's): a nearly uniform
image at the mean colour, ‖u‖ ≈ 0.01. Optimiser: Adam, lr 0.05 (lucent's; calibrated on train/);
a CNN layer's own recipe takes per-sample L-BFGS instead (``CNNLayer.recipe_optimiser``).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..paper import SIGMA_PER_PIXEL
from .base import CONSTANT_SCHEDULE, Parameterisation, SigmaOutput, make_generator, restart_index
from .colour import colour_sqrt


def radial_frequencies(h: int, w: int) -> torch.Tensor:
    """``(H, W//2+1)`` float64: ``√(fy² + fx²)`` in cycles per pixel of the rfft2 coefficients."""
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    return (fy * fy + fx * fx).sqrt()


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> torch.Tensor:
    """``(H, W//2+1)`` float64: ``s(f)`` of the module docstring, normalised so that unit-variance
    coefficients give unit variance per pixel (on average) after :func:`torch.fft.irfft2` with
    ``norm="ortho"``."""
    f = radial_frequencies(h, w)
    s = 1.0 / f.clamp_min(1.0 / max(h, w)) ** decay_power
    m = torch.full((1, f.shape[1]), 4.0, dtype=torch.float64)
    m[0, 0] = 1.0
    if w % 2 == 0:
        m[0, -1] = 1.0
    energy = (m * s * s).sum()
    return s * (h * w / energy).sqrt()


def colour_matrix(c: int, decorrelate: bool = True, matrix: torch.Tensor | None = None) -> torch.Tensor:
    """``(C, C)`` float64 mixing matrix in grey levels: for C = 3 with ``decorrelate``, ``matrix``
    (default :func:`colour_sqrt`) rescaled to a per-channel RMS of :data:`SIGMA_PER_PIXEL`
    (``trace(A·Aᵀ)/3 = SIGMA_PER_PIXEL²``); else ``SIGMA_PER_PIXEL`` times the identity."""
    if c != 3 or not decorrelate:
        return SIGMA_PER_PIXEL * torch.eye(c, dtype=torch.float64)
    a = (colour_sqrt(torch.float64) if matrix is None
         else torch.as_tensor(matrix, dtype=torch.float64).reshape(3, 3))
    rms = ((a @ a.T).trace() / 3).sqrt()
    return a * (SIGMA_PER_PIXEL / rms)


class FourierParam(Parameterisation):
    """Decorrelated Fourier image (see the module docstring).

    Args:
        shape: ``(C, H, W)``.
        n: batch size N.
        decay_power: exponent of the 1/f spectrum (0: white noise).
        decorrelate: mix the colours with the train/ colour matrix (C = 3).
        colour: a 3×3 matrix to use instead of :data:`~preimage.params.colour.COLOUR_SQRT`.
        bounded: image through a sigmoid, within (−margin, 255 + margin) (:class:`SigmaOutput`).
        mean_pixel: the representation's mean pixel (only used when bounded).
        margin: grey levels the bounded range extends beyond 0–255 (only used when bounded).
        sigma: σ; default :func:`~preimage.objective.natural_sigma` of ``shape``.
        init_std: standard deviation of the initial coefficients.
    """

    name = "fourier"
    recommended_optimiser = "adam"
    recommended_lr = 0.05  # lucent's; 0.1 and 0.2 were worse on train/ at equal time
    recommended_schedule = CONSTANT_SCHEDULE
    prior_scale = 0.003  # the paper's λ, made for pixels, cost code error (train/, conv1: 32 % → 1.1 %)
    #: lucent's sigmoid, widened by 40 grey levels each side so that saturated pixels stay reachable
    #: (train/, 3 images, equal iterations, conv1 / block5_add / block10_add normalised error %:
    #: unbounded 1.21 / 9.10 / 7.94, sigmoid 2.01 / 9.30 / –, margin 16: 1.60 / 8.96 / 8.18, margin 40:
    #: 1.41 / 8.90 / 8.13, lucent 1.93 / 9.21 / 8.48; SSIM at depth: margin 40 ≥ lucent > unbounded).
    recommended_options = {"bounded": True, "margin": 40.0}

    def __init__(self, shape: Sequence[int], n: int, *, decay_power: float = 1.0,
                 decorrelate: bool = True, colour: torch.Tensor | None = None, bounded: bool = False,
                 mean_pixel: float | Sequence[float] = 128.0, sigma: float | None = None,
                 init_std: float = 0.01, margin: float = 0.0):
        super().__init__(shape, n)
        c, h, w = self.shape
        self.init_std = float(init_std)
        self.coeffs = nn.Parameter(torch.zeros(self.n, c, h, w // 2 + 1, 2))
        self.register_buffer("scale", spectrum_scale(h, w, decay_power).float())
        self.register_buffer("colour", colour_matrix(c, decorrelate, colour).float())
        self.output = SigmaOutput(self.shape, bounded, mean_pixel, sigma, margin)

    @torch.no_grad()
    def init(self, seed: int | torch.Generator | None = 0, restarts=None) -> "FourierParam":
        """Coefficients ~ N(0, init_std²), restart r = the r-th draw of one generator."""
        idx = restart_index(restarts, self.n)
        gen = make_generator(seed)
        per = self.coeffs.shape[1:]
        draws = torch.stack([torch.randn(per, generator=gen, dtype=torch.float64)
                             for _ in range(int(idx.max()) + 1)])
        self.coeffs.copy_(self.init_std * draws[idx])
        return self

    def field(self) -> torch.Tensor:
        """``y`` ``(N, C, H, W)`` in grey levels, before :class:`SigmaOutput`."""
        h, w = self.shape[1:]
        spec = torch.view_as_complex(self.coeffs) * self.scale
        z = torch.fft.irfft2(spec, s=(h, w), norm="ortho")
        return torch.einsum("ij,njhw->nihw", self.colour.to(z.dtype), z)

    def forward(self) -> torch.Tensor:
        """``u`` ``(N, C, H, W)`` in σ-units."""
        return self.output(self.field())
