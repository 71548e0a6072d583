"""Time to quality (issue 12): seconds each inversion method needs to reach the error the paper's method
reaches after its full schedule, at batch 1 and batch 8, on HOG, HOGb, DSIFT and MobileNet v2.

**Cases** (``--reps``, comma-separated): ``hog``, ``hogb``, ``dsift`` on grey eval images resized to
227×227; ``mobilenet_v2`` at ``--blocks`` depths spread over ``model.block_names``
(:func:`preimage.data.spread`; 4 gives conv1, block5_add, block10_add, block16_add), or
``mobilenet_v2:BLOCK`` for one block, on RGB eval images resized to 224×224 without a crop (as
``evaluate`` and ``bench_priors`` do). ``--images`` N eval images are spread over the set; batch b
(``--batches``, default 1,8) inverts the first b of them as one batch.

**Methods** (``--methods``; each run exactly as a user calls it, ``progress=False``):

* ``paper``: ``invert(rep, x, method="paper")``, the paper's method exactly (today's
  ``--schedule paper``): **the baseline**. Its final relative code error on each image, measured
  in the same run, is that image's **reference error**;
* ``paper-nchw`` (CNN layers only): the same through a layer run as before channels-last and
  chunked execution (``CNNLayer(..., **PLAIN_EXECUTION)``) and without the compiled loops
  (:func:`preimage.compiled.disabled`): the issue's "today's default", whose images per second
  the last table compares every method's with;
* ``paper-torch`` (HOG/DSIFT only): the paper's method without the compiled loops (HOG's
  per-pixel stage and the priors as torch operations): today's default there;
* ``default``: ``invert(rep, x)``, preimage's default (pixels and momentum for HOG/DSIFT; for CNN
  layers a Fourier image (:class:`~preimage.params.FourierParam`'s ``recommended_*``) with the
  layer's ``recipe_optimiser``, per-sample L-BFGS, differentiated through the layer's leaky
  surrogate gradient, ``CNNLayer.grad_leak``);
* ``exact`` (CNN layers only): the default with the exact gradient (``grad_leak=0``), the default
  before the leak;
* ``momentum``, ``adam``, ``lbfgs``: ``invert(rep, x, method=...)``, the default's parameterisation
  with another optimiser (the one that is the default's own is skipped); on CNN layers ``adam`` is
  the default before L-BFGS (the Fourier image's own optimiser);
* ``early``: the default with per-sample early stopping, ``invert(rep, x, tol=--tol, window=--window)``;
* ``cnnvis``, ``cnnvis-best`` (CNN layers only): the pytorch-cnn-visualizations algorithm
  (:mod:`preimage.baselines.cnn_visualizations`) at its published rate, and at the best of
  :data:`~preimage.baselines.cnn_visualizations.BEST_RATES` chosen per block on one ``train/``
  image (never eval).

**Measured** per (case, batch, method): the seconds to the reference error (every sample of the
batch at or below its image's reference; CPU and wall), the ratio of that time to the paper's in
the same run (**the headline**; ``paper`` itself reaches it at the first recorded iteration where
its error is at its final value or below, usually its last), the final error, the iterations (to the
reference and in all), ms per iteration, the divergence back-offs (``settings["lr_halvings"]``),
images per second (batch / CPU seconds of the whole run; batch 8 against batch 1 in a second
table), and the share of the measured matmul peak: FLOPs of one network forward+backward to the
input (``torch.utils.flop_counter.FlopCounterMode``, batch 1) × the image-passes counted by a
forward hook during the run ÷ wall seconds ÷ the float32 matmul GFLOP/s measured in the same run
(``--matmul-size``, at the start and the end; the higher is the peak). Only the network's FLOPs
count (a Fourier image's FFTs, the priors and the optimiser's arithmetic are overhead the share
reveals). For HOG/DSIFT the counted FLOPs (their convolutions only) are a rough lower bound, so
the share is reported as n/a.

**Tracking** the error does not count: ``invert`` has no callback argument, so for the timed call
the ``minimise`` it calls (and the cnn-visualizations module's) is wrapped to pass one; every
``record_every`` (10) iterations it computes the codes of the current image and the relative
errors, and its own time (wall and CPU) is subtracted from every time read after it. The timed
code is therefore ``invert``'s own. Time starts when ``invert`` is called (the target codes and
the initialisation included).

**CPU time vs wall time**: the cores are shared, so the headline times are CPU seconds of this
process (``time.process_time``) with one torch thread (``--threads 1``, the default): what the run
would take alone on one core. With more threads the headline is wall time. ``--rounds`` R > 1
repeats every (case, batch) R times with the methods interleaved (reversed order in odd rounds)
and keeps the median times, so that a change of load hits all methods alike; errors come from the
first round (the runs are deterministic).

Usage::

    python benchmarks/bench_time_to_quality.py [--threads 1] [--reps hog,hogb,dsift,mobilenet_v2]
        [--blocks 4] [--images 8] [--batches 1,8] [--methods paper,default,...] [--rounds 1]
        [--out FILE.json]

writes the JSON (``_harness``; ``FILE.json.partial`` after each case) and a Markdown table beside
``--out`` (``FILE.md``). ``--merge A.json B.json --out ALL.json`` combines runs on the same images
over other ``--reps`` (a run split over processes). ``--quick``: HOG and MobileNet v2 conv1, 2
images, batches 1 and 2, 10 iterations (checks that it works, measures nothing).

Cost of the full run (one thread, quiet machine; the batch-8 CNN runs dominate): about 2,700
network passes per method set and batch, i.e. ≈ 35 min for the four MobileNet v2 depths (batch 8
at 45–260 ms per iteration) and ≈ 8 min for HOG, HOGb and DSIFT; × ``--rounds``. Under load
the CPU seconds grow too (shared caches): a loaded 2-core machine took about 4× as long per
iteration.
"""

