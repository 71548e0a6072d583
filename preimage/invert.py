"""Inversion: compose a representation with the objective and the optimiser.

:func:`invert` reconstructs N images × R random restarts × K regularisation settings as one
batched optimisation (chunked by ``max_batch`` when memory is short)::

    from preimage import invert, get_representation, load_image
    rep = get_representation("hog")
    x0 = load_image("cat.jpg", mode="grey")[None]          # (1, 1, H, W) on 0–255
    result = invert(rep, x0, restarts=4, lambda_tv=[0.5, 5, 50])
    result.reconstructions.shape                          # (1, 4, 3, 1, H, W)

:func:`invert_images` handles a list of images of different sizes (grouped by size).

The optimised image may be parameterised (``param``: ``"pixel"``, the paper's; ``"fourier"``, a
colour-decorrelated Fourier image; ``"dip"``, a Deep Image Prior generator, :mod:`preimage.params`),
and the data term may see a jittered image each step (``jitter``, :mod:`preimage.transforms`);
the priors act on the image itself whatever its parameterisation.

Defaults come from the representation's contract
(:class:`~preimage.representations.base.Representation`): the parameterisation (``param``:
pixels for HOG and DSIFT, where the paper's method still leads; a Fourier image for CNN layers),
the reference λ_V (``lambda_tv``), the ``schedule``, the learning rate ``lr`` (scaled per setting
by :func:`default_learning_rates`), ``mean_pixel`` and the ``name`` written in the settings; then
from the parameterisation (its optimiser, rate, schedule and ``prior_scale`` on the default λ).
``method="paper"`` is the paper's method exactly, whatever the representation declares. A plain ``nn.Module`` gets the
contract's defaults (:func:`~preimage.representations.base.as_representation`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .errors import InvalidTargetError
from .io.images import group_by_shape
from .metrics import relative_error
from .objective import InversionObjective, check_target, default_lambdas, natural_sigma
from .optim import DEFAULT_WINDOW, make_schedule, minimise
from .paper import LAMBDA_TV
from .params import get_parameterisation, parameterisation_class
from .transforms import Jitter, decay, jitter_for_stride
from .representations.base import Representation, as_representation

#: Version of preimage's own recipes (what :func:`invert` fills in for every method but the paper's).
#: Stored results of such inversions carry it in their key, so a changed default is never answered
#: by an old result. 2: the representation's leaky gradient and ``recipe_schedule``; 3: its
#: ``recipe_optimiser`` (L-BFGS on a CNN layer's Fourier image).
RECIPE_VERSION = 3

#: The λ_V the representations' default rates were tuned at (Table 1's); above it the default
#: rate is scaled down (:func:`default_learning_rates`).
TV_STABLE_LAMBDA = LAMBDA_TV


@dataclass
class Inversion:
    """Result of :func:`invert` for N images, R restarts, K settings.

    Attributes:
        reconstructions: ``(N, R, K, C, H, W)`` images on the 0–255 scale (not clipped; use
            :func:`preimage.io.images.stretch` for the paper's display).
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


def default_learning_rates(base_lr: float, lambda_tv: Sequence[float], beta: float, method: str) -> list[float]:
    """The default rate of each of K settings: ``base_lr × min(1, 5 / λ_V)`` at β = 2, else ``base_lr``.

    ``base_lr`` (a representation's ``lr``) is tuned at λ_V = :data:`TV_STABLE_LAMBDA`; the TV
    term's curvature grows with λ_V (β = 2), so momentum descent stays stable only with
    η ∝ 1/λ_V beyond it: each setting gets its own rate. Adam and L-BFGS take one rate for the
    batch: the smallest.
    """
    base = float(base_lr)
    rates = [base * min(1.0, TV_STABLE_LAMBDA / t) if beta == 2.0 and t > 0 else base for t in lambda_tv]
    if method != "momentum":
        rates = [min(rates)] * len(rates)
    return rates


def resolve_recipe(rep: Representation, param: str | None, method: str | None,
                   jitter: int | str | None) -> tuple[str, str | None]:
    """``(parameterisation, optimiser or None)`` of an inversion: ``method="paper"`` is the
    paper's own method (``"pixel"``, ``"momentum"``; it refuses another ``param`` or a jitter);
    otherwise ``param`` (default: the representation's declared ``param``) and ``method`` as given
    (``None``: the parameterisation's ``recommended_optimiser``, :func:`resolve_method`)."""
    if method == "paper":
        if param not in (None, "pixel") or jitter not in (None, 1, "1"):
            raise ValueError("method='paper' is the paper's own method (pixels, momentum, no jitter): drop "
                             "param/jitter, or choose an optimiser (momentum, adam, lbfgs)")
        return "pixel", "momentum"
    return str(param or rep.param), method


def recipe_prior_scale(default_param: str, options: dict | None) -> float:
    """The factor :func:`invert` puts on the default λ's for ``invert(**options)`` on a
    representation whose declared ``param`` is ``default_param``: 1 for the paper's method, else
    the resolved parameterisation's ``prior_scale``. For callers that pass λ_V explicitly (the
    experiments' depth rule) and want the recipe's weight."""
    options = options or {}
    if options.get("method") == "paper":
        return 1.0
    return parameterisation_class(options.get("param") or default_param).prior_scale


def resolve_method(rep: Representation, param: str, method: str | None, lr: float | None,
                   tvs: Sequence[float], beta: float, jitter: int = 1) -> tuple[str, list[float]]:
    """The optimiser and the K rates of an inversion: ``method`` (default: the representation's
    ``recipe_optimiser`` for ``param`` when there is no jitter (``jitter`` J = 1), else the
    parameterisation's ``recommended_optimiser``) and ``lr`` for every setting, else the rate
    of that recipe, else the parameterisation's ``recommended_lr``, else the representation's
    ``lr`` scaled by :func:`default_learning_rates` (the paper's pixels)."""
    cls = parameterisation_class(param)
    recipe = rep.recipe_optimiser.get(param) if method is None and jitter <= 1 else None
    if recipe is not None:
        return recipe[0], [float(recipe[1] if lr is None else lr)] * len(tvs)
    method = method or cls.recommended_optimiser
    if lr is not None:
        return method, [float(lr)] * len(tvs)
    if cls.recommended_lr is not None:
        return method, [float(cls.recommended_lr)] * len(tvs)
    return method, default_learning_rates(rep.lr, tvs, beta, method)


def resolve_schedule(rep: Representation, param: str, schedule, iterations: int | None):
    """The stages of an inversion: ``schedule`` as given; else, for a parameterisation that
    recommends a schedule (Fourier, DIP), the representation's ``recipe_schedule`` or that
    recommended one; else (pixels) the representation's ``schedule``
    (:func:`preimage.optim.make_schedule`, rescaled to ``iterations``)."""
    if schedule is None:
        recommended = parameterisation_class(param).recommended_schedule
        schedule = (rep.recipe_schedule or recommended) if recommended is not None else rep.schedule
    return make_schedule(schedule, iterations)


def resolve_grad_leak(rep: Representation, method: str | None, grad_leak: float | None) -> float:
    """The gradient leak of an inversion: ``grad_leak`` as given, else the representation's
    declared ``grad_leak``; always 0 (the exact gradient) for ``method="paper"``, which refuses
    another. (The representation's ``leaking_gradients`` checks the value.)"""
    if method == "paper":
        if grad_leak:
            raise ValueError("method='paper' is the paper's own method, with the exact gradient: drop grad_leak")
        return 0.0
    return float(rep.grad_leak if grad_leak is None else grad_leak)


def resolve_jitter(rep: Representation, jitter: int | str | None) -> int:
    """The jitter J ≥ 1 (1: none): an int as given, ``"auto"`` the IJCV rule for the
    representation's :meth:`~preimage.representations.base.Representation.code_stride`."""
    if jitter is None:
        return 1
    if isinstance(jitter, str):
        if jitter.strip().lower() != "auto":
            try:
                pixels = int(jitter)
            except ValueError:
                raise ValueError(f"jitter must be a number of pixels or 'auto', got {jitter!r}") from None
            return resolve_jitter(rep, pixels)
        stride = rep.code_stride()
        if stride is None:
            raise ValueError(f"jitter='auto' needs the code's stride, which {rep.name} does not declare; "
                             "give the jitter in pixels")
        return jitter_for_stride(stride)
    if int(jitter) < 1:
        raise ValueError(f"jitter must be at least 1 pixel, got {jitter}")
    return int(jitter)


def _as_list(value, default) -> list[float]:
    if value is None:
        value = default
    if torch.is_tensor(value):
        return [float(v) for v in value.flatten()]
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    return [float(value)]


def _image_shape(images: torch.Tensor | None, target: torch.Tensor | None,
                 image_shape: Sequence[int] | None, restarts: int) -> tuple[int, int, int]:
    """Check the arguments that say what to invert; returns ``(C, H, W)``."""
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
    return image_shape


def _target(rep: Representation, images: torch.Tensor | None, target: torch.Tensor | None,
            dev: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The target codes ``(N, ...)``: the images' codes, or the given ones (checked)."""
    if target is None:
        with torch.no_grad():
            target = rep(images.to(dev, dtype))
    else:
        target = torch.as_tensor(target).to(dev, dtype)
        if target.dim() < 2:
            raise InvalidTargetError(f"target must have a batch axis (N, ...), got shape {tuple(target.shape)}")
    check_target(target)
    return target


def lambda_settings(rep: Representation, image_shape: Sequence[int], lambda_tv, lambda_alpha,
                    alpha: float, beta: float, scale: float = 1.0) -> tuple[list[float], list[float]]:
    """The K settings ``(λ_V list, λ_α list)``: given values zipped (a single value broadcast),
    ``None`` taking :func:`default_lambdas` for ``image_shape`` with the representation's
    reference ``lambda_tv``, times ``scale`` (a parameterisation's ``prior_scale``)."""
    d_alpha, d_tv = default_lambdas(image_shape, alpha, beta, lambda_tv_reference=float(rep.lambda_tv))
    d_alpha, d_tv = d_alpha * scale, d_tv * scale
    tvs = _as_list(lambda_tv, d_tv)
    alphas = _as_list(lambda_alpha, d_alpha)
    k = max(len(tvs), len(alphas))
    if len(tvs) not in (1, k) or len(alphas) not in (1, k):
        raise ValueError(f"lambda_tv has {len(tvs)} values and lambda_alpha {len(alphas)}: give equal "
                         "lengths or a single value")
    return (tvs * k if len(tvs) == 1 else tvs), (alphas * k if len(alphas) == 1 else alphas)


@dataclass
class _Problem:
    """N images × R restarts × K settings, flattened to samples b = (n·R + r)·K + k."""

    rep: Representation
    target: torch.Tensor           # (N, ...)
    image_shape: tuple[int, int, int]
    restarts: int
    tvs: list[float]
    alphas: list[float]
    rates: list[float]
    stages: tuple[tuple[int, float], ...]
    alpha: float
    beta: float
    method: str
    mask: torch.Tensor | None
    param: str = "pixel"
    param_options: dict = field(default_factory=dict)
    jitter: int = 1
    tol: float | None = None
    window: int = DEFAULT_WINDOW
    grad_leak: float = 0.0

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(N, R, K)``."""
        return self.target.shape[0], self.restarts, len(self.tvs)

    def indices(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample ``(total,)`` indices of its image, restart and setting."""
        n, r, k = self.shape
        return (torch.arange(n).repeat_interleave(r * k), torch.arange(r).repeat_interleave(k).repeat(n),
                torch.arange(k).repeat(n * r))


#: The jittered share of the iterations: IJCV 2016 runs 300 jittered, then 50 plain ones.
JITTER_UNTIL = 300 / 350


def _transform(jitter: int, iterations: int, seed: int):
    """``transform(u, iteration)`` jittering the data term's input by up to ``jitter`` pixels
    (IJCV's step schedule: none in the last :data:`JITTER_UNTIL` share), or None for J = 1."""
    if jitter <= 1:
        return None
    shift = Jitter(jitter)
    gen = torch.Generator().manual_seed(int(seed))

    def transform(u: torch.Tensor, iteration: int) -> torch.Tensor:
        return shift(u, gen, strength=decay(iteration, iterations, JITTER_UNTIL, "step"))
    transform.__qualname__ = f"jitter({jitter}, until={JITTER_UNTIL:.4f})"
    return transform


def _chunk_variables(p: _Problem, n: int, restarts: torch.Tensor, sigma: float, seed: int,
                     dev: torch.device, dtype: torch.dtype):
    """The parameterisation of one chunk of ``n`` samples, initialised per restart
    (restart r gets the same start for every image and setting)."""
    param = get_parameterisation(p.param, p.image_shape, n, mean_pixel=p.rep.mean_pixel, sigma=sigma,
                                 **p.param_options)
    return param.to(dev, dtype).init(seed, restarts=restarts)


def _optimise(p: _Problem, chunk: int, seed: int, dev: torch.device, dtype: torch.dtype,
              progress: bool | str, checkpoint: str | Path | None):
    """Run the samples in chunks of ``chunk``: ``(u (total, C, H, W), energy terms each (total,),
    halvings (total,), iterations used (total,))``."""
    idx_n, idx_r, idx_k = p.indices()
    total = idx_n.numel()
    u_out = torch.empty((total,) + p.image_shape, dtype=dtype, device=dev)
    halvings = torch.zeros(total, dtype=torch.long)
    used = torch.zeros(total, dtype=torch.long)
    energy = {key: torch.empty(total, dtype=torch.float64) for key in ("data", "alpha", "tv", "total")}
    for c0 in range(0, total, chunk):
        sl = slice(c0, min(total, c0 + chunk))
        bn, br, bk = idx_n[sl], idx_r[sl], idx_k[sl]
        obj = InversionObjective(
            p.rep, p.target[bn.to(dev)], p.image_shape,
            lambda_alpha=[p.alphas[i] for i in bk.tolist()], lambda_tv=[p.tvs[i] for i in bk.tolist()],
            alpha=p.alpha, beta=p.beta, mask=p.mask, mean_pixel=p.rep.mean_pixel).to(dev)
        ck = None
        if checkpoint is not None:
            ck = Path(f"{checkpoint}.chunk{c0 // chunk}.safetensors")
            ck.parent.mkdir(parents=True, exist_ok=True)
        desc = progress if isinstance(progress, str) else f"inverting {sl.stop - sl.start} × {p.image_shape}"
        lrs = [p.rates[i] for i in bk.tolist()]
        variables = _chunk_variables(p, sl.stop - sl.start, br, obj.sigma, seed, dev, dtype)
        res = minimise(obj, variables, lr=lrs[0] if len(set(lrs)) == 1 else lrs, schedule=p.stages,
                       method=p.method, progress=desc if progress else False, checkpoint=ck,
                       transform=_transform(p.jitter, sum(n for n, _ in p.stages), seed + c0),
                       tol=p.tol, window=p.window)
        u_out[sl] = res.u
        halvings[sl] = res.backoffs
        used[sl] = res.iterations_used
        for key in energy:
            energy[key][sl] = torch.tensor(res.energy[key], dtype=torch.float64)
    if int(halvings.sum()):
        warnings.warn(f"{int((halvings > 0).sum())} of {total} optimisations diverged and were resumed with "
                      f"their learning rate halved (up to {int(halvings.max())} times); pass a smaller lr "
                      f"to avoid the lost iterations", RuntimeWarning, stacklevel=3)
    return u_out, energy, halvings, used


def _assemble(p: _Problem, u: torch.Tensor, energy: dict[str, torch.Tensor], halvings: torch.Tensor,
              used: torch.Tensor, chunk: int, seed: int, seconds: float) -> Inversion:
    """The :class:`Inversion` of the optimised samples ``u`` ``(total, C, H, W)``."""
    dev, dtype = u.device, u.dtype
    sigma = natural_sigma(p.image_shape)
    mp = torch.as_tensor(p.rep.mean_pixel, dtype=dtype, device=dev).flatten()
    recon = mp.view(1, -1, 1, 1) + sigma * u
    with torch.no_grad():
        codes = torch.cat([p.rep(recon[i:i + chunk]) for i in range(0, u.shape[0], chunk)])
    tgt = p.target[p.indices()[0].to(dev)]
    rel = relative_error(codes * p.mask, tgt * p.mask) if p.mask is not None else relative_error(codes, tgt)
    shape3 = p.shape
    settings = dict(representation=p.rep.name, image_shape=list(p.image_shape),
                    restarts=p.restarts, lambda_tv=p.tvs, lambda_alpha=p.alphas, alpha=p.alpha, beta=p.beta,
                    schedule=[list(s) for s in p.stages], lr=p.rates, method=p.method, seed=seed,
                    param=p.param, param_options=dict(p.param_options), jitter=p.jitter,
                    sigma=sigma, masked=p.mask is not None, iterations=sum(s[0] for s in p.stages),
                    lr_halvings=halvings.view(shape3).tolist(), tol=p.tol, window=p.window,
                    iterations_used=used.view(shape3).tolist(), grad_leak=p.grad_leak)
    return Inversion(
        reconstructions=recon.detach().cpu().view(shape3 + p.image_shape),
        targets=p.target.detach().cpu(),
        codes=codes.detach().cpu().view(shape3 + tuple(codes.shape[1:])),
        relative_errors=rel.detach().cpu().double().view(shape3),
        energy={key: v.view(shape3) for key, v in energy.items()},
        lambda_tv=torch.tensor(p.tvs, dtype=torch.float64),
        lambda_alpha=torch.tensor(p.alphas, dtype=torch.float64),
        settings=settings, seconds=seconds)


def invert(representation: torch.nn.Module, images: torch.Tensor | None = None, *,
           target: torch.Tensor | None = None, image_shape: Sequence[int] | None = None,
           restarts: int = 1, lambda_tv: float | Sequence[float] | None = None,
           lambda_alpha: float | Sequence[float] | None = None, alpha: float = 6.0, beta: float = 2.0,
           schedule: str | Sequence[tuple[int, float]] | None = None, iterations: int | None = None,
           lr: float | None = None, method: str | None = None, mask: torch.Tensor | None = None,
           seed: int = 0, device: str | torch.device | None = None, progress: bool | str = True,
           checkpoint: str | Path | None = None, max_batch: int | None = None,
           dtype: torch.dtype = torch.float32, param: str | None = None, param_options: dict | None = None,
           jitter: int | str | None = None, tol: float | None = None,
           window: int = DEFAULT_WINDOW, grad_leak: float | None = None) -> Inversion:
    """Reconstruct images from their codes.

    Args:
        representation: Φ, a :class:`~preimage.representations.base.Representation` (or a plain
            module, given the contract's defaults) mapping ``(B, C, H, W)`` images on 0–255 to codes.
        images: ``(N, C, H, W)`` originals on 0–255 (their codes are the targets); or give
            ``target`` ``(N, ...)`` and ``image_shape`` ``(C, H, W)`` instead.
        restarts: R random initialisations per image.
        lambda_tv, lambda_alpha: a value or a list of K values (zipped: the k-th setting uses
            the k-th of each; a single value is broadcast). ``None``: :func:`default_lambdas`,
            with the representation's ``lambda_tv`` as the reference λ_V (a
            :class:`~preimage.representations.cnn.CNNLayer`: the paper's weight for its depth),
            times the parameterisation's ``prior_scale`` (1 for pixels; 0.01 for Fourier/DIP).
        alpha, beta: exponents of the priors.
        schedule, iterations, lr, method: see :func:`preimage.optim.minimise`; ``None`` takes the
            parameterisation's schedule, optimiser and rate (:func:`resolve_schedule`,
            :func:`resolve_method`; for pixels the representation's ``schedule`` and the paper's
            momentum at its ``lr``, scaled per setting by :func:`default_learning_rates` so that
            strong TV does not make momentum GD diverge). ``method="paper"``: exactly the
            paper's method (pixels, momentum, its schedule and λ; no jitter; the exact gradient).
            Every other recipe differentiates through the representation's surrogate gradient
            (:func:`resolve_grad_leak`).
        mask: optional 0/1 mask broadcastable to one code ``(1, ...)``.
        seed: seeds the R initial noises (restart r gets the same noise for every image/setting).
        device: where to run (default: the images'/target's device).
        checkpoint: file prefix to save and resume each chunk's state.
        max_batch: largest number of samples optimised at once (default: all N·R·K).
        param: the image's parameterisation, ``"pixel"`` (the paper's), ``"fourier"`` or ``"dip"``
            (:func:`preimage.params.get_parameterisation`); ``None``: the representation's
            declared ``param`` (pixels for HOG/DSIFT, Fourier for CNN layers); ``param_options``
            its keyword arguments (e.g. ``{"bounded": False}``), over the class's
            ``recommended_options``.
        jitter: the data term sees the image shifted by up to this many pixels, the shift drawn
            each step, for the first :data:`JITTER_UNTIL` of the iterations (IJCV 2016);
            ``"auto"``: a quarter of the code's stride (:func:`resolve_jitter`); None or 1: none.
        tol, window: per-sample early stopping, see :func:`preimage.optim.minimise` (None: off).
        grad_leak: the leak (0 ≤ ℓ < 1) of the gradient through the representation's clipping
            activations (:meth:`~preimage.representations.base.Representation.leaking_gradients`);
            ``None``: the representation's ``grad_leak`` (CNN layers 0.05), 0 for ``method="paper"``.
    Returns:
        :class:`Inversion`; its ``settings["lr_halvings"]`` ``(N, R, K)`` counts the rate halvings
        after divergence (a warning is issued when there were any), ``settings["iterations_used"]``
        ``(N, R, K)`` the iterations each sample ran, ``settings["grad_leak"]`` the leak used.
    """
    image_shape = _image_shape(images, target, image_shape, restarts)
    dev = torch.device(device) if device is not None else (images.device if images is not None else target.device)
    rep = as_representation(representation).to(dev).eval()
    rep.check_input(torch.zeros((1,) + image_shape, device=dev))
    target = _target(rep, images, target, dev, dtype)
    leak = resolve_grad_leak(rep, method, grad_leak)
    param, method = resolve_recipe(rep, param, method, jitter)
    tvs, alphas = lambda_settings(rep, image_shape, lambda_tv, lambda_alpha, alpha, beta,
                                  parameterisation_class(param).prior_scale)
    jitter = resolve_jitter(rep, jitter)
    method, rates = resolve_method(rep, param, method, lr, tvs, beta, jitter)
    if mask is not None:
        mask = torch.as_tensor(mask).to(dev, dtype)
        mask = mask[None] if mask.dim() == target.dim() - 1 else mask
    p = _Problem(rep, target, image_shape, restarts, tvs, alphas, rates,
                 resolve_schedule(rep, param, schedule, iterations),
                 alpha, beta, method, mask, param, {**parameterisation_class(param).recommended_options, **(param_options or {})},
                 jitter, tol, window, leak)
    chunk = max_batch or target.shape[0] * restarts * len(tvs)
    t0 = time.perf_counter()
    with rep.leaking_gradients(leak):
        u, energy, halvings, used = _optimise(p, chunk, seed, dev, dtype, progress, checkpoint)
    return _assemble(p, u, energy, halvings, used, chunk, seed, time.perf_counter() - t0)


def invert_images(representation: torch.nn.Module, images: Sequence[torch.Tensor], **kwargs) -> list[Inversion]:
    """Invert a list of ``(C, H, W)`` images of possibly different sizes: images of the same size
    are batched together. Returns one :class:`Inversion` (N = 1) per input, in input order."""
    out: list[Inversion | None] = [None] * len(images)
    for idx in group_by_shape(images).values():
        res = invert(representation, torch.stack([images[i] for i in idx]), **kwargs)
        for j, i in enumerate(idx):
            out[i] = Inversion(
                reconstructions=res.reconstructions[j:j + 1], targets=res.targets[j:j + 1],
                codes=res.codes[j:j + 1], relative_errors=res.relative_errors[j:j + 1],
                energy={k: v[j:j + 1] for k, v in res.energy.items()}, lambda_tv=res.lambda_tv,
                lambda_alpha=res.lambda_alpha, settings=res.settings, seconds=res.seconds / len(idx))
    return out  # type: ignore[return-value]
