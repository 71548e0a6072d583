"""The paper's experiments as *units*: pure functions of their parameters.

:func:`build_plan` turns a :class:`Config` into a list of :class:`Unit` s, one per
(images batch, representation/layer, λ set, restart batch); :func:`run_unit` computes one of
them (one batched :func:`preimage.invert.invert` call, or a cheap forward-only computation) and
returns its metrics, PNGs and tensors; it imports nothing from the runner or the store, so it can
run on any Dask worker that has the package and the shared data (``PREIMAGE_DATA``).

Experiments (``--only`` names):

========  ==================================================================================
table1    HOG, HOGb, DSIFT inverted (λ_V = 5, β = 2) + HOGgle, eval images in grey; error
          in both conventions (:mod:`preimage.metrics`) and seconds per image
table2    CaffeNet (CNN-A) layer structure: channels and receptive fields vs the paper's Table 2
table3    every block of the MobileNets × λ_V ∈ {0.5, 5, 50}, eval images, both conventions
fig1      several restarts from the deepest layer (fc8 analogue)
fig2      TV β = 1 vs β = 2 on an early layer (norm1 analogue)
fig3      HOG, HOGb, DSIFT beside HOGgle and the HOG glyphs
fig4      HOG at λ_V = 0.5, 5, 50
fig5      one image from every (selected) layer, λ_V by relative depth as in the paper
fig6      multiple restarts from the deepest four layers
fig7      the deepest layer at λ_V = 0.5, 5, 50
fig8      central 5×5 neighbourhood of spatial layers, with the receptive-field box
fig9      first vs second half of the channels of conv1 / norm1 / norm2 analogues
fig10     deep-layer (pool5 analogue) reconstructions of several images
========  ==================================================================================

The paper's CNN-A (CaffeNet) weights are not in the shared data, so the CNN experiments use the
shared MobileNets: paper layer k of 20 maps to the block at the same relative depth
(:func:`analogue`), and λ_V follows the paper's depth rule (:func:`layer_lambda`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .store import unit_key

__all__ = ["Config", "PRESETS", "EXPERIMENTS", "Unit", "Plan", "build_plan", "run_unit", "config_from",
           "PAPER_TABLE1", "PAPER_TABLE2", "PAPER_TABLE3", "PAPER_LAMBDAS", "analogue", "layer_lambda"]

#: Bump to invalidate every stored unit (changes every key).
UNIT_VERSION = 1

EXPERIMENTS = ("table1", "table2", "table3", "fig1", "fig2", "fig3", "fig4", "fig5", "fig6", "fig7",
               "fig8", "fig9", "fig10")

TITLES = {
    "table1": "Table 1 — shallow representations (HOG, HOGb, DSIFT, HOGgle)",
    "table2": "Table 2 — CNN-A (CaffeNet) structure: channels and receptive fields",
    "table3": "Table 3 analogue — MobileNet blocks × three TV weights",
    "fig1": "Figure 1 analogue — several reconstructions from the deepest layer",
    "fig2": "Figure 2 analogue — TV β = 1 vs β = 2 on an early layer",
    "fig3": "Figure 3 analogue — HOG, HOGb, DSIFT, HOGgle and the HOG glyphs",
    "fig4": "Figure 4 analogue — HOG at λ_V = 0.5, 5, 50",
    "fig5": "Figure 5 analogue — one image from every layer",
    "fig6": "Figure 6 analogue — multiple reconstructions from the deepest four layers",
    "fig7": "Figure 7 analogue — the deepest layer at increasing λ_V",
    "fig8": "Figure 8 analogue — central 5×5 neighbourhood, receptive field as a box",
    "fig9": "Figure 9 analogue — first vs second half of the channels",
    "fig10": "Figure 10 analogue — deep-layer reconstructions of several images",
}

# ----------------------------------------------------------------------------------------------
# The paper's numbers (NUMBERS.md)
# ----------------------------------------------------------------------------------------------

#: Table 1, mean ± std of the error in percent (the paper's convention).
PAPER_TABLE1 = {"hoggle": (66.20, 13.7), "hog": (28.10, 7.9), "hogb": (10.67, 5.2), "dsift": (10.89, 7.5)}
#: Table 1 runtimes as the paper states them (seconds per image).
PAPER_TABLE1_SECONDS = {"hoggle": "2–3", "hog": "≈60", "hogb": "≈60", "dsift": "≈60"}
PAPER_LAMBDAS = (0.5, 5.0, 50.0)
_CNNA_NAMES = ("conv1 relu1 mpool1 norm1 conv2 relu2 mpool2 norm2 conv3 relu3 conv4 relu4 conv5 relu5 "
               "mpool5 fc6 relu6 fc7 relu7 fc8").split()
_CNNA_CHANNELS = (96, 96, 96, 96, 256, 256, 256, 256, 384, 384, 384, 384, 256, 256, 256, 4096, 4096, 4096,
                  4096, 1000)
_CNNA_RF = (11, 11, 19, 19, 51, 51, 67, 67, 99, 99, 131, 131, 163, 163, 195, 355, 355, 355, 355, 355)
#: Table 2: (name, channels, receptive field) of the 20 CNN-A layers.
PAPER_TABLE2 = tuple(zip(_CNNA_NAMES, _CNNA_CHANNELS, _CNNA_RF))
_T3_MEAN = (
    (10.0, 11.3, 21.9, 20.3, 12.4, 12.9, 15.5, 15.9, 14.5, 16.5, 14.9, 13.8, 12.6, 15.6, 16.6, 12.4, 15.8, 12.8, 10.5, 5.3),
    (20.2, 22.4, 30.3, 28.2, 20.0, 17.4, 18.2, 18.4, 14.4, 15.1, 13.3, 14.0, 15.4, 13.9, 15.5, 14.2, 13.7, 15.4, 10.8, 5.9),
    (40.8, 45.2, 54.1, 48.1, 39.7, 32.8, 32.7, 32.4, 25.6, 26.9, 23.3, 23.9, 25.7, 20.1, 19.0, 18.6, 18.7, 17.1, 15.5, 8.5),
)
_T3_STD = (
    (5.0, 5.5, 9.2, 5.0, 3.1, 5.3, 4.7, 4.6, 4.7, 5.3, 3.8, 3.8, 2.8, 5.1, 4.6, 3.5, 4.5, 6.4, 1.9, 1.1),
    (9.3, 10.3, 13.6, 7.6, 4.9, 5.0, 5.5, 5.0, 3.6, 3.3, 2.6, 2.8, 2.7, 3.2, 3.5, 3.7, 3.1, 10.3, 1.6, 0.9),
    (17.0, 18.7, 22.7, 11.8, 9.1, 7.7, 8.0, 7.0, 5.6, 5.2, 4.1, 4.6, 4.3, 4.3, 4.3, 4.9, 3.8, 3.4, 2.1, 1.3),
)
#: Table 3: layer → [(mean, std) for λ₁, λ₂, λ₃], percent; bold (chosen) λ index per layer.
PAPER_TABLE3 = {name: [(_T3_MEAN[k][i], _T3_STD[k][i]) for k in range(3)] for i, name in enumerate(
    "conv1 relu1 pool1 norm1 conv2 relu2 pool2 norm2 conv3 relu3 conv4 relu4 conv5 relu5 pool5 fc6 relu6 fc7 "
    "relu7 fc8".split())}
PAPER_TABLE3_CHOICE = {name: (0 if i < 6 else 1 if i < 12 else 2) for i, name in enumerate(PAPER_TABLE3)}


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    """What a reproduction runs. Presets: :data:`PRESETS` (``full``, ``quick``, ``tiny``).

    Sizes: ``None`` keeps the native size (shallow) or the model's input size (CNN); an integer
    S resizes the shorter side to S and crops the centre S×S. Iterations ``None``: the library's
    schedules (800 shallow, 400 CNN).
    """

    preset: str = "full"
    n_images: int = 100                 # eval images for the tables (the first n, sorted)
    fig_images: int = 5                 # images for fig10 (the others use the first one or two)
    shallow_size: int | None = None
    cnn_size: int | None = None
    shallow_iterations: int | None = None
    cnn_iterations: int | None = None
    batch_images: int = 4               # images per unit (one batched invert call)
    shallow_reps: tuple[str, ...] = ("hog", "hogb", "dsift")
    hoggle: str = "default"            # "default" (trained once, cached), "tiny", "none"
    table3_models: tuple[str, ...] = ("mobilenet_v2", "mobilenet_v1")
    figure_model: str = "mobilenet_v2"
    max_layers: int | None = None       # Table 3 / Fig. 5: evenly spaced subset of the blocks
    fig1_restarts: int = 5
    fig6_restarts: int = 3
    fig8_layers: int = 6
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS: dict[str, Config] = {
    "full": Config(),
    "quick": Config(preset="quick", n_images=3, fig_images=2, shallow_size=64, cnn_size=96,
                    shallow_iterations=300, cnn_iterations=80, batch_images=3, hoggle="tiny",
                    table3_models=("mobilenet_v2",), max_layers=4, fig1_restarts=3, fig6_restarts=2,
                    fig8_layers=3),
    "tiny": Config(preset="tiny", n_images=2, fig_images=2, shallow_size=32, cnn_size=64,
                   shallow_iterations=4, cnn_iterations=3, batch_images=2, hoggle="none",
                   table3_models=("mobilenet_v2",), max_layers=2, fig1_restarts=2, fig6_restarts=2,
                   fig8_layers=2),
}


_OPTIONAL_INTS = ("shallow_size", "cnn_size", "shallow_iterations", "cnn_iterations", "max_layers")


def _coerce(name: str, text: str, current: Any) -> Any:
    if isinstance(current, tuple) or name in ("shallow_reps", "table3_models"):
        return tuple(t.strip() for t in text.split(",") if t.strip())
    if name in _OPTIONAL_INTS:
        return None if text.lower() in ("none", "null", "") else int(text)
    if isinstance(current, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(current, int):
        return int(text)
    if name == "hoggle" and text not in ("default", "tiny", "none"):
        raise ValueError(text)
    return text


def config_from(preset: str = "full", overrides: Sequence[str] | dict | None = None) -> Config:
    """A preset with ``KEY=VALUE`` overrides (strings as on the command line, or a dict)."""
    from ..errors import PreimageError
    if preset not in PRESETS:
        raise PreimageError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    cfg = PRESETS[preset]
    if not overrides:
        return cfg
    fields = {f.name for f in dataclasses.fields(Config)}
    items = overrides.items() if isinstance(overrides, dict) else [o.split("=", 1) for o in overrides]
    changes = {}
    for item in items:
        if len(item) != 2:
            raise PreimageError(f"--set expects KEY=VALUE, got {'='.join(item)!r}")
        k, v = item[0].strip(), item[1]
        if k not in fields or k == "preset":
            raise PreimageError(f"unknown setting {k!r}; valid: {', '.join(sorted(fields - {'preset'}))}")
        try:
            changes[k] = _coerce(k, v, getattr(cfg, k)) if isinstance(v, str) else v
        except ValueError:
            raise PreimageError(f"bad value for {k}: {v!r}") from None
    return dataclasses.replace(cfg, **changes)


# ----------------------------------------------------------------------------------------------
# Plan
# ----------------------------------------------------------------------------------------------

@dataclass
class Unit:
    """One unit of work: ``params`` (JSON-serialisable, includes ``experiment`` and ``kind``)
    and its stable ``key`` (hash of the parameters)."""

    params: dict
    key: str = ""

    def __post_init__(self):
        self.key = unit_key(self.params)

    @property
    def experiment(self) -> str:
        return self.params["experiment"]

    @property
    def kind(self) -> str:
        return self.params["kind"]


@dataclass
class Plan:
    config: Config
    experiments: list[str]
    units: list[Unit] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)   # experiment (or part) → reason
    notes: dict[str, list[str]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)     # facts for the report (e.g. the λ rule per layer)

    def add(self, params: dict) -> Unit:
        u = Unit({"v": UNIT_VERSION, **params})
        if all(x.key != u.key for x in self.units):
            self.units.append(u)
        return u

    def note(self, experiment: str, text: str) -> None:
        self.notes.setdefault(experiment, []).append(text)

    def by_experiment(self) -> dict[str, list[Unit]]:
        out: dict[str, list[Unit]] = {}
        for u in self.units:
            out.setdefault(u.experiment, []).append(u)
        return out


def resolve_only(only: str | Sequence[str] | None) -> list[str]:
    """Experiment names from ``--only`` (comma list; ``figs``/``tables`` expand), in canonical order."""
    from ..errors import PreimageError
    if not only:
        return list(EXPERIMENTS)
    items = only.split(",") if isinstance(only, str) else list(only)
    wanted: set[str] = set()
    for it in (i.strip().lower() for i in items):
        if not it:
            continue
        if it in ("figs", "figures"):
            wanted |= {e for e in EXPERIMENTS if e.startswith("fig")}
        elif it == "tables":
            wanted |= {e for e in EXPERIMENTS if e.startswith("table")}
        elif it in ("table3a", "table3-analogue"):
            wanted.add("table3")
        elif it.startswith("figure"):
            wanted.add("fig" + it[6:])
        elif it in EXPERIMENTS:
            wanted.add(it)
        else:
            raise PreimageError(f"unknown experiment {it!r}; valid: {', '.join(EXPERIMENTS)}, figs, tables")
    return [e for e in EXPERIMENTS if e in wanted]


def analogue(names: Sequence[str], paper_index: int, of: int = 20) -> str:
    """The layer of ``names`` at the relative depth of the paper's layer ``paper_index`` (1-based)
    of ``of`` (CNN-A's 20): ``names[round(k / of · len) − 1]``, clipped."""
    i = max(1, min(len(names), round(paper_index / of * len(names))))
    return names[i - 1]


def layer_lambda(names: Sequence[str], layer: str) -> float:
    """The paper's λ_V for ``layer`` by its relative depth among ``names`` (layers 1–6 of 20: 0.5,
    7–12: 5, 13–20: 50), as :func:`preimage.representations.cnn.paper_lambda_tv`."""
    d = (list(names).index(layer) + 1) / len(names)
    if d <= 6 / 20 + 1e-9:
        return PAPER_LAMBDAS[0]
    if d <= 12 / 20 + 1e-9:
        return PAPER_LAMBDAS[1]
    return PAPER_LAMBDAS[2]


def evenly(names: Sequence[str], m: int | None) -> list[str]:
    """``m`` evenly spaced items of ``names`` (first and last included); all when ``m`` is None."""
    names = list(names)
    if m is None or m >= len(names):
        return names
    if m <= 1:
        return names[-1:]
    idx = sorted({round(i * (len(names) - 1) / (m - 1)) for i in range(m)})
    return [names[i] for i in idx]


class _Context:
    """Lazily gathered facts the planner needs: image names and sizes, model block names."""

    def __init__(self, config: Config):
        self.config = config
        self._models: dict[str, Any] = {}
        self._names: list[str] | None = None

    def image_names(self) -> list[str]:
        if self._names is None:
            from ..data import eval_images
            self._names = [p.name for p in eval_images()]
        return self._names

    def model(self, name: str) -> dict:
        """``{"blocks": all block names, "usable": those computable at the CNN size, "size": S,
        "input_size": (H, W)}``; raises with the reason when the model is unavailable."""
        if name not in self._models:
            try:
                from ..models import get_model
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    model = get_model(name)
                blocks = list(getattr(model, "block_names", None) or getattr(model, "layer_names"))
                h, w = tuple(getattr(model, "input_size", (224, 224)))
                size = int(self.config.cnn_size or min(h, w))
                usable = blocks
                if size < min(h, w):
                    # fixed-window global pooling (and what follows) needs the full input size
                    cut = next((i for i, b in enumerate(blocks) if b.startswith(("avgpool", "pool", "logits"))),
                               len(blocks))
                    usable = blocks[:cut]
                self._models[name] = {"blocks": blocks, "usable": usable, "size": size, "input_size": [h, w]}
            except Exception as exc:  # noqa: BLE001 - the reason is reported
                self._models[name] = exc
        info = self._models[name]
        if isinstance(info, Exception):
            raise info
        return info


def _shallow_available(name: str) -> str | None:
    try:
        from ..representations import get_representation
        get_representation(name)
    except Exception as exc:  # noqa: BLE001
        return f"representation {name!r} unavailable: {type(exc).__name__}: {exc}"
    return None


def _hoggle_available() -> str | None:
    try:
        from .. import hoggle
        for fn in ("hoggle_invert_image", "load_or_train_default", "train_hoggle"):
            getattr(hoggle, fn)
    except Exception as exc:  # noqa: BLE001
        return f"preimage.hoggle unavailable: {type(exc).__name__}: {exc}"
    return None


def _image_shape(name: str) -> tuple[int, int]:
    from PIL import Image
    with Image.open(_eval_path(name)) as im:
        w, h = im.size
    return h, w


def _batches(ctx: _Context, names: Sequence[str], size: int | None) -> list[list[str]]:
    """Images in batches of ``batch_images``; with native sizes, only same-size images together."""
    b = max(1, ctx.config.batch_images)
    if size is not None:
        return [list(names[i:i + b]) for i in range(0, len(names), b)]
    groups: dict[tuple, list[str]] = {}
    for n in names:
        groups.setdefault(_image_shape(n), []).append(n)
    out = []
    for g in groups.values():
        out += [g[i:i + b] for i in range(0, len(g), b)]
    return out


def _invert_params(experiment: str, rep: dict, images: Sequence[str], *, mode: str, size, lambdas,
                   iterations, beta: float = 2.0, restarts: int = 1, seed: int = 0, window: int | None = None,
                   channels: str | None = None, save: str = "all", glyph: bool = False, box: bool = False) -> dict:
    return {"experiment": experiment, "kind": "invert", "rep": rep, "images": list(images), "mode": mode,
            "size": size, "lambda_tv": [float(v) for v in lambdas], "beta": float(beta), "alpha": 6.0,
            "restarts": int(restarts), "seed": int(seed), "iterations": iterations, "window": window,
            "channels": channels, "save": save, "glyph": bool(glyph), "box": bool(box)}


def _cnn_rep(model: str, layer: str) -> dict:
    return {"type": "cnn", "model": model, "layer": layer}


def _shallow_rep(name: str) -> dict:
    return {"type": "shallow", "name": name}


# -- planners, one per experiment --------------------------------------------------------------

def _plan_table1(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    names = ctx.image_names()[:c.n_images]
    if len(names) < 2:
        plan.skipped["table1"] = "needs at least two eval images (the error is normalised by pairwise distances)"
        return
    size = c.shallow_size
    batches = _batches(ctx, names, size)
    reps = []
    for rep in c.shallow_reps:
        reason = _shallow_available(rep)
        if reason:
            plan.skipped[f"table1/{rep}"] = reason
            continue
        reps.append(rep)
    if c.hoggle != "none":
        reason = _hoggle_available() or _shallow_available("hog")
        if reason:
            plan.skipped["table1/hoggle"] = reason
    want_hoggle = c.hoggle != "none" and "table1/hoggle" not in plan.skipped
    for rep in reps + (["hog"] if want_hoggle and "hog" not in reps else []):  # HOGgle is scored in HOG space
        plan.add({"experiment": "table1", "kind": "codes", "rep": _shallow_rep(rep), "images": names,
                  "mode": "grey", "size": size})
    for rep in reps:
        for batch in batches:
            plan.add(_invert_params("table1", _shallow_rep(rep), batch, mode="grey", size=size,
                                    lambdas=[PAPER_LAMBDAS[1]], iterations=c.shallow_iterations, seed=c.seed,
                                    save="first"))
    if want_hoggle:
        for batch in batches:
            plan.add({"experiment": "table1", "kind": "hoggle", "images": batch, "size": size,
                      "dictionary": c.hoggle})
    if size is not None:
        plan.note("table1", f"images resized (shorter side) and centre-cropped to {size}×{size}, grey")
    else:
        plan.note("table1", "images at their native size, grey (BT.601), as the authors' code")


def _plan_table2(plan: Plan, ctx: _Context) -> None:
    plan.add({"experiment": "table2", "kind": "layers", "model": "caffenet", "size": None})
    plan.note("table2", "structure only: CaffeNet's trained weights are not in the shared data, so no "
                        "reconstructions are computed from it")


def _plan_table3(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    names = ctx.image_names()[:c.n_images]
    if len(names) < 2:
        plan.skipped["table3"] = "needs at least two eval images"
        return
    any_model = False
    for model in c.table3_models:
        try:
            info = ctx.model(model)
        except Exception as exc:  # noqa: BLE001
            plan.skipped[f"table3/{model}"] = f"model unavailable: {type(exc).__name__}: {exc}"
            continue
        any_model = True
        size = info["size"]
        layers = evenly(info["usable"], c.max_layers)
        plan.add({"experiment": "table3", "kind": "layers", "model": model, "size": size})
        plan.info.setdefault("table3_rule", {})[model] = {b: layer_lambda(info["blocks"], b) for b in layers}
        for layer in layers:
            plan.add({"experiment": "table3", "kind": "codes", "rep": _cnn_rep(model, layer), "images": names,
                      "mode": "rgb", "size": size})
            for batch in _batches(ctx, names, size):
                plan.add(_invert_params("table3", _cnn_rep(model, layer), batch, mode="rgb", size=size,
                                        lambdas=PAPER_LAMBDAS, iterations=c.cnn_iterations, seed=c.seed,
                                        save="first"))
        if len(layers) < len(info["blocks"]):
            left = [b for b in info["blocks"] if b not in layers]
            plan.note("table3", f"{model}: {len(layers)} of {len(info['blocks'])} blocks at {size}×{size} "
                                f"(left out: {', '.join(left)})")
    if not any_model:
        plan.skipped["table3"] = "; ".join(v for k, v in plan.skipped.items() if k.startswith("table3/"))


def _cnn_figure(plan: Plan, ctx: _Context, exp: str) -> dict | None:
    model = plan.config.figure_model
    try:
        return ctx.model(model)
    except Exception as exc:  # noqa: BLE001
        plan.skipped[exp] = f"model {model} unavailable: {type(exc).__name__}: {exc}"
        return None


def _plan_fig1(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    info = _cnn_figure(plan, ctx, "fig1")
    if info is None:
        return
    layer = info["usable"][-1]
    plan.add(_invert_params("fig1", _cnn_rep(c.figure_model, layer), ctx.image_names()[:1], mode="rgb",
                            size=info["size"], lambdas=[layer_lambda(info["blocks"], layer)],
                            iterations=c.cnn_iterations, restarts=c.fig1_restarts, seed=c.seed))


def _plan_fig2(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    info = _cnn_figure(plan, ctx, "fig2")
    if info is None:
        return
    layer = analogue(info["blocks"], 4)  # norm1
    if layer not in info["usable"]:
        layer = info["usable"][min(3, len(info["usable"]) - 1)]
    for beta in (1.0, 2.0):
        plan.add(_invert_params("fig2", _cnn_rep(c.figure_model, layer), ctx.image_names()[:1], mode="rgb",
                                size=info["size"], lambdas=[PAPER_LAMBDAS[0]], beta=beta,
                                iterations=c.cnn_iterations, seed=c.seed))
    plan.note("fig2", "λ_V for β = 1 follows the size/exponent law of preimage.objective.default_lambdas "
                      "calibrated at λ_V = 0.5 for β = 2")


def _plan_fig3(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    imgs = ctx.image_names()[:min(2, c.fig_images)]
    for rep in ("hog", "hogb", "dsift"):
        reason = _shallow_available(rep)
        if reason:
            plan.skipped[f"fig3/{rep}"] = reason
            continue
        for batch in _batches(ctx, imgs, c.shallow_size):
            plan.add(_invert_params("fig3", _shallow_rep(rep), batch, mode="grey", size=c.shallow_size,
                                    lambdas=[PAPER_LAMBDAS[1]], iterations=c.shallow_iterations, seed=c.seed,
                                    glyph=rep == "hog"))
    reason = _hoggle_available() if c.hoggle != "none" else "HOGgle disabled in this configuration"
    if reason:
        plan.skipped["fig3/hoggle"] = reason
    else:
        for batch in _batches(ctx, imgs, c.shallow_size):
            plan.add({"experiment": "fig3", "kind": "hoggle", "images": batch, "size": c.shallow_size,
                      "dictionary": c.hoggle})
    if c.shallow_size is None and len({_image_shape(n) for n in imgs}) > 1:
        plan.note("fig3", "images of different sizes: one unit per size")


def _plan_fig4(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    reason = _shallow_available("hog")
    if reason:
        plan.skipped["fig4"] = reason
        return
    plan.add(_invert_params("fig4", _shallow_rep("hog"), ctx.image_names()[:1], mode="grey", size=c.shallow_size,
                            lambdas=PAPER_LAMBDAS, iterations=c.shallow_iterations, seed=c.seed))


def _plan_fig5(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    info = _cnn_figure(plan, ctx, "fig5")
    if info is None:
        return
    for layer in evenly(info["usable"], c.max_layers):
        plan.add(_invert_params("fig5", _cnn_rep(c.figure_model, layer), ctx.image_names()[:1], mode="rgb",
                                size=info["size"], lambdas=[layer_lambda(info["blocks"], layer)],
                                iterations=c.cnn_iterations, seed=c.seed))


def _plan_fig6(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    info = _cnn_figure(plan, ctx, "fig6")
    if info is None:
        return
    for layer in info["usable"][-4:]:
        plan.add(_invert_params("fig6", _cnn_rep(c.figure_model, layer), ctx.image_names()[:1], mode="rgb",
                                size=info["size"], lambdas=[layer_lambda(info["blocks"], layer)],
                                iterations=c.cnn_iterations, restarts=c.fig6_restarts, seed=c.seed))


def _plan_fig7(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    info = _cnn_figure(plan, ctx, "fig7")
    if info is None:
        return
    plan.add(_invert_params("fig7", _cnn_rep(c.figure_model, info["usable"][-1]), ctx.image_names()[:1],
                            mode="rgb", size=info["size"], lambdas=PAPER_LAMBDAS, iterations=c.cnn_iterations,
                            seed=c.seed))


def _plan_fig8(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    info = _cnn_figure(plan, ctx, "fig8")
    if info is None:
        return
    # the paper: conv1 … relu5, the first 14 of 20 layers (the spatial ones); λ₃ = 50
    n_spatial = max(1, round(14 / 20 * len(info["blocks"])))
    spatial = [b for b in info["blocks"][:n_spatial] if b in info["usable"]]
    for layer in evenly(spatial, c.fig8_layers):
        plan.add(_invert_params("fig8", _cnn_rep(c.figure_model, layer), ctx.image_names()[:1], mode="rgb",
                                size=info["size"], lambdas=[PAPER_LAMBDAS[2]], iterations=c.cnn_iterations,
                                seed=c.seed, window=5, box=True))


def _plan_fig9(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    info = _cnn_figure(plan, ctx, "fig9")
    if info is None:
        return
    layers = []
    for k in (1, 4, 8):  # conv1, norm1, norm2
        layer = analogue(info["blocks"], k)
        if layer in info["usable"] and layer not in layers:
            layers.append(layer)
    imgs = ctx.image_names()[:min(2, c.fig_images)]
    for layer in layers:
        for half in ("first-half", "second-half"):
            plan.add(_invert_params("fig9", _cnn_rep(c.figure_model, layer), imgs, mode="rgb", size=info["size"],
                                    lambdas=[PAPER_LAMBDAS[0]], iterations=c.cnn_iterations, seed=c.seed,
                                    channels=half))
    plan.note("fig9", "MobileNet has no two-stream (grouped) layers like CNN-A; the analogue splits the "
                      "channels in two halves")


def _plan_fig10(plan: Plan, ctx: _Context) -> None:
    c = plan.config
    info = _cnn_figure(plan, ctx, "fig10")
    if info is None:
        return
    layer = analogue(info["blocks"], 15)  # pool5
    if layer not in info["usable"]:
        layer = info["usable"][-1]
    imgs = ctx.image_names()[:c.fig_images]
    plan.add(_invert_params("fig10", _cnn_rep(c.figure_model, layer), imgs, mode="rgb", size=info["size"],
                            lambdas=[layer_lambda(info["blocks"], layer)], iterations=c.cnn_iterations,
                            seed=c.seed))


_PLANNERS: dict[str, Callable[[Plan, _Context], None]] = {
    "table1": _plan_table1, "table2": _plan_table2, "table3": _plan_table3, "fig1": _plan_fig1,
    "fig2": _plan_fig2, "fig3": _plan_fig3, "fig4": _plan_fig4, "fig5": _plan_fig5, "fig6": _plan_fig6,
    "fig7": _plan_fig7, "fig8": _plan_fig8, "fig9": _plan_fig9, "fig10": _plan_fig10,
}


def build_plan(config: Config, only: str | Sequence[str] | None = None) -> Plan:
    """Every unit of the selected experiments (all by default), deduplicated, in a stable order.

    Experiments that cannot run here (a missing model, representation or module) are listed in
    ``plan.skipped`` with the reason instead of failing the whole plan. Raises
    :class:`~preimage.errors.PreimageError` when the eval images themselves are missing.
    """
    from ..data import missing_reason, shared_dir
    from ..errors import PreimageError
    exps = resolve_only(only)
    plan = Plan(config, exps)
    ctx = _Context(config)
    if shared_dir() is None:
        raise PreimageError(missing_reason("the eval images"))
    try:
        ctx.image_names()
    except FileNotFoundError as exc:
        raise PreimageError(str(exc)) from None
    for exp in exps:
        try:
            _PLANNERS[exp](plan, ctx)
        except Exception as exc:  # noqa: BLE001 - one experiment's planning failure is reported, not fatal
            plan.skipped[exp] = f"planning failed: {type(exc).__name__}: {exc}"
    return plan


# ----------------------------------------------------------------------------------------------
# Execution (runs on the workers)
# ----------------------------------------------------------------------------------------------

_CACHE: dict[tuple, Any] = {}


def _cached(key: tuple, make: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def _eval_path(name: str) -> Path:
    from ..data import require_shared
    return require_shared("data", "imagenet-sample", "eval", name)


def load_eval_image(name: str, mode: str, size: int | None):
    """Eval image ``name`` as ``(C, H, W)`` on 0–255 (``mode`` grey/rgb); ``size`` S: shorter side
    resized to S (bilinear, antialiased), centre S×S crop; ``None``: native size."""
    import torch
    from ..imageio import load_image
    img = load_image(_eval_path(name), mode=mode)
    if size is None:
        return img
    h, w = img.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    img = torch.nn.functional.interpolate(img[None], size=(nh, nw), mode="bilinear", antialias=True,
                                          align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[:, top:top + size, left:left + size].clamp(0, 255).contiguous()


def _model(name: str, purpose: str = "compute"):
    """The named network, cached per process; ``purpose="structure"`` gives a separate copy that
    stays on the CPU (graph tracing, receptive fields) whatever device the units compute on."""
    def make():
        from ..models import get_model
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return get_model(name)
    return _cached(("model", name, purpose), make)


def _representation(rep: dict, size: int | None):
    if rep["type"] == "shallow":
        from ..representations import get_representation
        return _cached(("shallow", rep["name"]), lambda: get_representation(rep["name"]))
    from ..representations.cnn import CNNLayer

    def make():
        model = _model(rep["model"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return CNNLayer(model, rep["layer"], input_size=None if size is None else (size, size))
    return _cached(("cnn", rep["model"], rep["layer"], size), make)


def unit_device() -> str:
    """Where units compute: ``$PREIMAGE_DEVICE``, else CUDA when available, else the CPU (not a
    unit parameter: results agree across devices up to float rounding)."""
    import torch
    return os.environ.get("PREIMAGE_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def _rep_info(rep_obj) -> dict:
    info = getattr(rep_obj, "info", None)
    if info is None:
        return {}
    rf = getattr(rep_obj, "receptive_field", None)
    return {"layer_depth": float(getattr(rep_obj, "relative_depth", 0.0)), "channels": int(info.channels),
            "code_shape": list(getattr(rep_obj, "output_shape", None) or []),
            "rf_size": [float(v) for v in rf.total_size] if rf is not None else None}


def _load_batch(names: Sequence[str], mode: str, size):
    import torch
    imgs = [load_eval_image(n, mode, size) for n in names]
    shapes = {tuple(i.shape) for i in imgs}
    if len(shapes) != 1:
        raise ValueError(f"a unit's images must share one size, got {sorted(shapes)}")
    return torch.stack(imgs)


def _u8(img) -> np.ndarray:
    from ..imageio import to_uint8
    return to_uint8(img)


def _unit_invert(p: dict) -> dict:
    import torch

    from ..imageio import stretch
    from ..invert import invert
    from ..objective import central_window_mask, channel_mask, default_lambdas

    device = unit_device()
    rep = _representation(p["rep"], p["size"]).to(device)
    images = _load_batch(p["images"], p["mode"], p["size"])
    shape = tuple(images.shape[1:])
    pairs = [default_lambdas(shape, p["alpha"], p["beta"], lambda_tv_reference=v) for v in p["lambda_tv"]]
    lam_alpha, lam_tv = [a for a, _ in pairs], [t for _, t in pairs]
    with torch.no_grad():
        target = rep(images.to(device)).cpu()
    mask = None
    if p.get("window"):
        mask = central_window_mask(target.shape[1:], int(p["window"]))
    if p.get("channels"):
        cm = channel_mask(target.shape[1:], p["channels"])
        mask = cm if mask is None else mask * cm
    res = invert(rep, images, restarts=p["restarts"], lambda_tv=lam_tv, lambda_alpha=lam_alpha, alpha=p["alpha"],
                 beta=p["beta"], iterations=p["iterations"], mask=mask, seed=p["seed"], progress=False,
                 device=device)
    n, r, k = res.relative_errors.shape
    diff = (res.codes - res.targets[:, None, None]).double()
    tnorm = res.targets.double()
    if mask is not None:
        diff = diff * mask[0].double()
        tnorm = tnorm * mask[0].double()
    dist = diff.reshape(n, r, k, -1).norm(dim=3)
    metrics = {
        "distance": dist.tolist(), "relative_error": res.relative_errors.tolist(),
        "energy": {key: v.tolist() for key, v in res.energy.items()},
        "target_norm": tnorm.reshape(n, -1).norm(dim=1).tolist(),
        "lambda_tv_actual": lam_tv, "lambda_alpha_actual": lam_alpha, "image_shape": list(shape),
        "code_shape": list(target.shape[1:]), "optimisation_seconds": res.seconds,
        "iterations": res.settings.get("iterations"), "lr": res.settings.get("lr"),
        "schedule": res.settings.get("schedule"), "shape": [n, r, k], "device": device,
        **_rep_info(rep),
    }
    pngs: dict[str, np.ndarray] = {}
    box = None
    if p.get("box") and p["rep"]["type"] == "cnn":
        try:
            from ..models.receptive_field import receptive_field_box
            box = list(receptive_field_box(_model(p["rep"]["model"], "structure"), p["rep"]["layer"], n=int(p.get("window") or 5),
                                           input_size=shape[-2:]))
        except Exception as exc:  # noqa: BLE001 - the figure still shows the reconstruction
            metrics["box_error"] = f"{type(exc).__name__}: {exc}"
        metrics["box"] = box  # (top, left, bottom, right), bottom/right exclusive
    save_n = range(n) if p.get("save", "all") == "all" else range(1)
    for i in save_n:
        pngs[f"original_n{i}"] = _u8(images[i])
        for ri in range(r):
            for ki in range(k):
                shown = stretch(res.reconstructions[i, ri, ki])
                pngs[f"recon_n{i}_r{ri}_k{ki}"] = _u8(shown)
                if box is not None:
                    from ..visualize import draw_box
                    top, left, bottom, right = box
                    pic = draw_box(shown, (top, left, max(top, bottom - 1), max(left, right - 1)))
                    pngs[f"boxed_n{i}_r{ri}_k{ki}"] = np.asarray(pic)
        if p.get("glyph"):
            from ..glyph import hog_glyph
            pngs[f"glyph_n{i}"] = _u8(hog_glyph(target[i]))
    tensors = {"errors": {"distance": dist, "relative_error": res.relative_errors,
                          **{f"energy_{key}": v for key, v in res.energy.items()}}}
    if p.get("save", "all") == "all":
        tensors["reconstructions"] = {"reconstructions": res.reconstructions.float(), "targets": res.targets.float()}
    return {"metrics": metrics, "pngs": pngs, "tensors": tensors,
            "timings": {"optimisation_seconds": res.seconds,
                        "seconds_per_image": res.seconds / max(1, n)}}


def _unit_codes(p: dict) -> dict:
    import torch

    from ..metrics import pairwise_normaliser
    device = unit_device()
    rep = _representation(p["rep"], p["size"]).to(device)
    codes = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for name in p["images"]:
            img = load_eval_image(name, p["mode"], p["size"])
            codes.append(rep(img[None].to(device))[0].detach().cpu())
    norms = torch.stack([c.double().flatten().norm() for c in codes])
    metrics = {"normaliser": {conv: pairwise_normaliser(codes, conv) for conv in ("paper", "authors")},
               "n": len(codes), "code_norm_mean": float(norms.mean()), **_rep_info(rep)}
    return {"metrics": metrics, "pngs": {}, "tensors": {"norms": {"code_norm": norms}},
            "timings": {"forward_seconds": time.perf_counter() - t0}}


def _hoggle_dictionary(which: str):
    from .. import hoggle

    def make():
        if which == "default":
            return hoggle.load_or_train_default(progress=False)
        if which == "tiny":
            from ..data import train_images
            kwargs = {"n_atoms": 32, "windows_per_image": 24, "n_iter": 6, "seed": 0, "progress": False,
                      "batch_size": 64}
            params = inspect.signature(hoggle.train_hoggle).parameters
            kwargs = {kk: v for kk, v in kwargs.items() if kk in params}
            return hoggle.train_hoggle(train_images()[:8], **kwargs)
        raise ValueError(f"unknown HOGgle dictionary {which!r} (default, tiny)")
    return _cached(("hoggle", which), make)


def _unit_hoggle(p: dict) -> dict:
    import torch

    from .. import hoggle
    t0 = time.perf_counter()
    dictionary = _hoggle_dictionary(p["dictionary"])
    dict_seconds = time.perf_counter() - t0
    hog = _representation({"type": "shallow", "name": "hog"}, p["size"]).to("cpu")
    dist, rel, secs, pngs = [], [], [], {}
    for i, name in enumerate(p["images"]):
        img = load_eval_image(name, "grey", p["size"])
        t1 = time.perf_counter()
        recon = hoggle.hoggle_invert_image(img, dictionary)
        secs.append(time.perf_counter() - t1)
        recon = torch.as_tensor(recon).float()
        if recon.dim() == 2:
            recon = recon[None]
        with torch.no_grad():
            c0, c1 = hog(img[None]).double(), hog(recon[None]).double()
        d = float((c1 - c0).norm())
        dist.append(d)
        rel.append(d / max(float(c0.norm()), 1e-30))
        pngs[f"original_n{i}"] = _u8(img)
        pngs[f"recon_n{i}"] = _u8(recon)
    meta = getattr(dictionary, "metadata", {}) or {}
    return {"metrics": {"distance": dist, "relative_error": rel, "seconds": secs,
                        "dictionary": {k: meta.get(k) for k in ("n_atoms", "alpha", "n_iter", "n_train_images",
                                                                 "windows_per_image", "training_seconds")
                                       if k in meta},
                        "dictionary_seconds": dict_seconds},
            "pngs": pngs, "tensors": {"errors": {"distance": torch.tensor(dist, dtype=torch.float64)}},
            "timings": {"seconds_per_image": sum(secs) / max(1, len(secs)), "dictionary_seconds": dict_seconds}}


def _unit_layers(p: dict) -> dict:
    from ..representations.cnn import list_layers
    model = _model(p["model"], "structure")
    size = p.get("size")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        infos = list_layers(model, None if size is None else (size, size))
    blocks = getattr(model, "block_names", None)
    if blocks:
        keep = set(blocks)
        infos = [i for i in infos if i.name in keep]
    rows = [{"name": i.name, "type": i.type, "output_shape": list(i.output_shape), "channels": int(i.channels),
             "rf_size": [float(v) for v in i.rf_size] if i.rf_size else None,
             "rf_stride": [float(v) for v in i.rf_stride] if i.rf_stride else None}
            for i in infos]
    return {"metrics": {"layers": rows, "input_size": list(getattr(model, "input_size", []) or [])},
            "pngs": {}, "tensors": {}, "timings": {}}


_KINDS: dict[str, Callable[[dict], dict]] = {
    "invert": _unit_invert, "codes": _unit_codes, "hoggle": _unit_hoggle, "layers": _unit_layers,
}


def run_unit(params: dict, torch_threads: int | None = None) -> dict:
    """Compute one unit: a pure function of ``params`` (see :func:`build_plan`).

    Returns ``{"metrics", "pngs" (name → uint8 array), "tensors" (name → {name: tensor}),
    "timings" (seconds), "worker", "computed_at"}``. ``torch_threads`` sets the intra-op threads
    of this process (not part of the parameters).
    """
    import torch
    if torch_threads:
        torch.set_num_threads(int(torch_threads))
    torch.manual_seed(int(params.get("seed", 0)))
    t0 = time.perf_counter()
    out = _KINDS[params["kind"]](params)
    out["timings"] = {**out.get("timings", {}), "seconds": time.perf_counter() - t0}
    out["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    out["computed_at"] = time.time()
    if not all(math.isfinite(float(v)) for v in _flat_numbers(out["metrics"])):
        out["metrics"]["non_finite"] = True
    return out


def _flat_numbers(obj) -> list[float]:
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _flat_numbers(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _flat_numbers(v)]
    if isinstance(obj, (int, float)) and not isinstance(obj, bool):
        return [float(obj)]
    return []
