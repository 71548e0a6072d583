"""The paper's tables as experiments: Table 1 (shallow representations), Table 2 (CaffeNet's
structure) and the Table 3 analogue (MobileNet blocks × three TV weights).

Errors are scored by :mod:`.scoring` (through :mod:`preimage.metrics`) in both conventions:
``paper`` (‖Φ(x*) − Φ(xᵢ)‖ / mean pairwise distance) and ``authors`` (the squared version of the
authors' code).
"""

from __future__ import annotations

import math

import numpy as np

from ..data import spread
from ..paper import LAMBDA_TV, LAMBDAS_TV
from ..paper import TABLE1 as PAPER_TABLE1
from ..paper import TABLE1_SECONDS as PAPER_TABLE1_SECONDS
from ..paper import TABLE2 as PAPER_TABLE2
from ..paper import TABLE3 as PAPER_TABLE3
from ..paper import TABLE3_CHOICE as PAPER_TABLE3_CHOICE
from . import scoring
from .base import (Context, Experiment, Plan, cnn_rep, codes_params, describe_preprocess, hoggle_params,
                   invert_params, layer_lambda, options_text, shallow_preprocess, shallow_rep, shallow_unavailable)
from .report import PAPER_LABEL, Collected, Section, Table, pct

__all__ = ["TABLE1", "TABLE2", "TABLE3", "table1_rows", "table3_rows"]

_DISPLAY = {"hog": "HOG", "hogb": "HOGb", "dsift": "DSIFT", "hoggle": "HOGgle"}


def _codes_rows(rows: list[dict]) -> dict[str, dict]:
    """Representation name or ``model/layer`` → the finished ``codes`` row (the set's normalisers)."""
    out = {}
    for r in rows:
        if r["kind"] == "codes" and r["status"] == "finished":
            rep = r["params"]["rep"]
            out[rep.get("name") or f"{rep.get('model')}/{rep.get('layer')}"] = r
    return out


def _preprocessing(rows: list[dict]) -> str | None:
    """The sentence stating the preprocessing of a table's invert units (None without one, or for
    units stored before the preprocessing was a parameter)."""
    p = next((r["params"] for r in rows if r["kind"] == "invert" and "preprocess" in r["params"]), None)
    return describe_preprocess(p["preprocess"], p["size"], p["mode"]) if p else None


# ----------------------------------------------------------------------------------------------
# Table 1
# ----------------------------------------------------------------------------------------------

def _similarity_cell(image: dict) -> str:
    """``"SSIM / orientation ∩"`` of :func:`.scoring.image_scores`, "—" where not measured."""
    vals = [image.get(k, float("nan")) for k in ("ssim", "orientation")]
    return " / ".join(f"{v:.3f}" if math.isfinite(v) else "—" for v in vals)


def table1_rows(c: Collected) -> list[dict]:
    """Per representation: its units (count, finished, failed), images, seconds per image and the
    scored errors (:func:`.scoring.score_rows`: ``{"images", "paper", "authors"}`` or None)."""
    rows = c.units.get("table1", [])
    codes = _codes_rows(rows)
    reps = list(c.config.get("shallow_reps", ["hog", "hogb", "dsift"]))
    if any(r["kind"] == "hoggle" for r in rows):
        reps.append("hoggle")
    out = []
    for rep in reps:
        units = [r for r in rows if (r["kind"] == "hoggle" and rep == "hoggle")
                 or (r["kind"] == "invert" and r["params"]["rep"].get("name") == rep)]
        done = [r for r in units if r["status"] == "finished"]
        out.append({"rep": rep, "units": len(units), "finished": len(done),
                    "failed": sum(r["status"] == "failed" for r in units),
                    "images": sum(len(r["params"]["images"]) for r in done),
                    "seconds_per_image": scoring.seconds_per_image(done),
                    "iterations": next((r["metrics"].get("iterations") for r in done if r["kind"] == "invert"), None),
                    "score": scoring.score_rows(done, codes.get("hog" if rep == "hoggle" else rep)),
                    "image": scoring.image_scores(done)})
    return out


