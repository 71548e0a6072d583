"""The pytorch-cnn-visualizations inversion, re-expressed through preimage's objective and optimiser
(a baseline).

utkuozbulak/pytorch-cnn-visualizations, ``src/inverted_representation.py`` (Mahendran & Vedaldi's
method as that repository implements it) optimises an image ``z`` in the network's ImageNet-
normalised input space (``z = (x/255 − mean)/std`` per channel, :data:`CNN_VISUALIZATIONS`'s
``input_mean``/``input_std``) from ``0.1 · N(0, 1)`` noise by ``torch.optim.SGD`` (rate 1e4,
momentum 0.9) for 201 iterations, the rate divided by 10 after iterations 0, 40, 80, 120 and 160,
on the loss::

    L(z) = 0.1 · ‖Φ(z) − Φ₀‖² / ‖Φ₀‖²  +  1e-7 · Σ z⁶  +  1e-8 · Σ (Δ₁z² + Δ₂z²)

(the last a β = 2 total variation; no clamping, no divergence check). Here that loss is preimage's
:class:`~preimage.objective.InversionObjective` ``E = L / 0.1`` on ``u = z`` (σ = 1, mean 0; the
representation sees ``x = 255 · (mean + std · z)`` through :class:`NormalisedInput`), so
λ_α = 1e-6 and λ_V = 1e-7, and SGD on ``L`` at rate η is preimage's momentum descent on ``E`` at
rate 0.1 · η (the same steps: ``v ← 0.9 v − η ∇L``). The published loop's rate drops are the stages
of :func:`schedule`.

Where the re-expression differs from the published code (each noted because a reader comparing
the two would look for it):

* preimage's momentum stepper zeroes the velocity at each stage change; ``torch.optim.SGD`` keeps
  its buffer, so there the old velocity carries on at a tenth of the rate for a while;
* the published TV term indexes the 4-D image as if it were 3-D (it differences the colour
  channels and the rows, not the rows and the columns); preimage's TV differences rows and
  columns. At weight 1e-8 the term is below 1e-3 of the loss either way;
* a batch of N images is N independent problems (the published code inverts one image); every
  image starts from the same noise, so batch and single runs agree.

:data:`BEST_RATES` are the rates the issue compares at besides the published one (the published
rate's first step makes the loss non-finite on MobileNet v2); choose among them on ``train/``.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import nn

from ..invert import Inversion
from ..metrics import relative_error
from ..objective import InversionObjective
from ..optim import make_schedule, minimise

#: The published settings, in the published code's own units (its loss ``L``, its rate on ``z``).
CNN_VISUALIZATIONS = {
    "optimiser": "sgd",
    "lr": 1e4,
    "momentum": 0.9,
    "iterations": 201,
    "decay_every": 40,           # the rate is multiplied by ``decay`` after iterations 0, 40, 80, …
    "decay": 0.1,
    "data_weight": 0.1,          # the normalised squared code distance, times 0.1
    "alpha": 6.0,
    "lambda_alpha": 1e-7,        # on Σ z⁶ (z the normalised image)
    "beta": 2.0,
    "lambda_tv": 1e-8,           # on the β = 2 total variation of z
    "init_std": 0.1,             # z₀ = 0.1 · N(0, 1)
    "input_mean": (0.485, 0.456, 0.406),  # the ImageNet normalisation z is expressed in
    "input_std": (0.229, 0.224, 0.225),
}

#: The lower rates (published units) the issue compares at; pick the best on train/, never eval.
BEST_RATES = (1e3, 1e2)


def schedule(settings: dict = CNN_VISUALIZATIONS) -> tuple[tuple[int, float], ...]:
    """The published loop's rates as preimage stages ``((iterations, factor), …)``: one
    iteration at the full rate, then ``decay_every`` at each further tenth (201 in all:
    ``((1, 1), (40, 0.1), (40, 0.01), (40, 1e-3), (40, 1e-4), (40, 1e-5))``)."""
    total, every, decay = int(settings["iterations"]), int(settings["decay_every"]), float(settings["decay"])
    stages, done, k = [], 0, 0
    while done < total:
        n = 1 if k == 0 else min(every, total - done)
        stages.append((n, float(f"{decay ** k:.12g}")))
        done, k = done + n, k + 1
    return tuple(stages)


class NormalisedInput(nn.Module):
    """``Φ`` seen from the normalised image: ``forward(z)`` = ``representation(255 · (mean + std · z))``.

    ``z`` ``(N, C, H, W)`` in ImageNet-normalised units (about −2 … 2.6 for an image on 0–255);
    ``mean``/``std`` per channel on the 0–1 scale (C values). The representation takes images on
    0–255 and gives codes ``(N, ...)``.
    """

    def __init__(self, representation: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.representation = representation
        self.register_buffer("mean", 255.0 * torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", 255.0 * torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def pixels(self, z: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` normalised image → the image on 0–255 (not clamped)."""
        return self.mean.to(z.dtype) + self.std.to(z.dtype) * z

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` image on 0–255 → the normalised image ``z``."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.representation(self.pixels(z))


def objective(representation: nn.Module, images: torch.Tensor, settings: dict = CNN_VISUALIZATIONS
              ) -> InversionObjective:
    """The published loss divided by its data weight, as an :class:`InversionObjective` on
    ``u = z`` (σ = 1, mean 0) for the ``(N, 3, H, W)`` images on 0–255 (their codes are the
    targets). Raises ``ValueError`` for images whose channels do not match the normalisation."""
    mean, std = settings["input_mean"], settings["input_std"]
    if images.dim() != 4 or images.shape[1] != len(mean):
        raise ValueError(f"the pytorch-cnn-visualizations algorithm works on {len(mean)}-channel images "
                         f"(N, {len(mean)}, H, W); got {tuple(images.shape)}")
    phi = NormalisedInput(representation, mean, std).to(images.device)
    with torch.no_grad():
        target = representation(images)
    w = float(settings["data_weight"])
    return InversionObjective(phi, target, tuple(images.shape[1:]), lambda_alpha=settings["lambda_alpha"] / w,
                              lambda_tv=settings["lambda_tv"] / w, alpha=settings["alpha"], beta=settings["beta"],
                              sigma=1.0, mean_pixel=0.0)


def initial(n: int, shape: Sequence[int], settings: dict = CNN_VISUALIZATIONS, seed: int = 0) -> torch.Tensor:
    """``(n, C, H, W)`` float32 starts: one draw of ``init_std · N(0, 1)`` (seeded), the same for
    every image."""
    gen = torch.Generator().manual_seed(int(seed))
    z = float(settings["init_std"]) * torch.randn((1,) + tuple(shape), generator=gen)
    return z.expand((n,) + tuple(shape)).clone()


def invert_cnn_visualizations(representation: nn.Module, images: torch.Tensor, *, lr: float | None = None,
                              iterations: int | None = None, settings: dict = CNN_VISUALIZATIONS, seed: int = 0,
                              callback: Callable[[int, torch.Tensor], None] | None = None,
                              record_every: int = 10, progress: bool | str = False) -> Inversion:
    """Invert the codes of ``images`` ``(N, 3, H, W)`` (0–255) the pytorch-cnn-visualizations way.

    ``lr``: the rate in the published units (default ``settings["lr"]``, 1e4); ``iterations``:
    rescale the published schedule (default its 201). ``callback(iteration, z)`` and
    ``record_every`` as in :func:`preimage.optim.minimise` (``z`` the normalised image; the image
    on 0–255 is ``objective.image(z)`` through the representation's wrapper). No divergence
    back-off, as published: a sample whose loss stops being finite ends as NaN.

    Returns an :class:`~preimage.invert.Inversion` with R = K = 1: ``reconstructions``
    ``(N, 1, 1, 3, H, W)`` on 0–255 (not clamped), ``relative_errors`` ``(N, 1, 1)``, and
    ``settings`` including ``lr_halvings`` (zeros) and ``iterations_used``.
    """
    obj = objective(representation, images, settings)
    n, shape = images.shape[0], tuple(images.shape[1:])
    u0 = initial(n, shape, settings, seed).to(images.device, images.dtype)
    rate = float(settings["lr"] if lr is None else lr)
    stages = make_schedule(schedule(settings), iterations)
    t0 = time.perf_counter()
    res = minimise(obj, u0, lr=rate * float(settings["data_weight"]), schedule=stages, method="momentum",
                   momentum=float(settings["momentum"]), progress=progress, record_every=record_every,
                   callback=callback, stop_on_divergence=False)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        codes = obj.representation(res.u)
        recon = obj.representation.pixels(res.u)
    rel = relative_error(codes, obj.target)
    one = (n, 1, 1)
    return Inversion(
        reconstructions=recon.detach().cpu().view(one + shape), targets=obj.target.detach().cpu(),
        codes=codes.detach().cpu().view(one + tuple(codes.shape[1:])),
        relative_errors=rel.detach().cpu().double().view(one),
        energy={k: torch.tensor(v, dtype=torch.float64).view(one) for k, v in res.energy.items()},
        lambda_tv=obj.lambda_tv[:1].double().cpu(), lambda_alpha=obj.lambda_alpha[:1].double().cpu(),
        settings=dict(method="cnn_visualizations", published=dict(settings), lr=rate, seed=seed,
                      schedule=[list(s) for s in stages], iterations=sum(s[0] for s in stages),
                      image_shape=list(shape), lr_halvings=[[[0]] for _ in range(n)],
                      iterations_used=res.iterations_used.view(one).tolist()),
        seconds=seconds)
