"""Parameterisations of the optimised image: what the optimiser updates, and how ``u`` is made
from it (:class:`~preimage.params.base.Parameterisation` states the contract).

=========  ======================================================  ===================================
name       ``u`` is                                                optimiser, lr, schedule, priors
=========  ======================================================  ===================================
pixel      the parameter itself (the paper's method)               momentum, the representation's
fourier    1/f-scaled FFT coefficients, colours mixed as in train/ Adam 0.05, constant, λ × 0.003;
           through a sigmoid onto −40…295 grey levels              ``bounded=True, margin=40``
dip        the output of a small hourglass network from fixed noise Adam 0.01, constant, λ × 0.003
=========  ======================================================  ===================================

The last column is each class's ``recommended_*`` settings, which :func:`preimage.invert.invert`
uses unless told otherwise (its ``param_options`` override ``recommended_options`` key by key;
constructing a class directly takes its plain defaults, e.g. an unbounded Fourier image). A
representation may name another optimiser for its own recipe: CNN layers invert a Fourier image
with L-BFGS (``CNNLayer.recipe_optimiser``).
Fourier's settings were calibrated on ``train/`` (``benchmarks/bench_priors.py``); DIP's rate is
its authors'. Use :func:`get_parameterisation`::

    p = get_parameterisation("fourier", (3, 224, 224), n=4).init(seed=0)
    u = p()                     # (4, 3, 224, 224), σ-units
"""

from __future__ import annotations

from typing import Sequence

from ..errors import UnknownNameError
from .base import Parameterisation
from .dip import DIPParam
from .fourier import FourierParam
from .pixel import PixelParam

#: Every parameterisation by name.
PARAMETERISATIONS: dict[str, type[Parameterisation]] = {
    cls.name: cls for cls in (PixelParam, FourierParam, DIPParam)}


def parameterisation_class(name: str) -> type[Parameterisation]:
    """The class of parameterisation ``name`` (``pixel``, ``fourier``, ``dip``): its declared
    ``recommended_optimiser``, ``recommended_lr``, ``recommended_schedule`` and ``prior_scale``
    without building one. Unknown names raise
    :class:`~preimage.errors.UnknownNameError` listing the valid ones."""
    try:
        return PARAMETERISATIONS[str(name).strip().lower()]
    except KeyError:
        raise UnknownNameError(f"unknown parameterisation {name!r}; valid names: "
                               f"{', '.join(PARAMETERISATIONS)}") from None


def get_parameterisation(name: str, shape: Sequence[int], n: int, **kwargs) -> Parameterisation:
    """A new parameterisation ``name`` (``pixel``, ``fourier``, ``dip``) for ``n`` images of
    ``shape = (C, H, W)``, with the class's keyword arguments ``kwargs``; call ``.init(seed)``
    before use (parameters start at zero)."""
    return parameterisation_class(name)(shape, n, **kwargs)


__all__ = ["PARAMETERISATIONS", "Parameterisation", "PixelParam", "FourierParam", "DIPParam",
           "get_parameterisation", "parameterisation_class"]
