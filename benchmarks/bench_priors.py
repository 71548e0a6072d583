"""Image priors side by side (issue 14): MobileNet v2 inversions at equal wall time per inversion.

On ``--images`` N images (spread over ``--split eval|train``) resized to the network's input
(224², no crop, as ``evaluate`` does) and ``--blocks`` K MobileNet v2 layers (``spread`` over
``model.block_names``: conv1 … logits, 21 names; K = 6 gives conv1, block4_project,
block7_project, block10_add, block14_project, conv_last), each method inverts the N codes of a
block as one batch:

* ``paper``: ``invert(rep, x, method="paper")``, the paper's method exactly (pixels, momentum, 400
  iterations, the CNN schedule, λ_V by depth): **the time reference**: every other method is
  given the iterations that cost as much CPU time on that block.
* ``default``: ``invert(rep, x)`` with nothing but the iterations: preimage's default for CNN
  layers (a Fourier image, :class:`~preimage.params.FourierParam`'s declared Adam rate, anneal
  schedule and prior scale).
* ``fourier``, ``fourier+jitter`` (``jitter="auto"``: a quarter of the layer's stride, IJCV's
  step schedule), ``dip``: the same settings spelt out (:data:`FOURIER`; DIP at its own rate), for
  calibration specs that change one of them.
* ``lucent``: lucent's algorithm re-expressed: Fourier-decorrelated sigmoid-bounded image,
  Adam 5e-2 at a constant rate, the normalised L2 data term alone (λ_V = λ_α = 0), no transforms.
* ``lucent+transforms``: the same with lucent's transforms at every step (:func:`lucent_transforms`),
  through :func:`preimage.optim.minimise` with ``transform=``.

**Equal time** is equal CPU time of this process (``time.process_time``; one torch thread by
default, so CPU seconds are what the run would take alone on one core): each method gets the
iterations that cost as much as the paper's 400 (:func:`iterations_for`). Its cost relative to
the paper's is timed in ``--timing-rounds`` (default 3) interleaved rounds, each a short run of the
paper's method and then of the method (``--timing-iterations`` 2 and 12, the second lengthened to
at least ``--timing-seconds``, default 4): a change of load hits both runs of a round alike, and
the median over rounds drops a round that a neighbour disturbed. CPU time, not wall time, because
the two cores are shared: a wall-time budget read minutes earlier under another load gave methods
±50 % more or less time, and even CPU-time estimates from separate runs varied by up to 1.7× for
the same computation (memory and caches are shared too). Methods that do the same work per step
(:func:`cost_key`: lucent and the default, both Fourier images) are timed once, with the first
of them listed, and share its iterations. The table reports the CPU seconds each run really took,
the JSON its wall seconds and the cost ratio too.

**Method specs** (``--methods``, comma-separated): a base name above, optionally followed by
``:key=value`` options: ``lr`` (Adam's rate), ``tv`` (factor on the depth's λ_V), ``alpha``
(factor on λ_α), ``sched`` (``cnn``: the paper's staged schedule rescaled to K iterations; ``const``:
one rate throughout; ``anneal``: :data:`ANNEAL` rescaled), ``optimiser``
(``adam``, ``lbfgs``, ``momentum``), ``jitter`` (pixels or ``auto``), ``bounded`` (0/1: the sigmoid image), ``margin`` (grey levels the
sigmoid's range extends beyond 0–255), ``leak`` (the gradient leak through the clipping activations;
the default, fourier and dip take the layer's, 0.05; lucent differentiates exactly), e.g.
``fourier:lr=0.02``, ``fourier+jitter:lr=0.05:tv=0.1``. The spec string is the method's label.

**Columns** per (block, method), means over the N images: the normalised error in the paper's
convention (‖Φ(x*) − Φ(x)‖ / N_Φ, N_Φ the mean pairwise distance of the block's N target codes),
the relative code error ‖Φ(x*) − Φ(x)‖ / ‖Φ(x)‖ (both on the reconstruction as optimised, as
``invert`` reports it), SSIM of the luminances and the IJCV orientation-histogram intersection
against the original (on the reconstruction clamped to 0–255), iterations, seconds per inversion.

Usage::

    python benchmarks/bench_priors.py --threads 1 [--split eval] [--images 10] [--blocks 6]
        [--methods paper,fourier,...] [--reference earlier.json] [--out FILE.json]

writes the JSON (``_harness``) and a Markdown table beside ``--out`` (``FILE.md``). ``--reference``
reuses the ``paper`` rows (scores) of an earlier run on the same images and blocks instead of
running the paper's method again, and its methods' iterations for methods of the same cost class
(so that a method added later gets the iterations lucent got). Cost: about 6 × the paper's time, i.e. ≈ 13 s of one
core per image and block at depth ≥ block4 (0.07 s per forward+backward × 400 iterations × the
methods). ``--quick``: 2 images, 2 blocks, a 4-iteration paper run (checks that it works).
"""

