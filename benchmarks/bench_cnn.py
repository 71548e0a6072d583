"""Speed of one inversion step through a CNN layer: forward + backward to the input.

For each available model (CaffeNet with random weights; the MobileNets when the shared data is
present), a mid-network layer (relative depth ≈ 0.5) and the last layer, at batch 1 and 8:

* ``ms_per_iter``: median wall time of ``rep(x)`` + ``loss.backward()`` with ``x.requires_grad``
  (weights frozen, so only the gradient to the input is computed, as in the inversion);
* ``gflop_per_iter``: floating-point operations of that pass counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (convolutions/matmuls, forward and backward;
  element-wise ops are not counted);
* ``fraction_of_peak``: achieved FLOP/s over this machine's measured float32 matmul peak (the best
  of a few ``torch.mm`` of 2048×2048 matrices, 4096 on CUDA).

Then, per model, ``inversions``: the wall time of one whole default inversion (400 iterations,
the layer's default λ_V and rate) of a random image at batch 1 through the mid-network layer
(the target: at most 30 s for MobileNet v2 on a 2-core CPU). ``--no-inversion`` skips it.

Usage: ``python benchmarks/bench_cnn.py [--device cuda] [--reps 3] [--models caffenet,mobilenet_v2]``.
Prints one JSON object (progress lines on stderr). About 5 minutes on two busy CPU cores;
``--models caffenet`` alone takes about one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from preimage.data import shared_dir  # noqa: E402
from preimage.invert import invert  # noqa: E402
from preimage.models import MOBILENET_MODEL_NAMES, get_model  # noqa: E402
from preimage.representations.cnn import CNNLayer, list_layers  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_gflops(device: torch.device, reps: int = 5) -> float:
    """Best observed float32 ``torch.mm`` throughput (GFLOP/s) on ``device``."""
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _step(rep: CNNLayer, x: torch.Tensor) -> None:
    x.grad = None
    y = rep(x)
    y.pow(2).sum().backward()


def flops_per_iter(rep: CNNLayer, x: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        _step(rep, x)
    return int(counter.get_total_flops())


def time_per_iter(rep: CNNLayer, x: torch.Tensor, reps: int) -> float:
    _step(rep, x)  # warm-up
    _sync(x.device)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        _step(rep, x)
        _sync(x.device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_inversion(name: str, layer: str, rep: CNNLayer, device: torch.device) -> dict:
    """Wall time of one default inversion (the CNN schedule, 400 iterations) at batch 1."""
    x = torch.rand(1, 3, *rep.input_size, device=device) * 255
    _sync(device)
    t = time.perf_counter()
    res = invert(rep, x, progress=False)
    _sync(device)
    sec = time.perf_counter() - t
    return {"model": name, "layer": layer, "batch": 1, "iterations": res.settings["iterations"],
            "lambda_tv": res.settings["lambda_tv"][0], "seconds": round(sec, 2),
            "relative_code_error": round(float(res.relative_errors.min()), 4)}


def pick_layers(model) -> list[tuple[str, float]]:
    """The layer at relative depth 0.5 and the last layer, as ``(name, depth)``."""
    infos = list_layers(model)
    mid = infos[max(0, len(infos) // 2 - 1)]
    return [(mid.name, mid.depth), (infos[-1].name, infos[-1].depth)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--models", default=None, help="comma-separated (default: caffenet + MobileNets if present)")
    ap.add_argument("--no-inversion", action="store_true", help="skip the whole 400-iteration inversions")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    names = args.models.split(",") if args.models else (
        ["caffenet"] + (list(MOBILENET_MODEL_NAMES) if shared_dir() is not None else []))

    peak = matmul_peak_gflops(device)
    out = {"benchmark": "cnn forward+backward to the input",
           "machine": {"torch": torch.__version__, "python": platform.python_version(),
                       "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                  else platform.processor() or platform.machine()),
                       "threads": torch.get_num_threads(),
                       # other processes compete for the cores: read timings with this in mind
                       "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
                       "matmul_peak_gflops": round(peak, 1)},
           "results": [], "inversions": [], "skipped": {}}
    for name in names:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = get_model(name)
        except Exception as e:  # missing shared data or importer
            out["skipped"][name] = f"{type(e).__name__}: {e}"
            continue
        model = model.to(device)
        for k, (layer, depth) in enumerate(pick_layers(model)):
            rep = CNNLayer(model, layer).to(device)
            for b in batches:
                x = (torch.rand(b, 3, *rep.input_size, device=device) * 255).requires_grad_()
                flops = flops_per_iter(rep, x)
                sec = time_per_iter(rep, x, args.reps)
                out["results"].append({
                    "model": name, "layer": layer, "relative_depth": round(depth, 3), "batch": b,
                    "input_size": list(rep.input_size), "code_shape": list(rep.output_shape),
                    "ms_per_iter": round(1e3 * sec, 2), "ms_per_image": round(1e3 * sec / b, 2),
                    "gflop_per_iter": round(flops / 1e9, 3),
                    "achieved_gflops": round(flops / sec / 1e9, 1),
                    "fraction_of_peak": round(flops / sec / 1e9 / peak, 3)})
                print(json.dumps(out["results"][-1]), file=sys.stderr, flush=True)
            if not args.no_inversion and k == 0:  # the mid-network layer
                out["inversions"].append(time_inversion(name, layer, rep, device))
                print(json.dumps(out["inversions"][-1]), file=sys.stderr, flush=True)
        del model
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