from __future__ import annotations

import importlib
import math
import os
import statistics
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import _harness as bench  # first: it makes the checkout importable
import torch

from preimage import compiled  # noqa: E402
from preimage.baselines import cnn_visualizations as cnnvis  # noqa: E402
from preimage.data import eval_images, spread, train_images  # noqa: E402
from preimage.invert import invert, resolve_method  # noqa: E402
from preimage.io.images import load_image, resize  # noqa: E402
from preimage.metrics import relative_error  # noqa: E402
from preimage.models import get_model  # noqa: E402
from preimage.optim import minimise  # noqa: E402
from preimage.paper import LAMBDA_TV  # noqa: E402
from preimage.representations import SHALLOW_NAMES, get_representation  # noqa: E402
from preimage.representations.cnn import PLAIN_EXECUTION, CNNLayer  # noqa: E402

METHODS = ("paper", "paper-nchw", "paper-torch", "default", "exact", "momentum", "adam", "lbfgs", "early", "cnnvis",
           "cnnvis-best")
#: methods that run on CNN layers only, and on HOG/DSIFT only
CNN_ONLY = ("paper-nchw", "exact", "cnnvis", "cnnvis-best")
SHALLOW_ONLY = ("paper-torch",)
#: today's default (the issue's baseline): the paper's method as it ran before, on CNN layers and on HOG/DSIFT
TODAY = ("paper-nchw", "paper-torch")
SHALLOW_SIZE = (227, 227)
#: a sample has reached its reference when its error is at most reference × (1 + REACH_SLACK): the
#: same algorithm through another execution (``paper-nchw``) ends 1e-3 (relative) away by rounding alone
REACH_SLACK = 2e-3


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------

@dataclass
class Case:
    """One representation to invert: its label, the module, and the ``(N, C, H, W)`` eval images
    on 0–255 it inverts (batch b takes the first b)."""

    label: str
    rep: torch.nn.Module
    images: torch.Tensor
    cnn: bool
    info: dict = field(default_factory=dict)
    plain: torch.nn.Module | None = None  # CNN layers: the same layer, NCHW and unchunked

    def rep_for(self, method: str) -> torch.nn.Module:
        """The representation ``method`` runs on (``paper-nchw``: :attr:`plain`)."""
        return self.plain if method == "paper-nchw" else self.rep


def _load(paths, mode: str, size) -> torch.Tensor:
    """``(N, C, H, W)`` on 0–255: the images resized to ``size`` (no crop)."""
    return torch.stack([resize(load_image(p, mode=mode), tuple(size)) for p in paths])


def _mobilenet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_model("mobilenet_v2")