from __future__ import annotations

import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import _harness as bench  # first: it makes the checkout importable
import torch

from preimage.data import eval_images, spread, train_images  # noqa: E402
from preimage.image_metrics import orientation_histogram_intersection, ssim_luminance  # noqa: E402
from preimage.invert import invert, resolve_jitter  # noqa: E402
from preimage.io.images import load_image, resize  # noqa: E402
from preimage.metrics import normalised_errors, pairwise_normaliser, relative_error  # noqa: E402
from preimage.models import get_model  # noqa: E402
from preimage.objective import InversionObjective, default_lambdas  # noqa: E402
from preimage.optim import minimise  # noqa: E402
from preimage.params import DIPParam, FourierParam, get_parameterisation, parameterisation_class  # noqa: E402
from preimage.representations.cnn import CNNLayer  # noqa: E402
from preimage.transforms import Applied, Compose, Jitter, Transform, warp  # noqa: E402

#: The methods run by default: lucent first, so that the default (the same parameterisation, a
#: little more work per step: its priors) is given lucent's iterations (see :func:`cost_key`).
DEFAULT_METHODS = ("paper", "lucent", "default", "fourier+jitter", "dip", "lucent+transforms")

#: The Fourier image's declared settings (:class:`preimage.params.FourierParam`, calibrated on
#: train/): Adam at its rate, constant, λ at its prior scale of the depth's values.
FOURIER = dict(lr=FourierParam.recommended_lr, sched="const", tv=FourierParam.prior_scale,
               alpha=FourierParam.prior_scale)

#: Each base method's settings (a spec's options override them).
BASES = {
    "paper": dict(param="pixel", optimiser="momentum", lr=None, sched="cnn", tv=1.0, alpha=1.0,
                  jitter=None, bounded=False, transforms=False, leak=0.0),
    "default": dict(param=CNNLayer.param, optimiser=None, lr=None, sched=None, tv=None, alpha=None,
                    jitter=None, bounded=False, transforms=False, leak=None),
    "fourier": dict(param="fourier", optimiser="adam", **FOURIER, jitter=None, bounded=False, transforms=False,
                    leak=None),
    "fourier+jitter": dict(param="fourier", optimiser="adam", **FOURIER, jitter="auto", bounded=False,
                           transforms=False, leak=None),
    "dip": dict(param="dip", optimiser="adam", **{**FOURIER, "lr": DIPParam.recommended_lr}, jitter=None,
                bounded=False, transforms=False, leak=None),
    "lucent": dict(param="fourier", optimiser="adam", lr=0.05, sched="const", tv=0.0, alpha=0.0,
                   jitter=None, bounded=True, transforms=False, leak=0.0),
    "lucent+transforms": dict(param="fourier", optimiser="adam", lr=0.05, sched="const", tv=0.0,
                              alpha=0.0, jitter=None, bounded=True, transforms=True, leak=0.0),
}

#: lucent's transforms as issue 14's brief gives them: pad, jitter, scale, rotation, jitter. (The
#: ``standard_transforms`` of lucent's repository use scales 0.90–1.10 in steps of 0.02 and
#: rotations −10…10°, 0 five times more likely; these are the milder ones of its 0.1.x examples.)
LUCENT_PAD = 12
LUCENT_JITTERS = (8, 4)
LUCENT_SCALES = (1.0, 0.975, 1.025, 0.95, 1.05)
LUCENT_DEGREES = tuple(range(-5, 6))


@dataclass
class Method:
    """One method of the comparison: its label (the spec) and settings (see :data:`BASES`)."""

    label: str
    base: str
    settings: dict = field(default_factory=dict)

    def __getattr__(self, key):
        try:
            return self.__dict__["settings"][key]
        except KeyError:
            raise AttributeError(key) from None