class Table1(Experiment):
    """HOG, HOGb, DSIFT inverted (λ_V = 5, β = 2) and HOGgle, on the eval images in grey."""

    name = "table1"
    title = "Table 1 — shallow representations (HOG, HOGb, DSIFT, HOGgle)"
    text = ("HOG, HOGb and DSIFT inverted with the paper's settings (λ_V = 5, β = 2), and the HOGgle baseline, "
            "on the eval images in grey; the error in both conventions and the seconds per image.")

    def plan(self, plan: Plan, ctx: Context) -> None:
        """A ``codes`` unit per representation (HOG also for HOGgle), ``invert`` and ``hoggle`` units per batch."""
        c = plan.config
        names = self.table_images(plan, ctx)
        if names is None:
            return
        preprocess, size = shallow_preprocess(c)
        batches = ctx.batches(names, "grey", preprocess, size)
        reps = []
        for rep in c.shallow_reps:
            reason = shallow_unavailable(rep)
            if reason:
                plan.skipped[f"{self.name}/{rep}"] = reason
            else:
                reps.append(rep)
        want_hoggle = c.hoggle != "none"
        for rep in reps + (["hog"] if want_hoggle and "hog" not in reps else []):  # HOGgle is scored in HOG space
            plan.add(codes_params(self.name, shallow_rep(rep), names, batches, mode="grey", preprocess=preprocess,
                                  size=size))
        for rep in reps:
            for batch in batches:
                plan.add(invert_params(self.name, shallow_rep(rep), batch, mode="grey", preprocess=preprocess,
                                       size=size, lambdas=[LAMBDA_TV], iterations=c.shallow_iterations, seed=c.seed,
                                       save="first"))
        if want_hoggle:
            for batch in batches:
                plan.add(hoggle_params(self.name, batch, preprocess=preprocess, size=size, dictionary=c.hoggle))

    def render(self, collected: Collected) -> Section:
        """Ours (both conventions, seconds per image, completeness) beside the paper's row."""
        s = Section(self.name, self.title, [self.text])
        rows = table1_rows(collected)
        body = []
        for e in rows:
            ref = PAPER_TABLE1.get(e["rep"])
            p, a = (e["score"]["paper"], e["score"]["authors"]) if e["score"] else (None, None)
            complete = f"{e['finished']}/{e['units']}" + (f" ({e['failed']} failed)" if e["failed"] else "")
            body.append([_DISPLAY.get(e["rep"], e["rep"]), pct(p["mean"], p["std"]) if p else "—",
                         pct(a["mean"], a["std"]) if a else "—", str(p["n"]) if p else "0",
                         f"{e['seconds_per_image']:.2f}" if math.isfinite(e["seconds_per_image"]) else "—",
                         _similarity_cell(e["image"]),
                         pct(ref[0], ref[1]) if ref else "—", PAPER_TABLE1_SECONDS.get(e["rep"], "—"), complete])
        s.blocks.append(Table(
            "Table 1: inversion error of shallow representations (percent, mean ± std over images)",
            ["representation", "ours: error % (paper's convention)", "ours: error % (authors' code, squared)",
             "images", "ours: s / image", "ours: SSIM / orient. ∩", f"{PAPER_LABEL}: error %",
             f"{PAPER_LABEL}: s / image", "units done"],
            body,
            note="Error of image i: ‖Φ(x*) − Φ(xᵢ)‖ / N_Φ with N_Φ the mean pairwise distance between the codes of "
                 "the evaluated images (paper's convention), and ‖Φ(x*) − Φ(xᵢ)‖² / mean squared pairwise distance "
                 "(authors' code). HOGgle is scored in the HOG space of the HOG row. Seconds per image: optimisation "
                 "wall time of each batched unit divided by its images (HOGgle: per-image inversion time)."))
        its = next((e["iterations"] for e in rows if e.get("iterations")), None)
        prep = _preprocessing(collected.units.get(self.name, []))
        s.paragraphs.append(f"Settings: λ_V = 5 and λ_α = 2.16e8 at 227×227×3 (carried to the image size by "
                            f"preimage.objective.default_lambdas), β = 2, {its or 'default'} iterations"
                            + (f"; {prep}." if prep else ", grey images."))
        return s


