"""Uploaded images: checked by decoding (never by name or extension), bounded in bytes and
pixels (decompression bombs refused before decoding), EXIF orientation applied, then stored as a
PNG read back through :func:`preimage.io.images.load_image` like any other image."""

from __future__ import annotations

import io
import secrets
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import PreimageError


class UploadError(PreimageError):
    """An upload the server refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


#: Modes stored as they are; anything else (CMYK, palette, YCbCr, …) is converted to RGB(A).
_KEPT_MODES = ("1", "L", "LA", "RGB", "RGBA", "I;16", "I")


def _opened(data: bytes, max_pixels: int) -> Image.Image:
    """The decoded image of ``data`` (pixels loaded), or :class:`UploadError`."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            raise UploadError("the file is not an image this server can read (PNG, JPEG, TIFF, WebP, …)",
                              415) from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UploadError(f"the image has more than {max_pixels} pixels", 413) from None
        w, h = img.size
        if w * h > max_pixels:
            raise UploadError(f"the image is {w}×{h} = {w * h} pixels, over the limit of {max_pixels}", 413)
        if w < 1 or h < 1:
            raise UploadError("the image is empty", 400)
        try:
            img.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise UploadError(f"the image has more than {max_pixels} pixels", 413) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise UploadError(f"the image cannot be decoded (truncated or corrupt: {exc})", 400) from None
    return img


def store_upload(data: bytes, folder: Path, max_bytes: int, max_pixels: int) -> tuple[str, tuple[int, int]]:
    """Check and store one uploaded image.

    Args:
        data: the file's bytes.
        folder: where uploads are kept (``<id>.png``).
        max_bytes, max_pixels: limits (HTTP 413 beyond them).
    Returns:
        ``(upload id, (height, width))``; the id is random (unguessable) and names ``<id>.png``.
    Raises:
        UploadError: too large (413), not an image (415), truncated or corrupt (400).
    """
    if len(data) > max_bytes:
        raise UploadError(f"the upload is {len(data)} bytes, over the limit of {max_bytes}", 413)
    if not data:
        raise UploadError("the upload is empty", 400)
    img = _opened(data, max_pixels)
    img = ImageOps.exif_transpose(img)
    if img.mode not in _KEPT_MODES:
        has_alpha = img.mode in ("PA", "P") and "transparency" in img.info or img.mode.endswith("A")
        img = img.convert("RGBA" if has_alpha else "RGB")
    folder.mkdir(parents=True, exist_ok=True)
    upload_id = secrets.token_urlsafe(16)
    tmp = folder / f".{upload_id}.tmp.png"
    img.save(tmp, format="PNG")
    tmp.replace(folder / f"{upload_id}.png")
    return upload_id, (img.height, img.width)
