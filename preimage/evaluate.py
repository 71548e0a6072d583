"""The paper's Table 1 and per-layer CNN tables over the eval set: presets over the experiment units.

:func:`evaluate_shallow` (Table 1) and :func:`evaluate_cnn_layers` build the same units the
reproduction runs (:mod:`preimage.experiments`: an ``invert`` unit per batch of images, a
``codes`` unit for the normaliser of the set, ``hoggle`` units for HOGgle), compute them in this
process (no Dask), and score them with the one scorer, :mod:`preimage.experiments.scoring`
(through :mod:`preimage.metrics`).

* Table 1: grey images at their native size (optionally limited to ``max_side``), images of one
  size in batches of :data:`BATCH_IMAGES` (in eval order), λ_V = 5 at 227×227×3 carried to the
  image size with λ_α (:func:`preimage.objective.default_lambdas`), β = 2, seed 0, the library's
  schedule (800 iterations).
Beside the code error, every row reports how close the reconstructions are to the originals in
image space: the mean SSIM on luminance and the orientation-histogram intersection of IJCV 2016
(:func:`preimage.image_metrics.image_similarities`), since a code can be matched by an unnatural
image.

* CNN layers: RGB images resized to the network's input size without cropping (an antialiased
  squash, as the authors' code for CaffeNet), all images in batches of ``max_batch``, λ_V by the
  paper's depth rule for the layer (passed to ``invert`` as given), 400 iterations.

Evaluations take long (Table 1 is about an hour on two CPU cores), so with ``cache_dir`` every
finished unit is kept in a :class:`~preimage.experiments.store.ResultStore` there: an
interrupted run given the same folder computes only the units it is missing
(:func:`remove_cache` drops the folder afterwards).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from .data import spread
from .experiments import scoring
from .experiments.base import (Unit, cnn_rep, codes_params, hoggle_params, image_batches, invert_params,
                               model_options_for, options_text, shallow_rep, unit_model_options)
from .experiments.store import DB_NAME, UNITS_DIR, ResultStore
from .experiments.units import load_unit_image, network, representation, run_unit
from .invert import recipe_prior_scale
from .io.cache import weights_fingerprint
from .paper import TABLE1
from .representations.cnn import CNNLayer

__all__ = ["evaluate_shallow", "evaluate_cnn_layers", "format_table1", "format_cnn_table", "cached_units",
           "remove_cache", "BATCH_IMAGES"]

#: Images per batched inversion (per unit).
BATCH_IMAGES = 8
#: The ``experiment`` of evaluate's units (their folder in the cache store).
_TABLE1, _LAYERS = "table1", "cnn_layers"


class _Units:
    """Computes units inline; with a folder, keeps each finished one in a :class:`ResultStore`
    there and serves it from there the next time (the resume cache)."""

    def __init__(self, folder: str | Path | None):
        self.store = ResultStore(folder) if folder else None
        if self.store is not None:
            self.store.verify_files()  # a unit whose files went missing is computed again

    def __enter__(self) -> "_Units":
        return self

    def __exit__(self, *exc) -> None:
        if self.store is not None:
            self.store.close()

    def rows(self, units: Sequence[Unit], bar=None) -> list[dict]:
        """``{"params", "metrics", "timings"}`` of each unit, stored or computed now, in order."""
        out = []
        for u in units:
            row = self.store.get(u.key) if self.store is not None else None
            if row is None or row["status"] != "finished":
                result = run_unit(u.params)
                if self.store is not None:
                    self.store.register([(u.key, u.experiment, u.kind, u.params)])
                    self.store.finish(u.key, metrics=result["metrics"], timings=result["timings"],
                                      tensors=result["tensors"], worker=result["worker"])
                row = {"params": u.params, "metrics": result["metrics"], "timings": result["timings"]}
            out.append(row)
            if bar is not None and u.kind != "codes":
                bar.update(len(u.params["images"]))
        return out


def cached_units(folder: str | Path | None) -> int:
    """How many finished units the evaluation cache ``folder`` holds (0 when there is none)."""
    if not folder or not (Path(folder) / DB_NAME).is_file():
        return 0
    with ResultStore(folder, readonly=True) as store:
        return store.counts()["finished"]


def remove_cache(folder: str | Path | None) -> None:
    """Remove an evaluation cache: the store's database and unit files, then ``folder`` when empty."""
    if not folder or not Path(folder).is_dir():
        return
    folder = Path(folder)
    shutil.rmtree(folder / UNITS_DIR, ignore_errors=True)
    for f in folder.glob(f"{DB_NAME}*"):  # the database and its WAL files
        f.unlink()
    try:
        folder.rmdir()
    except OSError:
        pass