# ----------------------------------------------------------------------------------------------
# Table 2
# ----------------------------------------------------------------------------------------------

class Table2(Experiment):
    """CaffeNet's layers (channels, receptive fields) computed from the graph vs the paper's Table 2."""

    name = "table2"
    title = "Table 2 — CNN-A (CaffeNet) structure: channels and receptive fields"
    text = "CaffeNet (CNN-A) layer structure: channels and receptive fields beside the paper's Table 2."

    def plan(self, plan: Plan, ctx: Context) -> None:
        """One ``layers`` unit (structure only)."""
        plan.add({"experiment": self.name, "kind": "layers", "model": "caffenet", "size": None})
        plan.note(self.name, "structure only: CaffeNet's trained weights are not in the shared data, so no "
                             "reconstructions are computed from it")

    def render(self, collected: Collected) -> Section:
        """Ours beside the paper's, layer by layer, with a match mark."""
        s = Section(self.name, self.title, [self.text])
        done = collected.finished(self.name)
        if not done:
            s.paragraphs.append("No finished unit.")
            return s
        layers = done[0]["metrics"]["layers"]
        body, bold, ok = [], set(), 0
        for i in range(max(len(layers), len(PAPER_TABLE2))):
            ours = layers[i] if i < len(layers) else None
            ref = PAPER_TABLE2[i] if i < len(PAPER_TABLE2) else None
            rf = ours["rf_size"][0] if ours and ours.get("rf_size") else None
            match = bool(ours and ref and ours["channels"] == ref[1] and rf is not None and round(rf) == ref[2])
            ok += match
            body.append([str(i + 1), ours["name"] if ours else "—", str(ours["channels"]) if ours else "—",
                         (f"{rf:g}" if rf is not None else "—"),
                         "×".join(str(v) for v in ours["output_shape"]) if ours else "—",
                         ref[0] if ref else "—", str(ref[1]) if ref else "—", str(ref[2]) if ref else "—",
                         "✓" if match else "✗"])
            if not match:
                bold.add((i, 8))
        s.blocks.append(Table("CaffeNet layers: ours (computed from the network graph) beside the paper's Table 2",
                              ["#", "ours: layer", "ours: channels", "ours: receptive field", "ours: output shape",
                               f"{PAPER_LABEL}: layer", f"{PAPER_LABEL}: channels",
                               f"{PAPER_LABEL}: receptive field", "match"], body, bold))
        s.paragraphs.append(f"{ok} of {len(PAPER_TABLE2)} layers match the paper's channels and receptive field.")
        return s


# ----------------------------------------------------------------------------------------------
# Table 3
# ----------------------------------------------------------------------------------------------

def _layer_entry(units: list[dict], codes_row: dict | None, info: dict) -> dict:
    """One Table-3 line: a layer's units, structure, and per λ the scored errors (or None)."""
    done = [u for u in units if u["status"] == "finished"]
    lambdas = units[0]["params"]["lambda_tv"]
    scores = [scoring.score_rows(done, codes_row, k=k) for k in range(len(lambdas))]
    return {"layer": units[0]["params"]["rep"]["layer"], "lambdas": lambdas, "units": len(units),
            "finished": len(done), "channels": info.get("channels"), "rf": (info.get("rf_size") or [None])[0],
            "shape": info.get("output_shape"), "scores": scores,
            "image": [scoring.image_scores(done, k=k) for k in range(len(lambdas))],
            "seconds": sum(float(u["metrics"].get("optimisation_seconds", 0)) for u in done)}


