"""HOGgle baseline: training time, seconds per image and the paper's Table-1 error over the eval set.

Trains the default dictionary on the 200 *train* images (or loads it from the cache, see
``preimage.hoggle.default_dictionary_path``; ``--retrain`` forces training and times it), then
HOGgle-inverts every eval image (grey, native size) and prints JSON: the normalised HOG error in
the paper's convention (‖HOG(x*) − HOG(xᵢ)‖ / N_HOG, N_HOG the mean pairwise distance of the eval
codes, zero-padded to the largest) and the authors' squared one, mean ± std in percent, seconds per
image, and a 227×227 timing. The paper reports 66.2 ± 13.7 % and 2–3 s per image.

    nice python benchmarks/bench_hoggle.py [--limit N] [--retrain] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from preimage import hoggle as H
from preimage.data import eval_images, train_images
from preimage.imageio import load_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, help="only the first N eval images")
    ap.add_argument("--retrain", action="store_true", help="train even when a cached dictionary exists")
    ap.add_argument("--dictionary", help="use this dictionary file instead of the default cache")
    ap.add_argument("--algorithm", default="admm", choices=["admm", "lasso_cd", "lasso_lars"])
    ap.add_argument("--pad", type=int, default=H.DEFAULT_PAD)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    progress = not args.no_progress

    result: dict = {"benchmark": "hoggle", "paper": {"error_percent": [66.20, 13.7], "seconds": "2-3"}}
    if args.dictionary:
        dictionary = H.HoggleDictionary.load(args.dictionary)
        result["dictionary_path"] = args.dictionary
    else:
        path = H.default_dictionary_path()
        if args.retrain or not path.is_file():
            t0 = time.perf_counter()
            H.train_command(path, progress=progress)
            result["training_seconds_measured"] = time.perf_counter() - t0
        dictionary = H.HoggleDictionary.load(path)
        result["dictionary_path"] = str(path)
    result["training_seconds_recorded"] = dictionary.metadata.get("training_seconds")
    result["dictionary"] = dictionary.metadata
    result["n_train_images_available"] = len(train_images())

    # 227×227 timing (the paper's CNN input size), first eval image resized
    img = load_image(eval_images()[0], mode="grey")
    img = torch.nn.functional.interpolate(img[None], size=(227, 227), mode="bilinear", antialias=True,
                                          align_corners=False)[0]
    code = H.compute_hog(img)
    dictionary.lasso_setup()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        H.invert_hoggle(code, dictionary, (227, 227), algorithm=args.algorithm, pad=args.pad)
        times.append(time.perf_counter() - t0)
    result["seconds_227"] = {"min": min(times), "all": times}

    paths = eval_images()
    if args.limit:
        paths = paths[:args.limit]
    t0 = time.perf_counter()
    ev = H.evaluate_hoggle(paths, dictionary, progress=progress, algorithm=args.algorithm, pad=args.pad)
    result["eval_wall_seconds"] = time.perf_counter() - t0
    ev.pop("settings", None)
    result["eval"] = {k: v for k, v in ev.items() if k not in ("paper", "authors", "images")}
    for conv in ("paper", "authors"):
        result["eval"][conv] = {k: v for k, v in ev[conv].items() if k != "per_image"}
    result["eval"]["per_image_paper"] = dict(zip(ev["images"], ev["paper"]["per_image"]))
    result["settings"] = {"algorithm": args.algorithm, "pad": args.pad, "sigma": H.SIGMA,
                          "torch_threads": H.DEFAULT_THREADS}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    p, a = ev["paper"], ev["authors"]
    print(f"HOGgle: {p['mean']:.1f} ± {p['std']:.1f} % (paper's convention), {a['mean']:.1f} ± {a['std']:.1f} % "
          f"(authors' squared), {ev['seconds_per_image']:.2f} s/image over {ev['n']} eval images; "
          f"paper 66.2 ± 13.7 %", file=sys.stderr)


if __name__ == "__main__":
    main()