def _image_refs(paths: Sequence[Path] | None, limit: int | None) -> list[str]:
    """The unit image entries of ``paths`` (default the eval set), ``limit`` of them spread over the
    list (:func:`preimage.data.spread`): file names for eval images, absolute paths otherwise."""
    from .data import eval_images
    if paths is None:
        return [p.name for p in spread(eval_images(), limit)]
    return [str(Path(p).resolve()) for p in spread(list(paths), limit)]


def _shallow_units(rep: str, images: list[str], batches: list[list[str]], *, iterations: int | None,
                   lr: float | None, lambda_tv: float, max_side: int | None,
                   options: dict | None = None) -> list[Unit]:
    """The ``codes`` unit (HOG's for HOGgle) then the ``invert`` (or ``hoggle``) unit of each batch."""
    space = "hog" if rep == "hoggle" else rep
    units = [Unit(codes_params(_TABLE1, shallow_rep(space), images, batches, mode="grey", preprocess="native",
                               size=max_side))]
    for batch in batches:
        if rep == "hoggle":
            units.append(Unit(hoggle_params(_TABLE1, batch, preprocess="native", size=max_side, dictionary="default",
                                            save="none")))
        else:
            units.append(Unit(invert_params(_TABLE1, shallow_rep(rep), batch, mode="grey", preprocess="native",
                                            size=max_side, lambdas=[lambda_tv], iterations=iterations, lr=lr,
                                            seed=0, save="none", options=options)))
    return units


def _row(rows: list[dict], what: dict) -> dict:
    """A table row: ``what`` plus seconds per image and both conventions, from the codes row and
    the units' rows (:func:`.experiments.scoring.score_rows`)."""
    scored = scoring.score_rows(rows[1:], rows[0])
    iterations = sorted({int(r["metrics"]["iterations"]) for r in rows[1:] if r["metrics"].get("iterations")})
    return {**what, "iterations": iterations[0] if len(iterations) == 1 else iterations,
            "seconds_per_image": scoring.seconds_per_image(rows[1:]),
            "paper": scored["paper"], "authors": scored["authors"], "image": scoring.image_scores(rows[1:])}


def evaluate_shallow(reps: Sequence[str] = ("hog", "hogb", "dsift"), *, paths: Sequence[Path] | None = None,
                     limit: int | None = None, iterations: int | None = None, lr: float | None = None,
                     lambda_tv: float = 5.0, max_side: int | None = None, progress: bool = True,
                     cache_dir: str | Path | None = None, options: dict | None = None) -> dict:
    """Table 1 over the eval set (or ``paths``), ``limit`` images spread over it.

    One row per representation of ``reps`` (``"hoggle"``: the HOGgle baseline with the default
    dictionary, scored in HOG space): ``{"representation", "n", "images", "seconds_per_image",
    "paper": {"mean", "std", "n", "normaliser", "per_image"}, "authors": {…}}`` (means and
    standard deviations in percent, per-image errors as fractions). With ``cache_dir``, finished
    units are kept there and an interrupted evaluation resumes. Raises ``ValueError`` with fewer
    than two images.
    """
    images = _image_refs(paths, limit)
    if len(images) < 2:
        raise ValueError("Table 1 needs at least two images (the error is normalised by pairwise distances)")
    batches = image_batches(images, BATCH_IMAGES, lambda n: tuple(load_unit_image(n, "grey", "native", max_side).shape))
    names = [Path(n).name for n in images]
    result = {"images": len(images), "iterations": iterations or 800, "lambda_tv": lambda_tv,
              "options": dict(options or {}), "rows": {}}
    with _Units(cache_dir) as units:
        for rep in reps:
            bar = tqdm(total=len(images), desc=rep, disable=not progress, dynamic_ncols=True)
            rows = units.rows(_shallow_units(rep, images, batches, iterations=iterations, lr=lr, lambda_tv=lambda_tv,
                                             max_side=max_side, options=options), bar)
            bar.close()
            result["rows"][rep] = _row(rows, {"representation": rep, "n": len(images), "images": names})
    return result


