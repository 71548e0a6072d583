"""Activation maximisation and caricatures (IJCV 2016): what a unit responds to most, and what a
layer sees in an image, with the priors, parameterisations and transforms of the inversion.

:func:`visualize` maximises an :class:`~preimage.objectives.Objective` of ``n`` units × R
restarts as **one** batched optimisation (:func:`preimage.optim.minimise`)::

    from preimage import get_model
    from preimage.representations.cnn import CNNLayer
    from preimage.objectives import channel
    rep = CNNLayer(get_model("mobilenet_v2"), "block6_add")
    vis = visualize(rep, channel(range(16)))
    vis.images.shape          # (16, 3, 224, 224) on 0–255
    vis.scores                # (16,) the channels' mean activations reached

:func:`caricature` exaggerates what a layer sees in images (IJCV's "enhance"): it starts from the
image and maximises the inner product with its rectified, normalised code.

Settings (IJCV 2016 where it says, ``../shared/reference/ijcv2016-nnpreimage.md``):

* bounded range: each pixel's colour within 160 grey levels of the mean pixel (IJCV's B = 2σ),
  also clipped to 0–255 (:func:`preimage.objectives.bounded_range`);
* jitter: ``"auto"`` = a quarter of the layer's stride (IJCV's rule), here kept off for the last
  :data:`ALIGNED_SHARE` of the iterations so that the image reported is the one optimised
  unshifted (the reference jitters all 300 iterations and reports the centre crop);
* 300 iterations (IJCV's maximisation and enhance);
* priors: the inversion's α-norm (α = 6) and TV^β (β = 2) with the same default weights
  (:func:`preimage.objective.default_lambdas`, the representation's reference λ_V); the data term
  is the score divided by a per-unit scale ``s`` (IJCV divides by the channel's maximum over
  natural images, M), so that a natural image's best response costs −1, the same order as the
  inversion's normalised data term that the λ's are calibrated against. ``s`` is the unit's largest
  |score| over ``reference_images`` when given (IJCV's M), else over a few 1/f noise images
  (:func:`pink_noise`: no data needed); a caricature's score is 1 at its image, so ``s = 1``;
* optimiser: Adam for every parameterisation (the reference's per-pixel normalised step,
  ``g/√G``, is scale-free; of this library's steppers Adam is the one that is too, so the
  unknown size of an activation does not set the step). Rates: pixels :data:`PIXEL_STEP` grey
  levels per step (the reference's step is about 1 grey level, with momentum 0.9), Fourier and DIP
  their declared ``recommended_lr``;
* parameterisation: ``"fourier"`` by default for :func:`visualize` (the reference optimises
  pixels; on MobileNet v2 a Fourier image reached higher channel activations in the same
  iterations, 36–50 against 30–47 on 8 channels of block10_add at 96², and natural colours where
  pixels give saturated high-frequency noise), ``"pixel"`` for :func:`caricature` (it starts from
  the image itself, exactly, as the reference); ``"dip"`` as for the inversion.

:func:`caricature` differs in two defaults (issue 16's claim: the inner product with the image's
code at least doubled, in range, on every image at the report's three depths):

* TV weight: λ_V of the *shallowest* depth (:data:`CARICATURE_LAMBDA_TV`, the paper's λ₁ = 0.5 at
  227², scaled to the image size like the inversion's) at **every** depth, not the inversion's depth
  rule (0.5, 5, 50). The inversion raises λ_V with depth because a deep code leaves the prior to make
  up what the code lost; a caricature starts from the natural image itself, and the prior only has to
  keep the changes natural. On 6 train images at 224² the start image's own TV energy is 0.01–0.08
  at λ₁, 0.14–0.76 at λ₂ and 1.4–7.6 at λ₃, against a data term of −1: at ``block15_add`` (λ₃) the
  optimisation spent itself smoothing the image (TV energy down to 0.23–0.36) and two of the six
  stopped below 2× (1.95×, 1.98×); at λ₁ an image's own texture costs less than a tenth of the data term.
* rate: :data:`CARICATURE_STEP` grey levels per Adam step for pixels (twice :data:`PIXEL_STEP`): at
  300 iterations the gain still grows with the rate (train images at ``block5_add``: 2.10–2.42× at
  2 grey levels, 2.18–2.53× at 4, 6 train images).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .objective import default_lambdas, natural_sigma
from .objectives import IJCV_BOUND, MaximisationObjective, Objective, caricature as caricature_objective
from .optim import minimise
from .paper import IJCV_ITERATIONS, LAMBDAS_TV
from .params import get_parameterisation, parameterisation_class
from .params.pixel import PixelParam
from .representations.base import Representation, as_representation
from .invert import resolve_jitter
from .transforms import Jitter, decay

__all__ = ["Visualisation", "visualize", "caricature", "pink_noise", "unit_scales", "ITERATIONS",
           "PIXEL_STEP", "ALIGNED_SHARE", "CARICATURE_STEP", "CARICATURE_LAMBDA_TV"]

#: IJCV 2016's iterations for maximisation and enhance (one stage).
ITERATIONS = IJCV_ITERATIONS
#: Adam's step for pixels, in grey levels (converted to σ-units per image size).
PIXEL_STEP = 2.0
#: Share of the iterations at the end run without jitter.
ALIGNED_SHARE = 0.1
#: :func:`caricature`'s Adam step for pixels, in grey levels (see the module docstring).
CARICATURE_STEP = 2 * PIXEL_STEP
#: :func:`caricature`'s reference λ_V at every depth (at 227², scaled to the image size as the
#: inversion's): the paper's shallowest λ₁ (see the module docstring).
CARICATURE_LAMBDA_TV = LAMBDAS_TV[0]


@dataclass
class Visualisation:
    """What :func:`visualize` and :func:`caricature` return, for n units × R restarts, sample
    ``b = r·n + i`` (restart r of unit i).

    Attributes:
        images: ``(R·n, C, H, W)`` on 0–255, within the bounded range (what the scores are of).
        scores: ``(R·n,)`` the objective reached (code units, no jitter).
        start_scores: ``(R·n,)`` the objective at the start.
        scales: ``(n,)`` the per-unit scale ``s`` the data term was divided by.
        labels: the n units' labels.
        energy: final per-sample terms, each ``(R·n,)``: data, alpha, tv, total.
        settings: everything needed to rerun (JSON-serialisable).
        seconds: wall time of the optimisation.
    """

    images: torch.Tensor
    scores: torch.Tensor
    start_scores: torch.Tensor
    scales: torch.Tensor
    labels: list[str]
    energy: dict[str, torch.Tensor]
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def units(self) -> int:
        """n, the number of units."""
        return len(self.labels)

    def best(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per unit, the restart with the highest score: ``(images (n, C, H, W), scores (n,))``."""
        n = self.units
        s = self.scores.view(-1, n)
        r = s.argmax(0)
        ar = torch.arange(n)
        return self.images.view(-1, n, *self.images.shape[1:])[r, ar], s[r, ar]


