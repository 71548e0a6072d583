"""Validate the float PyTorch MobileNets against the TFLite reference interpreter.

For every named MobileNet and every image of ``data/imagenet-sample`` (eval 100 + train 200):
the image is resized (shorter side round(size·256/224), antialiased bilinear), centre-cropped and
rounded to integer pixels, then fed to the interpreter (``ai_edge_litert``, uint8) and to the
imported network, both float and with emulated quantisation. Prints JSON per model and split:
top-1 agreement with the interpreter (strict, and "tie-aware": counted as agreeing when the
prediction is among the interpreter's tied uint8 maxima), top-1 accuracies, the mean absolute
probability difference, and the batch-1 forward time (best of ``--repeats``, CPU, ``--threads``).

    python benchmarks/validate_tflite.py [--models mobilenet_v2 ...] [--split eval|train|all] [--limit N]
                                         [--out FILE] [--quick]

``--quick``: the first model, the first 2 eval images, 2 timed forwards.
"""

from __future__ import annotations

import _harness as bench  # first: it makes the checkout importable
import numpy as np
import torch

from preimage import data
from preimage.models.classify import load_for_classification, synset_class_index
from preimage.models.mobilenet import MOBILENET_NAMES, load_mobilenet, mobilenet_files
from preimage.models.tflite import ReferenceInterpreter


@torch.no_grad()
def run_net(net, x: torch.Tensor, batch: int = 25) -> np.ndarray:
    return torch.cat([net(x[i:i + batch]) for i in range(0, len(x), batch)]).double().numpy()


def summarise(q: np.ndarray, ref_prob: np.ndarray, truth: np.ndarray, p: np.ndarray) -> dict:
    ref_top = q.argmax(1)
    ref_max = q.max(1)
    top = p.argmax(1)
    return {
        "agreement_pct": round(100.0 * float(np.mean(top == ref_top)), 2),
        "agreement_tie_aware_pct": round(100.0 * float(np.mean(q[np.arange(len(q)), top] == ref_max)), 2),
        "accuracy_pct": round(100.0 * float(np.mean(top == truth)), 2),
        "mean_abs_prob_diff": float(np.mean(np.abs(p - ref_prob))),
        "disagreeing_images": [int(i) for i in np.nonzero(top != ref_top)[0]],
    }


def evaluate(name: str, paths, cache: dict) -> dict:
    """Per-image raw results of one model: interpreter output, float and emulated probabilities."""
    net = load_mobilenet(name)
    emu = load_mobilenet(name, emulate_quantization=True)
    key = tuple(net.input_size)
    if key not in cache:
        cache[key] = load_for_classification(paths, key)
    x = cache[key]
    ref = ReferenceInterpreter(mobilenet_files(name))
    times = {}
    with bench.Stopwatch() as sw:
        q = ref(x).astype(np.int64)
    times["interpreter_s"] = sw.seconds
    s, zp = ref.output_quantization
    with bench.Stopwatch() as sw:
        p_float = run_net(net, x)
    times["float_s"] = sw.seconds
    with bench.Stopwatch() as sw:
        p_emu = run_net(emu, x)
    times["emulated_s"] = sw.seconds
    return {"q": q, "ref_prob": s * (q - zp), "float": p_float, "emulated": p_emu, "times": times}


def forward_time_ms(name: str, repeats: int = 10) -> float:
    """Best batch-1 forward time (ms) of the float network on a random 0–255 image."""
    net = load_mobilenet(name)
    x = torch.rand(1, 3, *net.input_size) * 255
    with torch.no_grad():
        return 1000 * bench.time_call(lambda: net(x), repeats).best


def split_summary(r: dict, idx: np.ndarray, truth: np.ndarray) -> dict:
    """The interpreter's accuracy and ties, and the float and emulated networks' agreement with
    it, over the images ``idx``."""
    q, rp, truth = r["q"][idx], r["ref_prob"][idx], truth[idx]
    return {
        "interpreter_accuracy_pct": round(100.0 * float(np.mean(q.argmax(1) == truth)), 2),
        "interpreter_top1_ties_pct": round(100.0 * float(np.mean((q == q.max(1, keepdims=True)).sum(1) > 1)), 2),
        "float": summarise(q, rp, truth, r["float"][idx]),
        "emulated": summarise(q, rp, truth, r["emulated"][idx]),
    }


def main(argv=None) -> int:
    ap = bench.parser("Validate imported MobileNets against the TFLite interpreter", repeats=10)
    ap.add_argument("--models", nargs="*", default=list(MOBILENET_NAMES))
    ap.add_argument("--split", choices=("eval", "train", "all"), default="all")
    ap.add_argument("--limit", type=int, default=None, help="only the first N images of the split")
    ap.set_defaults(threads=1)  # 1 is fastest on a shared machine
    args = ap.parse_args(argv)
    args = bench.quick(args, models=args.models[:1], split="eval", limit=2, repeats=2)
    bench.setup(args)
    if data.shared_dir() is None:
        bench.emit("validate tflite", args, {"skipped": data.missing_reason()})
        return 0
    ev, tr = data.eval_images(), data.train_images()
    paths = {"eval": ev, "train": tr, "all": ev + tr}[args.split][:args.limit]
    truth_all = np.array([synset_class_index(p) for p in paths])
    subsets = {args.split: np.arange(len(paths))}
    if args.split == "all":
        subsets["eval"] = np.arange(min(len(ev), len(paths)))
    cache: dict = {}
    out = {"images": {k: len(v) for k, v in subsets.items()}, "models": {}}
    for name in args.models:
        r = evaluate(name, paths, cache)
        res = {"forward_batch1_ms": round(forward_time_ms(name, args.repeats), 2),
               **{k: round(v, 2) for k, v in r["times"].items()}}
        res.update({split: split_summary(r, idx, truth_all) for split, idx in subsets.items()})
        out["models"][name] = res
        bench.progress({"model": name, "done": True})
    bench.emit("validate tflite", args, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
