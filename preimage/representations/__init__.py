"""Representations: differentiable image → code modules (see :mod:`preimage.representations.base`).

Shallow ones are looked up by name with :func:`get_representation`; CNN layers are built with
:mod:`preimage.representations.cnn`.
"""

from __future__ import annotations

from importlib import import_module

from ..errors import UnknownNameError
from .base import Representation

#: name → (module, class, fixed keyword arguments)
_SHALLOW = {
    "hog": ("preimage.representations.hog", "HOG", {"variant": "uoctti", "bilinear": False}),
    "hogb": ("preimage.representations.hog", "HOG", {"variant": "uoctti", "bilinear": True}),
    "dsift": ("preimage.representations.dsift", "DenseSIFT", {}),
}

SHALLOW_NAMES = tuple(_SHALLOW)


def get_representation(name: str, **kwargs) -> Representation:
    """Build a shallow representation by name (``hog``, ``hogb``, ``dsift``).

    Extra keyword arguments go to the class (e.g. ``cell_size=8``, ``step=4``).
    Raises :class:`UnknownNameError` listing the valid names.
    """
    key = name.lower().strip()
    if key not in _SHALLOW:
        raise UnknownNameError(f"unknown representation {name!r}; valid names: {', '.join(SHALLOW_NAMES)}")
    module, cls, fixed = _SHALLOW[key]
    return getattr(import_module(module), cls)(**{**fixed, **kwargs})


__all__ = ["Representation", "get_representation", "SHALLOW_NAMES"]