def _option(key: str, value: str):
    """A spec option's value, typed."""
    if key in ("lr", "tv", "alpha", "margin", "leak"):
        return float(value)
    if key == "bounded":
        return value.strip().lower() in ("1", "true", "yes")
    if key == "sched":
        if value not in ("cnn", "const", "anneal"):
            raise ValueError(f"sched must be cnn, const or anneal, not {value!r}")
        return value
    if key == "jitter":
        return None if value in ("none", "1") else value
    if key == "optimiser":
        if value not in ("adam", "lbfgs", "momentum"):
            raise ValueError(f"optimiser must be adam, lbfgs or momentum, not {value!r}")
        return value
    raise ValueError(f"unknown option {key!r}; valid: lr, tv, alpha, sched, jitter, bounded, margin, optimiser, leak")


def parse_method(spec: str) -> Method:
    """``base[:key=value]…`` → :class:`Method` (see the module docstring)."""
    base, *opts = spec.strip().split(":")
    if base not in BASES:
        raise ValueError(f"unknown method {base!r}; valid: {', '.join(BASES)}")
    settings = dict(BASES[base])
    for opt in opts:
        key, _, value = opt.partition("=")
        settings[key] = _option(key, value)
    if base in ("paper", "default") and opts:
        raise ValueError(f"{base} is invert's own setting (paper: method='paper'; default: no settings): "
                         "it takes no options")
    return Method(spec.strip(), base, settings)


# ----------------------------------------------------------------------------------------------
# lucent's transforms, re-expressed on a fixed frame
# ----------------------------------------------------------------------------------------------

class ChoiceAffine(Transform):
    """Zoom by a factor drawn from ``scales`` and rotate by an angle drawn from ``degrees`` (each
    uniformly among the listed values, one draw for the batch, as lucent's ``random_scale`` and
    ``random_rotate``), about the centre of ``x`` ``(N, C, H, W)``; uncovered pixels are zero
    (in σ-units: the mean pixel)."""

    def __init__(self, scales=(1.0,), degrees=(0,)):
        self.scales, self.degrees = tuple(float(s) for s in scales), tuple(float(d) for d in degrees)

    def apply(self, x, generator, strength):
        """``x`` zoomed and rotated (strength scales the zoom − 1 and the angle)."""
        n, _, h, w = x.shape
        s = self.scales[int(torch.randint(len(self.scales), (1,), generator=generator))]
        d = self.degrees[int(torch.randint(len(self.degrees), (1,), generator=generator))]
        s, a = 1.0 + (s - 1.0) * strength, math.radians(d * strength)
        cos, sin = math.cos(a) / s, math.sin(a) / s
        theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype)
        theta = theta.to(x.device).expand(n, 2, 3)
        return warp(x, theta, "zeros"), Applied(theta.float(), torch.zeros(n, 2, dtype=torch.long, device=x.device))


class PadCrop(Transform):
    """Pad ``x`` ``(N, C, H, W)`` by ``pad`` zeros (σ-units: the mean pixel, lucent's grey 0.5),
    apply ``inner`` on the larger canvas, and return its central H×W: lucent's pad-then-transform
    on the fixed frame our target code needs."""

    def __init__(self, pad: int, inner: Transform):
        self.pad, self.inner = int(pad), inner

    def apply(self, x, generator, strength):
        """The central crop of the transformed padded canvas; the record is the inner one's."""
        p = self.pad
        h, w = x.shape[-2:]
        canvas = torch.nn.functional.pad(x, (p, p, p, p))
        out, applied = self.inner.apply(canvas, generator, strength)
        return out[..., p:p + h, p:p + w], applied


def lucent_transforms() -> Transform:
    """lucent's standard transforms on a fixed frame: pad 12 (mean grey), jitter 8, zoom from
    :data:`LUCENT_SCALES`, rotation from :data:`LUCENT_DEGREES`, jitter 4, then the central crop
    of the input's size (lucent feeds the enlarged canvas to the network; a spatially aligned
    code needs the input's frame). Jitters are centred shifts (``preimage.transforms.Jitter``)."""
    return PadCrop(LUCENT_PAD, Compose([Jitter(LUCENT_JITTERS[0], pad_mode="constant"),
                                        ChoiceAffine(LUCENT_SCALES, LUCENT_DEGREES),
                                        Jitter(LUCENT_JITTERS[1], pad_mode="constant")]))


