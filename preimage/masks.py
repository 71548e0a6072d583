"""Masks on a code: which parts of Φ₀ the data term compares (the paper's Fig. 8 and 9).

A mask is a 0/1 float tensor ``(1, *code_shape)`` that broadcasts over the batch;
:class:`preimage.objective.InversionObjective` multiplies both codes by it and normalises the
loss by the masked target. :func:`code_mask` builds the mask of a window and/or channel subset in
one call, as the CLI and the experiments do.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import PreimageError


def code_mask(code_shape: Sequence[int], window: int | None = None,
              channels: str | slice | Sequence[int] | None = None) -> torch.Tensor | None:
    """The mask selecting a central ``window × window`` neighbourhood and/or a channel subset.

    Args:
        code_shape: ``(D, h, w)`` or ``(D,)`` (no batch axis).
        window: side of the central window (needs a spatial code at least that large), or None.
        channels: see :func:`channel_mask`, or None.
    Returns:
        ``(1, *code_shape)`` 0/1 float mask, or None when neither is given.
    Raises:
        PreimageError: a window on a code without spatial axes, or larger than the code's map.
    """
    shape = tuple(int(s) for s in code_shape)
    mask = None
    if window:
        if len(shape) != 3:
            raise PreimageError(f"a {window}×{window} neighbourhood needs a spatial code (D, h, w); this "
                                f"code has shape {shape}")
        h, w = shape[-2:]
        if not 1 <= window <= min(h, w):
            raise PreimageError(f"neighbourhood {window} does not fit the code's {h}×{w} map: choose 1 to "
                                f"{min(h, w)}")
        mask = central_window_mask(shape, window)
    if channels is not None:
        try:
            cm = channel_mask(shape, channels)
        except ValueError as exc:
            raise PreimageError(str(exc)) from None
        mask = cm if mask is None else mask * cm
    return mask



def central_window_mask(code_shape: Sequence[int], n: int) -> torch.Tensor:
    """Mask selecting the central ``n × n`` spatial window of a code, all channels.

    Args:
        code_shape: ``(D, h, w)`` (a batch axis in front is ignored).
        n: window side, clipped to the map; for even excess the window sits at the lower index.
    Returns:
        ``(1, D, h, w)`` float mask of 0/1.
    """
    d, h, w = code_shape[-3:]
    mask = torch.zeros(1, d, h, w)
    nh, nw = min(n, h), min(n, w)
    top, left = (h - nh) // 2, (w - nw) // 2
    mask[..., top:top + nh, left:left + nw] = 1.0
    return mask


def channel_mask(code_shape: Sequence[int], channels: str | slice | Sequence[int]) -> torch.Tensor:
    """Mask selecting a subset of channels of a code, all positions.

    Args:
        code_shape: ``(D, ...)`` with the channel axis first (batch axis excluded).
        channels: ``"first-half"``, ``"second-half"``, ``"a:b"`` (Python slice syntax), a slice,
            or a list of channel indices.
    Returns:
        ``(1, *code_shape)`` float mask of 0/1.
    """
    shape = tuple(code_shape)
    d = shape[0]
    sel = parse_channels(channels, d)
    mask = torch.zeros((1,) + shape)
    mask[:, sel] = 1.0
    if mask.sum() == 0:
        raise ValueError(f"channel selection {channels!r} selects no channel of {d}")
    return mask


def parse_channels(channels: str | slice | Sequence[int], d: int) -> slice | list[int]:
    """Turn a channel selection (see :func:`channel_mask`) into a slice or index list for ``d`` channels."""
    if isinstance(channels, slice):
        return channels
    if isinstance(channels, str):
        s = channels.strip().lower()
        if s == "first-half":
            return slice(0, d // 2)
        if s == "second-half":
            return slice(d // 2, d)
        if ":" in s:
            a, b = s.split(":", 1)
            try:
                return slice(int(a) if a else None, int(b) if b else None)
            except ValueError:
                pass
        raise ValueError(f"channel selection {channels!r} not understood: use first-half, second-half or a:b")
    idx = [int(i) for i in channels]
    bad = [i for i in idx if not -d <= i < d]
    if bad:
        raise ValueError(f"channel indices {bad} out of range for {d} channels")
    return idx