def pink_noise(n: int, shape: Sequence[int], seed: int = 0, rms: float = 60.0) -> torch.Tensor:
    """``n`` images ``(n, C, H, W)`` of 1/f noise (the spectrum of natural images), mean 128,
    ``rms`` grey levels, clipped to 0–255: probes for a unit's typical response without data."""
    c, h, w = (int(s) for s in shape)
    gen = torch.Generator().manual_seed(int(seed))
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    amp = 1.0 / (fy * fy + fx * fx).sqrt().clamp_min(1.0 / max(h, w))
    spec = torch.complex(torch.randn(n, c, h, w // 2 + 1, generator=gen, dtype=torch.float64),
                         torch.randn(n, c, h, w // 2 + 1, generator=gen, dtype=torch.float64)) * amp
    z = torch.fft.irfft2(spec, s=(h, w))
    z = z - z.mean((2, 3), keepdim=True)
    z = z / z.flatten(1).std(1).view(-1, 1, 1, 1)
    return (128.0 + rms * z).clamp(0, 255).float()


def _device(module: torch.nn.Module, default: torch.device = torch.device("cpu")) -> torch.device:
    """The device of ``module``'s first parameter or buffer (``default`` when it has none)."""
    return next((t.device for t in itertools.chain(module.parameters(), module.buffers())), default)


@torch.no_grad()
def unit_scales(rep: torch.nn.Module, objective: Objective, images: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """``(n,)`` float64: each unit's largest |score| over ``images`` ``(M, C, H, W)`` on 0–255
    (IJCV's M, per unit); a unit silent on all of them gets the median of the others (1 if all
    are silent)."""
    dev = _device(rep, images.device)
    best = torch.zeros(objective.n, dtype=torch.float64)
    for i in range(0, images.shape[0], batch):
        code = rep(images[i:i + batch].to(dev))
        n = code.shape[0]
        rows = code.repeat_interleave(objective.n, 0)  # every image scored on every unit
        s = objective(rows).view(n, objective.n).abs().double().cpu()
        best = torch.maximum(best, s.max(0).values)
    ok = best > 1e-12 * max(float(best.max()), 1e-30)
    if not ok.any():
        return torch.ones_like(best)
    return torch.where(ok, best, best[ok].median())


def _image_shape(rep: Representation, image_shape) -> tuple[int, int, int]:
    if image_shape is not None:
        shape = tuple(int(s) for s in image_shape)
    elif getattr(rep, "input_size", None):
        shape = (3, *(int(s) for s in rep.input_size))
    else:
        raise ValueError("give image_shape (C, H, W): the representation declares no input_size")
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (C, H, W), got {shape}")
    return shape


def _lr(param: str, lr: float | None, sigma: float) -> float:
    """Adam's rate: ``lr`` as given, pixels :data:`PIXEL_STEP` grey levels in σ-units, else the
    parameterisation's ``recommended_lr``."""
    if lr is not None:
        return float(lr)
    cls = parameterisation_class(param)
    if cls is PixelParam or cls.recommended_lr is None:
        return PIXEL_STEP / sigma
    return float(cls.recommended_lr)


def _jitter_transform(jitter: int, iterations: int, seed: int):
    """``transform(u, iteration)``: jitter by up to ``jitter`` pixels but the last
    :data:`ALIGNED_SHARE` of the iterations; None for J = 1."""
    if jitter <= 1:
        return None
    shift = Jitter(jitter)
    gen = torch.Generator().manual_seed(int(seed))
    until = 1.0 - ALIGNED_SHARE

    def transform(u: torch.Tensor, iteration: int) -> torch.Tensor:
        return shift(u, gen, strength=decay(iteration, iterations, until, "step"))
    transform.__qualname__ = f"jitter({jitter}, until={until:.3f})"
    return transform


@torch.no_grad()
def fit_parameterisation(param, u: torch.Tensor, steps: int = 200, lr: float = 0.05) -> float:
    """Set ``param`` (a :class:`~preimage.params.base.Parameterisation` of N) so that ``param()``
    ≈ ``u`` ``(N, C, H, W)``: a copy for pixels, else ``steps`` Adam steps on the squared error.
    Returns the relative error ``‖param() − u‖/‖u‖`` reached (the largest over the batch)."""
    if isinstance(param, PixelParam):
        param.u.copy_(u)
        return 0.0
    variables = [t for t in param.parameters() if t.requires_grad]
    opt = torch.optim.Adam(variables, lr=lr)
    scale = u.flatten(1).norm(dim=1).clamp_min(1e-12)
    for _ in range(int(steps)):
        with torch.enable_grad():
            opt.zero_grad()
            err = ((param() - u).flatten(1).norm(dim=1) / scale)
            err.pow(2).sum().backward()
        opt.step()
    return float(((param() - u).flatten(1).norm(dim=1) / scale).max())


@dataclass
class _Run:
    """One visualisation problem: everything :func:`_optimise` needs."""

    rep: Representation
    objective: Objective
    shape: tuple[int, int, int]
    n: int
    scales: torch.Tensor          # (n,)
    lambda_alpha: float
    lambda_tv: float
    alpha: float
    beta: float
    bound: float | None
    clip: bool
    param: str
    param_options: dict
    lr: float
    iterations: int
    jitter: int
    init: torch.Tensor | None     # (n, C, H, W) images on 0–255 to start from, or None


def _energy(run: _Run, rows: torch.Tensor, objective: Objective, dev) -> MaximisationObjective:
    return MaximisationObjective(
        run.rep, objective, run.shape, rows.numel(), scale=run.scales[rows % run.n].tolist(),
        lambda_alpha=run.lambda_alpha, lambda_tv=run.lambda_tv, alpha=run.alpha, beta=run.beta,
        bound=run.bound, clip=run.clip, mean_pixel=run.rep.mean_pixel).to(dev)


def _chunk_objective(objective: Objective, rows: torch.Tensor) -> Objective:
    """The objective restricted to samples ``rows`` (global indices): sample j is unit rows[j] mod n."""
    units = rows % objective.n
    return Objective(lambda code, unit: objective.score(code, units.to(code.device)[unit]),
                     rows.numel(), [objective.labels[int(i)] for i in units])


def _optimise(run: _Run, total: int, chunk: int, seed: int, dev, dtype, progress):
    """All ``total`` samples in chunks: ``(images (total, C, H, W), scores, start scores, energy)``."""
    images = torch.empty((total,) + run.shape, dtype=torch.float32)
    scores, start = torch.empty(total, dtype=torch.float64), torch.empty(total, dtype=torch.float64)
    energy = {k: torch.empty(total, dtype=torch.float64) for k in ("data", "alpha", "tv", "total")}
    for c0 in range(0, total, chunk):
        rows = torch.arange(c0, min(total, c0 + chunk))
        obj = _energy(run, rows, _chunk_objective(run.objective, rows), dev)
        param = get_parameterisation(run.param, run.shape, rows.numel(), mean_pixel=run.rep.mean_pixel,
                                     sigma=obj.sigma, **run.param_options).to(dev, dtype)
        param.init(seed, restarts=(rows // run.n).tolist())
        if run.init is not None:
            u0 = (run.init[rows % run.n].to(dev, dtype) - obj.mean_pixel.to(dtype)) / obj.sigma
            fit_parameterisation(param, u0)
        with torch.no_grad():
            start[rows] = obj.score(param()).double().cpu()
        desc = progress if isinstance(progress, str) else f"maximising {rows.numel()} × {run.shape}"
        res = minimise(obj, param, lr=run.lr, iterations=run.iterations, schedule=[(run.iterations, 1.0)],
                       method="adam", progress=desc if progress else False,
                       transform=_jitter_transform(run.jitter, run.iterations, seed + c0))
        with torch.no_grad():
            images[rows] = obj.image(res.u).float().cpu()
            scores[rows] = obj.score(res.u).double().cpu()
        for k in energy:
            energy[k][rows] = torch.tensor(res.energy[k], dtype=torch.float64)
    return images, scores, start, energy


def visualize(representation: torch.nn.Module, objective: Objective, *, image_shape: Sequence[int] | None = None,
              restarts: int = 1, param: str = "fourier", param_options: dict | None = None,
              iterations: int = ITERATIONS, lr: float | None = None, lambda_tv: float | None = None,
              lambda_alpha: float | None = None, alpha: float = 6.0, beta: float = 2.0,
              bound: float | None = IJCV_BOUND, clip: bool = True, jitter: int | str | None = "auto",
              reference_images: torch.Tensor | None = None, scale: float | Sequence[float] | None = None,
              init: torch.Tensor | None = None, seed: int = 0, device: str | torch.device | None = None,
              progress: bool | str = True, max_batch: int | None = None,
              dtype: torch.dtype = torch.float32) -> Visualisation:
    """Maximise ``objective`` (n units) over images, R restarts each, as one batched optimisation.

    Args:
        representation: Φ (a :class:`~preimage.representations.base.Representation` or a plain
            module), ``(B, C, H, W)`` on 0–255 → codes.
        objective: what to maximise (:mod:`preimage.objectives`).
        image_shape: ``(C, H, W)``; default ``(3, *input_size)`` of the representation.
        restarts: R random starts per unit (same seeds for every unit).
        param, param_options: the image's parameterisation (``pixel``, ``fourier``, ``dip``).
        iterations, lr: Adam's iterations and rate (see the module docstring for the defaults).
        lambda_tv, lambda_alpha, alpha, beta: the priors (``None``: the inversion's defaults for
            this image size and the representation's reference λ_V).
        bound, clip: the bounded range (:func:`preimage.objectives.bounded_range`).
        jitter: pixels, ``"auto"`` (IJCV: a quarter of the layer's stride; 1 when unknown) or None.
        reference_images: ``(M, C, H, W)`` on 0–255 whose largest |score| per unit is ``s``
            (default :func:`pink_noise`); ``scale``: ``s`` itself (one value or n).
        init: ``(n, C, H, W)`` images on 0–255 to start from (a caricature's); default noise.
        device, progress, max_batch, dtype: as :func:`preimage.invert.invert`.
    Returns:
        :class:`Visualisation`.
    """
    rep = as_representation(representation)
    dev = torch.device(device) if device is not None else _device(rep)
    rep = rep.to(dev).eval()
    shape = _image_shape(rep, image_shape)
    rep.check_input(torch.zeros((1,) + shape, device=dev))
    if int(restarts) < 1 or int(iterations) < 1:
        raise ValueError("restarts and iterations must be at least 1")
    try:
        j = resolve_jitter(rep, jitter)
    except ValueError:
        if jitter != "auto":
            raise
        j = 1  # the stride is unknown: no jitter
    scales = _scales(rep, objective, shape, scale, reference_images, seed)
    d_alpha, d_tv = default_lambdas(shape, alpha, beta, lambda_tv_reference=float(rep.lambda_tv))
    sigma = natural_sigma(shape)
    run = _Run(rep, objective, shape, objective.n, scales, d_alpha if lambda_alpha is None else float(lambda_alpha),
               d_tv if lambda_tv is None else float(lambda_tv), alpha, beta, bound, clip, param,
               dict(param_options or {}), _lr(param, lr, sigma), int(iterations), j,
               None if init is None else torch.as_tensor(init, dtype=torch.float32))
    total = objective.n * int(restarts)
    t0 = time.perf_counter()
    images, scores, start, energy = _optimise(run, total, int(max_batch or total), seed, dev, dtype, progress)
    seconds = time.perf_counter() - t0
    settings = dict(representation=rep.name, image_shape=list(shape), units=objective.n, restarts=int(restarts),
                    param=param, param_options=dict(run.param_options), iterations=run.iterations, lr=run.lr,
                    method="adam", jitter=j, bound=bound, clip=clip, alpha=alpha, beta=beta,
                    lambda_alpha=run.lambda_alpha, lambda_tv=run.lambda_tv, seed=seed, sigma=sigma,
                    scale_from="given" if scale is not None else
                    ("reference_images" if reference_images is not None else "pink_noise"))
    return Visualisation(images, scores, start, scales, list(objective.labels), energy, settings, seconds)


def _scales(rep, objective: Objective, shape, scale, reference_images, seed: int) -> torch.Tensor:
    """``(n,)`` float64 scales: ``scale`` given, else :func:`unit_scales` on the references or probes."""
    if scale is not None:
        s = torch.as_tensor(scale, dtype=torch.float64).flatten()
        s = s.expand(objective.n).clone() if s.numel() == 1 else s
        if s.numel() != objective.n or not torch.isfinite(s).all() or (s <= 0).any():
            raise ValueError(f"scale: one positive value or {objective.n}, got {s.tolist()}")
        return s
    probes = reference_images if reference_images is not None else pink_noise(4, shape, seed)
    return unit_scales(rep, objective, torch.as_tensor(probes, dtype=torch.float32))


def caricature(representation: torch.nn.Module, images: torch.Tensor, **kwargs) -> Visualisation:
    """IJCV's caricature of ``images`` ``(n, C, H, W)`` on 0–255: start from each image and
    maximise ``⟨max(Φ(I), 0)/‖max(Φ(I), 0)‖², Φ(x)⟩`` (1 at the image;
    :func:`preimage.objectives.caricature`) with the priors, bounded range and jitter of
    :func:`visualize` (its keyword arguments; ``scale`` is 1, ``param`` ``"pixel"``), except two
    defaults (module docstring): ``lambda_tv`` ``None`` is λ_V of :data:`CARICATURE_LAMBDA_TV` at
    every depth (scaled to the image size), and ``lr`` ``None`` for pixels is
    :data:`CARICATURE_STEP` grey levels. Returns a :class:`Visualisation` (``images``
    ``(n, C, H, W)`` on 0–255 within the bounded range) whose ``start_scores`` ``(n,)`` are the
    images' own (1 unless the bounded range changed them) and ``scores`` ``(n,)`` the inner
    products reached (the gain is their ratio)."""
    rep = as_representation(representation)
    images = torch.as_tensor(images, dtype=torch.float32)
    if images.dim() != 4:
        raise ValueError(f"caricature needs images (n, C, H, W), got shape {tuple(images.shape)}")
    dev = kwargs.get("device") or _device(rep)
    with torch.no_grad():
        codes = rep.to(dev).eval()(images.to(dev))
    shape = tuple(images.shape[1:])
    kwargs.setdefault("scale", 1.0)
    if kwargs.get("param") is None:
        kwargs["param"] = "pixel"
    if kwargs.get("lambda_tv") is None:
        kwargs["lambda_tv"] = default_lambdas(shape, kwargs.get("alpha", 6.0), kwargs.get("beta", 2.0),
                                              lambda_tv_reference=CARICATURE_LAMBDA_TV)[1]
    if kwargs.get("lr") is None and parameterisation_class(kwargs["param"]) is PixelParam:
        kwargs["lr"] = CARICATURE_STEP / natural_sigma(shape)
    return visualize(rep, caricature_objective(codes), image_shape=shape, init=images, **kwargs)