# ----------------------------------------------------------------------------------------------
# Running one method
# ----------------------------------------------------------------------------------------------

def lambdas(rep: CNNLayer, shape, m: Method) -> tuple[float, float]:
    """``(λ_α, λ_V)`` of method ``m`` for images of ``shape``: the depth's defaults (as ``invert``
    takes them) times the method's ``alpha`` and ``tv`` factors."""
    d_alpha, d_tv = default_lambdas(shape, 6.0, 2.0, lambda_tv_reference=float(rep.lambda_tv))
    return d_alpha * m.alpha, d_tv * m.tv


#: ``sched=anneal`` (calibration only): the rate constant for half the run, then stepped down to
#: 3 % (400 iterations, rescaled). It lost to a constant rate at conv1 and block5_add on train/.
ANNEAL = ((200, 1.0), (50, 0.6), (50, 0.3), (50, 0.1), (50, 0.03))


def _schedule(m: Method, iterations: int):
    """``(schedule, iterations)`` arguments of ``invert``/``minimise`` for ``iterations`` steps."""
    if m.sched == "const":
        return [(int(iterations), 1.0)], None
    if m.sched == "anneal":
        return ANNEAL, int(iterations)
    return "cnn", int(iterations)


def param_options(m: Method) -> dict:
    """The parameterisation's keyword arguments of method ``m``: the sigmoid and its margin, always
    spelt out (the class's ``recommended_options`` would fill what is left out)."""
    return {"bounded": bool(m.bounded), "margin": float(m.settings.get("margin") or 0.0)}


def run_transformed(rep: CNNLayer, x: torch.Tensor, m: Method, iterations: int, seed: int = 0) -> torch.Tensor:
    """Method ``m`` with :func:`lucent_transforms` at every step, through ``minimise``:
    reconstructions ``(N, C, H, W)`` on 0–255 (not clipped)."""
    shape = tuple(x.shape[1:])
    with torch.no_grad():
        target = rep(x)
    lam_alpha, lam_tv = lambdas(rep, shape, m)
    obj = InversionObjective(rep, target, shape, lambda_alpha=lam_alpha, lambda_tv=lam_tv,
                             mean_pixel=rep.mean_pixel)
    param = get_parameterisation(m.param, shape, x.shape[0], mean_pixel=rep.mean_pixel, sigma=obj.sigma,
                                 **param_options(m))
    param = param.init(seed, restarts=torch.zeros(x.shape[0], dtype=torch.long))
    schedule, its = _schedule(m, iterations)
    t, gen = lucent_transforms(), torch.Generator().manual_seed(seed)
    with rep.leaking_gradients(rep.grad_leak if m.leak is None else m.leak):
        res = minimise(obj, param, lr=m.lr, schedule=schedule, iterations=its, method=m.optimiser,
                       progress=False, transform=lambda u, k: t(u, gen))
    return obj.image(res.u).detach()


def run_method(rep: CNNLayer, x: torch.Tensor, m: Method, iterations: int | None, seed: int = 0) -> torch.Tensor:
    """Reconstructions ``(N, C, H, W)`` on 0–255 (not clipped) of ``x`` ``(N, 3, H, W)`` by method
    ``m`` in ``iterations`` steps (``None``: the paper's default 400)."""
    if m.transforms:
        return run_transformed(rep, x, m, iterations, seed)
    if m.base in ("paper", "default"):
        res = invert(rep, x, method="paper" if m.base == "paper" else None, iterations=iterations, progress=False,
                     seed=seed)
        return res.reconstructions[:, 0, 0]
    lam_alpha, lam_tv = lambdas(rep, tuple(x.shape[1:]), m)
    schedule, its = _schedule(m, iterations)
    res = invert(rep, x, param=m.param, param_options=param_options(m),
                 method=m.optimiser, lr=m.lr, schedule=schedule, iterations=its, lambda_tv=lam_tv,
                 lambda_alpha=lam_alpha, jitter=m.jitter, grad_leak=m.leak, progress=False, seed=seed)
    return res.reconstructions[:, 0, 0]


