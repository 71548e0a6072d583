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

Usage: ``python benchmarks/bench_cnn.py [--device cuda] [--repeats 3] [--models caffenet,mobilenet_v2]
[--out FILE] [--quick]``. Prints one JSON object (progress lines on stderr). About 5 minutes on two
busy CPU cores; ``--models caffenet`` alone takes about one; ``--quick`` (CaffeNet, batch 1, one
repeat, a 2-iteration inversion) a few seconds.
"""

from __future__ import annotations

import warnings

import _harness as bench  # first: it makes the checkout importable
import torch

from preimage.data import shared_dir  # noqa: E402
from preimage.invert import invert  # noqa: E402
from preimage.models import MOBILENET_MODEL_NAMES, get_model  # noqa: E402
from preimage.representations.cnn import CNNLayer, list_layers  # noqa: E402


def matmul_peak_gflops(device: torch.device, reps: int = 5) -> float:
    """Best observed float32 ``torch.mm`` throughput (GFLOP/s) on ``device``."""
    n = 4096 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return 2 * n ** 3 / bench.time_call(lambda: torch.mm(a, b), reps, device=device).best / 1e9


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
    """Median seconds of one forward + backward to the input ``x`` (B, 3, H, W)."""
    return bench.time_call(lambda: _step(rep, x), reps, device=x.device).median


def time_inversion(name: str, layer: str, rep: CNNLayer, device: torch.device,
                   iterations: int | None = None) -> dict:
    """Wall time of one default inversion (the CNN schedule, 400 iterations unless ``iterations``)
    at batch 1."""
    x = torch.rand(1, 3, *rep.input_size, device=device) * 255
    kw = {} if iterations is None else {"iterations": iterations}
    with bench.Stopwatch(device) as sw:
        res = invert(rep, x, progress=False, **kw)
    return {"model": name, "layer": layer, "batch": 1, "iterations": res.settings["iterations"],
            "lambda_tv": res.settings["lambda_tv"][0], "seconds": round(sw.seconds, 2),
            "relative_code_error": round(float(res.relative_errors.min()), 4)}


def pick_layers(model) -> list[tuple[str, float]]:
    """The layer at relative depth 0.5 and the last layer, as ``(name, depth)``."""
    infos = list_layers(model)
    mid = infos[max(0, len(infos) // 2 - 1)]
    return [(mid.name, mid.depth), (infos[-1].name, infos[-1].depth)]


def measure(name: str, layer: str, depth: float, rep: CNNLayer, batch: int, reps: int, peak: float,
            device: torch.device) -> dict:
    """Speed of one forward + backward through ``rep`` at ``batch`` on random 0–255 input."""
    x = (torch.rand(batch, 3, *rep.input_size, device=device) * 255).requires_grad_()
    flops = flops_per_iter(rep, x)
    sec = time_per_iter(rep, x, reps)
    return {"model": name, "layer": layer, "relative_depth": round(depth, 3), "batch": batch,
            "input_size": list(rep.input_size), "code_shape": list(rep.output_shape),
            "ms_per_iter": round(1e3 * sec, 2), "ms_per_image": round(1e3 * sec / batch, 2),
            "gflop_per_iter": round(flops / 1e9, 3), "achieved_gflops": round(flops / sec / 1e9, 1),
            "fraction_of_peak": round(flops / sec / 1e9 / peak, 3)}


def bench_model(name: str, args, device: torch.device, peak: float, out: dict) -> None:
    """Every measurement of one model, appended to ``out``; a model that cannot be loaded (missing
    shared data or importer) is recorded under ``skipped``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_model(name)
    except Exception as e:
        out["skipped"][name] = f"{type(e).__name__}: {e}"
        return
    model = model.to(device)
    for k, (layer, depth) in enumerate(pick_layers(model)):
        rep = CNNLayer(model, layer).to(device)
        for b in (int(b) for b in args.batches.split(",")):
            out["results"].append(measure(name, layer, depth, rep, b, args.repeats, peak, device))
            bench.progress(out["results"][-1])
        if not args.no_inversion and k == 0:  # the mid-network layer
            out["inversions"].append(time_inversion(name, layer, rep, device, args.inversion_iters))
            bench.progress(out["inversions"][-1])


def main(argv=None) -> int:
    ap = bench.parser(__doc__.splitlines()[0], device=True, repeats=3, repeats_flags=("--repeats", "--reps"))
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--models", default=None, help="comma-separated (default: caffenet + MobileNets if present)")
    ap.add_argument("--no-inversion", action="store_true", help="skip the whole 400-iteration inversions")
    ap.add_argument("--inversion-iters", type=int, default=None, help="iterations of the timed inversion "
                    "(default: the layer's schedule, 400)")
    args = ap.parse_args(argv)
    args = bench.quick(args, batches="1", repeats=1, models=args.models or "caffenet", inversion_iters=2)
    device = bench.setup(args)
    names = args.models.split(",") if args.models else (
        ["caffenet"] + (list(MOBILENET_MODEL_NAMES) if shared_dir() is not None else []))
    peak = matmul_peak_gflops(device, 1 if args.quick else 5)
    out = {"matmul_peak_gflops": round(peak, 1), "results": [], "inversions": [], "skipped": {}}
    for name in names:
        bench_model(name, args, device, peak, out)
    bench.emit("cnn forward+backward to the input", args, out, device=device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
