"""A model's own preprocessing: how an RGB 0–255 image becomes the tensor the network expects.

Every preimage model takes RGB images ``(B, 3, H, W)`` on 0–255; an imported network (ONNX, a
float TFLite file, a Python factory) expects something else. A :class:`Preprocessing` says what:

``model_input[c] = (pixel[order[c]] · scale − mean[c]) / std[c]``

with ``pixel`` on 0–255, ``order`` ``"RGB"`` or ``"BGR"``, and ``mean``/``std`` per model-input
channel (in the model's channel order, in the units after ``scale``). Named presets
(:data:`PRESETS`):

* ``caffe``: BGR, 0–255, minus Caffe's ILSVRC-12 mean pixel (B, G, R = 104.0, 116.7, 122.7);
* ``torchvision``: RGB, 0–1, ImageNet mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225);
* ``tf``: RGB scaled to [−1, 1] (``pixel / 127.5 − 1``), the Keras/TF-slim MobileNets;
* ``raw``: RGB 0–255 as is.

:func:`make_preprocessing` builds one from a preset plus overrides (the CLI's ``--preprocess``,
``--channel-order``, ``--scale``, ``--mean``, ``--std``, ``--input-size``); :meth:`Preprocessing.apply`
is what the imported graphs call first (plain torch operations, so receptive fields stay exact).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Sequence

import torch

from ..errors import PreimageError

__all__ = ["Preprocessing", "PRESETS", "make_preprocessing", "parse_input_size", "parse_triple", "PreprocessingError"]


class PreprocessingError(PreimageError, ValueError):
    """An invalid preprocessing preset or setting."""


@dataclass(frozen=True)
class Preprocessing:
    """How RGB 0–255 pixels map to the model's input (see the module docstring).

    ``order``: ``"RGB"``/``"BGR"``; ``scale``: multiplies the 0–255 pixel (1 or 1/255 …);
    ``mean``/``std``: per model channel, after scaling; ``input_size``: ``(H, W)`` or ``None``
    (the model's own); ``preset``: the preset it started from (for the record).
    """

    order: str = "RGB"
    scale: float = 1.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    input_size: tuple[int, int] | None = None
    preset: str = "raw"

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, b)`` of shape ``(1, 3, 1, 1)`` with ``model_input = pixel_in_order · a − b``."""
        std = torch.tensor(self.std, dtype=torch.float64)
        a = (self.scale / std).float().view(1, 3, 1, 1)
        b = (torch.tensor(self.mean, dtype=torch.float64) / std).float().view(1, 3, 1, 1)
        return a, b

    @property
    def mean_pixel(self) -> tuple[float, float, float]:
        """The RGB 0–255 pixel that maps to model input 0 (``mean / scale``, back in RGB order)."""
        m = [v / self.scale for v in self.mean]
        return tuple(float(v) for v in (m[::-1] if self.order == "BGR" else m))

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, 3, H, W)`` RGB on 0–255 → the model's input ``(B, 3, H, W)``."""
        a, b = (t.to(x.device, x.dtype) for t in self.coefficients())
        if self.order == "BGR":
            x = torch.flip(x, dims=(1,))
        return x * a - b

    def settings(self) -> dict:
        """A JSON-ready record (saved with every result)."""
        d = asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    def __str__(self) -> str:
        return json.dumps(self.settings())


_CAFFE_MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)

#: Named presets (see the module docstring).
PRESETS: dict[str, Preprocessing] = {
    "caffe": Preprocessing("BGR", 1.0, _CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), None, "caffe"),
    "torchvision": Preprocessing("RGB", 1 / 255, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), None, "torchvision"),
    "tf": Preprocessing("RGB", 1 / 127.5, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), None, "tf"),
    "raw": Preprocessing("RGB", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), None, "raw"),
}


