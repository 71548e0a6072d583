"""Pixels: ``u`` itself is the parameter (the paper's method, today's behaviour)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import Parameterisation, make_generator, restart_index


def unit_noise(r: int, shape: Sequence[int], seed: int | torch.Generator | None = 0) -> torch.Tensor:
    """``r`` Gaussian noise images ``(r, C, H, W)`` float64, each of unit norm (σ in pixels): the
    same numbers as :func:`preimage.optim.gaussian_init` with the same ``seed``."""
    gen = make_generator(seed)
    u = torch.randn((r,) + tuple(shape), generator=gen, dtype=torch.float64)
    return u / u.flatten(1).norm(dim=1).view(-1, *([1] * len(shape)))


class PixelParam(Parameterisation):
    """``u`` ``(N, C, H, W)`` is the parameter; ``forward()`` returns it.

    ``init``: Gaussian noise of unit norm per restart (:func:`unit_noise`); restart r gets
    ``gaussian_init(R, shape, seed)[r]``. Optimiser: the paper's momentum, at the
    representation's default rate. ``mean_pixel`` and ``sigma`` are accepted and ignored
    (``u`` does not depend on them).
    """

    name = "pixel"
    recommended_optimiser = "momentum"
    recommended_lr = None

    def __init__(self, shape: Sequence[int], n: int, *,
                 mean_pixel: float | Sequence[float] = 128.0, sigma: float | None = None):
        super().__init__(shape, n)
        self.u = nn.Parameter(torch.zeros((self.n,) + self.shape))

    @torch.no_grad()
    def init(self, seed: int | torch.Generator | None = 0, restarts=None) -> "PixelParam":
        """Unit-norm Gaussian noise, restart r = draw r of one generator (see the contract)."""
        idx = restart_index(restarts, self.n)
        noise = unit_noise(int(idx.max()) + 1, self.shape, seed)
        self.u.copy_(noise[idx])
        return self

    def forward(self) -> torch.Tensor:
        """``u`` ``(N, C, H, W)``."""
        return self.u
