"""Deep Image Prior (Ulyanov, Vedaldi & Lempitsky, CVPR 2018): the image is the output of a
randomly initialised hourglass network fed with fixed noise; the parameters are the network's
weights.

Architecture (DIP's "skip" network, narrowed to run on a CPU at 224²): noise ``z``
``(noise_channels, H, W)``, uniform in [0, 0.1) as DIP draws it, enters ``levels`` nested levels.
Level i, on an input ``x`` with ``c_in`` channels:

* skip branch: conv 1×1 (c_in → ``skip``), norm, LeakyReLU(0.2);
* down branch: conv 3×3 stride 2 (c_in → ``channels[i]``), norm, LReLU, conv 3×3, norm, LReLU,
  then level i+1 (whose output has ``channels[i+1]`` channels), if any;
* bilinear upsampling to x's size, concatenation with the skip branch, norm, conv 3×3
  (→ ``channels[i]``), norm, LReLU, conv 1×1, norm, LReLU.

A final conv 1×1 gives C channels ``o``; ``y = SIGMA_PER_PIXEL·o`` grey levels and ``u = y/σ``
(:class:`~preimage.params.base.SigmaOutput`; ``bounded=True`` puts a sigmoid on it, as DIP does).
Convolutions use reflection padding; "norm" is DIP's BatchNorm on a batch of one image, i.e. a
per-channel normalisation over the pixels (instance norm) with a learnt scale and offset.

With the defaults (``channels=(8, 16, 32, 64, 64)``: five levels, 224² → 7² at the bottom;
``skip=4``, ``noise_channels=8``, C = 3) a generator has 264,863 weights
(:func:`parameter_count`; DIP's own "skip" network has about 2.2 million); one forward and
backward pass at 1×3×224×224 takes about 0.6 s on one busy CPU core. Width, not depth, is what
costs at full resolution: ``channels=(16, 32, 64, 64)`` takes about 1.7× as long.

**Batching.** Each of the N samples has its own generator and its own noise. They run as one
network with grouped convolutions: activations are ``(1, N·c, h, w)`` with sample n's channels at
``n·c … n·c + c − 1``, every convolution has ``groups = N`` and weights ``(N·c_out, c_in, k, k)``,
the norm is per channel. So one forward pass evaluates the N generators, and sample n's output
depends on sample n's weights only.

``init``: weights and biases uniform in ±1/√fan_in (PyTorch's default for convolutions), norm
scales 1 and offsets 0, noise uniform [0, 0.1); restart r draws its noise then its weights layer
by layer from one generator after restarts 0 … r−1. Optimiser: Adam at 0.01 (DIP's rates are
0.01, and 0.001 for its feature inversions with ≈ 3000 steps; to be calibrated).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..paper import SIGMA_PER_PIXEL
from .base import CONSTANT_SCHEDULE, Parameterisation, SigmaOutput, make_generator, restart_index


class GroupedConv(nn.Module):
    """N independent k×k convolutions, reflection-padded: ``(1, N·c_in, h, w)`` →
    ``(1, N·c_out, ⌈h/stride⌉, ⌈w/stride⌉)`` (k odd)."""

    def __init__(self, n: int, c_in: int, c_out: int, k: int = 3, stride: int = 1):
        super().__init__()
        self.n, self.c_in, self.c_out, self.k, self.stride = n, c_in, c_out, k, stride
        self.weight = nn.Parameter(torch.zeros(n * c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(n * c_out))

    def draw(self, gen: torch.Generator) -> list[torch.Tensor]:
        """One sample's ``[weight (c_out, c_in, k, k), bias (c_out,)]``, uniform in ±1/√fan_in."""
        bound = 1.0 / math.sqrt(self.c_in * self.k * self.k)
        w = torch.rand((self.c_out, self.c_in, self.k, self.k), generator=gen, dtype=torch.float64)
        b = torch.rand((self.c_out,), generator=gen, dtype=torch.float64)
        return [(2 * w - 1) * bound, (2 * b - 1) * bound]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(1, N·c_in, h, w)`` → ``(1, N·c_out, ⌈h/stride⌉, ⌈w/stride⌉)``."""
        p = self.k // 2
        if p:
            x = F.pad(x, (p, p, p, p), mode="reflect")
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, groups=self.n)


class GroupedBlock(nn.Module):
    """Conv, per-channel norm (learnt scale and offset), LeakyReLU(0.2); grouped over N."""

    def __init__(self, n: int, c_in: int, c_out: int, k: int = 3, stride: int = 1):
        super().__init__()
        self.conv = GroupedConv(n, c_in, c_out, k, stride)
        self.norm = GroupedNorm(n * c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(1, N·c_in, h, w)`` → ``(1, N·c_out, h', w')``."""
        return F.leaky_relu(self.norm(self.conv(x)), 0.2)


class GroupedNorm(nn.Module):
    """Per-channel normalisation over the pixels of ``(1, N·c, h, w)`` with a learnt scale and
    offset per channel (BatchNorm on one image, as DIP uses it)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(1, N·c, h, w)`` → the same shape, each channel of zero mean and unit variance, then
        scaled and offset."""
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=1e-5)


