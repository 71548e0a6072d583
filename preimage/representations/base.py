"""The contract every representation follows: :class:`Representation`.

A representation Φ is a differentiable ``torch.nn.Module``:

* input: an image batch ``(B, C, H, W)``, float, pixel values on a **0–255 scale** (values outside
  the range are allowed: the optimiser does not clip). ``C`` must be one of ``input_channels``.
* output: the code, a tensor ``(B, ...)`` (typically ``(B, D, h, w)``).

Everything :func:`preimage.invert.invert`, the CLI and the experiments read from a representation
is declared on :class:`Representation`, with its default; a subclass overrides what differs as
class attributes or in ``__init__``:

==========================  =====================================================================
``name``                    label written in an inversion's settings (default: the class name)
``input_channels``          accepted channel counts, e.g. ``(1, 3)`` for HOG, ``(1,)`` for DSIFT
``mean_pixel``              per-channel offset (0–255) of the mean-subtracted optimisation variable
``input_size``              ``(H, W)`` a network expects, or ``None`` when any size works
``min_size``                smallest ``(H, W)`` that gives a non-empty code
``lambda_tv``               reference λ_V (at 227×227×3, β = 2) of the default TV weight
``schedule``                default optimisation schedule (a name of :data:`preimage.paper.SCHEDULES`)
``lr``                      default base learning rate of the paper's momentum descent
``param``                   default parameterisation of the image (``"pixel"``; CNN layers ``"fourier"``)
``recipe_schedule``         stages of preimage's own recipes for that image, when the code needs other ones
``recipe_optimiser``        optimiser and rate of those recipes per parameterisation, when the code needs another
``grad_leak``               gradient leak of the clipping activations for preimage's own recipes
``leaking_gradients(l)``    context in which the backward leaks ``l`` (see ``grad_leak``)
``render_code(code)``       a picture of one code (HOG: its glyph), or ``None``
``receptive_field_box(n)``  input box seen by the central ``n×n`` code units, or ``None``
``check_input(x)``          raises ``ValueError`` for a batch the representation cannot take
==========================  =====================================================================

A plain ``nn.Module`` that is not a :class:`Representation` is still invertible:
:func:`as_representation` wraps it with the defaults above (and no input check).
"""

from __future__ import annotations

from contextlib import contextmanager
from types import MappingProxyType
from typing import Iterator, Mapping, Sequence

import torch
from torch import nn

from ..paper import LAMBDA_TV