def table3_rows(c: Collected) -> dict[str, list[dict]]:
    """model → per layer (in plan order): channels, code shape, receptive field, and per λ the
    scored errors (:func:`.scoring.score_rows`, None when not computed)."""
    rows = c.units.get("table3", [])
    codes = _codes_rows(rows)
    layer_info: dict[str, dict] = {}
    inv: dict[str, dict[str, list[dict]]] = {}
    for r in rows:
        if r["kind"] == "layers" and r["status"] == "finished":
            layer_info[r["params"]["model"]] = {x["name"]: x for x in r["metrics"]["layers"]}
        elif r["kind"] == "invert":
            rep = r["params"]["rep"]
            inv.setdefault(rep["model"], {}).setdefault(rep["layer"], []).append(r)
    return {m: [_layer_entry(units, codes.get(f"{m}/{layer}"), layer_info.get(m, {}).get(layer, {}))
                for layer, units in layers.items()]
            for m, layers in inv.items()}


def _paper_table3() -> Table:
    """The paper's Table 3 (CNN-A), bold where the paper chose the setting."""
    body, bold = [], set()
    for k, lam in enumerate(LAMBDAS_TV):
        body.append([f"λ = {lam:g}"] + [pct(PAPER_TABLE3[n][k][0], PAPER_TABLE3[n][k][1], 1) for n in PAPER_TABLE3])
        for j, n in enumerate(PAPER_TABLE3):
            if PAPER_TABLE3_CHOICE[n] == k:
                bold.add((k, j + 1))
    return Table(f"{PAPER_LABEL}, Table 3 (CNN-A = CaffeNet, 100 images, error % mean ± std); bold: the setting "
                 "the paper chose per layer", ["λ_V"] + list(PAPER_TABLE3), body, bold)


def _model_table3(model: str, rows: list[dict], rule: dict, conv: str, label: str) -> Table:
    """One model's Table 3 in one convention: bold the lowest error per layer, † the depth rule's λ."""
    lambdas = rows[0]["lambdas"]
    n_img = max((v[conv]["n"] for e in rows for v in e["scores"] if v), default=0)
    body, bold = [], set()
    for i, e in enumerate(rows):
        cells = [e["layer"], str(e["channels"] or "—"), "×".join(map(str, e["shape"])) if e["shape"] else "—",
                 f"{e['rf']:g}" if e["rf"] else "—"]
        vals = [v[conv]["mean"] if v else float("inf") for v in e["scores"]]
        best = int(np.argmin(vals)) if any(math.isfinite(v) for v in vals) else None
        for k, v in enumerate(e["scores"]):
            mark = " †" if rule.get(e["layer"]) == lambdas[k] else ""
            cells.append((pct(v[conv]["mean"], v[conv]["std"], 1) if v else "—") + mark)
            if best == k:
                bold.add((i, 4 + k))
        cells.append(f"{e['finished']}/{e['units']}")
        body.append(cells)
    return Table(f"{model}: error % ({label}), mean ± std over {n_img} images; bold: the lowest per layer; "
                 "†: the λ_V the paper's depth rule picks for this layer",
                 ["layer", "channels", "code shape", "receptive field"] + [f"λ_V = {v:g}" for v in lambdas]
                 + ["units done"], body, bold)


def _model_similarity(model: str, rows: list[dict]) -> Table:
    """One model's image-space similarity per layer and λ_V (SSIM / orientation-histogram
    intersection with the original, means; bold: the highest SSIM per layer)."""
    lambdas = rows[0]["lambdas"]
    body, bold = [], set()
    for i, e in enumerate(rows):
        body.append([e["layer"]] + [_similarity_cell(v) for v in e["image"]])
        ssim = [v.get("ssim", float("nan")) for v in e["image"]]
        if any(math.isfinite(v) for v in ssim):
            bold.add((i, 1 + int(np.nanargmax(ssim))))
    return Table(f"{model}: image-space similarity of the reconstructions to the originals (SSIM on luminance / "
                 "orientation-histogram intersection, means; 1 = identical); bold: the highest SSIM per layer",
                 ["layer"] + [f"λ_V = {v:g}" for v in lambdas], body, bold)


