"""The contract every image parameterisation meets.

A parameterisation is an ``nn.Module`` whose parameters are what the optimiser updates and whose
``forward()`` (no argument) returns the optimisation variable of :mod:`preimage.objective`:
``u`` ``(N, C, H, W)``, mean-subtracted images in σ-units (σ = :func:`natural_sigma` of
``(C, H, W)``, a natural image has ‖u‖ ≈ 1; the image a representation sees is
``mean_pixel + σ·u`` on 0–255). The N samples (images × restarts × settings) are independent:
sample i's ``u`` depends on sample i's parameters only, so the per-sample energies of the
objective keep independent gradients, with any element-wise optimiser (momentum, Adam).

Contract (what :func:`preimage.invert.invert` may rely on):

``cls(shape, n, *, mean_pixel=128.0, sigma=None, **options)``
    ``(C, H, W)`` and the batch size N, fixed at construction (attributes ``shape``, ``n``).
    Every class accepts ``mean_pixel`` (the representation's, 0–255) and ``sigma`` (the
    objective's σ, default :func:`natural_sigma` of ``shape``), so a caller can pass both to any
    of them; a class whose ``u`` does not depend on them ignores them.
``init(seed=0, restarts=None)``
    (Re)draw every parameter in place, deterministically: ``restarts`` (length N, ints) names
    each sample's restart, and sample i gets the values of restart ``restarts[i]`` among
    R = max(restarts) + 1 restarts drawn from ``seed`` (an int, or a ``torch.Generator`` to draw
    from). So ``restarts=[0, 1, 0, 1]`` gives two images the same two initialisations, as
    ``invert`` does with :func:`preimage.optim.gaussian_init` (R noises, restart r reused for
    every image and setting); default: sample i is restart i. Returns ``self``.
``forward()``
    ``u`` ``(N, C, H, W)`` in the parameters' dtype and device.
parameters
    Sample-major: for every parameter ``q``, ``q.view(N, -1)[n]`` holds sample n's values and
    nothing else, so a caller can reset, rescale or back off one sample's parameters (or its
    optimiser state) alone, as :func:`preimage.optim.minimise` does with ``u`` today.
``recommended_optimiser``, ``recommended_lr``, ``recommended_schedule``, ``prior_scale``, ``recommended_options``
    What :func:`preimage.invert.invert` uses when not told otherwise: the optimiser
    (``"momentum"``: :func:`preimage.optim.minimise`'s, or ``"adam"``), its base rate, its
    schedule (stages ``((iterations, rate factor), …)``, rescaled to the run's iterations), a
    factor on the representation's default λ_α and λ_V, and constructor keyword arguments (a
    caller's ``param_options`` override them key by key). ``None`` as the rate or schedule means
    the representation's own (the paper's). Declared per class, calibrated on ``train/``
    (``benchmarks/bench_priors.py``).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

from ..objective import natural_sigma

#: preimage's schedule for Adam on a re-parameterised image, 400 iterations (rescaled to a run's
#: length): one rate throughout. Calibrated on train/ (issue 14, benchmarks/bench_priors.py): the
#: paper's CNN schedule (0.1× after a quarter of the run) stalls Adam, and annealing the second
#: half of the run lost at conv1 and block5_add (MobileNet v2) at equal iterations.
CONSTANT_SCHEDULE: tuple[tuple[int, float], ...] = ((400, 1.0),)


def make_generator(seed: int | torch.Generator | None) -> torch.Generator:
    """A CPU generator: ``seed`` itself when it is one, else a new one seeded with ``seed`` (None: 0)."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed or 0))


def restart_index(restarts: Sequence[int] | torch.Tensor | None, n: int) -> torch.Tensor:
    """Each sample's restart ``(n,)`` long: ``restarts`` checked (n non-negative ints), or ``0..n−1``."""
    if restarts is None:
        return torch.arange(n)
    idx = torch.as_tensor(restarts, dtype=torch.long).flatten()
    if idx.numel() != n or (idx < 0).any():
        raise ValueError(f"restarts must be {n} non-negative ints, got {idx.tolist()}")
    return idx