def _options_text(result: dict) -> str:
    """``", param=fourier, jitter=auto"`` for a result computed with invert options, else ``""``."""
    return "".join(f", {k}={v}" for k, v in (result.get("options") or {}).items())


def _similarity(row: dict) -> str:
    """The row's mean image-space similarities as two table cells (SSIM on luminance, orientation
    histogram intersection; "—" where not measured, e.g. HOGgle)."""
    image = row.get("image") or {}
    cells = [f"{image[k]:.3f}" if image.get(k) == image.get(k) and k in image else "—" for k in ("ssim", "orientation")]
    return " | ".join(cells)


def format_table1(result: dict) -> str:
    """Markdown table: ours (both conventions, seconds per image) beside the paper's row."""
    lines = [f"Table 1 — {result['images']} images, {result['iterations']} iterations, λ_V = {result['lambda_tv']}"
             + _options_text(result),
             "",
             "| representation | error % (paper: dist / mean pairwise dist) | error % (authors' code: squared) "
             "| SSIM | orient. ∩ | s / image | paper's error % |",
             "|---|---|---|---|---|---|---|"]
    for rep, row in result["rows"].items():
        p = row["paper"]
        a = row["authors"]
        ref = TABLE1.get(rep)
        ref_s = f"{ref[0]:.2f} ± {ref[1]:.1f}" if ref else "—"
        lines.append(f"| {rep} | {p['mean']:.2f} ± {p['std']:.1f} | {a['mean']:.2f} ± {a['std']:.1f} "
                     f"| {_similarity(row)} | {row['seconds_per_image']:.2f} | {ref_s} |")
    return "\n".join(lines)


def _layer_units(model_name: str, layer: str, lam: float, images: list[str], batches: list[list[str]],
                 size: list[int], *, iterations: int | None, lr: float | None, seed: int, weights: str,
                 options: dict | None = None, model_options: dict | None = None) -> list[Unit]:
    """The ``codes`` unit then the ``invert`` unit of each batch of one layer (squashed RGB images,
    λ_V passed to invert as given); ``weights`` (the network's fingerprint) and the model's loading
    options (when any) are part of every key."""
    rep = {**cnn_rep(model_name, layer, model_options), "weights": weights}
    units = [Unit(codes_params(_LAYERS, rep, images, batches, mode="rgb", preprocess="squash", size=size))]
    units += [Unit(invert_params(_LAYERS, rep, batch, mode="rgb", preprocess="squash", size=size, lambdas=[lam],
                                 lambda_scaling="none", iterations=iterations, lr=lr, seed=seed, save="none",
                                 options=options))
              for batch in batches]
    return units


def _cnn_recipe(options: dict | None) -> tuple[dict, float]:
    """The invert options of a CNN evaluation and the factor on the depth's λ_V: the paper's
    method's as they are, with 1; otherwise the options
    with the parameterisation made explicit (default: CNN layers' declared ``param``) and its
    ``prior_scale``, as :func:`preimage.invert.invert` applies to its default λ."""
    options = dict(options or {})
    if options.get("method") == "paper":
        return options, 1.0
    options.setdefault("param", CNNLayer.param)
    return options, recipe_prior_scale(CNNLayer.param, options)