class Table3(Experiment):
    """Every (selected) block of the MobileNets × λ_V ∈ {0.5, 5, 50} on the eval images."""

    name = "table3"
    title = "Table 3 analogue — MobileNet blocks × three TV weights"
    text = ("Every selected block of the MobileNets inverted at λ_V = 0.5, 5, 50 on the eval images (RGB), the error "
            "in both conventions beside the paper's Table 3 for CNN-A.")

    def plan(self, plan: Plan, ctx: Context) -> None:
        """Per model: a ``layers`` unit; per selected block a ``codes`` unit and ``invert`` units per batch."""
        c = plan.config
        names = self.table_images(plan, ctx, c.layer_images)
        if names is None:
            return
        for model in c.table3_models:
            try:
                info = ctx.model(model)
            except Exception as exc:  # noqa: BLE001
                plan.skipped[f"{self.name}/{model}"] = f"model unavailable: {type(exc).__name__}: {exc}"
                continue
            self._plan_model(plan, ctx, model, info, names)
        if not any(u.experiment == self.name for u in plan.units):
            plan.skipped[self.name] = "; ".join(v for k, v in plan.skipped.items() if k.startswith(f"{self.name}/"))

    def _plan_model(self, plan: Plan, ctx: Context, model: str, info: dict, names: list[str]) -> None:
        """The units of one model."""
        c, size = plan.config, info["size"]
        layers = spread(info["usable"], c.max_layers)
        batches = ctx.batches(names, "rgb", "crop", size)
        opts = ctx.model_options(model)
        plan.add({"experiment": self.name, "kind": "layers", "model": model, "size": size,
                  **({"model_options": opts} if opts else {})})
        plan.info.setdefault("table3_rule", {})[model] = {b: layer_lambda(info["blocks"], b) for b in layers}
        if opts:
            plan.note(self.name, f"{model}: loaded with {options_text(opts)}")
        for layer in layers:
            rep = cnn_rep(model, layer, opts)
            plan.add(codes_params(self.name, rep, names, batches, mode="rgb", preprocess="crop", size=size))
            for batch in batches:
                plan.add(invert_params(self.name, rep, batch, mode="rgb", preprocess="crop", size=size,
                                       lambdas=LAMBDAS_TV, iterations=c.cnn_iterations, seed=c.seed, save="first"))
        if len(layers) < len(info["blocks"]):
            left = [b for b in info["blocks"] if b not in layers]
            plan.note(self.name, f"{model}: {len(layers)} of {len(info['blocks'])} blocks at {size}×{size} "
                                 f"(left out: {', '.join(left)})")

    def render(self, collected: Collected) -> Section:
        """Per model two tables (both conventions), then the paper's Table 3."""
        s = Section(self.name, self.title, [self.text])
        data = table3_rows(collected)
        rules = (collected.plan.get("info") or {}).get("table3_rule", {})
        for model, rows in data.items():
            if rows:
                for conv, label in (("paper", "paper's convention"), ("authors", "authors' code, squared")):
                    s.blocks.append(_model_table3(model, rows, rules.get(model, {}), conv, label))
                s.blocks.append(_model_similarity(model, rows))
        if data:
            prep = _preprocessing(collected.units.get(self.name, []))
            s.paragraphs.append("λ_V values are the paper's λ₁ = 0.5, λ₂ = 10λ₁, λ₃ = 100λ₁. The paper's depth rule "
                                "(λ₁ for layers 1–6 of 20, λ₂ for 7–12, λ₃ for 13–20) is applied by relative depth "
                                "among all the network's blocks. Layer depth, channels and receptive fields are "
                                "computed from the network graph." + (f" Preprocessing: {prep}." if prep else ""))
        s.blocks.append(_paper_table3())
        return s


TABLE1, TABLE2, TABLE3 = Table1(), Table2(), Table3()