class Parameterisation(nn.Module):
    """Base class, see the module docstring for the contract.

    Args:
        shape: ``(C, H, W)`` of the images.
        n: batch size N.
    """

    name: ClassVar[str] = ""
    recommended_optimiser: ClassVar[str] = "adam"
    recommended_lr: ClassVar[float | None] = None
    recommended_schedule: ClassVar[tuple[tuple[int, float], ...] | None] = None
    prior_scale: ClassVar[float] = 1.0
    recommended_options: ClassVar[dict] = {}

    def __init__(self, shape: Sequence[int], n: int):
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W) with positive sizes, got {shape}")
        if int(n) < 1:
            raise ValueError(f"batch size must be at least 1, got {n}")
        self.shape = shape
        self.n = int(n)

    def init(self, seed: int | torch.Generator | None = 0,
             restarts: Sequence[int] | torch.Tensor | None = None) -> "Parameterisation":
        """Redraw the parameters in place (see the contract); returns ``self``."""
        raise NotImplementedError

    def forward(self) -> torch.Tensor:
        """``u`` ``(N, C, H, W)`` in σ-units."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        """Shape and batch size, for ``print(module)``."""
        return f"shape={self.shape}, n={self.n}"


class SigmaOutput(nn.Module):
    """Turns a generated field ``y`` ``(N, C, H, W)`` in grey levels (deviations from the mean
    pixel, 0–255 scale) into ``u`` in σ-units.

    Unbounded (default): ``u = y/σ``. Bounded (lucent's sigmoid image): the image is
    ``lo + (hi − lo)·sigmoid(logit(s) + y/g)`` on the range ``(lo, hi) = (−margin, 255 + margin)``,
    with ``s = (m − lo)/(hi − lo)`` and ``g = (hi − lo)·s(1−s)``, so it stays in the range, equals
    the mean pixel ``m`` at ``y = 0`` and has slope 1 there; ``u = (image − m)/σ``. A margin lets
    the image reach the saturated pixels (0 and 255) of real photographs with finite parameters.

    Args:
        shape: ``(C, H, W)``.
        bounded: use the sigmoid.
        mean_pixel: ``m``, a value or C values on 0–255 (the representation's ``mean_pixel``);
            used only when bounded.
        sigma: σ; default :func:`natural_sigma` of ``shape``.
        margin: grey levels the bounded range extends beyond 0–255 on each side (≥ 0).
    """

    def __init__(self, shape: Sequence[int], bounded: bool = False,
                 mean_pixel: float | Sequence[float] = 128.0, sigma: float | None = None,
                 margin: float = 0.0):
        super().__init__()
        c = int(shape[0])
        self.bounded = bool(bounded)
        self.sigma = float(sigma) if sigma is not None else natural_sigma(shape)
        self.margin = float(margin)
        if not self.margin >= 0:
            raise ValueError(f"margin must be a non-negative number of grey levels, got {margin}")
        m = torch.as_tensor(mean_pixel, dtype=torch.float64).flatten()
        if m.numel() not in (1, c):
            raise ValueError(f"mean_pixel has {m.numel()} values for {c} channels")
        if ((m <= 0) | (m >= 255)).any():
            raise ValueError(f"mean_pixel must lie strictly inside (0, 255), got {m.tolist()}")
        lo, span = -self.margin, 255.0 + 2 * self.margin
        s = (m - lo) / span
        self.register_buffer("mean_pixel", m.float().view(1, -1, 1, 1))
        self.register_buffer("offset", torch.logit(s).float().view(1, -1, 1, 1))
        self.register_buffer("gain", (span * s * (1 - s)).float().view(1, -1, 1, 1))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` ``(N, C, H, W)`` grey levels → ``u`` ``(N, C, H, W)`` σ-units."""
        if not self.bounded:
            return y / self.sigma
        span = 255.0 + 2 * self.margin
        image = span * torch.sigmoid(self.offset + y / self.gain) - self.margin
        return (image - self.mean_pixel) / self.sigma

    def extra_repr(self) -> str:
        """Whether bounded, and σ, for ``print(module)``."""
        return f"bounded={self.bounded}, margin={self.margin:g}, sigma={self.sigma:.6g}"

