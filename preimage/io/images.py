"""Images: reading and writing robustly, and the one home of every resampling step.

Every loader returns a float32 tensor of shape ``(C, H, W)`` with values on a 0–255 scale, ``C``
being 1 (grey) or 3 (RGB). Odd inputs are normalised rather than rejected where that loses
nothing important: palette and CMYK images become RGB, 16-bit images are rescaled to 0–255,
alpha is composited onto white. What cannot be used raises :class:`ImageReadError` naming the file
and the problem.

Resampling (:func:`resize`, :func:`limit_side`, :func:`centre_crop`, :func:`resize_and_crop`) is
antialiased bilinear interpolation, clamped to 0–255; every experiment, the CLI and the
classifier prepare their images with these functions and nothing else.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import ImageReadError

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


def to_grey(image: torch.Tensor) -> torch.Tensor:
    """``(..., 3, H, W)`` RGB on 0–255 → ``(..., 1, H, W)`` BT.601 luma (:data:`GREY_WEIGHTS`);
    one-channel input is returned unchanged."""
    if image.shape[-3] == 1:
        return image
    w = torch.as_tensor(GREY_WEIGHTS, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * w).sum(dim=-3, keepdim=True)


def resize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize to ``size = (H, W)``, clamped to [0, 255].

    Args:
        image: ``(C, H, W)`` or ``(B, C, H, W)`` on 0–255.
    Returns:
        the same rank, spatial size ``size``.
    """
    size = (int(size[0]), int(size[1]))
    if tuple(image.shape[-2:]) == size:
        return image
    x = image if image.dim() == 4 else image[None]
    out = torch.nn.functional.interpolate(x.float(), size=size, mode="bilinear", antialias=True,
                                          align_corners=False).clamp(0, 255)
    return out if image.dim() == 4 else out[0]


def limit_side(image: torch.Tensor, max_side: int | None) -> torch.Tensor:
    """Downscale ``(C, H, W)`` so its longest side is at most ``max_side`` (aspect kept); images
    already small enough, or ``max_side=None``, are returned unchanged."""
    h, w = image.shape[-2:]
    if not max_side or max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    return resize(image, (max(1, round(h * s)), max(1, round(w * s))))


def centre_crop(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The central ``size = (H, W)`` window of ``(..., H0, W0)`` (the lower index on odd excess)."""
    h, w = image.shape[-2:]
    ch, cw = int(size[0]), int(size[1])
    if ch > h or cw > w:
        raise ValueError(f"cannot crop {ch}×{cw} from a {h}×{w} image")
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[..., top:top + ch, left:left + cw].contiguous()


def resize_and_crop(image: torch.Tensor, size: int | tuple[int, int], short_side: int | None = None
                    ) -> torch.Tensor:
    """Resize the shorter side of ``(C, H, W)`` to ``short_side`` (default: the crop's shorter
    side), keeping the aspect, then take the centre ``size`` crop (an int S means S×S)."""
    ch, cw = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    side = short_side or min(ch, cw)
    h, w = image.shape[-2:]
    s = side / min(h, w)
    nh, nw = max(ch, round(h * s)), max(cw, round(w * s))
    return centre_crop(resize(image, (nh, nw)), (ch, cw))


def group_by_shape(images) -> dict[tuple, list[int]]:
    """Indices of ``images`` (a sequence of tensors) grouped by shape, groups in order of first
    appearance: the batches that can be stacked."""
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    return groups
