"""Pictures: side-by-side panels, image grids and receptive-field boxes.

All inputs are ``(C, H, W)`` tensors on a 0–255 scale (C = 1 or 3); outputs are PIL images.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .images import to_uint8


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(C, H, W)`` on 0–255 → RGB PIL image (grey replicated)."""
    arr = to_uint8(image)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return Image.fromarray(arr, "RGB")


def _font(size: int = 12):
    """A TrueType font with Greek letters when one is installed (DejaVu), else Pillow's default."""
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid(tiles: Sequence[torch.Tensor | Image.Image], captions: Sequence[str] | None = None,
         columns: int | None = None, tile_height: int = 227, pad: int = 6,
         title: str | None = None) -> Image.Image:
    """Lay tiles out in a grid, each scaled to ``tile_height`` (aspect kept), captions below.

    Args:
        tiles: ``(C, H, W)`` tensors on 0–255 or PIL images.
        captions: one string per tile (or ``None``).
        columns: tiles per row (default: all in one row).
    """
    ims = [t if isinstance(t, Image.Image) else to_pil(t) for t in tiles]
    ims = [im.resize((max(1, round(im.width * tile_height / im.height)), tile_height),
                     Image.NEAREST if im.height < tile_height / 2 else Image.BICUBIC) for im in ims]
    cols = columns or len(ims)
    rows = (len(ims) + cols - 1) // cols
    cell_w = max(im.width for im in ims)
    cap_h = 18 if captions else 0
    title_h = 22 if title else 0
    width = cols * cell_w + (cols + 1) * pad
    height = title_h + rows * (tile_height + cap_h) + (rows + 1) * pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font(12)
    if title:
        draw.text((pad, pad // 2 + 2), title, fill="black", font=_font(14))
    for i, im in enumerate(ims):
        r, c = divmod(i, cols)
        x = pad + c * (cell_w + pad) + (cell_w - im.width) // 2
        y = title_h + pad + r * (tile_height + cap_h + pad)
        canvas.paste(im, (x, y))
        if captions and i < len(captions) and captions[i]:
            draw.text((pad + c * (cell_w + pad), y + tile_height + 2), str(captions[i])[:60],
                      fill="black", font=font)
    return canvas


def draw_box(image: torch.Tensor, box: tuple[int, int, int, int], color=(255, 255, 255),
             width: int = 2) -> Image.Image:
    """Draw ``box = (top, left, bottom, right)`` (inclusive pixel bounds) on a ``(C, H, W)`` image."""
    im = to_pil(image)
    top, left, bottom, right = box
    ImageDraw.Draw(im).rectangle([left, top, right, bottom], outline=color, width=width)
    return im