def build_cases(spec: str, n_images: int, n_blocks: int) -> tuple[list[Case], list[str]]:
    """The cases of ``--reps`` and the names of the eval images they use."""
    paths = spread(eval_images(), n_images)
    cases, grey, rgb, model = [], None, None, None
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, _, block = item.partition(":")
        if name in SHALLOW_NAMES:
            grey = _load(paths, "grey", SHALLOW_SIZE) if grey is None else grey
            cases.append(Case(name, get_representation(name), grey, False))
        elif name == "mobilenet_v2":
            model = _mobilenet() if model is None else model
            rgb = _load(paths, "rgb", model.input_size) if rgb is None else rgb
            blocks = [block] if block else spread(model.block_names, n_blocks)
            for b in blocks:
                if b not in model.block_names:
                    raise SystemExit(f"--reps: {b!r} is not a MobileNet v2 block ({', '.join(model.block_names)})")
                cases.append(Case(f"mobilenet_v2:{b}", CNNLayer(model, b), rgb, True, {"block": b},
                                  plain=CNNLayer(model, b, **PLAIN_EXECUTION)))
        else:
            raise SystemExit(f"--reps: unknown {item!r} (hog, hogb, dsift, mobilenet_v2[:BLOCK])")
    return cases, [p.name for p in paths]


# ----------------------------------------------------------------------------------------------
# Machine and network facts
# ----------------------------------------------------------------------------------------------

