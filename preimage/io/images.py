"""Reading and writing images robustly.

Every loader returns a float32 tensor of shape ``(C, H, W)`` with values on a 0–255 scale, ``C``
being 1 (grey) or 3 (RGB). Odd inputs are normalised rather than rejected where that loses
nothing important: palette and CMYK images become RGB, 16-bit images are rescaled to 0–255,
alpha is composited onto white. What cannot be used raises :class:`ImageReadError` naming the file
and the problem.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import ImageReadError

#: Largest image accepted without an explicit ``max_pixels``: 50 megapixels.
DEFAULT_MAX_PIXELS = 50_000_000

#: Luma weights (ITU-R BT.601), as MATLAB's ``rgb2gray`` and the authors' code use.
GREY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def _to_float_array(img: Image.Image, path: str) -> np.ndarray:
    """PIL image of any mode → float64 array ``(H, W, C)``, C in {1, 3}, values on 0–255."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        return (arr * (255.0 / hi))[..., None]
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ImageReadError(f"{path}: floating-point image contains NaN or Inf")
        if arr.max() <= 1.0:
            arr = arr * 255.0
        return arr[..., None]
    if mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.float64)[..., None]
    if mode in ("LA", "RGBA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float64)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        if mode == "LA":
            return rgb[..., :1]
        return rgb
    return np.asarray(img.convert("RGB"), dtype=np.float64)


def load_image(path: str | Path, mode: str = "rgb", max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Load an image file.

    Args:
        path: image file (anything Pillow reads: JPEG, PNG incl. 16-bit/palette/alpha, TIFF, …).
        mode: ``"rgb"`` → 3 channels (grey images are replicated), ``"grey"`` → 1 channel
            (BT.601 luma of colour images), ``"native"`` → 1 or 3 channels as stored.
        max_pixels: refuse images with more pixels than this (decompression bombs, accidents).

    Returns:
        ``(C, H, W)`` float32 tensor, values in [0, 255].
    """
    if mode not in ("rgb", "grey", "gray", "native"):
        raise ValueError(f"mode must be 'rgb', 'grey' or 'native', not {mode!r}")
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageReadError(
                        f"{path}: {w}×{h} = {w * h} pixels is over the limit of {max_pixels}; "
                        f"downscale it first or pass a larger max_pixels")
                img.load()
                arr = _to_float_array(img, str(path))
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ImageReadError(f"{path}: cannot read this file as an image ({exc})") from None
    return array_to_tensor(arr, mode)


def array_to_tensor(arr: np.ndarray, mode: str = "native") -> torch.Tensor:
    """``(H, W)`` or ``(H, W, C)`` array on 0–255 → ``(C, H, W)`` float32 tensor in the given mode."""
    arr = np.asarray(arr, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ImageReadError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {arr.shape}")
    if arr.shape[2] == 4:
        alpha = arr[..., 3:4] / 255.0
        arr = arr[..., :3] * alpha + 255.0 * (1.0 - alpha)
    if mode in ("grey", "gray") and arr.shape[2] == 3:
        arr = arr @ np.asarray(GREY_WEIGHTS)[:, None]
    elif mode == "rgb" and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()


def default_image(mode: str = "rgb") -> tuple[torch.Tensor, str]:
    """A default test picture from scikit-image's bundled data (the astronaut, 512×512, downscaled
    to 227×227 as for CNN-A). Returns ``(image (C, 227, 227) on 0–255, name)``."""
    from skimage import data as skdata
    arr = skdata.astronaut()
    img = Image.fromarray(arr).resize((227, 227), Image.BICUBIC)
    return array_to_tensor(np.asarray(img, dtype=np.float64), mode), "astronaut"


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` tensor on 0–255 → ``(H, W, C)`` uint8 array (clipped)."""
    arr = image.detach().cpu().double().clamp(0, 255).round().byte().numpy()
    return arr.transpose(1, 2, 0)


def save_image(image: torch.Tensor, path: str | Path) -> None:
    """Save a ``(C, H, W)`` tensor on 0–255 (C = 1 or 3) as an 8-bit PNG/JPEG."""
    arr = to_uint8(image)
    if arr.shape[2] == 1:
        arr = arr[..., 0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def stretch(image: torch.Tensor) -> torch.Tensor:
    """Min–max stretch each image of a batch to [0, 255] (the paper's display convention).

    Args:
        image: ``(C, H, W)`` or ``(B, C, H, W)``.
    Returns:
        same shape, each image's range mapped to [0, 255] (constant images → 127.5).
    """
    x = image if image.dim() == 4 else image[None]
    flat = x.reshape(x.shape[0], -1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    span = hi - lo
    out = torch.where(span > 0, (x - lo) / span.clamp_min(1e-12) * 255.0, torch.full_like(x, 127.5))
    return out if image.dim() == 4 else out[0]
