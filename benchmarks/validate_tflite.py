"""Validate the float PyTorch MobileNets against the TFLite reference interpreter.

For every named MobileNet and every image of ``data/imagenet-sample`` (eval 100 + train 200):
the image is resized (shorter side round(size·256/224), antialiased bilinear), centre-cropped and
rounded to integer pixels, then fed to the interpreter (``ai_edge_litert``, uint8) and to the
imported network, both float and with emulated quantisation. Prints JSON per model and split:
top-1 agreement with the interpreter (strict, and "tie-aware": counted as agreeing when the
prediction is among the interpreter's tied uint8 maxima), top-1 accuracies, the mean absolute
probability difference, and the batch-1 forward time (best of 10, CPU, ``--threads``).

    python benchmarks/validate_tflite.py [--models mobilenet_v2 ...] [--split eval|train|all]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from preimage import data
from preimage.classify import load_for_classification, synset_class_index
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
    t = time.perf_counter()
    q = ref(x).astype(np.int64)
    times["interpreter_s"] = time.perf_counter() - t
    s, zp = ref.output_quantization
    t = time.perf_counter()
    p_float = run_net(net, x)
    times["float_s"] = time.perf_counter() - t
    t = time.perf_counter()
    p_emu = run_net(emu, x)
    times["emulated_s"] = time.perf_counter() - t
    return {"q": q, "ref_prob": s * (q - zp), "float": p_float, "emulated": p_emu, "times": times}


def forward_time_ms(name: str, repeats: int = 10) -> float:
    net = load_mobilenet(name)
    x = torch.rand(1, 3, *net.input_size) * 255
    best = float("inf")
    with torch.no_grad():
        net(x)
        for _ in range(repeats):
            t = time.perf_counter()
            net(x)
            best = min(best, time.perf_counter() - t)
    return 1000 * best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Validate imported MobileNets against the TFLite interpreter")
    ap.add_argument("--models", nargs="*", default=list(MOBILENET_NAMES))
    ap.add_argument("--split", choices=("eval", "train", "all"), default="all")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared machine)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if data.shared_dir() is None:
        print(json.dumps({"skipped": data.missing_reason()}))
        return 0
    ev, tr = data.eval_images(), data.train_images()
    paths = {"eval": ev, "train": tr, "all": ev + tr}[args.split]
    truth_all = np.array([synset_class_index(p) for p in paths])
    subsets = {args.split: np.arange(len(paths))}
    if args.split == "all":
        subsets["eval"] = np.arange(len(ev))
    cache: dict = {}
    out = {"torch_threads": torch.get_num_threads(), "images": {k: len(v) for k, v in subsets.items()},
           "models": {}}
    for name in args.models:
        r = evaluate(name, paths, cache)
        res = {"forward_batch1_ms": round(forward_time_ms(name), 2),
               **{k: round(v, 2) for k, v in r["times"].items()}}
        for split, idx in subsets.items():
            q, rp, truth = r["q"][idx], r["ref_prob"][idx], truth_all[idx]
            res[split] = {
                "interpreter_accuracy_pct": round(100.0 * float(np.mean(q.argmax(1) == truth)), 2),
                "interpreter_top1_ties_pct": round(100.0 * float(np.mean((q == q.max(1, keepdims=True)).sum(1) > 1)), 2),
                "float": summarise(q, rp, truth, r["float"][idx]),
                "emulated": summarise(q, rp, truth, r["emulated"][idx]),
            }
        out["models"][name] = res
        print(f"{name}: done", file=sys.stderr)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
