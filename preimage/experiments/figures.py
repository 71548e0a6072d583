"""The paper's figures as experiments (Figures 1–10 and their analogues on the MobileNets).

Each figure is a :class:`FigureExperiment`: its :meth:`~FigureExperiment.plan` adds ``invert``
(and for Fig. 3 ``hoggle``) units, its :meth:`~FigureExperiment.tiles` lays the units' pictures
out (read back by :func:`preimage.io.artefacts.picture_name`, the names the units stored them
under), and the shared :meth:`~FigureExperiment.render` makes the section.

The paper's CNN-A (CaffeNet) weights are not in the shared data, so the CNN figures use
``config.figure_model``: paper layer k of 20 maps to the block at the same relative depth
(:func:`preimage.paper.analogue`), and λ_V follows the paper's depth rule (:func:`.base.layer_lambda`).
"""

from __future__ import annotations

import io
import json

from ..data import spread
from ..baselines.lucent import LUCENT
from ..invert import recipe_prior_scale
from ..io.artefacts import picture_name
from ..paper import LAMBDA_TV, LAMBDAS_TV, analogue
from ..representations.cnn import CNNLayer
from .base import (Context, Experiment, Plan, cnn_rep, hoggle_params, invert_params, layer_lambda, options_text,
                   shallow_preprocess, shallow_rep, shallow_unavailable)
from .report import Collected, Figure, Section, rep_label, secs

__all__ = ["FigureExperiment", "FIGURES"]

TILE = 170
_DISPLAY = {"hog": "HOG", "hogb": "HOGb", "dsift": "DSIFT", "hoggle": "HOGgle"}


# ----------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------

def _png(c: Collected, row: dict, name: str):
    """The unit's picture ``name`` (:func:`preimage.io.artefacts.picture_name`) as an RGB PIL image, or None."""
    from PIL import Image
    path = c.store.file(row, f"{name}.png")
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return im.convert("RGB").copy()