def evaluate_cnn_layers(model_name: str, *, layers: Sequence[str] | None = None,
                        paths: Sequence[Path] | None = None, limit: int | None = None,
                        iterations: int | None = None, lr: float | None = None,
                        lambda_tv: float | None = None, max_batch: int = BATCH_IMAGES, progress: bool = True,
                        seed: int = 0, cache_dir: str | Path | None = None, options: dict | None = None,
                        model_options: dict | None = None) -> dict:
    """Table-3 style evaluation of a CNN: invert each layer's code of every eval image.

    Images are RGB, resized to the network's input size without cropping (as the authors' code
    did for CaffeNet). ``layers`` defaults to the model's ``block_names`` (else every listed
    layer); ``lambda_tv`` defaults to the paper's weight for the layer's relative depth, times the
    parameterisation's ``prior_scale``. ``options`` default to preimage's default for CNN layers
    (a Fourier image, :class:`~preimage.representations.cnn.CNNLayer`'s ``param``);
    ``{"method": "paper"}`` is the paper's method. Errors are
    normalised per layer over the set's codes, in both conventions. ``limit`` takes that many
    images spread evenly over the set. With ``cache_dir``, finished units are kept there and an
    interrupted evaluation resumes; ``options`` as for :func:`evaluate_shallow`. ``model_options``:
    how the network loads, :func:`preimage.models.get_model`'s ``preprocess``, ``weights``,
    ``input_size``, ``model_dir`` (the CLI's model options), part of every unit's key. Returns
    ``{"model", "images", "iterations" (as given; None: each layer's default), "options",
    "model_settings" (the loaded network's input size, mean pixel and preprocessing,
    :func:`preimage.models.model_settings`), ["model_options",] "rows": {layer: {"layer",
    "lambda_tv", "relative_depth", "iterations" (run), "seconds_per_image", "paper", "authors"}}}``.
    """
    from .models import model_settings
    from .models.fx import model_input_size
    from .representations.cnn import list_layers

    model_opts = model_options_for(model_name, unit_model_options(**(model_options or {})))
    model = network(model_name, options=model_opts)
    images = _image_refs(paths, limit)
    if len(images) < 2:
        raise ValueError("the normalised error needs at least two images")
    names = list(layers) if layers else list(getattr(model, "block_names", None) or
                                             [info.name for info in list_layers(model)])
    size = list(model_input_size(model))
    batches = image_batches(images, max_batch)
    weights = weights_fingerprint(model)
    options, scale = _cnn_recipe(options)
    rows = {}
    bar = tqdm(total=len(names) * len(images), desc=model_name, disable=not progress, dynamic_ncols=True)
    with _Units(cache_dir) as units:
        for name in names:
            rep = representation(cnn_rep(model_name, name, model_opts), "squash", size)
            lam = rep.lambda_tv * scale if lambda_tv is None else lambda_tv
            unit_rows = units.rows(_layer_units(model_name, name, lam, images, batches, size, iterations=iterations,
                                                lr=lr, seed=seed, weights=weights, options=options,
                                                model_options=model_opts), bar)
            rows[name] = _row(unit_rows, {"layer": name, "lambda_tv": lam, "relative_depth": rep.relative_depth})
    bar.close()
    return {"model": model_name, "images": len(images), "iterations": iterations,
            "options": dict(options or {}), "model_settings": model_settings(model),
            **({"model_options": model_opts} if model_opts else {}), "rows": rows}


def format_cnn_table(result: dict) -> str:
    """Markdown table of :func:`evaluate_cnn_layers` results, one row per layer."""
    its = result["iterations"]
    lines = [f"{result['model']} — {result['images']} images, "
             + (f"{its} iterations" if its else "each layer's default iterations (column)") + ", "
             "λ_V by relative depth (the paper's 0.5 / 5 / 50, times the parameterisation's prior scale)"
             + _options_text(result)
             + (f"; model loaded with {options_text(result['model_options'])}" if result.get("model_options") else ""),
             "",
             "| layer | depth | λ_V | iterations | error % (paper) | error % (authors', squared) | SSIM | orient. ∩ "
             "| s / image |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        p, a = row["paper"], row["authors"]
        lines.append(f"| {name} | {row['relative_depth']:.2f} | {row['lambda_tv']:g} | {row.get('iterations', its)} "
                     f"| {p['mean']:.1f} ± {p['std']:.1f} "
                     f"| {a['mean']:.1f} ± {a['std']:.1f} | {_similarity(row)} | {row['seconds_per_image']:.1f} |")
    return "\n".join(lines)