class Representation(nn.Module):
    """Base class: image batch ``(B, C, H, W)`` on 0–255 → code ``(B, ...)``.

    The class attributes below are the whole contract (see the module docstring); their values
    here are the defaults a subclass inherits.
    """

    #: Label in an inversion's ``settings["representation"]``; each subclass gets its class name
    #: unless it sets its own.
    name: str = "Representation"
    #: Accepted channel counts ``C`` of the input batch.
    input_channels: Sequence[int] = (1, 3)
    #: Offset(s) on 0–255 added to σ·u: one value, or one per channel.
    mean_pixel: float | Sequence[float] = 128.0
    #: ``(H, W)`` the representation expects, or ``None`` when any size works.
    input_size: tuple[int, int] | None = None
    #: Smallest ``(H, W)`` giving a non-empty code.
    min_size: tuple[int, int] = (1, 1)
    #: Reference TV weight λ_V (the paper's value at 227×227×3 with β = 2), carried to the image's
    #: size by :func:`preimage.objective.default_lambdas`. CNN layers: the paper's depth rule.
    lambda_tv: float = LAMBDA_TV
    #: Default schedule: a name of :data:`preimage.paper.SCHEDULES` (``"shallow"``: 800
    #: iterations, ``"cnn"``: 400) or stages ``((iterations, rate factor), …)``.
    schedule: str | Sequence[tuple[int, float]] = "shallow"
    #: The image's parameterisation :func:`preimage.invert.invert` uses by default (a name of
    #: :data:`preimage.params.PARAMETERISATIONS`): the paper's ``"pixel"``; CNN layers
    #: ``"fourier"`` (lower code error than the paper's at equal time, on train/).
    param: str = "pixel"
    #: Stages ``((iterations, rate factor), …)`` that preimage's own recipes on a re-parameterised
    #: image (Fourier, DIP) use instead of the parameterisation's ``recommended_schedule``, for a
    #: code that needs longer (a deep CNN layer whose code is clipped, see
    #: :attr:`preimage.representations.cnn.CNNLayer.recipe_schedule`); ``None``: the
    #: parameterisation's. The paper's method and pixels keep ``schedule``.
    recipe_schedule: Sequence[tuple[int, float]] | None = None
    #: ``{param: (optimiser, rate)}``: the optimiser of preimage's own recipes on that
    #: parameterisation of the image when the code wants another than its
    #: ``recommended_optimiser`` (CNN layers: L-BFGS on a Fourier image,
    #: :attr:`preimage.representations.cnn.CNNLayer.recipe_optimiser`). Not used with a jitter
    #: (a quasi-Newton method needs the same objective every step). Empty: the parameterisation's.
    recipe_optimiser: Mapping[str, tuple[str, float]] = MappingProxyType({})
    #: Default base learning rate (σ-units per unit gradient of the normalised objective), tuned
    #: on the train images at λ_V = 5 (benchmarks/tune_lr.py).
    lr: float = 1e-3
    #: Leak ℓ (0 ≤ ℓ < 1) of the surrogate gradient through the representation's clipping
    #: activations that :func:`~preimage.invert.invert` uses, except for ``method="paper"``
    #: (always the exact gradient): inside :meth:`leaking_gradients`, a unit that clips passes ℓ
    #: of its gradient instead of none. The code itself never changes. 0: the exact gradient.
    grad_leak: float = 0.0

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = cls.__name__

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

    def render_code(self, code: torch.Tensor) -> torch.Tensor | None:
        """A picture of one code ``(D, h, w)`` (no batch axis): ``(C, H, W)`` on 0–255, or
        ``None`` when the representation has no picture of its codes (the default)."""
        return None

    def receptive_field_box(self, window: int) -> tuple[int, int, int, int] | None:
        """Input-pixel box ``(top, left, bottom, right)`` (bottom/right exclusive, clipped to
        ``input_size``) seen by the central ``window × window`` units of the code, or ``None``
        when unknown (the default)."""
        return None

    def code_stride(self) -> int | None:
        """Input pixels between neighbouring code positions (HOG: the cell size, a CNN layer:
        its receptive-field stride), or ``None`` when unknown (the default). Sets the jitter of
        ``invert(..., jitter="auto")`` (:func:`preimage.transforms.jitter_for_stride`)."""
        return None

    @contextmanager
    def leaking_gradients(self, leak: float) -> Iterator[None]:
        """Within the block, gradients leak ``leak`` (0 ≤ leak < 1) through the clipping
        activations (:mod:`preimage.models.surrogate`); the values are exact. A representation
        without a surrogate (the default) accepts only 0."""
        if float(leak) != 0.0:
            raise ValueError(f"{type(self).__name__} has no leaky gradient (grad_leak must be 0, got {leak})")
        yield

    def extra_repr(self) -> str:
        return f"input_channels={tuple(self.input_channels)}"


class _ModuleRepresentation(Representation):
    """A plain module under the contract's defaults; its name is the module's class name."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.name = type(module).__name__

    def check_input(self, x: torch.Tensor) -> None:
        """A plain module declares nothing about its input: no check."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, H, W)`` on 0–255 → the module's code ``(B, ...)``."""
        return self.module(x)


def as_representation(module: nn.Module) -> Representation:
    """``module`` itself when it is a :class:`Representation`; a plain ``nn.Module`` (image batch
    ``(B, C, H, W)`` on 0–255 → code ``(B, ...)``) wrapped with the contract's defaults, no input
    check, and its class name as ``name``. Raises ``TypeError`` for anything else."""
    if isinstance(module, Representation):
        return module
    if not isinstance(module, nn.Module):
        raise TypeError(f"a representation must be an nn.Module, got {type(module).__name__}")
    return _ModuleRepresentation(module)
