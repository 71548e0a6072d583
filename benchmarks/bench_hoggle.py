"""HOGgle baseline: training time, seconds per image and the paper's Table-1 error over the eval set.

Trains the default dictionary on the 200 *train* images (or loads it from the cache when a file
of the same recipe stamp is there, see ``preimage.baselines.hoggle.default_dictionary_path``;
``--retrain`` forces training and times it; ``--dictionary FILE`` evaluates another one), then
HOGgle-inverts every eval image (grey, native size) and prints JSON: the normalised HOG error in
the paper's convention (‖HOG(x*) − HOG(xᵢ)‖ / N_HOG, N_HOG the mean pairwise distance of the eval
codes, zero-padded to the largest) and the authors' squared one, mean ± std in percent, seconds per
image, and a 227×227 timing. The paper reports 66.2 ± 13.7 % and 2–3 s per image.

    nice python benchmarks/bench_hoggle.py [--limit N] [--retrain] [--out results.json] [--quick]

``--quick`` trains a tiny dictionary in memory (2 train images, 32 atoms; the cache is not
touched) and scores 2 eval images: a smoke run, its error means nothing.
"""

from __future__ import annotations

import sys

import _harness as bench  # first: it makes the checkout importable

from preimage.baselines import hoggle as H
from preimage.data import eval_images, train_images
from preimage.io.images import load_image, resize

PAPER = {"error_percent": [66.20, 13.7], "seconds": "2-3"}  # Table 1's HOGgle row


def get_dictionary(args, result: dict):
    """The dictionary to evaluate (``--dictionary``, the cached default, trained when missing or
    with ``--retrain``, or a tiny one with ``--quick``); where it came from goes into ``result``."""
    if args.quick:
        with bench.Stopwatch() as sw:
            dictionary = H.train_hoggle(train_images()[:2], n_atoms=32, windows_per_image=50, n_iter=5,
                                        progress=False)
        result.update(dictionary_path=None, training_seconds_measured=sw.seconds)
    elif args.dictionary:
        dictionary = H.HoggleDictionary.load(args.dictionary)
        result["dictionary_path"] = args.dictionary
    else:
        path = H.default_dictionary_path()
        with bench.Stopwatch() as sw:
            if args.retrain:
                H.train_command(path, progress=not args.no_progress)
                dictionary = H.HoggleDictionary.load(path)
            else:
                dictionary = H.load_or_train_default(progress=not args.no_progress)
        result["load_or_training_seconds_measured"] = sw.seconds
        result["dictionary_path"] = str(path)
    result["training_seconds_recorded"] = dictionary.metadata.get("training_seconds")
    result["recipe_stamp"] = dictionary.metadata.get("recipe_stamp")
    result["dictionary"] = dictionary.metadata
    return dictionary


def time_227(dictionary, args) -> dict:
    """Seconds of one HOGgle inversion at 227×227 (the paper's CNN input size): the first eval
    image, grey, resized."""
    img = resize(load_image(eval_images()[0], mode="grey"), (227, 227))
    code = H.compute_hog(img)
    dictionary.lasso_setup()
    t = bench.time_call(lambda: H.invert_hoggle(code, dictionary, (227, 227), algorithm=args.algorithm,
                                                pad=args.pad), args.repeats, warmup=0)
    return {"min": t.best, "median": t.median, "all": t.all}


def evaluate(dictionary, args) -> tuple[dict, dict]:
    """Table 1's HOGgle error over the (first ``--limit``) eval images: the JSON summary and the
    full result of :func:`evaluate_hoggle`."""
    paths = eval_images()[:args.limit] if args.limit else eval_images()
    with bench.Stopwatch() as sw:
        ev = H.evaluate_hoggle(paths, dictionary, progress=not args.no_progress, algorithm=args.algorithm,
                               pad=args.pad)
    summary = {k: v for k, v in ev.items() if k not in ("paper", "authors", "images", "settings")}
    for conv in ("paper", "authors"):
        summary[conv] = {k: v for k, v in ev[conv].items() if k != "per_image"}
    summary["per_image_paper"] = dict(zip(ev["images"], ev["paper"]["per_image"]))
    summary["wall_seconds"] = sw.seconds
    return summary, ev


def main(argv=None) -> int:
    ap = bench.parser(__doc__.split("\n\n")[0], repeats=3)
    ap.add_argument("--limit", type=int, help="only the first N eval images")
    ap.add_argument("--retrain", action="store_true", help="train even when a cached dictionary exists")
    ap.add_argument("--dictionary", help="use this dictionary file instead of the default cache")
    ap.add_argument("--algorithm", default="admm", choices=["admm", "lasso_cd", "lasso_lars"])
    ap.add_argument("--pad", type=int, default=H.DEFAULT_PAD)
    ap.add_argument("--no-progress", action="store_true")
    args = bench.quick(ap.parse_args(argv), limit=2, repeats=1, no_progress=True)
    bench.setup(args)
    result: dict = {"paper": PAPER}
    dictionary = get_dictionary(args, result)
    result["n_train_images_available"] = len(train_images())
    result["seconds_227"] = time_227(dictionary, args)
    result["eval"], ev = evaluate(dictionary, args)
    result["settings"] = {"sigma": H.SIGMA, "torch_threads": H.DEFAULT_THREADS}
    bench.emit("hoggle", args, result, indent=2)
    p, a = ev["paper"], ev["authors"]
    print(f"HOGgle: {p['mean']:.1f} ± {p['std']:.1f} % (paper's convention), {a['mean']:.1f} ± {a['std']:.1f} % "
          f"(authors' squared), {ev['seconds_per_image']:.2f} s/image over {ev['n']} eval images; "
          f"paper 66.2 ± 13.7 %", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
