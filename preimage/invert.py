"""Inversion: compose a representation with the objective and the optimiser.

:func:`invert` reconstructs N images × R random restarts × K regularisation settings as one
batched optimisation (chunked by ``max_batch`` when memory is short)::

    from preimage import invert, get_representation, load_image
    rep = get_representation("hog")
    x0 = load_image("cat.jpg", mode="grey")[None]          # (1, 1, H, W) on 0–255
    result = invert(rep, x0, restarts=4, lambda_tv=[0.5, 5, 50])
    result.reconstructions.shape                          # (1, 4, 3, 1, H, W)

:func:`invert_images` handles a list of images of different sizes (grouped by size).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .errors import InvalidTargetError
from .metrics import relative_error
from .objective import InversionObjective, check_target, default_lambdas, natural_sigma
from .optim import gaussian_init, make_schedule, minimise

#: Per-representation defaults (class name → settings). Learning rates are in σ-units per unit
#: gradient of the normalised objective; tuned on the *train* images (see benchmarks/tune_lr.py).
INVERSION_DEFAULTS: dict[str, dict] = {
    "HOG": {"schedule": "shallow", "lr": 3e-3},
    "DenseSIFT": {"schedule": "shallow", "lr": 3e-4},
    "CNNLayer": {"schedule": "cnn", "lr": 1e-2},
}
FALLBACK_DEFAULTS = {"schedule": "shallow", "lr": 1e-3}
#: Default learning rates are scaled by min(1, TV_STABLE_LAMBDA / λ_V) (see :func:`invert`).
TV_STABLE_LAMBDA = 5.0


def inversion_defaults(representation: torch.nn.Module) -> dict:
    """Default schedule and learning rate for a representation (by class, else the fallback).

    A representation may override them with an ``inversion_defaults`` dict attribute.
    """
    own = getattr(representation, "inversion_defaults", None)
    base = dict(INVERSION_DEFAULTS.get(type(representation).__name__, FALLBACK_DEFAULTS))
    if isinstance(own, dict):
        base.update(own)
    return base


@dataclass
class Inversion:
    """Result of :func:`invert` for N images, R restarts, K settings.

    Attributes:
        reconstructions: ``(N, R, K, C, H, W)`` images on the 0–255 scale (not clipped; use
            :func:`preimage.imageio.stretch` for the paper's display).
        targets: target codes ``(N, ...)``.
        codes: codes of the reconstructions ``(N, R, K, ...)``.
        relative_errors: ``(N, R, K)`` ‖Φ(x*) − Φ₀‖ / ‖Φ₀‖ (masked when a mask was used).
        energy: final objective terms, each ``(N, R, K)``: data, alpha, tv, total.
        lambda_tv, lambda_alpha: ``(K,)`` settings used.
        settings: everything needed to rerun (JSON-serialisable).
        seconds: wall time of the optimisation.
    """

    reconstructions: torch.Tensor
    targets: torch.Tensor
    codes: torch.Tensor
    relative_errors: torch.Tensor
    energy: dict[str, torch.Tensor]
    lambda_tv: torch.Tensor
    lambda_alpha: torch.Tensor
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    def best(self) -> torch.Tensor:
        """Per (image, setting), the restart with the lowest objective: ``(N, K, C, H, W)``."""
        idx = self.energy["total"].argmin(dim=1)  # (N, K)
        n, k = idx.shape
        ar_n = torch.arange(n)[:, None].expand(n, k)
        ar_k = torch.arange(k)[None, :].expand(n, k)
        return self.reconstructions[ar_n, idx, ar_k]


def _as_list(value, default) -> list[float]:
    if value is None:
        value = default
    if torch.is_tensor(value):
        return [float(v) for v in value.flatten()]
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return [float(value)]


def invert(representation: torch.nn.Module, images: torch.Tensor | None = None, *,
           target: torch.Tensor | None = None, image_shape: Sequence[int] | None = None,
           restarts: int = 1, lambda_tv: float | Sequence[float] | None = None,
           lambda_alpha: float | Sequence[float] | None = None, alpha: float = 6.0, beta: float = 2.0,
           schedule: str | Sequence[tuple[int, float]] | None = None, iterations: int | None = None,
           lr: float | None = None, method: str = "momentum", mask: torch.Tensor | None = None,
           seed: int = 0, device: str | torch.device | None = None, progress: bool | str = True,
           checkpoint: str | Path | None = None, max_batch: int | None = None,
           dtype: torch.dtype = torch.float32) -> Inversion:
    """Reconstruct images from their codes.

    Args:
        representation: Φ, a module mapping ``(B, C, H, W)`` images on 0–255 to codes.
        images: ``(N, C, H, W)`` originals on 0–255 (their codes are the targets); or give
            ``target`` ``(N, ...)`` and ``image_shape`` ``(C, H, W)`` instead.
        restarts: R random initialisations per image.
        lambda_tv, lambda_alpha: a value or a list of K values (zipped: the k-th setting uses
            the k-th of each; a single value is broadcast). ``None``: :func:`default_lambdas`,
            with the representation's own ``lambda_tv`` as the reference λ_V when it has one
            (a :class:`~preimage.representations.cnn.CNNLayer`: the paper's weight for its depth).
        alpha, beta: exponents of the priors.
        schedule, iterations, lr, method: see :func:`preimage.optim.minimise`; ``None`` takes the
            representation's defaults (:func:`inversion_defaults`), the rate scaled down for
            λ_V above 5 (per setting) so that strong TV does not make momentum GD diverge.
        mask: optional 0/1 mask broadcastable to one code ``(1, ...)``.
        seed: seeds the R initial noises (restart r gets the same noise for every image/setting).
        device: where to run (default: the images'/target's device).
        checkpoint: file prefix to save and resume each chunk's state.
        max_batch: largest number of samples optimised at once (default: all N·R·K).
    Returns:
        :class:`Inversion`.
    """
    if restarts < 1:
        raise ValueError("restarts must be at least 1")
    if images is not None:
        if not torch.is_tensor(images) or images.dim() != 4:
            raise ValueError(f"images must be a (N, C, H, W) tensor, got "
                             f"{tuple(images.shape) if torch.is_tensor(images) else type(images).__name__}")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or Inf")
        image_shape = tuple(images.shape[1:])
    elif target is None or image_shape is None:
        raise ValueError("give either images, or target and image_shape")
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape}")
    dev = torch.device(device) if device is not None else (
        images.device if images is not None else target.device)
    representation = representation.to(dev).eval()
    if hasattr(representation, "check_input"):
        representation.check_input(torch.zeros((1,) + image_shape, device=dev))

    if target is None:
        with torch.no_grad():
            target = representation(images.to(dev, dtype))
    else:
        target = torch.as_tensor(target).to(dev, dtype)
        if target.dim() < 2:
            raise InvalidTargetError(f"target must have a batch axis (N, ...), got shape {tuple(target.shape)}")
    check_target(target)
    n = target.shape[0]

    # a representation may carry its own reference λ_V (CNNLayer: the paper's weight for its depth)
    own_tv = getattr(representation, "lambda_tv", None)
    if isinstance(own_tv, (int, float)) and own_tv > 0:
        d_alpha, d_tv = default_lambdas(image_shape, alpha, beta, lambda_tv_reference=float(own_tv))
    else:
        d_alpha, d_tv = default_lambdas(image_shape, alpha, beta)
    tvs = _as_list(lambda_tv, d_tv)
    alphas = _as_list(lambda_alpha, d_alpha)
    k = max(len(tvs), len(alphas))
    if len(tvs) not in (1, k) or len(alphas) not in (1, k):
        raise ValueError(f"lambda_tv has {len(tvs)} values and lambda_alpha {len(alphas)}: give equal "
                         "lengths or a single value")
    tvs = tvs * k if len(tvs) == 1 else tvs
    alphas = alphas * k if len(alphas) == 1 else alphas

    defaults = inversion_defaults(representation)
    schedule = schedule if schedule is not None else defaults["schedule"]
    if lr is not None:
        lr_k = [float(lr)] * k
    else:
        # The default rate is tuned at λ_V = 5; the TV term's curvature grows with λ_V (β = 2), so
        # momentum GD stays stable only with η ∝ 1/λ_V beyond that: each setting gets its own rate.
        base = float(defaults["lr"])
        lr_k = [base * min(1.0, TV_STABLE_LAMBDA / t) if beta == 2.0 and t > 0 else base for t in tvs]
        if method != "momentum":
            lr_k = [min(lr_k)] * k
    stages = make_schedule(schedule, iterations)

    r = restarts
    # Flatten (n, r, k) → b; targets and settings expanded accordingly.
    total = n * r * k
    idx_n = torch.arange(n).repeat_interleave(r * k)
    idx_r = torch.arange(r).repeat_interleave(k).repeat(n)
    idx_k = torch.arange(k).repeat(n * r)
    noise = gaussian_init(r, image_shape, seed=seed, device=dev, dtype=dtype)
    chunk = max_batch or total
    if mask is not None:
        mask = torch.as_tensor(mask).to(dev, dtype)
        if mask.dim() == target.dim() - 1:
            mask = mask[None]

    u_out = torch.empty((total,) + image_shape, dtype=dtype, device=dev)
    backoffs = torch.zeros(total, dtype=torch.long)
    energy = {key: torch.empty(total, dtype=torch.float64) for key in ("data", "alpha", "tv", "total")}
    t0 = time.perf_counter()
    for c0 in range(0, total, chunk):
        sl = slice(c0, min(total, c0 + chunk))
        bn, br, bk = idx_n[sl], idx_r[sl], idx_k[sl]
        obj = InversionObjective(
            representation, target[bn.to(dev)], image_shape,
            lambda_alpha=[alphas[i] for i in bk.tolist()], lambda_tv=[tvs[i] for i in bk.tolist()],
            alpha=alpha, beta=beta, mask=mask).to(dev)
        u0 = noise[br.to(dev)]
        ck = None
        if checkpoint is not None:
            ck = Path(f"{checkpoint}.chunk{c0 // chunk}.safetensors")
            ck.parent.mkdir(parents=True, exist_ok=True)
        desc = progress if isinstance(progress, str) else f"inverting {sl.stop - sl.start} × {image_shape}"
        lrs = [lr_k[i] for i in bk.tolist()]
        res = minimise(obj, u0, lr=lrs[0] if len(set(lrs)) == 1 else lrs, schedule=stages, method=method, progress=desc if progress else False,
                       checkpoint=ck)
        u_out[sl] = res.u
        backoffs[sl] = torch.tensor(res.extra.get("backoffs", [0] * (sl.stop - sl.start)))
        for key in energy:
            energy[key][sl] = torch.tensor(res.energy[key], dtype=torch.float64)
    seconds = time.perf_counter() - t0
    if int(backoffs.sum()):
        warnings.warn(f"{int((backoffs > 0).sum())} of {total} optimisations diverged and were resumed with "
                      f"their learning rate halved (up to {int(backoffs.max())} times); pass a smaller lr "
                      f"to avoid the lost iterations", RuntimeWarning, stacklevel=2)

    sigma = natural_sigma(image_shape)
    mp = torch.as_tensor(getattr(representation, "mean_pixel", 128.0), dtype=dtype, device=dev).flatten()
    recon = mp.view(1, -1, 1, 1) + sigma * u_out
    with torch.no_grad():
        codes = torch.cat([representation(recon[i:i + chunk]) for i in range(0, total, chunk)])
    tgt = target[idx_n.to(dev)]
    if mask is not None:
        rel = relative_error(codes * mask, tgt * mask)
    else:
        rel = relative_error(codes, tgt)
    shape3 = (n, r, k)
    settings = dict(representation=type(representation).__name__, image_shape=list(image_shape),
                    restarts=r, lambda_tv=tvs, lambda_alpha=alphas, alpha=alpha, beta=beta,
                    schedule=[list(s) for s in stages], lr=lr_k, method=method, seed=seed,
                    sigma=sigma, masked=mask is not None, iterations=sum(s[0] for s in stages),
                    lr_halvings=backoffs.view(shape3).tolist())
    return Inversion(
        reconstructions=recon.detach().cpu().view(shape3 + image_shape),
        targets=target.detach().cpu(),
        codes=codes.detach().cpu().view(shape3 + tuple(codes.shape[1:])),
        relative_errors=rel.detach().cpu().double().view(shape3),
        energy={key: v.view(shape3) for key, v in energy.items()},
        lambda_tv=torch.tensor(tvs, dtype=torch.float64),
        lambda_alpha=torch.tensor(alphas, dtype=torch.float64),
        settings=settings, seconds=seconds)


def invert_images(representation: torch.nn.Module, images: Sequence[torch.Tensor], **kwargs) -> list[Inversion]:
    """Invert a list of ``(C, H, W)`` images of possibly different sizes: images of the same size
    are batched together. Returns one :class:`Inversion` (N = 1) per input, in input order."""
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    out: list[Inversion | None] = [None] * len(images)
    for shape, idx in groups.items():
        batch = torch.stack([images[i] for i in idx])
        res = invert(representation, batch, **kwargs)
        for j, i in enumerate(idx):
            out[i] = Inversion(
                reconstructions=res.reconstructions[j:j + 1], targets=res.targets[j:j + 1],
                codes=res.codes[j:j + 1], relative_errors=res.relative_errors[j:j + 1],
                energy={k: v[j:j + 1] for k, v in res.energy.items()}, lambda_tv=res.lambda_tv,
                lambda_alpha=res.lambda_alpha, settings=res.settings, seconds=res.seconds / len(idx))
    return out  # type: ignore[return-value]
