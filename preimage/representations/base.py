"""The contract every representation follows.

A representation Φ is a differentiable ``torch.nn.Module``:

* input: an image batch ``(B, C, H, W)``, float, pixel values on a **0–255 scale** (values outside
  the range are allowed: the optimiser does not clip). ``C`` must be one of ``input_channels``.
* output: the code, a tensor ``(B, ...)`` (typically ``(B, D, h, w)``).

Attributes used by the objective and experiments:

* ``input_channels``: tuple of accepted channel counts, e.g. ``(1, 3)`` for HOG, ``(1,)`` for DSIFT.
* ``mean_pixel``: per-channel value (0–255 scale) that the mean-subtracted optimisation variable
  is offset by before calling the module (128 for the shallow features, the data mean for CNNs).
* ``input_size``: ``(H, W)`` a network expects, or ``None`` when any size works.
* ``min_size``: smallest ``(H, W)`` that gives a non-empty code.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class Representation(nn.Module):
    """Base class: image batch ``(B, C, H, W)`` on 0–255 → code ``(B, ...)``."""

    input_channels: Sequence[int] = (1, 3)
    mean_pixel: float | Sequence[float] = 128.0
    input_size: tuple[int, int] | None = None
    min_size: tuple[int, int] = (1, 1)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` with a clear message when ``x`` is not a valid image batch."""
        if not torch.is_tensor(x) or x.dim() != 4:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"{type(self).__name__} expects an image batch (B, C, H, W), got {shape}")
        if x.shape[1] not in tuple(self.input_channels):
            raise ValueError(f"{type(self).__name__} accepts {tuple(self.input_channels)} channels, "
                             f"got {x.shape[1]}")
        h, w = x.shape[-2:]
        if h < self.min_size[0] or w < self.min_size[1]:
            raise ValueError(f"{type(self).__name__} needs images of at least {self.min_size[0]}×"
                             f"{self.min_size[1]} pixels, got {h}×{w}")

    def extra_repr(self) -> str:
        return f"input_channels={tuple(self.input_channels)}"