def _placeholder(text: str = "missing"):
    """A grey tile standing for a missing picture."""
    from PIL import Image, ImageDraw
    im = Image.new("RGB", (TILE, TILE), (235, 235, 235))
    ImageDraw.Draw(im).text((8, TILE // 2 - 6), text, fill=(120, 0, 0))
    return im


def _grid_png(tiles: list, captions: list[str], columns: int) -> bytes:
    """PNG bytes of captioned tiles in a grid (:func:`preimage.io.draw.grid`)."""
    from ..io.draw import grid
    tiles = [t if t is not None else _placeholder() for t in tiles]
    pic = grid(tiles, captions, columns=max(1, columns), tile_height=TILE)
    buf = io.BytesIO()
    pic.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _short(row: dict, width: int = 14) -> str:
    """A representation/layer label short enough for a tile caption."""
    label = rep_label(row["params"])
    return label if len(label) <= width else label[:width - 1] + "~"


def _err(row: dict, n: int, r: int = 0, k: int = 0) -> str:
    """The relative code error of one reconstruction, as a caption."""
    try:
        return f"{100 * row['metrics']['relative_error'][n][r][k]:.1f}%"
    except (KeyError, IndexError, TypeError):
        return "?"


def _unit_settings(row: dict) -> str:
    """One line on a unit's settings, for the section's text."""
    m, p = row["metrics"], row["params"]
    if row["kind"] == "hoggle":
        return (f"HOGgle: dictionary {p['dictionary']} {json.dumps(m.get('dictionary', {}), ensure_ascii=False)}, "
                f"{secs(row['timings'].get('seconds'))}")
    return (f"{rep_label(p)}: image {'×'.join(map(str, m.get('image_shape', [])))}, {m.get('iterations')} "
            f"iterations, λ_V = {', '.join(f'{v:g}' for v in p['lambda_tv'])} (reference), β = {p['beta']:g}, "
            f"restarts {p['restarts']}, {secs(row['timings'].get('seconds'))}")


# ----------------------------------------------------------------------------------------------
# The figure experiment
# ----------------------------------------------------------------------------------------------

class FigureExperiment(Experiment):
    """A figure: planned units, then its tiles laid out in a captioned grid."""

    def tiles(self, c: Collected, rows: list[dict]) -> tuple[list, list[str], int]:
        """``(tiles (PIL images or None), captions, columns)`` from the finished ``rows``."""
        raise NotImplementedError

    def render(self, collected: Collected) -> Section:
        """The figure (also written to ``report/<name>.png``) and the settings of its units."""
        s = Section(self.name, self.title, [self.text])
        rows = collected.finished(self.name)
        if not rows:
            s.paragraphs.append("No finished unit for this figure.")
            return s
        tiles, caps, cols = self.tiles(collected, rows)
        fig = Figure(self.name, self.title, _grid_png(tiles, caps, cols))
        if collected.out is not None:
            from ..io.cache import atomic_write_bytes
            atomic_write_bytes(collected.out / "report" / f"{self.name}.png", fig.png)
        s.blocks.append(fig)
        s.paragraphs.append("Units: " + "; ".join(self.unit_settings(r) for r in rows) + ".")
        return s

    def unit_settings(self, row: dict) -> str:
        """One finished unit's settings, for the line under the figure."""
        return _unit_settings(row)

    def cnn_model(self, plan: Plan, ctx: Context) -> dict | None:
        """The figure model's facts (:meth:`.base.Context.model`), or None with the reason in ``plan.skipped``."""
        model = plan.config.figure_model
        try:
            info = ctx.model(model)
        except Exception as exc:  # noqa: BLE001
            plan.skipped[self.name] = f"model {model} unavailable: {type(exc).__name__}: {exc}"
            return None
        if ctx.model_options(model):
            plan.note(self.name, f"{model}: loaded with {options_text(ctx.model_options(model))}")
        return info

    def cnn_unit(self, plan: Plan, ctx: Context, info: dict, layer: str, images: int = 1, **kwargs) -> None:
        """Add an ``invert`` unit of the figure model's ``layer`` on the first ``images`` eval images
        (RGB, cropped to the CNN size); λ_V by the depth rule unless ``lambdas`` is given."""
        c = plan.config
        kwargs.setdefault("lambdas", [layer_lambda(info["blocks"], layer)])
        plan.add(invert_params(self.name, cnn_rep(c.figure_model, layer, ctx.model_options(c.figure_model)), ctx.image_names()[:images], mode="rgb",
                               preprocess="crop", size=info["size"], iterations=c.cnn_iterations, seed=c.seed,
                               **kwargs))


def _analogue(info: dict, paper_index: int, fallback: str) -> str:
    """The block at the relative depth of CNN-A's layer ``paper_index`` (of 20), or ``fallback``
    when that block cannot be computed at the CNN size."""
    layer = analogue(info["blocks"], paper_index)
    return layer if layer in info["usable"] else fallback


def _restart_tiles(c: Collected, row: dict) -> tuple[list, list[str], int]:
    """The original of image 0 and every (restart, setting) reconstruction of one unit."""
    n, r, k = row["metrics"]["shape"]
    tiles, caps = [_png(c, row, picture_name("original", 0))], ["original"]
    for ri in range(r):
        for ki in range(k):
            tiles.append(_png(c, row, picture_name("recon", 0, ri, ki)))
            lam = row["params"]["lambda_tv"][ki]
            caps.append(f"{_short(row)} " + (f"r{ri} " if r > 1 else "") + (f"tv{lam:g} " if k > 1 else "")
                        + _err(row, 0, ri, ki))
    return tiles, caps, len(tiles)


class RestartsFigure(FigureExperiment):
    """Figures of one unit: the original beside every restart and setting (Fig. 1, 4, 7)."""

    def tiles(self, c: Collected, rows: list[dict]) -> tuple[list, list[str], int]:
        """The first finished unit's reconstructions in one row."""
        return _restart_tiles(c, rows[0])


class Fig1(RestartsFigure):
    """Several restarts from the deepest computed layer (the paper: fc8)."""

    name = "fig1"
    title = "Figure 1 analogue — several reconstructions from the deepest layer"
    text = ("Restarts from different random initialisations of the deepest computed layer (the paper: five "
            "reconstructions from CNN-A's fc8).")

    def plan(self, plan: Plan, ctx: Context) -> None:
        """One unit: the deepest usable block, ``fig1_restarts`` restarts."""
        info = self.cnn_model(plan, ctx)
        if info is not None:
            self.cnn_unit(plan, ctx, info, info["usable"][-1], restarts=plan.config.fig1_restarts)


class Fig2(FigureExperiment):
    """TV β = 1 against β = 2 on an early layer (the paper: spikes with β = 1)."""

    name = "fig2"
    title = "Figure 2 analogue — TV β = 1 vs β = 2 on an early layer"
    text = "TV exponent β = 1 against β = 2 on the block at norm1's relative depth (the paper: spikes with β = 1)."

    def plan(self, plan: Plan, ctx: Context) -> None:
        """Two units (β = 1, 2) on the block at norm1's depth, λ_V = 0.5."""
        info = self.cnn_model(plan, ctx)
        if info is None:
            return
        layer = _analogue(info, 4, info["usable"][min(3, len(info["usable"]) - 1)])  # norm1
        for beta in (1.0, 2.0):
            self.cnn_unit(plan, ctx, info, layer, lambdas=[LAMBDAS_TV[0]], beta=beta)
        plan.note(self.name, "λ_V for β = 1 follows the size/exponent law of preimage.objective.default_lambdas "
                             "calibrated at λ_V = 0.5 for β = 2")

    def tiles(self, c: Collected, rows: list[dict]) -> tuple[list, list[str], int]:
        """The original, then one reconstruction per β."""
        tiles, caps = [_png(c, rows[0], picture_name("original", 0))], ["original"]
        for row in rows:
            tiles.append(_png(c, row, picture_name("recon", 0)))
            caps.append(f"{_short(row)} beta={row['params']['beta']:g} {_err(row, 0)}")
        return tiles, caps, len(tiles)


class Fig3(FigureExperiment):
    """HOG, HOGb, DSIFT beside HOGgle and the HOG glyphs."""

    name = "fig3"
    title = "Figure 3 analogue — HOG, HOGb, DSIFT, HOGgle and the HOG glyphs"
    text = ("Each row: the original, its HOG glyphs, then reconstructions from HOG, HOGb, DSIFT (this library) and "
            "HOGgle; captions give the relative code error ‖Φ(x*) − Φ₀‖/‖Φ₀‖.")
    order = ("hog", "hogb", "dsift", "hoggle")

    def plan(self, plan: Plan, ctx: Context) -> None:
        """Per shallow representation and HOGgle, units over the first one or two images."""
        c = plan.config
        imgs = ctx.image_names()[:min(2, c.fig_images)]
        preprocess, size = shallow_preprocess(c)
        batches = ctx.batches(imgs, "grey", preprocess, size)
        for rep in ("hog", "hogb", "dsift"):
            reason = shallow_unavailable(rep)
            if reason:
                plan.skipped[f"{self.name}/{rep}"] = reason
                continue
            for batch in batches:
                plan.add(invert_params(self.name, shallow_rep(rep), batch, mode="grey", preprocess=preprocess,
                                       size=size, lambdas=[LAMBDA_TV], iterations=c.shallow_iterations,
                                       seed=c.seed, code_picture=rep == "hog"))
        if c.hoggle == "none":
            plan.skipped[f"{self.name}/hoggle"] = "HOGgle disabled in this configuration"
        else:
            for batch in batches:
                plan.add(hoggle_params(self.name, batch, preprocess=preprocess, size=size, dictionary=c.hoggle))
        if len(batches) > 1 and preprocess == "native":
            plan.note(self.name, "images of different sizes: one unit per size")

    def tiles(self, c: Collected, rows: list[dict]) -> tuple[list, list[str], int]:
        """One row per image: original, glyphs, then each representation's reconstruction."""
        images = list(dict.fromkeys(name for row in rows for name in row["params"]["images"]))
        tiles, caps = [], []
        for name in images:
            orig = glyph = None
            cells = {}
            for row in (r for r in rows if name in r["params"]["images"]):
                n = row["params"]["images"].index(name)
                label = rep_label(row["params"])
                orig = orig or _png(c, row, picture_name("original", n))
                err = (f"{100 * row['metrics']['relative_error'][n]:.1f}%" if row["kind"] == "hoggle"
                       else _err(row, n))
                cells[label] = (_png(c, row, picture_name("recon", n)), f"{_DISPLAY.get(label, label)}: {err}")
                if f"{picture_name('code', n)}.png" in row["files"]:
                    glyph = _png(c, row, picture_name("code", n))
            tiles += [orig, glyph]
            caps += ["original", "HOG glyphs"]
            for rep in self.order:
                t, cp = cells.get(rep, (None, f"{_DISPLAY.get(rep, rep)}: -"))
                tiles.append(t)
                caps.append(cp)
        return tiles, caps, 2 + len(self.order)


class Fig4(RestartsFigure):
    """HOG at λ_V = 0.5, 5, 50 (the paper's Fig. 4)."""

    name = "fig4"
    title = "Figure 4 analogue — HOG at λ_V = 0.5, 5, 50"
    text = "HOG inverted with λ_V = 0.5, 5, 50 (the paper's Fig. 4)."

    def plan(self, plan: Plan, ctx: Context) -> None:
        """One HOG unit on the first image with the three λ_V."""
        c = plan.config
        reason = shallow_unavailable("hog")
        if reason:
            plan.skipped[self.name] = reason
            return
        preprocess, size = shallow_preprocess(c)
        plan.add(invert_params(self.name, shallow_rep("hog"), ctx.image_names()[:1], mode="grey",
                               preprocess=preprocess, size=size, lambdas=LAMBDAS_TV,
                               iterations=c.shallow_iterations, seed=c.seed))


class LayersFigure(FigureExperiment):
    """Figures of one image from several layers (Fig. 5, 8): the original, then one tile per unit."""

    def tiles(self, c: Collected, rows: list[dict]) -> tuple[list, list[str], int]:
        """The original, then each unit's reconstruction (boxed when the unit drew its receptive field)."""
        tiles, caps = [_png(c, rows[0], picture_name("original", 0))], ["original"]
        for row in rows:
            boxed = picture_name("boxed", 0)
            tiles.append(_png(c, row, boxed if f"{boxed}.png" in row["files"] else picture_name("recon", 0)))
            box, window = row["metrics"].get("box"), row["metrics"].get("window")
            clipped = f" {window}x{window}" if window and window != row["params"].get("window") else ""
            caps.append(f"{_short(row)} {_err(row, 0)}" + (f" RF{box[2] - box[0]}" if box else "") + clipped)
        return tiles, caps, min(len(tiles), 6)


class Fig5(LayersFigure):
    """One image from every (selected) layer, λ_V by relative depth as in the paper."""

    name = "fig5"
    title = "Figure 5 analogue — one image from every layer"
    text = ("One image reconstructed from each selected block, λ_V by relative depth as the paper's Table 3 bold "
            "entries.")

    def plan(self, plan: Plan, ctx: Context) -> None:
        """One unit per selected block (:func:`preimage.data.spread` of ``max_layers``)."""
        info = self.cnn_model(plan, ctx)
        if info is not None:
            for layer in spread(info["usable"], plan.config.max_layers):
                self.cnn_unit(plan, ctx, info, layer)


class Fig6(FigureExperiment):
    """Multiple restarts from the deepest four layers."""

    name = "fig6"
    title = "Figure 6 analogue — multiple reconstructions from the deepest four layers"
    text = "Rows: the deepest four computed blocks; columns: random restarts (invariance)."

    def plan(self, plan: Plan, ctx: Context) -> None:
        """One unit per deepest-four block, ``fig6_restarts`` restarts."""
        info = self.cnn_model(plan, ctx)
        if info is not None:
            for layer in info["usable"][-4:]:
                self.cnn_unit(plan, ctx, info, layer, restarts=plan.config.fig6_restarts)

    def tiles(self, c: Collected, rows: list[dict]) -> tuple[list, list[str], int]:
        """One row per block, padded to the longest."""
        parts = [_restart_tiles(c, row) for row in rows]
        cols = max(p[2] for p in parts)
        tiles, caps = [], []
        for t, cp, n in parts:
            tiles += t + [_placeholder("")] * (cols - n)
            caps += cp + [""] * (cols - n)
        return tiles, caps, cols


class Fig7(RestartsFigure):
    """The deepest layer at λ_V = 0.5, 5, 50."""

    name = "fig7"
    title = "Figure 7 analogue — the deepest layer at increasing λ_V"
    text = "The deepest computed block at λ_V = 0.5, 5, 50."

    def plan(self, plan: Plan, ctx: Context) -> None:
        """One unit: the deepest usable block with the three λ_V."""
        info = self.cnn_model(plan, ctx)
        if info is not None:
            self.cnn_unit(plan, ctx, info, info["usable"][-1], lambdas=LAMBDAS_TV)


class Fig8(LayersFigure):
    """The central 5×5 neighbourhood of spatial layers, with the receptive-field box."""

    name = "fig8"
    title = "Figure 8 analogue — central 5×5 neighbourhood, receptive field as a box"
    text = ("Reconstruction from the central 5×5 neighbourhood of the code only (masked loss), λ_V = 50 as the "
            "paper; the white box is the receptive field of those 5×5 units (a code map smaller than 5×5 is used "
            "whole, its size in the caption).")

    def plan(self, plan: Plan, ctx: Context) -> None:
        """One masked unit per selected spatial block (the paper: conv1 … relu5, 14 of 20 layers), λ₃ = 50."""
        info = self.cnn_model(plan, ctx)
        if info is None:
            return
        n_spatial = max(1, round(14 / 20 * len(info["blocks"])))
        spatial = [b for b in info["blocks"][:n_spatial] if b in info["usable"]]
        for layer in spread(spatial, plan.config.fig8_layers):
            self.cnn_unit(plan, ctx, info, layer, lambdas=[LAMBDAS_TV[2]], window=5, box=True)


class Fig9(FigureExperiment):
    """The first vs the second half of the channels of the conv1 / norm1 / norm2 analogues."""

    name = "fig9"
    title = "Figure 9 analogue — first vs second half of the channels"
    text = ("Reconstruction from the first or the second half of the channels (the paper: CNN-A's two "
            "streams).")

    def plan(self, plan: Plan, ctx: Context) -> None:
        """Two units (channel halves) per layer, on the first one or two images, λ_V = 0.5."""
        info = self.cnn_model(plan, ctx)
        if info is None:
            return
        layers = []
        for k in (1, 4, 8):  # conv1, norm1, norm2
            layer = analogue(info["blocks"], k)
            if layer in info["usable"] and layer not in layers:
                layers.append(layer)
        for layer in layers:
            for half in ("first-half", "second-half"):
                self.cnn_unit(plan, ctx, info, layer, images=min(2, plan.config.fig_images),
                              lambdas=[LAMBDAS_TV[0]], channels=half)
        plan.note(self.name, "MobileNet has no two-stream (grouped) layers like CNN-A; the analogue splits the "
                             "channels in two halves")

    def tiles(self, c: Collected, rows: list[dict]) -> tuple[list, list[str], int]:
        """One row per image: the original, then each (layer, half)."""
        tiles, caps = [], []
        for n, _ in enumerate(rows[0]["params"]["images"]):
            tiles.append(_png(c, rows[0], picture_name("original", n)))
            caps.append("original")
            for row in rows:
                tiles.append(_png(c, row, picture_name("recon", n)))
                caps.append(f"{_short(row)} {row['params']['channels'].split('-')[0]} {_err(row, n)}")
        return tiles, caps, 1 + len(rows)


class Fig10(FigureExperiment):
    """Deep-layer (pool5 analogue) reconstructions of several images."""

    name = "fig10"
    title = "Figure 10 analogue — deep-layer reconstructions of several images"
    text = "Reconstructions of several images from the block at pool5's relative depth."

    def plan(self, plan: Plan, ctx: Context) -> None:
        """One unit: the block at pool5's depth on ``fig_images`` images."""
        info = self.cnn_model(plan, ctx)
        if info is None:
            return
        layer = _analogue(info, 15, info["usable"][-1])  # pool5
        self.cnn_unit(plan, ctx, info, layer, images=plan.config.fig_images)

    def tiles(self, c: Collected, rows: list[dict]) -> tuple[list, list[str], int]:
        """Originals in the first row, reconstructions in the second."""
        row = rows[0]
        n = len(row["params"]["images"])
        tiles = ([_png(c, row, picture_name("original", i)) for i in range(n)]
                 + [_png(c, row, picture_name("recon", i)) for i in range(n)])
        return tiles, ["original"] * n + [f"{_short(row)} {_err(row, i)}" for i in range(n)], n


#: The image priors compared by :class:`FigPriors`: label → extra invert() settings.
PRIORS = {"pixel (paper)": {"param": "pixel", "method": "momentum", "grad_leak": 0.0}, "fourier": {"param": "fourier"},
          "dip": {"param": "dip"}, "lucent": LUCENT}


class FigPriors(FigureExperiment):
    """One image through four depths for each image prior, the lucent configuration beside them."""

    name = "priors"
    title = "Image priors — pixels (the paper's), Fourier, Deep Image Prior and lucent, at four depths"
    text = ("The same image reconstructed from four blocks spread over the depth, with the image parameterised as "
            "pixels (the paper's method), a colour-decorrelated Fourier image (preimage's default for CNN layers) "
            "and a Deep Image Prior generator (preimage's α-norm and TV priors on each, at the weight each "
            "parameterisation declares), beside the lucent configuration (sigmoid Fourier image, Adam 5e-2, no "
            "prior); the same number of iterations each.")

    def plan(self, plan: Plan, ctx: Context) -> None:
        """One unit per (prior, block): the first eval image, λ_V by the depth rule."""
        info = self.cnn_model(plan, ctx)
        if info is None:
            return
        for options in PRIORS.values():
            scale = recipe_prior_scale(CNNLayer.param, options)
            for layer in spread(info["usable"], 4):
                self.cnn_unit(plan, ctx, info, layer, options=options,
                              lambdas=[scale * layer_lambda(info["blocks"], layer)])

    def tiles(self, c: Collected, rows: list[dict]) -> tuple[list, list[str], int]:
        """A row per prior: the original, then its reconstruction from each block."""
        by_prior = {label: [r for r in rows if r["params"].get("options") == dict(opts)]
                    for label, opts in PRIORS.items()}
        layers = max((len(v) for v in by_prior.values()), default=0)
        tiles, caps = [], []
        for label, units in by_prior.items():
            if not units:
                continue
            tiles.append(_png(c, units[0], picture_name("original", 0)))
            caps.append(label)
            tiles += [_png(c, u, picture_name("recon", 0)) for u in units] + [None] * (layers - len(units))
            caps += [f"{_short(u)} {_err(u, 0)}" for u in units] + [""] * (layers - len(units))
        return tiles, caps, 1 + layers


class FigVisualize(FigureExperiment):
    """Activation maximisation and caricatures (IJCV 2016) on the figure model (issue 16)."""

    name = "maximise"
    title = "Activation maximisation and caricatures — what units respond to, what layers see"
    text = ("First rows: the first 16 channels (8 in quick runs) of three blocks spread over the depth, each "
            "maximised (the channel's mean activation, caption: the activation reached), a block's channels as one "
            "batched optimisation. Next row: class images of the classes of the first eval images (caption: the "
            "logit reached and the network's top-1). Last rows: caricatures (IJCV's: the inner product with the "
            "image's rectified, normalised code, 1 at the image, maximised from it; caption: the value reached): "
            "each eval image followed by its caricatures at the three depths, two images per row. Bounded range "
            "(160 grey levels, 0–255), jitter by a quarter of the stride; Fourier images for channels and classes, "
            "pixels for caricatures.")
    channels = 16
    classes = 5
    caricatures = 3
    #: ``reproduce --quick`` (and ``tiny``): fewer channels, images and iterations, so the figure stays cheap
    #: (about a minute of one core): ``(channels, classes, caricatures, iterations)``.
    quick = (8, 2, 2, 30)

    def layers(self, info: dict) -> list[str]:
        """Three blocks at about a quarter, half and three quarters of the usable depth."""
        usable = info["usable"]
        picks = [usable[min(len(usable) - 1, round(f * (len(usable) - 1)))] for f in (0.25, 0.5, 0.75)]
        return list(dict.fromkeys(picks))

    def plan(self, plan: Plan, ctx: Context) -> None:
        """A channels unit and a caricature unit per layer; one class unit at the network's input size."""
        from ..models.classify import synset_class_index
        from .visualisation import visualize_params
        info = self.cnn_model(plan, ctx)
        if info is None:
            return
        c, model = plan.config, plan.config.figure_model
        opts = ctx.model_options(model)
        size = None if info["size"] == min(info["input_size"]) else info["size"]
        names = ctx.image_names()
        n_chan, n_class, n_cari, its = (self.channels, self.classes, self.caricatures, None)
        if c.preset != "full":
            n_chan, n_class, n_cari, its = self.quick
            its = min(its, c.cnn_iterations or its)
        for layer in self.layers(info):
            plan.add(visualize_params(self.name, model, layer, what="channels", size=size, iterations=its,
                                      units=range(n_chan), seed=c.seed, model_options=opts))
        for layer in self.layers(info):
            plan.add(visualize_params(self.name, model, layer, what="caricature", size=size, iterations=its,
                                      images=names[:n_cari], seed=c.seed, model_options=opts))
        try:
            classes = list(dict.fromkeys(synset_class_index(n) for n in names))[:n_class]
        except FileNotFoundError as exc:
            plan.skipped[f"{self.name}/classes"] = f"class labels unavailable: {exc}"
            return
        plan.add(visualize_params(self.name, model, info["blocks"][-1], what="classes", size=None, iterations=its,
                                  units=[k for k in classes if k is not None], seed=c.seed,
                                  model_options=opts))
        if size is not None:
            plan.note(self.name, f"channels and caricatures at {size}²; class images at the network's input size")

    def unit_settings(self, row: dict) -> str:
        """What a visualisation unit maximised, on what image, how long."""
        st, p = row["metrics"].get("settings", {}), row["params"]
        return (f"{p['what']} of {rep_label(p)}: {len(row['metrics'].get('labels', []))} as one batch, "
                f"{'×'.join(map(str, st.get('image_shape', [])))}, {st.get('param')} image, "
                f"{st.get('iterations')} iterations, jitter {st.get('jitter')}, {secs(row['timings'].get('seconds'))}")

    def tiles(self, c: Collected, rows: list[dict]) -> tuple[list, list[str], int]:
        """Channel rows (8 per row), the class row, then per image its original and caricatures."""
        cols = 8
        tiles, caps = [], []

        def pad():
            while len(tiles) % cols:
                tiles.append(_placeholder(""))
                caps.append("")
        for row in (r for r in rows if r["params"]["what"] == "channels"):
            m = row["metrics"]
            for i, (label, score) in enumerate(zip(m["labels"], m["scores"])):
                tiles.append(_png(c, row, picture_name("recon", i)))
                caps.append(f"{_short(row, 12)} c{label.split()[-1]} {score:.3g}")
            pad()
        for row in (r for r in rows if r["params"]["what"] == "classes"):
            m = row["metrics"]
            for i, (label, score) in enumerate(zip(m["labels"], m["scores"])):
                top = (m.get("top1") or [{}] * len(m["labels"]))[i].get("label", "?").split(",")[0]
                tiles.append(_png(c, row, picture_name("recon", i)))
                caps.append(f"{label[:12]} {score:.3g} ({top[:10]})")
            pad()
        cari = [r for r in rows if r["params"]["what"] == "caricature"]
        for n in range(max((len(r["params"]["images"]) for r in cari), default=0)):
            tiles.append(_png(c, cari[0], picture_name("original", n)))
            caps.append("original")
            for row in cari:
                tiles.append(_png(c, row, picture_name("recon", n)))
                caps.append(f"{_short(row, 12)} ×{row['metrics']['scores'][n]:.2f}")
        pad()
        return tiles, caps, cols


FIGURES = (Fig1(), Fig2(), Fig3(), Fig4(), Fig5(), Fig6(), Fig7(), Fig8(), Fig9(), Fig10(), FigPriors(), FigVisualize())