def parse_triple(value, what: str) -> tuple[float, float, float]:
    """``"0.5,0.5,0.5"``, one number, or a sequence → three floats (raises PreprocessingError)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", ",").split(",") if p]
    elif isinstance(value, (int, float)):
        parts = [value]
    else:
        parts = list(value)
    try:
        vals = [float(v) for v in parts]
    except (TypeError, ValueError):
        raise PreprocessingError(f"{what} must be 1 or 3 numbers, got {value!r}") from None
    if len(vals) == 1:
        vals *= 3
    if len(vals) != 3:
        raise PreprocessingError(f"{what} must be 1 or 3 numbers, got {value!r}")
    return tuple(vals)  # type: ignore[return-value]


def parse_input_size(value) -> tuple[int, int] | None:
    """An input size ``(H, W)`` (positive) from ``(H, W)``, ``"H,W"``, ``"HxW"`` or one number
    (square); ``None`` stays ``None``. Raises :class:`PreprocessingError`."""
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.lower().replace("x", ",").split(",")
    elif isinstance(value, int):
        parts = [value, value]
    else:
        parts = list(value)
    try:
        h, w = (int(v) for v in (parts * 2 if len(parts) == 1 else parts))
    except (TypeError, ValueError):
        raise PreprocessingError(f"input size must be H,W or one number, got {value!r}") from None
    if h < 1 or w < 1:
        raise PreprocessingError(f"input size must be positive, got {value!r}")
    return h, w


def _scale(value) -> float:
    if isinstance(value, str):
        key = value.strip().replace(" ", "").replace("–", "-")
        named = {"0-1": 1 / 255, "0-255": 1.0}
        if key in named:
            return named[key]
        try:
            value = float(eval_fraction(key))
        except ValueError:
            raise PreprocessingError(f"scale must be 0-1, 0-255 or a number (e.g. 1/255), got {value!r}") from None
    s = float(value)
    if not s > 0:
        raise PreprocessingError(f"scale must be positive, got {value!r}")
    return s


def eval_fraction(text: str) -> float:
    """``"1/255"`` → 0.00392…, ``"0.5"`` → 0.5 (no code is evaluated; raises ValueError)."""
    if "/" in text:
        num, den = text.split("/", 1)
        return float(num) / float(den)
    return float(text)


def make_preprocessing(preset: str | Preprocessing | None = None, *, order: str | None = None, scale=None,
                       mean=None, std=None, input_size=None, default: str | Preprocessing = "raw") -> Preprocessing:
    """A :class:`Preprocessing` from a preset name (or instance; ``None``: ``default``) with any of
    ``order`` (``RGB``/``BGR``), ``scale`` (a number, ``"1/255"``, ``"0-1"``, ``"0-255"``),
    ``mean``/``std`` (1 or 3 numbers, model channel order, after scaling) and ``input_size``
    (``(H, W)``, ``"H,W"`` or one number) overriding it. Raises :class:`PreprocessingError`."""
    base = preset if preset is not None else default
    if isinstance(base, str):
        key = base.strip().lower()
        if key not in PRESETS:
            raise PreprocessingError(f"unknown preprocessing preset {base!r}; valid: {', '.join(PRESETS)}")
        base = PRESETS[key]
    changes: dict = {}
    if order is not None:
        o = str(order).strip().upper()
        if o not in ("RGB", "BGR"):
            raise PreprocessingError(f"channel order must be RGB or BGR, got {order!r}")
        changes["order"] = o
    if scale is not None:
        changes["scale"] = _scale(scale)
    if mean is not None:
        changes["mean"] = parse_triple(mean, "mean")
    if std is not None:
        changes["std"] = parse_triple(std, "std")
        if any(not v > 0 for v in changes["std"]):
            raise PreprocessingError(f"std must be positive, got {std!r}")
    if input_size is not None:
        changes["input_size"] = parse_input_size(input_size)
    return replace(base, **changes)


def is_default(values: Sequence) -> bool:
    """Whether every override in ``values`` is ``None`` (nothing given)."""
    return all(v is None for v in values)