def timed(rep: CNNLayer, x: torch.Tensor, m: Method, iterations: int | None) -> tuple[torch.Tensor, float, float]:
    """``(reconstructions, wall seconds, CPU seconds)`` of the whole call (CPU: this process's
    ``time.process_time``, which other jobs on the shared cores do not inflate)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cpu0 = time.process_time()
        with bench.Stopwatch() as sw:
            recon = run_method(rep, x, m, iterations)
        cpu = time.process_time() - cpu0
    return recon, sw.seconds, cpu


def cost_key(m: Method) -> tuple:
    """Methods with the same key do the same work per step up to their priors (α-norm and TV of
    one image: ≈ 1 ms beside a network pass of 20–200 ms) and a sigmoid: the same
    parameterisation, with or without transforms. The first of them in ``--methods`` is timed and
    the others get its iterations, so that timing noise (±20 % between separate estimates) does
    not decide a comparison of near-identical methods. L-BFGS, whose steps may evaluate the
    objective more than once (line search), is a class of its own."""
    optimiser = m.optimiser or parameterisation_class(m.param).recommended_optimiser
    return (m.param, bool(m.transforms), m.jitter is not None, optimiser == "lbfgs")


def _per_iteration(rep: CNNLayer, x: torch.Tensor, m: Method, a: int, b: int) -> tuple[float, float]:
    """``(CPU s per iteration, fixed CPU s)`` of ``m`` on ``x`` from two runs of ``a`` < ``b`` steps.
    When the longer run was not the slower one (timing noise larger than ``b − a`` iterations, as
    with the few iterations of ``--quick``), the fixed cost cannot be told apart: all of ``b``'s
    time is counted per iteration (a near-zero difference would otherwise give a near-zero cost
    and tens of thousands of iterations to the method matched against it)."""
    ta = timed(rep, x, m, a)[2]
    tb = timed(rep, x, m, b)[2]
    if tb <= ta:
        return tb / b, 0.0
    per = (tb - ta) / (b - a)
    return per, max(ta - a * per, 0.0)


def iterations_for(rep: CNNLayer, x: torch.Tensor, m: Method, paper_iterations: int, short: tuple[int, int],
                   min_seconds: float = 0.0, rounds: int = 3) -> dict:
    """Iterations of ``m`` that cost the batch ``x`` as much CPU time as ``paper_iterations`` of
    the paper's method. After untimed one-iteration warm-ups of both (their times t₁ also set
    ``b = max(short[1], ⌈min_seconds / t₁⌉)``, so that cheap layers are timed as long as dear
    ones), ``rounds`` rounds each time ``a = short[0]`` and ``b`` iterations of the paper's method
    and then of ``m``, back to back: a change of load on the shared cores hits both alike. Each
    round gives both methods' CPU seconds per iteration (the difference over b − a) and fixed
    costs (setup, final codes); with the medians over rounds of m's cost relative to the paper's,
    ``K = ⌊(P·p + f_paper − f_m) / (ratio·p)⌋`` (p the paper's per-iteration cost; at least 1).
    Returns ``{"iterations", "cost_ratio", "cpu_seconds_per_iteration", "cpu_fixed_seconds",
    "timing_iterations", "timing_rounds"}``."""
    paper = parse_method("paper")
    a = short[0]
    t1 = min(timed(rep, x, paper, 1)[2], timed(rep, x, m, 1)[2])
    b = max(short[1], a + 1, math.ceil(min_seconds / max(t1, 1e-6)))
    ratios, pers, fixed_p, fixed_m = [], [], [], []
    for _ in range(rounds):
        pp, fp = _per_iteration(rep, x, paper, a, b)
        pm, fm = _per_iteration(rep, x, m, a, b)
        ratios.append(pm / pp)
        pers.append(pm)
        fixed_p.append(fp / pp)
        fixed_m.append(fm / pp)
    ratio = statistics.median(ratios)
    extra = statistics.median(fixed_p) - statistics.median(fixed_m)  # in paper iterations
    k = int((paper_iterations + extra) // ratio)
    return {"iterations": max(1, k), "cost_ratio": ratio, "cpu_seconds_per_iteration": statistics.median(pers),
            "cpu_fixed_seconds": statistics.median(fixed_m) * statistics.median(pers) / ratio,
            "timing_iterations": [a, b], "timing_rounds": rounds}


# ----------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------

def score(rep: CNNLayer, x: torch.Tensor, recon: torch.Tensor, target: torch.Tensor, normaliser: float) -> dict:
    """Per-image scores of reconstructions ``recon`` ``(N, C, H, W)`` of ``x`` (0–255) whose codes
    should be ``target`` ``(N, ...)``: lists of N floats under ``normalised_error``,
    ``relative_code_error``, ``ssim``, ``orientation_intersection``."""
    with torch.no_grad():
        codes = rep(recon)
    clamped = recon.clamp(0, 255)
    return {"normalised_error": normalised_errors(list(codes), list(target), normaliser).tolist(),
            "relative_code_error": relative_error(codes, target).double().tolist(),
            "ssim": ssim_luminance(clamped, x).tolist(),
            "orientation_intersection": orientation_histogram_intersection(clamped, x).tolist()}


def _mean(values) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def summary_row(block: str, m: Method, scores: dict, iterations: int, seconds: float, cpu: float, n: int,
                **extra) -> dict:
    """One (block, method) row: the means, the per-image values, iterations, wall and CPU seconds."""
    row = {"block": block, "method": m.label, "settings": dict(m.settings), "iterations": iterations,
           "seconds_per_inversion": seconds / n, "cpu_seconds_per_inversion": cpu / n,
           "load_average_1min": round(os.getloadavg()[0], 2)}
    row.update({f"{k}_mean": _mean(v) for k, v in scores.items()})
    row["per_image"] = scores
    row.update(extra)
    return row


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------

def load_batch(split: str, n: int, size) -> tuple[torch.Tensor, list[str]]:
    """``(N, 3, H, W)`` on 0–255: ``n`` images spread over the split, resized to ``size`` (no crop)."""
    paths = spread(eval_images() if split == "eval" else train_images(), n)
    return torch.stack([resize(load_image(p), tuple(size)) for p in paths]), [p.name for p in paths]


def bench_block(model, block: str, x: torch.Tensor, methods: list[Method], args,
                reference: list[dict] | None) -> list[dict]:
    """Every method on one block; the paper's row first (run, or taken from the ``reference``
    rows, whose methods' iterations are then reused for the methods of the same cost class)."""
    rep = CNNLayer(model, block)
    with torch.no_grad():
        target = rep(x)
    normaliser = pairwise_normaliser(list(target))
    n, rows = x.shape[0], []
    if reference:
        paper = dict(reference[0], reused=True)
    elif args.skip_paper:
        paper = None
    else:
        recon, sec, cpu = timed(rep, x, parse_method("paper"), args.paper_iterations)
        paper = summary_row(block, parse_method("paper"), score(rep, x, recon, target, normaliser),
                            args.paper_iterations or 400, sec, cpu, n, relative_depth=rep.relative_depth,
                            lambda_tv=rep.lambda_tv, normaliser=normaliser)
    if paper is not None:
        rows.append(paper)
        bench.progress({k: v for k, v in paper.items() if k not in ("per_image", "settings")})
    plans = _reference_plans(reference or [])
    for m in methods:
        if m.base == "paper":
            continue
        try:
            if cost_key(m) not in plans:
                plans[cost_key(m)] = dict(iterations_for(rep, x, m, args.paper_iterations or 400, args.timing,
                                                         args.timing_seconds, args.timing_rounds), timed_with=m.label)
            plan = dict(plans[cost_key(m)])
            recon, sec, cpu = timed(rep, x, m, plan["iterations"])
            its = plan.pop("iterations")
            row = summary_row(block, m, score(rep, x, recon, target, normaliser), its, sec, cpu, n,
                              **plan, jitter_pixels=resolve_jitter(rep, m.jitter))
        except (FloatingPointError, RuntimeError, ValueError) as e:
            row = {"block": block, "method": m.label, "settings": dict(m.settings),
                   "error": f"{type(e).__name__}: {e}"}
        rows.append(row)
        bench.progress({k: v for k, v in row.items() if k not in ("per_image", "settings")})
    return rows


def _reference_rows(path: str | None, images: list[str], blocks: list[str]) -> dict[str, list[dict]]:
    """The rows of an earlier run by block (the ``paper`` row first), checked to be on the same
    images and to have a paper row for every block."""
    if not path:
        return {}
    import json
    old = json.loads(Path(path).read_text())
    if old.get("images") != images:
        raise SystemExit(f"--reference {path} was run on other images: {old.get('images')}")
    rows = {}
    for r in old["rows"]:
        if "error" not in r:
            rows.setdefault(r["block"], []).append(r)
    missing = [b for b in blocks if not any(r["method"] == "paper" for r in rows.get(b, []))]
    if missing:
        raise SystemExit(f"--reference {path} has no paper row for {', '.join(missing)}")
    return {b: sorted(rs, key=lambda r: r["method"] != "paper") for b, rs in rows.items()}


def _reference_plans(rows: list[dict]) -> dict[tuple, dict]:
    """The iterations an earlier run gave each cost class (:func:`cost_key`), from its rows."""
    plans = {}
    for r in rows:
        if r["method"] != "paper":
            try:
                key = cost_key(parse_method(r["method"]))
            except ValueError:  # a spec this version no longer reads: not reused
                continue
            plans.setdefault(key, {"iterations": r["iterations"], "timed_with": f"{r['method']} (reference run)",
                                   **{k: r[k] for k in ("cost_ratio", "cpu_seconds_per_iteration") if k in r}})
    return plans


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def _pct(v) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{100 * v:.1f}"


def _num(v, fmt: str = ".3f") -> str:
    return "—" if v is None or not math.isfinite(v) else format(v, fmt)


def table_lines(rows: list[dict]) -> list[str]:
    """The Markdown table, one line per (block, method) row."""
    lines = ["| block | method | norm. error % | rel. code error % | SSIM (luma) | orient. hist. ∩ "
             "| iterations | CPU s / inversion |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['block']} | {r['method']} | failed: {r['error'][:80]} | | | | | |")
            continue
        lines.append(f"| {r['block']} | {r['method']} | {_pct(r['normalised_error_mean'])} "
                     f"| {_pct(r['relative_code_error_mean'])} | {_num(r['ssim_mean'])} "
                     f"| {_num(r['orientation_intersection_mean'])} | {r['iterations']} "
                     f"| {_num(r['cpu_seconds_per_inversion'], '.1f')} |")
    return lines


def comparison_lines(rows: list[dict], against: str = "lucent") -> list[str]:
    """Per method, on how many blocks it has a lower normalised error than ``against`` and an
    SSIM at least as high (and the same against ``paper``)."""
    by = {(r["block"], r["method"]): r for r in rows if "error" not in r}
    blocks = list(dict.fromkeys(r["block"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = []
    for ref in (against, "paper"):
        if not any((b, ref) in by for b in blocks):
            continue
        lines += ["", f"Against `{ref}` (blocks where the method has a lower normalised error / an SSIM "
                      "at least as high / both):", ""]
        for m in methods:
            if m == ref:
                continue
            pairs = [(by[(b, m)], by[(b, ref)]) for b in blocks if (b, m) in by and (b, ref) in by]
            err = sum(a["normalised_error_mean"] < c["normalised_error_mean"] for a, c in pairs)
            ssim = sum(a["ssim_mean"] >= c["ssim_mean"] for a, c in pairs)
            both = sum(a["normalised_error_mean"] < c["normalised_error_mean"] and a["ssim_mean"] >= c["ssim_mean"]
                       for a, c in pairs)
            lines.append(f"- `{m}`: {err}/{len(pairs)} · {ssim}/{len(pairs)} · {both}/{len(pairs)}")
    return lines


def markdown(out: dict) -> str:
    """The whole Markdown report of a run (header, table, comparisons)."""
    s, mach = out["settings"], out["machine"]
    head = [f"# MobileNet v2 inversions at equal CPU time ({out['benchmark']})", "",
            f"{len(out['images'])} {s['split']} images × {len(out['blocks'])} blocks "
            f"({', '.join(out['blocks'])}); the paper's method (400 iterations) sets each block's CPU time; "
            f"{mach['torch_threads']} torch thread(s) on {mach['cpu']} (load average at the end "
            f"{mach['load_average_1min']}); {out['total_seconds'] / 60:.1f} min in all.", "",
            "Normalised error: paper convention (distance / mean pairwise distance of the block's "
            f"{len(out['images'])} target codes); SSIM and orientation-histogram intersection against the "
            "original (reconstruction clamped to 0–255); means over the images.", ""]
    return "\n".join(head + table_lines(out["rows"]) + comparison_lines(out["rows"])) + "\n"


def _unique_rows(runs: list[dict]) -> list[dict]:
    """The runs' rows, one per (block, method): a row run here wins over one reused from a
    ``--reference`` (``"reused"``), else the first; in block order of depth, the paper's first."""
    order = {b: i for i, b in enumerate(get_model_blocks())}
    best: dict[tuple[str, str], dict] = {}
    for row in (row for r in runs for row in r["rows"]):
        key = (row["block"], row["method"])
        if key not in best or (best[key].get("reused") and not row.get("reused")):
            best[key] = row
    return sorted(best.values(), key=lambda row: (order.get(row["block"], len(order)), row["method"] != "paper"))


def merge(paths: list[str], out: str | None) -> int:
    """Combine the JSONs of runs on the same images (split over blocks with ``--only-blocks``, or
    over methods with ``--reference``) into one, a row per (block, method), and write it and its
    Markdown to ``out``."""
    import json
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if any(r["images"] != runs[0]["images"] for r in runs):
        raise SystemExit("--merge: the runs were made on different images")
    rows = _unique_rows(runs)
    order = {b: i for i, b in enumerate(get_model_blocks())}
    blocks = sorted({row["block"] for row in rows}, key=lambda b: order.get(b, len(order)))
    full = next((r for r in runs if "settings" in r and "machine" in r), runs[0])  # a reference may have neither
    merged = {**full, "blocks": blocks, "rows": rows,
              "total_seconds": sum(r.get("total_seconds", 0.0) for r in runs),
              "merged_from": [str(p) for p in paths]}
    return bench.write_merged(merged, out, markdown(merged))


def get_model_blocks() -> list[str]:
    """MobileNet v2's ``block_names`` in order of depth."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(get_model("mobilenet_v2").block_names)


def main(argv=None) -> int:
    """Parse the flags, run every block, emit the JSON and write the Markdown beside ``--out``."""
    ap = bench.parser(__doc__.splitlines()[0])
    ap.set_defaults(threads=1)
    ap.add_argument("--split", choices=("eval", "train"), default="eval")
    ap.add_argument("--images", type=int, default=10, help="images spread over the split (default 10)")
    ap.add_argument("--blocks", type=int, default=6, help="MobileNet v2 block_names spread (default 6)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated method specs")
    ap.add_argument("--reference", help="reuse the paper rows and the iterations per cost class of this earlier "
                                        "JSON (same images and blocks)")
    ap.add_argument("--only-blocks", help="run only these of the spread blocks (comma-separated): split a run "
                                          "over processes, then --merge their JSONs")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine runs of the same images over other blocks into --out (JSON + Markdown)")
    ap.add_argument("--paper-iterations", type=int, default=None, help="(tests) the paper's iterations")
    ap.add_argument("--skip-paper", action="store_true",
                    help="time the paper's short runs for the budget but do not run it in full (its rows come "
                         "from another run)")
    ap.add_argument("--timing-iterations", default="2,12", help="the two short timed runs (default 2,12)")
    ap.add_argument("--timing-rounds", type=int, default=3,
                    help="interleaved rounds of timing, the paper's runs beside the method's (default 3)")
    ap.add_argument("--timing-seconds", type=float, default=4.0,
                    help="lengthen the second timed run to at least this many CPU seconds (default 4)")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    args = bench.quick(args, images=2, blocks=2, paper_iterations=4, timing_iterations="1,2", timing_seconds=0.0,
                       timing_rounds=1)
    bench.setup(args)
    args.timing = tuple(int(v) for v in args.timing_iterations.split(","))
    methods = [parse_method(s) for s in args.methods.split(",") if s.strip()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_model("mobilenet_v2")
    blocks = spread(model.block_names, args.blocks)
    if args.only_blocks:
        only = [b.strip() for b in args.only_blocks.split(",") if b.strip()]
        unknown = [b for b in only if b not in blocks]
        if unknown:
            raise SystemExit(f"--only-blocks: {', '.join(unknown)} not among the spread blocks {', '.join(blocks)}")
        blocks = [b for b in blocks if b in only]
    x, names = load_batch(args.split, args.images, model.input_size)
    reference = _reference_rows(args.reference, names, blocks)
    rows = []
    with bench.Stopwatch() as sw:
        for block in blocks:
            rows += bench_block(model, block, x, methods, args, reference.get(block))
            if args.out:  # the finished blocks, in case the run is stopped (the JSON comes at the end)
                import json
                Path(f"{args.out}.partial").write_text(json.dumps({"images": names, "rows": rows}, indent=1))
    out = bench.emit("bench_priors", args, {"images": names, "blocks": blocks, "rows": rows,
                                            "total_seconds": sw.seconds,
                                            "settings": {"methods": [m.label for m in methods]}})
    if args.out:
        Path(args.out).with_suffix(".md").write_text(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