def matmul_gflops(n: int, repeats: int = 3) -> float:
    """GFLOP/s of the best of ``repeats`` float32 ``(n, n) @ (n, n)`` products (2n³ FLOPs)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    return 2 * n ** 3 / bench.time_call(lambda: torch.mm(a, b), repeats).best / 1e9


def flops_per_pass(rep: torch.nn.Module, shape) -> int:
    """FLOPs ``FlopCounterMode`` counts for one forward + backward to the input of one ``shape``
    ``(C, H, W)`` image (the network's weights frozen, as in an inversion)."""
    from torch.utils.flop_counter import FlopCounterMode
    for p in rep.parameters():
        p.requires_grad_(False)
    x = (255 * torch.rand((1,) + tuple(shape), generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    with FlopCounterMode(display=False) as counter:
        rep(x).sum().backward()
    return int(counter.get_total_flops())


# ----------------------------------------------------------------------------------------------
# Tracking
# ----------------------------------------------------------------------------------------------

class Tracker:
    """``callback(step, u)`` for :func:`preimage.optim.minimise`: the relative code error of every
    sample at ``step``, with the wall and CPU seconds since :meth:`start` net of the tracker's own
    time. :meth:`bind` gives it the objective (``objective.image(u)`` is the image the
    representation sees, ``objective.target`` the codes)."""

    def __init__(self):
        self.objective = None
        self.steps: list[int] = []
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.errors: list[torch.Tensor] = []
        self.own_wall = self.own_cpu = 0.0

    def bind(self, objective) -> None:
        self.objective = objective

    def start(self) -> None:
        self._w0, self._c0 = time.perf_counter(), time.process_time()

    def __call__(self, step: int, u: torch.Tensor) -> None:
        w, c = time.perf_counter(), time.process_time()
        with torch.no_grad():
            obj = self.objective
            err = relative_error(obj.representation(obj.image(u)), obj.target).double().cpu()
        self.steps.append(int(step))
        self.wall.append(w - self._w0 - self.own_wall)
        self.cpu.append(c - self._c0 - self.own_cpu)
        self.errors.append(err)
        self.own_wall += time.perf_counter() - w
        self.own_cpu += time.process_time() - c

    def stop(self) -> tuple[float, float]:
        """Net ``(wall, CPU)`` seconds since :meth:`start`."""
        return (time.perf_counter() - self._w0 - self.own_wall, time.process_time() - self._c0 - self.own_cpu)

    def first_reach(self, reference: torch.Tensor) -> dict | None:
        """When every sample had first reached its ``reference`` ``(N,)`` error: ``{"step",
        "wall", "cpu", "per_sample_step"}``, or None when one never did (``reached`` counts them)."""
        if not self.errors:
            return None
        errs = torch.stack(self.errors)  # (T, N)
        ok = torch.isfinite(errs) & (errs <= reference.double() * (1 + REACH_SLACK))
        firsts = [int(col.nonzero()[0]) if col.any() else None for col in ok.T]
        out = {"reached": sum(f is not None for f in firsts),
               "per_sample_step": [None if f is None else self.steps[f] for f in firsts]}
        if None in firsts:
            return out
        t = max(firsts)
        return dict(out, step=self.steps[t], wall=self.wall[t], cpu=self.cpu[t])


@contextmanager
def tracking(tracker: Tracker):
    """For the ``with`` block, the ``minimise`` that :func:`preimage.invert.invert` and the
    cnn-visualizations baseline call gets ``tracker`` bound to its objective and as its callback."""
    modules = [importlib.import_module("preimage.invert"), cnnvis]

    def wrapped(objective, variables, **kwargs):
        tracker.bind(objective)
        if kwargs.get("callback") is None:
            kwargs["callback"] = tracker
        return minimise(objective, variables, **kwargs)
    for m in modules:
        m.minimise = wrapped
    try:
        yield
    finally:
        for m in modules:
            m.minimise = minimise


@contextmanager
def counting_passes(rep: torch.nn.Module):
    """Count the images of the representation's forward calls with gradients on (the passes an
    optimisation makes; scoring runs without gradients): ``with counting_passes(rep) as n: …; n[0]``."""
    count = [0]

    def hook(module, inputs, output):
        if torch.is_grad_enabled():
            count[0] += int(inputs[0].shape[0])
    handle = rep.register_forward_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------

def methods_for(case: Case, wanted: list[str]) -> list[str]:
    """The methods of ``wanted`` that apply to ``case`` (cnnvis on CNN layers only; the optimiser
    that is the default's own, as ``invert`` resolves it, is the ``default`` row)."""
    own, _ = resolve_method(case.rep, case.rep.param, None, None, [LAMBDA_TV], 2.0)
    return [m for m in wanted if m != own and (m not in (SHALLOW_ONLY if case.cnn else CNN_ONLY))]


def execution(method: str):
    """The context ``method`` runs in: today's default (:data:`TODAY`) without the compiled loops."""
    return compiled.disabled() if method in TODAY else nullcontext()


def run_once(case: Case, method: str, x: torch.Tensor, args, cnnvis_lr: float | None) -> dict:
    """One timed inversion of the batch ``x``: its tracker, net times, final errors, back-offs,
    iterations and counted passes."""
    tracker, rep = Tracker(), case.rep_for(method)
    with execution(method), tracking(tracker), counting_passes(rep) as passes, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tracker.start()
        if method.startswith("cnnvis"):
            lr = cnnvis.CNN_VISUALIZATIONS["lr"] if method == "cnnvis" else cnnvis_lr
            inv = cnnvis.invert_cnn_visualizations(case.rep, x, lr=lr, iterations=args.cnnvis_iterations)
        else:
            inv = invert(rep, x, progress=False, **method_options(method, args))
        wall, cpu = tracker.stop()
    if not tracker.steps:
        raise RuntimeError("the error was never tracked: invert no longer calls preimage.invert.minimise")
    used = torch.tensor(inv.settings["iterations_used"]).flatten()
    return {"tracker": tracker, "wall": wall, "cpu": cpu, "errors": inv.relative_errors.flatten(),
            "backoffs": int(torch.tensor(inv.settings["lr_halvings"]).sum()), "passes": passes[0],
            "iterations": int(inv.settings["iterations"]), "iterations_used": used.tolist(),
            "iterations_run": int(used.max()), "lr": inv.settings.get("lr")}


def method_options(method: str, args) -> dict:
    """``invert`` keyword arguments of a preimage method."""
    its = {"iterations": args.iterations} if args.iterations else {}
    if method in ("paper", "paper-nchw", "paper-torch"):
        return dict(its, method="paper")
    if method == "default":
        return its
    if method == "exact":
        return dict(its, grad_leak=0.0)
    if method == "early":
        return dict(its, tol=args.tol, window=args.window)
    if method in ("momentum", "adam", "lbfgs"):
        return dict(its, method=method)
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(METHODS)}")


def choose_cnnvis_rate(case: Case, image: torch.Tensor, args) -> dict:
    """The rate of ``cnnvis-best``: the lowest final error among ``BEST_RATES`` on one train
    image ``(1, 3, H, W)`` (a non-finite error loses)."""
    errors = {}
    for lr in cnnvis.BEST_RATES:
        inv = cnnvis.invert_cnn_visualizations(case.rep, image, lr=lr, iterations=args.cnnvis_iterations)
        errors[lr] = float(inv.relative_errors.flatten()[0])
    best = min(errors, key=lambda lr: errors[lr] if math.isfinite(errors[lr]) else math.inf)
    return {"rates": {f"{lr:g}": e for lr, e in errors.items()}, "chosen": best}


def run_batch(case: Case, batch: int, methods: list[str], args, cnnvis_lr) -> dict[str, list[dict]]:
    """Every method on the first ``batch`` images, ``args.rounds`` interleaved rounds:
    ``{method: [run of each round]}`` (a failed run is ``{"error": ...}``)."""
    x = case.images[:batch]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(args.rounds):
        for m in (methods if r % 2 == 0 else methods[::-1]):
            try:
                runs[m].append(run_once(case, m, x, args, cnnvis_lr))
            except (FloatingPointError, RuntimeError, ValueError) as e:
                runs[m].append({"error": f"{type(e).__name__}: {e}"})
    return runs


# ----------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------

def _median(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.median(values) if values else None


def _finite_mean(t: torch.Tensor) -> float:
    finite = t[torch.isfinite(t)]
    return float(finite.mean()) if finite.numel() else float("nan")


def summarise(case: Case, batch: int, method: str, runs: list[dict], reference: torch.Tensor | None,
              peak_gflops: float, basis: str) -> dict:
    """The row of (case, batch, method) from its rounds' runs and the batch's reference errors."""
    row = {"rep": case.label, "batch": batch, "method": method, "load_average_1min": round(os.getloadavg()[0], 2)}
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return dict(row, error=runs[0]["error"])
    first = ok[0]
    reach = [r["tracker"].first_reach(reference) if reference is not None else None for r in ok]
    full = all(x is not None and "step" in x for x in reach)
    wall, cpu = _median(r["wall"] for r in ok), _median(r["cpu"] for r in ok)
    seconds = cpu if basis == "cpu" else wall
    flops = case.info.get("flops_per_pass")
    achieved = flops * _median(r["passes"] for r in ok) / wall / 1e9 if flops and wall else None
    row.update(
        n_images=batch, reached=reach[0]["reached"] if reach[0] else None,
        time_to_reference_cpu_s=_median(x["cpu"] for x in reach) if full else None,
        time_to_reference_wall_s=_median(x["wall"] for x in reach) if full else None,
        iteration_reached=reach[0]["step"] if full else None,
        per_sample_iteration_reached=reach[0]["per_sample_step"] if reach[0] else None,
        final_error_mean=_finite_mean(first["errors"]), final_errors=first["errors"].tolist(),
        non_finite=int((~torch.isfinite(first["errors"])).sum()),
        reference_errors=None if reference is None else reference.tolist(),
        seconds_cpu=cpu, seconds_wall=wall, iterations=first["iterations"], iterations_used=first["iterations_used"],
        ms_per_iteration=1e3 * seconds / max(first["iterations_run"], 1), backoffs=first["backoffs"],
        images_per_second=batch / seconds, passes=first["passes"], lr=first["lr"],
        network_gflops_per_s=achieved, peak_fraction=achieved / peak_gflops if achieved and case.cnn else None,
        tracking_seconds_cpu=_median(r["tracker"].own_cpu for r in ok), rounds=len(ok),
        errors_in_rounds=[r["error"] for r in runs if "error" in r] or None)
    row["time_to_reference_s"] = row[f"time_to_reference_{basis}_s"]
    row["images_per_second_to_reference"] = batch / row["time_to_reference_s"] if row["time_to_reference_s"] else None
    return row


def add_ratios(rows: list[dict]) -> None:
    """``ratio_to_paper`` (and ``_cpu``, ``_wall``): each row's time to the reference over the
    paper's in the same (case, batch)."""
    paper = {(r["rep"], r["batch"]): r for r in rows if r["method"] == "paper" and "error" not in r}
    for r in rows:
        p = paper.get((r["rep"], r["batch"]), {})
        for ratio, time_key in (("ratio_to_paper", "time_to_reference_s"),
                                ("ratio_to_paper_cpu", "time_to_reference_cpu_s"),
                                ("ratio_to_paper_wall", "time_to_reference_wall_s")):
            t, t0 = r.get(time_key), p.get(time_key)
            r[ratio] = t / t0 if t and t0 else None


def throughput(rows: list[dict]) -> list[dict]:
    """Per (case, method): images per second at the smallest and the largest batch and their ratio."""
    out = []
    keys = list(dict.fromkeys((r["rep"], r["method"]) for r in rows))
    for rep, method in keys:
        by = {r["batch"]: r for r in rows if (r["rep"], r["method"]) == (rep, method) and "error" not in r}
        if len(by) < 2:
            continue
        lo, hi = by[min(by)], by[max(by)]
        out.append({"rep": rep, "method": method, "batches": [lo["batch"], hi["batch"]],
                    "images_per_second": [lo["images_per_second"], hi["images_per_second"]],
                    "ratio": hi["images_per_second"] / lo["images_per_second"],
                    "ms_per_iteration_per_image": [lo["ms_per_iteration"] / lo["batch"],
                                                   hi["ms_per_iteration"] / hi["batch"]]})
    return out


def against_today(rows: list[dict]) -> list[dict]:
    """Per (case, batch, method): images per second (whole run, and to the reference) over
    today's default's (``paper-nchw`` on CNN layers, ``paper-torch`` on HOG/DSIFT) in the same
    (case, batch)."""
    today = {(r["rep"], r["batch"]): r for r in rows if r["method"] in TODAY and "error" not in r}
    out = []
    for r in rows:
        t = today.get((r["rep"], r["batch"]))
        if t is None or "error" in r:
            continue
        ips, ips_ref = r["images_per_second"], r.get("images_per_second_to_reference")
        t_ref = t.get("images_per_second_to_reference")
        out.append({"rep": r["rep"], "batch": r["batch"], "method": r["method"],
                    "images_per_second": ips, "ratio": ips / t["images_per_second"],
                    "images_per_second_to_reference": ips_ref,
                    "ratio_to_reference": ips_ref / t_ref if ips_ref and t_ref else None})
    return out


# ----------------------------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------------------------

def warm_up(case: Case, methods: list[str], args) -> None:
    """Two untimed iterations of every preimage method on one image, so that no timed run pays
    for one-off work (numba compiling or loading its loops, first-call allocations)."""
    for m in methods:
        if m.startswith("cnnvis"):
            continue
        with execution(m), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            invert(case.rep_for(m), case.images[:1], progress=False, **dict(method_options(m, args), iterations=2))


def bench_case(case: Case, methods: list[str], args, peak: float, basis: str, train_rgb) -> list[dict]:
    """Every batch size and method on one case: rows, the paper's first."""
    case.info["flops_per_pass"] = flops_per_pass(case.rep, case.images.shape[1:])
    ms = methods_for(case, methods)
    warm_up(case, ms, args)
    cnnvis_lr = None
    if "cnnvis-best" in ms:
        case.info["cnnvis_best"] = choose_cnnvis_rate(case, train_rgb, args)
        cnnvis_lr = case.info["cnnvis_best"]["chosen"]
    rows = []
    for b in args.batch_sizes:
        runs = run_batch(case, b, ms, args, cnnvis_lr)
        paper = [r for r in runs.get("paper", []) if "error" not in r]
        reference = paper[0]["errors"] if paper else None
        for m in ms:
            row = summarise(case, b, m, runs[m], reference, peak, basis)
            rows.append(row)
            bench.progress({k: v for k, v in row.items() if not isinstance(v, list)})
    add_ratios(rows)
    return rows


def _parse(argv):
    ap = bench.parser(__doc__.splitlines()[0])
    ap.set_defaults(threads=1)
    ap.add_argument("--reps", default="hog,hogb,dsift,mobilenet_v2",
                    help="hog, hogb, dsift, mobilenet_v2 (--blocks depths) or mobilenet_v2:BLOCK, comma-separated")
    ap.add_argument("--blocks", type=int, default=4, help="MobileNet v2 block_names spread (default 4)")
    ap.add_argument("--images", type=int, default=8, help="eval images spread over the set (default 8)")
    ap.add_argument("--batches", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds, median times kept (default 1)")
    ap.add_argument("--tol", type=float, default=1e-3, help="early: relative improvement tolerance (default 1e-3)")
    ap.add_argument("--window", type=int, default=50, help="early: window in iterations (default 50)")
    ap.add_argument("--matmul-size", type=int, default=2048, help="side of the matmul peak measurement")
    ap.add_argument("--iterations", type=int, default=None, help="(tests) rescale every preimage schedule")
    ap.add_argument("--cnnvis-iterations", type=int, default=None, help="(tests) rescale cnnvis's 201 iterations")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="combine runs of the same images over other --reps into --out (JSON + Markdown)")
    args = bench.quick(ap.parse_args(argv), reps="hog,mobilenet_v2:conv1", images=2, batches="1,2",
                       iterations=10, cnnvis_iterations=10, matmul_size=256)
    args.batch_sizes = [int(s) for s in args.batches.split(",") if s.strip()]
    unknown = [m for m in args.methods.split(",") if m.strip() and m.strip() not in METHODS]
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)} (valid: {', '.join(METHODS)})")
    if max(args.batch_sizes) > args.images:
        ap.error(f"--images {args.images} is fewer than the largest batch {max(args.batch_sizes)}")
    return args


def merge(paths: list[str], out: str | None) -> int:
    """Combine the JSONs of runs on the same images over other cases (``--reps`` split over
    processes) into one, with its Markdown, written to ``out``; the matmul peak is the highest of
    the runs', and every row's share of it is recomputed."""
    import json
    runs = [json.loads(Path(p).read_text()) for p in paths]
    if any(r["images"] != runs[0]["images"] for r in runs):
        raise SystemExit("--merge: the runs were made on different images")
    rows = [row for r in runs for row in r["rows"]]
    peak = max(r["matmul"]["peak_gflops"] for r in runs)
    for row in rows:
        if row.get("peak_fraction") is not None:
            row["peak_fraction"] = row["network_gflops_per_s"] / peak
    merged = {**runs[0], "rows": rows, "cases": [c for r in runs for c in r["cases"]],
              "throughput": throughput(rows), "against_today": against_today(rows),
              "total_seconds": sum(r["total_seconds"] for r in runs),
              "matmul": {**max((r["matmul"] for r in runs), key=lambda m: m["peak_gflops"])},
              "merged_from": [str(p) for p in paths]}
    return bench.write_merged(merged, out, markdown(merged))


def main(argv=None) -> int:
    """Parse the flags, run every case, emit the JSON and write the Markdown beside ``--out``."""
    args = _parse(argv)
    if args.merge:
        return merge(args.merge, args.out)
    bench.setup(args)
    basis = "cpu" if torch.get_num_threads() == 1 else "wall"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    cases, names = build_cases(args.reps, args.images, args.blocks)
    train = spread(train_images(), 1)[0]
    cnn = [c for c in cases if c.cnn]
    train_rgb = _load([train], "rgb", cnn[0].images.shape[2:]) if cnn else None
    matmul = {"size": args.matmul_size, "gflops_start": matmul_gflops(args.matmul_size)}
    rows = []
    with bench.Stopwatch() as sw:
        for case in cases:
            rows += bench_case(case, methods, args, matmul["gflops_start"], basis, train_rgb)
            if args.out:
                import json
                Path(f"{args.out}.partial").write_text(json.dumps({"images": names, "rows": rows}, indent=1))
    matmul["gflops_end"] = matmul_gflops(args.matmul_size)
    matmul["peak_gflops"] = max(matmul["gflops_start"], matmul["gflops_end"])
    for r in rows:  # the share of the higher of the two peak readings
        if r.get("network_gflops_per_s") and r.get("peak_fraction") is not None:
            r["peak_fraction"] = r["network_gflops_per_s"] / matmul["peak_gflops"]
    out = bench.emit("bench_time_to_quality", args, {
        "images": names, "train_image": train.name, "matmul": matmul, "timing_basis": basis,
        "cases": [{"rep": c.label, "image_shape": list(c.images.shape[1:]), **c.info} for c in cases],
        "rows": rows, "throughput": throughput(rows), "against_today": against_today(rows),
        "total_seconds": sw.seconds,
        "settings": {"methods": methods, "cnnvis": dict(cnnvis.CNN_VISUALIZATIONS)}})
    if args.out:
        Path(args.out).with_suffix(".md").write_text(markdown(out))
    return 0


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

def _num(v, fmt: str = ".2f") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


def table_lines(rows: list[dict], basis: str) -> list[str]:
    """The main Markdown table, one line per (case, batch, method)."""
    lines = [f"| representation | batch | method | to reference ({basis} s) | × paper | reached | final rel. error % "
             "| iterations (to ref. / run) | ms / iteration | back-offs | images / s | % of matmul peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['rep']} | {r['batch']} | {r['method']}"
        if "error" in r:
            lines.append(f"{head} | failed: {r['error'][:80]} | | | | | | | | |")
            continue
        label = r["method"] + (f" (lr {r['lr']:g})" if r["method"].startswith("cnnvis") and r.get("lr") else "")
        reached = "—" if r["reached"] is None else f"{r['reached']}/{r['n_images']}"
        share = "n/a" if r["peak_fraction"] is None else f"{100 * r['peak_fraction']:.0f}"
        final = _num(100 * r["final_error_mean"], ".1f") + (f" ({r['non_finite']} NaN)" if r["non_finite"] else "")
        lines.append(f"| {r['rep']} | {r['batch']} | {label} | {_num(r['time_to_reference_s'])} "
                     f"| {_num(r['ratio_to_paper'])} | {reached} | {final} "
                     f"| {r['iteration_reached'] or '—'} / {max(r['iterations_used'])} "
                     f"| {_num(r['ms_per_iteration'], '.1f')} "
                     f"| {r['backoffs']} | {_num(r['images_per_second'], '.3f')} | {share} |")
    return lines


def throughput_lines(items: list[dict]) -> list[str]:
    """Batch against batch 1: images per second and their ratio."""
    if not items:
        return []
    lines = ["", "Images per second (whole run) at the largest batch against batch 1:", "",
             "| representation | method | batches | images / s | ratio | ms / iteration / image |",
             "|---|---|---|---|---|---|"]
    for t in items:
        lines.append(f"| {t['rep']} | {t['method']} | {t['batches'][0]} → {t['batches'][1]} "
                     f"| {_num(t['images_per_second'][0], '.3f')} → {_num(t['images_per_second'][1], '.3f')} "
                     f"| {_num(t['ratio'])} | {_num(t['ms_per_iteration_per_image'][0], '.1f')} → "
                     f"{_num(t['ms_per_iteration_per_image'][1], '.1f')} |")
    return lines


def today_lines(items: list[dict]) -> list[str]:
    """Every method against today's default (``paper-nchw``, ``paper-torch``) at the same batch."""
    if not items:
        return []
    lines = ["", "Images per second against today's default (`paper-nchw` on CNN layers, `paper-torch` on "
             "HOG/DSIFT) at the same batch, for the whole "
             "run and to the reference error (“—”: not every image reached it):", "",
             "| representation | batch | method | images / s | × today | images / s to reference | × today |",
             "|---|---|---|---|---|---|---|"]
    for t in items:
        lines.append(f"| {t['rep']} | {t['batch']} | {t['method']} | {_num(t['images_per_second'], '.3f')} "
                     f"| {_num(t['ratio'])} | {_num(t['images_per_second_to_reference'], '.3f')} "
                     f"| {_num(t['ratio_to_reference'])} |")
    return lines


def markdown(out: dict) -> str:
    """The whole Markdown report of a run."""
    s, mach, mm = out["settings"], out["machine"], out["matmul"]
    best = [f"{c['rep']}: {c['cnnvis_best']['chosen']:g}" for c in out["cases"] if "cnnvis_best" in c]
    head = [f"# Time to quality ({out['benchmark']})", "",
            f"{len(out['images'])} eval images; batches {s['batches']}; the reference error of each image is the one "
            "`paper` (`invert(..., method=\"paper\")`, its full schedule) reaches in this run, and “to reference” "
            "the "
            f"{out['timing_basis'].upper()} seconds until every image of the batch is at or below it (tracking "
            f"excluded); “× paper” the ratio to `paper`'s time. {mach['torch_threads']} torch thread(s) on "
            f"{mach['cpu']} (load average at the end {mach['load_average_1min']}); matmul peak "
            f"{mm['peak_gflops']:.1f} GFLOP/s (float32 {mm['size']}², start {mm['gflops_start']:.1f}, end "
            f"{mm['gflops_end']:.1f}); {out['total_seconds'] / 60:.1f} min in all.", ""]
    if best:
        head += [f"`cnnvis-best` rate (published units, chosen on train image {out['train_image']}): "
                 + ", ".join(best) + ".", ""]
    return "\n".join(head + table_lines(out["rows"], out["timing_basis"]) + throughput_lines(out["throughput"])
                     + today_lines(out.get("against_today", []))) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