def _cat(n: int, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample channel concatenation of ``(1, N·ca, h, w)`` and ``(1, N·cb, h, w)``."""
    h, w = a.shape[-2:]
    return torch.cat([a.view(n, -1, h, w), b.view(n, -1, h, w)], 1).view(1, -1, h, w)


def _smallest_side(side: int, levels: int) -> int:
    for _ in range(levels):
        side = (side + 1) // 2
    return side


class DIPParam(Parameterisation):
    """Deep Image Prior generator per sample (see the module docstring).

    Args:
        shape: ``(C, H, W)``; H and W must stay ≥ 2 after ``levels`` halvings.
        n: batch size N.
        channels: channels of each level, from the finest (its length is the number of levels).
        skip: channels of each skip branch (0: none).
        noise_channels: channels of the fixed input noise.
        bounded, mean_pixel, sigma, margin: see :class:`~preimage.params.base.SigmaOutput`.
    """

    name = "dip"
    recommended_optimiser = "adam"
    recommended_lr = 0.01  # DIP's; not calibrated further (at equal time it gets ~1/10 the steps)
    recommended_schedule = CONSTANT_SCHEDULE
    prior_scale = 0.003  # as the Fourier image's

    def __init__(self, shape: Sequence[int], n: int, *, channels: Sequence[int] = (8, 16, 32, 64, 64),
                 skip: int = 4, noise_channels: int = 8, bounded: bool = False,
                 mean_pixel: float | Sequence[float] = 128.0, sigma: float | None = None,
                 margin: float = 0.0):
        super().__init__(shape, n)
        c, h, w = self.shape
        self.channels = tuple(int(k) for k in channels)
        self.skip_channels = int(skip)
        if not self.channels or min(self.channels) < 1 or self.skip_channels < 0:
            raise ValueError(f"invalid DIP widths: channels={self.channels}, skip={skip}")
        if _smallest_side(min(h, w), len(self.channels)) < 2:
            raise ValueError(f"a {h}×{w} image is too small for {len(self.channels)} DIP levels")
        self.register_buffer("noise", torch.zeros(self.n * noise_channels, h, w))
        self.noise_channels = int(noise_channels)
        self.skips, self.downs, self.cat_norms, self.ups = (nn.ModuleList() for _ in range(4))
        c_in = self.noise_channels
        for i, ci in enumerate(self.channels):
            deeper = self.channels[i + 1] if i + 1 < len(self.channels) else ci
            if self.skip_channels:
                self.skips.append(GroupedBlock(n, c_in, self.skip_channels, k=1))
            self.downs.append(nn.Sequential(GroupedBlock(n, c_in, ci, 3, 2), GroupedBlock(n, ci, ci)))
            self.cat_norms.append(GroupedNorm(n * (self.skip_channels + deeper)))
            self.ups.append(nn.Sequential(GroupedBlock(n, self.skip_channels + deeper, ci),
                                          GroupedBlock(n, ci, ci, k=1)))
            c_in = ci
        self.last = GroupedConv(n, self.channels[0], c, k=1)
        self.output = SigmaOutput(self.shape, bounded, mean_pixel, sigma, margin)

    def _convs(self) -> list[GroupedConv]:
        return [m for m in self.modules() if isinstance(m, GroupedConv)]

    @torch.no_grad()
    def init(self, seed: int | torch.Generator | None = 0, restarts=None) -> "DIPParam":
        """Noise and weights per restart (see the module docstring); norms reset to 1 and 0."""
        idx = restart_index(restarts, self.n)
        gen = make_generator(seed)
        convs = self._convs()
        noise, weights = [], []
        for _ in range(int(idx.max()) + 1):
            noise.append(0.1 * torch.rand((self.noise_channels,) + self.shape[1:], generator=gen,
                                          dtype=torch.float64))
            weights.append([t for conv in convs for t in conv.draw(gen)])
        self.noise.copy_(torch.stack(noise)[idx].flatten(0, 1))
        for j, conv in enumerate(convs):
            for k, p in enumerate((conv.weight, conv.bias)):
                p.copy_(torch.stack([weights[r][2 * j + k] for r in idx.tolist()]).flatten(0, 1))
        for m in self.modules():
            if isinstance(m, GroupedNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
        return self

    def _level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        h = self.downs[i](x)
        if i + 1 < len(self.channels):
            h = self._level(i + 1, h)
        h = F.interpolate(h, size=x.shape[-2:], mode="bilinear", align_corners=False)
        if self.skip_channels:
            h = _cat(self.n, self.skips[i](x), h)
        return self.ups[i](self.cat_norms[i](h))

    def field(self) -> torch.Tensor:
        """``y`` ``(N, C, H, W)`` in grey levels, before :class:`SigmaOutput`."""
        out = self.last(self._level(0, self.noise[None]))
        return SIGMA_PER_PIXEL * out.view((self.n,) + self.shape)

    def forward(self) -> torch.Tensor:
        """``u`` ``(N, C, H, W)`` in σ-units."""
        return self.output(self.field())


def parameter_count(shape: Sequence[int] = (3, 224, 224), **kwargs) -> int:
    """Weights of one generator (N = 1) of :class:`DIPParam` with these arguments."""
    return sum(p.numel() for p in DIPParam(shape, 1, **kwargs).parameters())
