"""The reproduction report, built from the results store alone.

:func:`write_report` reads ``DIR/results.sqlite`` (and the units' PNGs) and writes

* ``DIR/report.html``: self-contained (CSS inline, every image embedded as base64 PNG, no
  network assets),
* ``DIR/report.md``: the same tables in Markdown, figures as relative links to
  ``DIR/report/figN.png``.

Every number of "ours" comes from the store (unit metrics, normaliser units, timings); the
paper's numbers (:mod:`preimage.reproduce.experiments`, from NUMBERS.md) are shown beside them and
labelled as the paper's. Errors are given in both conventions of :mod:`preimage.metrics`:
``paper`` (‖Φ(x*) − Φ(xᵢ)‖ / mean pairwise distance) and ``authors`` (the squared version of the
authors' code).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .experiments import (EXPERIMENTS, PAPER_TABLE1, PAPER_TABLE1_SECONDS, PAPER_TABLE2, PAPER_TABLE3,
                          PAPER_TABLE3_CHOICE, TITLES)
from .store import ResultStore

__all__ = ["write_report", "collect", "table1_rows", "table3_rows"]

TILE = 170
PAPER_LABEL = "paper (Mahendran & Vedaldi 2015)"


# ----------------------------------------------------------------------------------------------
# Document model: a list of blocks rendered to HTML and Markdown
# ----------------------------------------------------------------------------------------------

@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]]
    bold: set = field(default_factory=set)   # (row, col) cells in bold
    note: str = ""


@dataclass
class Figure:
    name: str
    caption: str
    png: bytes


@dataclass
class Section:
    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    blocks: list[Any] = field(default_factory=list)


def _pct(mean: float, std: float | None = None, digits: int = 2) -> str:
    if mean is None or not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.1f}" if std is not None else "")


def _summ(values: Sequence[float]) -> tuple[float, float, int]:
    a = np.asarray(list(values), dtype=np.float64) * 100.0
    if a.size == 0:
        return float("nan"), float("nan"), 0
    return float(a.mean()), float(a.std()) if a.size > 1 else 0.0, int(a.size)


def _secs(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


# ----------------------------------------------------------------------------------------------
# Reading the store
# ----------------------------------------------------------------------------------------------

@dataclass
class Collected:
    store: ResultStore
    plan: dict
    config: dict
    versions: dict
    runs: list[dict]
    units: dict[str, list[dict]]          # experiment → rows (in plan order; missing ones absent)
    missing: dict[str, int]               # experiment → planned units without a row

    def finished(self, exp: str) -> list[dict]:
        return [r for r in self.units.get(exp, []) if r["status"] == "finished"]


def collect(store: ResultStore) -> Collected:
    """Rows of the latest plan recorded in the store (``meta.plan``), grouped by experiment."""
    plan = store.get_meta("plan") or {}
    units: dict[str, list[dict]] = {}
    missing: dict[str, int] = {}
    planned = plan.get("units")
    if planned is None:  # no plan recorded: everything in the store
        planned = {}
        for r in store.rows():
            planned.setdefault(r["experiment"], []).append(r["key"])
        plan = {"experiments": [e for e in EXPERIMENTS if e in planned], "units": planned, "skipped": {}, "notes": {}}
    for exp, keys in planned.items():
        rows = [store.get(k) for k in keys]
        units[exp] = [r for r in rows if r is not None]
        missing[exp] = sum(r is None for r in rows)
    return Collected(store, plan, store.get_meta("config", {}) or {}, store.get_meta("versions", {}) or {},
                     store.runs(), units, missing)


def _png(store: ResultStore, row: dict, name: str):
    from PIL import Image
    path = store.file(row, f"{name}.png")
    if not path.is_file():
        return None
    with Image.open(path) as im:
        return im.convert("RGB").copy()


def _placeholder(text: str = "missing"):
    from PIL import Image, ImageDraw
    im = Image.new("RGB", (TILE, TILE), (235, 235, 235))
    ImageDraw.Draw(im).text((8, TILE // 2 - 6), text, fill=(120, 0, 0))
    return im


def _grid_png(tiles: list, captions: list[str], columns: int, title: str | None = None) -> bytes:
    from ..visualize import grid
    tiles = [t if t is not None else _placeholder() for t in tiles]
    pic = grid(tiles, captions, columns=max(1, columns), tile_height=TILE, title=title)
    buf = io.BytesIO()
    pic.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _rep_label(params: dict) -> str:
    rep = params.get("rep") or {}
    if params.get("kind") == "hoggle":
        return "hoggle"
    return rep.get("layer") or rep.get("name") or "?"


def _short(row: dict, width: int = 14) -> str:
    """A representation/layer label short enough for a tile caption."""
    label = _rep_label(row["params"])
    return label if len(label) <= width else label[:width - 1] + "~"


def _err(row: dict, n: int, r: int = 0, k: int = 0) -> str:
    try:
        return f"{100 * row['metrics']['relative_error'][n][r][k]:.1f}%"
    except (KeyError, IndexError, TypeError):
        return "?"


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def _normalisers(rows: list[dict]) -> dict[str, dict]:
    """representation/layer label → normaliser metrics, from the ``codes`` units."""
    out = {}
    for r in rows:
        if r["kind"] == "codes" and r["status"] == "finished":
            rep = r["params"]["rep"]
            label = rep.get("name") or f"{rep.get('model')}/{rep.get('layer')}"
            out[label] = r["metrics"]
    return out


def table1_rows(c: Collected) -> list[dict]:
    """Per representation: errors in both conventions (mean, std, n), seconds per image, completeness."""
    rows = c.units.get("table1", [])
    norms = _normalisers(rows)
    out = []
    reps = [r for r in c.config.get("shallow_reps", ["hog", "hogb", "dsift"])]
    if any(r["kind"] == "hoggle" for r in rows):
        reps = reps + ["hoggle"]
    for rep in reps:
        units = [r for r in rows if (r["kind"] == "hoggle" and rep == "hoggle")
                 or (r["kind"] == "invert" and r["params"]["rep"].get("name") == rep)]
        done = [r for r in units if r["status"] == "finished"]
        norm = norms.get("hog" if rep == "hoggle" else rep)
        dist, secs, n_img = [], 0.0, 0
        for r in done:
            if r["kind"] == "hoggle":
                dist += list(r["metrics"]["distance"])
                secs += float(sum(r["metrics"]["seconds"]))
            else:
                dist += [d[0][0] for d in r["metrics"]["distance"]]
                secs += float(r["metrics"]["optimisation_seconds"])
            n_img += len(r["params"]["images"])
        entry = {"rep": rep, "units": len(units), "finished": len(done),
                 "failed": sum(r["status"] == "failed" for r in units), "images": n_img,
                 "seconds_per_image": secs / n_img if n_img else float("nan"),
                 "iterations": next((r["metrics"].get("iterations") for r in done if r["kind"] == "invert"), None)}
        if norm and dist:
            d = np.asarray(dist, dtype=np.float64)
            entry["paper"] = _summ(d / norm["normaliser"]["paper"])
            entry["authors"] = _summ(d ** 2 / norm["normaliser"]["authors"])
        out.append(entry)
    return out


_DISPLAY = {"hog": "HOG", "hogb": "HOGb", "dsift": "DSIFT", "hoggle": "HOGgle"}


def _section_table1(c: Collected) -> Section:
    s = Section("table1", TITLES["table1"])
    rows = table1_rows(c)
    body, bold = [], set()
    for i, e in enumerate(rows):
        ref = PAPER_TABLE1.get(e["rep"])
        p, a = e.get("paper"), e.get("authors")
        complete = f"{e['finished']}/{e['units']}" + (f" ({e['failed']} failed)" if e["failed"] else "")
        body.append([_DISPLAY.get(e["rep"], e["rep"]),
                     _pct(p[0], p[1]) if p else "—", _pct(a[0], a[1]) if a else "—",
                     str(p[2]) if p else "0", f"{e['seconds_per_image']:.2f}" if math.isfinite(
                         e["seconds_per_image"]) else "—",
                     _pct(ref[0], ref[1]) if ref else "—", PAPER_TABLE1_SECONDS.get(e["rep"], "—"), complete])
    s.blocks.append(Table(
        "Table 1: inversion error of shallow representations (percent, mean ± std over images)",
        ["representation", "ours: error % (paper's convention)", "ours: error % (authors' code, squared)",
         "images", "ours: s / image", f"{PAPER_LABEL}: error %", f"{PAPER_LABEL}: s / image", "units done"],
        body, bold,
        note="Error of image i: ‖Φ(x*) − Φ(xᵢ)‖ / N_Φ with N_Φ the mean pairwise distance between the codes of "
             "the evaluated images (paper's convention), and ‖Φ(x*) − Φ(xᵢ)‖² / mean squared pairwise distance "
             "(authors' code). HOGgle is scored in the HOG space of the HOG row. Seconds per image: optimisation "
             "wall time of each batched unit divided by its images (HOGgle: per-image inversion time)."))
    its = next((e["iterations"] for e in rows if e.get("iterations")), None)
    s.paragraphs.append(f"Settings: λ_V = 5 and λ_α = 2.16e8 at 227×227×3 (carried to the image size by "
                        f"preimage.objective.default_lambdas), β = 2, {its or 'default'} iterations, grey images.")
    return s


def _section_table2(c: Collected) -> Section:
    s = Section("table2", TITLES["table2"])
    done = c.finished("table2")
    if not done:
        s.paragraphs.append("No finished unit.")
        return s
    layers = done[0]["metrics"]["layers"]
    body, bold = [], set()
    ok = 0
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
                           f"{PAPER_LABEL}: layer", f"{PAPER_LABEL}: channels", f"{PAPER_LABEL}: receptive field",
                           "match"], body, bold))
    s.paragraphs.append(f"{ok} of {len(PAPER_TABLE2)} layers match the paper's channels and receptive field.")
    return s


def table3_rows(c: Collected) -> dict[str, list[dict]]:
    """model → per layer: channels, shape, RF, per λ (mean, std, n) in both conventions."""
    rows = c.units.get("table3", [])
    norms = _normalisers(rows)
    layer_info: dict[str, dict] = {}
    for r in rows:
        if r["kind"] == "layers" and r["status"] == "finished":
            layer_info[r["params"]["model"]] = {x["name"]: x for x in r["metrics"]["layers"]}
    out: dict[str, list[dict]] = {}
    order: dict[str, list[str]] = {}
    inv: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["kind"] != "invert":
            continue
        m, layer = r["params"]["rep"]["model"], r["params"]["rep"]["layer"]
        order.setdefault(m, [])
        if layer not in order[m]:
            order[m].append(layer)
        inv.setdefault((m, layer), []).append(r)
    for m, layers in order.items():
        out[m] = []
        for layer in layers:
            units = inv[(m, layer)]
            done = [u for u in units if u["status"] == "finished"]
            lambdas = units[0]["params"]["lambda_tv"]
            norm = norms.get(f"{m}/{layer}")
            info = layer_info.get(m, {}).get(layer, {})
            e = {"layer": layer, "lambdas": lambdas, "units": len(units), "finished": len(done),
                 "channels": info.get("channels"), "rf": (info.get("rf_size") or [None])[0],
                 "shape": info.get("output_shape"), "paper": [], "authors": [],
                 "seconds": sum(float(u["metrics"].get("optimisation_seconds", 0)) for u in done)}
            for k in range(len(lambdas)):
                d = np.asarray([dd[0][k] for u in done for dd in u["metrics"]["distance"]], dtype=np.float64)
                if norm and d.size:
                    e["paper"].append(_summ(d / norm["normaliser"]["paper"]))
                    e["authors"].append(_summ(d ** 2 / norm["normaliser"]["authors"]))
                else:
                    e["paper"].append(None)
                    e["authors"].append(None)
            out[m].append(e)
    return out


def _section_table3(c: Collected) -> Section:
    s = Section("table3", TITLES["table3"])
    data = table3_rows(c)
    rules = (c.plan.get("info") or {}).get("table3_rule", {})
    for model, rows in data.items():
        if not rows:
            continue
        lambdas = rows[0]["lambdas"]
        rule = rules.get(model, {})
        n_img = max((v[2] for e in rows for v in e["paper"] if v), default=0)
        for conv, label in (("paper", "paper's convention"), ("authors", "authors' code, squared")):
            body, bold = [], set()
            for i, e in enumerate(rows):
                cells = [e["layer"], str(e["channels"] or "—"),
                         "×".join(map(str, e["shape"])) if e["shape"] else "—",
                         f"{e['rf']:g}" if e["rf"] else "—"]
                vals = [v[0] if v else float("inf") for v in e[conv]]
                best = int(np.argmin(vals)) if any(math.isfinite(v) for v in vals) else None
                for k, v in enumerate(e[conv]):
                    mark = " †" if rule.get(e["layer"]) == lambdas[k] else ""
                    cells.append((_pct(v[0], v[1], 1) if v else "—") + mark)
                    if best == k:
                        bold.add((i, 4 + k))
                cells.append(f"{e['finished']}/{e['units']}")
                body.append(cells)
            s.blocks.append(Table(
                f"{model}: error % ({label}), mean ± std over {n_img} images; bold: the lowest per layer; "
                "†: the λ_V the paper's depth rule picks for this layer",
                ["layer", "channels", "code shape", "receptive field"] +
                [f"λ_V = {v:g}" for v in lambdas] + ["units done"], body, bold))
    if data:
        s.paragraphs.append("λ_V values are the paper's λ₁ = 0.5, λ₂ = 10λ₁, λ₃ = 100λ₁. The paper's depth rule "
                            "(λ₁ for layers 1–6 of 20, λ₂ for 7–12, λ₃ for 13–20) is applied by relative depth "
                            "among all the network's blocks. Layer depth, channels and receptive fields are "
                            "computed from the network graph.")
    # the paper's table (CNN-A)
    header = ["λ_V"] + list(PAPER_TABLE3)
    body, bold = [], set()
    for k, lam in enumerate((0.5, 5.0, 50.0)):
        body.append([f"λ = {lam:g}"] + [_pct(PAPER_TABLE3[n][k][0], PAPER_TABLE3[n][k][1], 1) for n in PAPER_TABLE3])
        for j, n in enumerate(PAPER_TABLE3):
            if PAPER_TABLE3_CHOICE[n] == k:
                bold.add((k, j + 1))
    s.blocks.append(Table(f"{PAPER_LABEL}, Table 3 (CNN-A = CaffeNet, 100 images, error % mean ± std); bold: the "
                          "setting the paper chose per layer", header, body, bold))
    return s


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

def _single(c: Collected, exp: str) -> dict | None:
    done = c.finished(exp)
    return done[0] if done else None


def _fig_restarts(c: Collected, exp: str) -> list[tuple[list, list[str], int]]:
    out = []
    for row in c.finished(exp):
        n, r, k = row["metrics"]["shape"]
        tiles = [_png(c.store, row, "original_n0")]
        caps = ["original"]
        for ri in range(r):
            for ki in range(k):
                tiles.append(_png(c.store, row, f"recon_n0_r{ri}_k{ki}"))
                lam = row["params"]["lambda_tv"][ki]
                caps.append(f"{_short(row)} " + (f"r{ri} " if r > 1 else "") + (f"tv{lam:g} " if k > 1 else "")
                            + _err(row, 0, ri, ki))
        out.append((tiles, caps, len(tiles)))
    return out


def _figure(c: Collected, exp: str) -> Figure | None:
    st = c.store
    rows = c.finished(exp)
    if not rows:
        return None
    tiles, caps, cols = [], [], 1
    if exp in ("fig1", "fig4", "fig7"):
        (tiles, caps, cols), = _fig_restarts(c, exp)[:1]
    elif exp == "fig6":
        parts = _fig_restarts(c, exp)
        cols = max(p[2] for p in parts)
        for t, cp, n in parts:
            tiles += t + [None] * (cols - n)
            caps += cp + [""] * (cols - n)
        tiles = [t if t is not None else _placeholder("") for t in tiles]
    elif exp == "fig2":
        tiles, caps = [_png(st, rows[0], "original_n0")], ["original"]
        for row in rows:
            tiles.append(_png(st, row, "recon_n0_r0_k0"))
            caps.append(f"{_short(row)} beta={row['params']['beta']:g} {_err(row, 0)}")
        cols = len(tiles)
    elif exp in ("fig5", "fig8"):
        tiles, caps = [_png(st, rows[0], "original_n0")], ["original"]
        for row in rows:
            name = "boxed_n0_r0_k0" if exp == "fig8" and "boxed_n0_r0_k0.png" in row["files"] else "recon_n0_r0_k0"
            tiles.append(_png(st, row, name))
            extra = ""
            if exp == "fig8" and row["metrics"].get("box"):
                t, l, b, r = row["metrics"]["box"]
                extra = f" RF{b - t}"
            caps.append(f"{_short(row)} {_err(row, 0)}{extra}")
        cols = min(len(tiles), 6)
    elif exp == "fig3":
        images: list[str] = []
        for row in rows:
            for name in row["params"]["images"]:
                if name not in images:
                    images.append(name)
        order = ["hog", "hogb", "dsift", "hoggle"]
        cols = 2 + len(order)
        for name in images:
            orig = glyph = None
            cells = {}
            for row in rows:
                if name not in row["params"]["images"]:
                    continue
                n = row["params"]["images"].index(name)
                label = _rep_label(row["params"])
                orig = orig or _png(st, row, f"original_n{n}")
                if row["kind"] == "hoggle":
                    cells["hoggle"] = (_png(st, row, f"recon_n{n}"),
                                       f"HOGgle: {100 * row['metrics']['relative_error'][n]:.1f}%")
                else:
                    cells[label] = (_png(st, row, f"recon_n{n}_r0_k0"), f"{_DISPLAY.get(label, label)}: {_err(row, n)}")
                    if label == "hog" and f"glyph_n{n}.png" in row["files"]:
                        glyph = _png(st, row, f"glyph_n{n}")
            tiles += [orig, glyph]
            caps += ["original", "HOG glyphs"]
            for rep in order:
                t, cp = cells.get(rep, (None, f"{_DISPLAY.get(rep, rep)}: -"))
                tiles.append(t)
                caps.append(cp)
    elif exp == "fig9":
        images = rows[0]["params"]["images"]
        cols = 1 + len(rows)
        for n, _ in enumerate(images):
            tiles.append(_png(st, rows[0], f"original_n{n}"))
            caps.append("original")
            for row in rows:
                tiles.append(_png(st, row, f"recon_n{n}_r0_k0"))
                caps.append(f"{_short(row)} {row['params']['channels'].split('-')[0]} {_err(row, n)}")
    elif exp == "fig10":
        row = rows[0]
        n = len(row["params"]["images"])
        cols = n
        tiles = [_png(st, row, f"original_n{i}") for i in range(n)] + \
                [_png(st, row, f"recon_n{i}_r0_k0") for i in range(n)]
        caps = ["original"] * n + [f"{_short(row)} {_err(row, i)}" for i in range(n)]
    else:  # pragma: no cover
        return None
    png = _grid_png(tiles, caps, cols)
    return Figure(exp, TITLES[exp], png)


_FIG_TEXT = {
    "fig1": "Restarts from different random initialisations of the deepest computed layer (the paper: five "
            "reconstructions from CNN-A's fc8).",
    "fig2": "TV exponent β = 1 against β = 2 on the block at norm1's relative depth (the paper: spikes with β = 1).",
    "fig3": "Each row: the original, its HOG glyphs, then reconstructions from HOG, HOGb, DSIFT (this library) and "
            "HOGgle; captions give the relative code error ‖Φ(x*) − Φ₀‖/‖Φ₀‖.",
    "fig4": "HOG inverted with λ_V = 0.5, 5, 50 (the paper's Fig. 4).",
    "fig5": "One image reconstructed from each selected block, λ_V by relative depth as the paper's Table 3 bold "
            "entries.",
    "fig6": "Rows: the deepest four computed blocks; columns: random restarts (invariance).",
    "fig7": "The deepest computed block at λ_V = 0.5, 5, 50.",
    "fig8": "Reconstruction from the central 5×5 neighbourhood of the code only (masked loss), λ_V = 50 as the "
            "paper; the white box is the receptive field of those 5×5 units.",
    "fig9": "Reconstruction from the first or the second half of the channels (the paper: CNN-A's two "
            "streams).",
    "fig10": "Reconstructions of several images from the block at pool5's relative depth.",
}


def _section_figure(c: Collected, exp: str, out_dir: Path) -> Section:
    s = Section(exp, TITLES[exp])
    s.paragraphs.append(_FIG_TEXT.get(exp, ""))
    fig = _figure(c, exp)
    if fig is None:
        s.paragraphs.append("No finished unit for this figure.")
        return s
    path = out_dir / "report" / f"{exp}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    from .store import atomic_write_bytes
    atomic_write_bytes(path, fig.png)
    s.blocks.append(fig)
    settings = []
    for row in c.finished(exp):
        m = row["metrics"]
        if row["kind"] == "invert":
            settings.append(f"{_rep_label(row['params'])}: image {'×'.join(map(str, m.get('image_shape', [])))}, "
                            f"{m.get('iterations')} iterations, λ_V = "
                            f"{', '.join(f'{v:g}' for v in row['params']['lambda_tv'])} (reference), β = "
                            f"{row['params']['beta']:g}, restarts {row['params']['restarts']}, "
                            f"{_secs(row['timings'].get('seconds'))}")
        elif row["kind"] == "hoggle":
            settings.append(f"HOGgle: dictionary {row['params']['dictionary']} "
                            f"{json.dumps(m.get('dictionary', {}), ensure_ascii=False)}, "
                            f"{_secs(row['timings'].get('seconds'))}")
    if settings:
        s.paragraphs.append("Units: " + "; ".join(settings) + ".")
    return s


# ----------------------------------------------------------------------------------------------
# Timings, settings, versions
# ----------------------------------------------------------------------------------------------

def _section_timings(c: Collected) -> Section:
    s = Section("timings", "How long each part took")
    body = []
    total_compute = 0.0
    for exp in c.plan.get("experiments", []):
        rows = c.units.get(exp, [])
        done = [r for r in rows if r["status"] == "finished"]
        comp = sum(float(r["timings"].get("seconds", 0.0)) for r in done)
        total_compute += comp
        starts = [r["submitted_at"] for r in done if r.get("submitted_at")]
        ends = [r["finished_at"] for r in done if r.get("finished_at")]
        span = (max(ends) - min(starts)) if starts and ends else None
        failed = sum(r["status"] == "failed" for r in rows)
        pending = sum(r["status"] in ("pending", "submitted") for r in rows) + c.missing.get(exp, 0)
        body.append([exp, str(len(rows) + c.missing.get(exp, 0)), str(len(done)), str(failed), str(pending),
                     _secs(comp), _secs(span)])
    s.blocks.append(Table("Per part: units and time (compute = sum of the units' worker time; span = first "
                          "submission to last result, over all runs)",
                          ["part", "units", "finished", "failed", "pending", "compute", "span"], body))
    runs = []
    for r in c.runs:
        info = r["info"]
        dur = (r["finished_at"] - r["started_at"]) if r.get("finished_at") else None
        runs.append([str(r["id"]), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started_at"])),
                     r["status"], _secs(dur), str(info.get("planned", "")), str(info.get("already_finished", "")),
                     str(info.get("computed", "")), str(info.get("failed", "")),
                     str((info.get("cluster") or {}).get("scheduler") or info.get("scheduler", "")),
                     str((info.get("cluster") or {}).get("workers", info.get("workers", "")))])
    s.blocks.append(Table("Runs of this store (a killed run shows as 'running' without an end)",
                          ["run", "started", "status", "wall time", "planned", "reused", "computed", "failed",
                           "scheduler", "workers"], runs))
    s.paragraphs.append(f"Total compute over finished units: {_secs(total_compute)}.")
    return s


def _section_settings(c: Collected) -> Section:
    s = Section("settings", "Settings and library versions")
    cfg = c.config
    s.blocks.append(Table("Configuration", ["setting", "value"],
                          [[k, json.dumps(v, ensure_ascii=False)] for k, v in cfg.items()]))
    s.blocks.append(Table("Library versions (the process that ran the sweep)", ["library", "version"],
                          [[k, str(v)] for k, v in c.versions.items()]))
    notes = c.plan.get("notes", {})
    skipped = c.plan.get("skipped", {})
    if notes:
        s.blocks.append(Table("Notes", ["part", "note"], [[k, n] for k, ns in notes.items() for n in ns]))
    if skipped:
        s.blocks.append(Table("Left out (with the reason)", ["part", "reason"], [[k, v] for k, v in skipped.items()]))
    failed = [r for rows in c.units.values() for r in rows if r["status"] == "failed"]
    if failed:
        s.blocks.append(Table("Failed units", ["experiment", "unit", "error"],
                              [[r["experiment"], _rep_label(r["params"]), (r["error"] or "").splitlines()[0][:300]]
                               for r in failed]))
    s.paragraphs.append(
        "Conventions: λ values are given at the reference size 227×227×3 and carried to the actual image size by "
        "preimage.objective.default_lambdas; reconstructions are shown min–max stretched (the paper's display). "
        "The CNN experiments use the shared MobileNets because CaffeNet's trained weights are not available; "
        "paper layer k of 20 maps to the block at the same relative depth.")
    return s


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#111;max-width:1400px}
h1{font-size:24px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #ccc;padding-bottom:4px}
table{border-collapse:collapse;margin:10px 0 4px 0;font-size:13px}
th,td{border:1px solid #bbb;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#eef}caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0}
td.b{font-weight:700;background:#ffd}p.note{font-size:12px;color:#444;max-width:1100px}
img{max-width:100%;border:1px solid #ddd}figure{margin:10px 0}figcaption{font-size:13px;color:#333}
nav a{margin-right:10px}
"""


def _html_table(t: Table) -> str:
    out = ["<table>", f"<caption>{html.escape(t.caption)}</caption>", "<thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in t.header]
    out.append("</tr></thead><tbody>")
    for i, row in enumerate(t.rows):
        out.append("<tr>" + "".join(
            f"<td class=\"b\">{html.escape(str(v))}</td>" if (i, j) in t.bold else f"<td>{html.escape(str(v))}</td>"
            for j, v in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    if t.note:
        out.append(f"<p class=\"note\">{html.escape(t.note)}</p>")
    return "\n".join(out)


def _md_table(t: Table) -> str:
    def esc(v: str) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")
    out = [f"**{esc(t.caption)}**", "", "| " + " | ".join(esc(h) for h in t.header) + " |",
           "|" + "---|" * len(t.header)]
    for i, row in enumerate(t.rows):
        out.append("| " + " | ".join(f"**{esc(v)}**" if (i, j) in t.bold and str(v) not in ("", "—") else esc(v)
                                     for j, v in enumerate(row)) + " |")
    if t.note:
        out += ["", f"_{esc(t.note)}_"]
    return "\n".join(out)


def _render(sections: list[Section], head: list[str]) -> tuple[str, str]:
    h = ["<!DOCTYPE html>", "<html lang=\"en\"><head><meta charset=\"utf-8\">",
         "<title>preimage: reproduction of Mahendran &amp; Vedaldi (CVPR 2015)</title>",
         f"<style>{_CSS}</style></head><body>",
         "<h1>Reproduction of “Understanding Deep Image Representations by Inverting Them”</h1>"]
    h += [f"<p>{html.escape(p)}</p>" for p in head]
    h.append("<nav>" + "".join(f"<a href=\"#{s.id}\">{html.escape(s.id)}</a>" for s in sections) + "</nav>")
    md = ["# Reproduction of “Understanding Deep Image Representations by Inverting Them”", ""]
    md += [p + "\n" for p in head]
    for s in sections:
        h.append(f"<section id=\"{s.id}\"><h2>{html.escape(s.title)}</h2>")
        md += [f"## {s.title}", ""]
        for p in s.paragraphs:
            if p:
                h.append(f"<p>{html.escape(p)}</p>")
                md += [p, ""]
        for b in s.blocks:
            if isinstance(b, Table):
                h.append(_html_table(b))
                md += [_md_table(b), ""]
            elif isinstance(b, Figure):
                data = base64.b64encode(b.png).decode("ascii")
                h.append(f"<figure><img alt=\"{html.escape(b.name)}\" src=\"data:image/png;base64,{data}\">"
                         f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
                md += [f"![{b.caption}](report/{b.name}.png)", ""]
        h.append("</section>")
    h.append("</body></html>")
    return "\n".join(h), "\n".join(md)


def write_report(out: str | Path, store: ResultStore | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` into ``out`` from its results store.

    Returns ``{"html": path, "markdown": path, "figures": [paths]}``.
    """
    out = Path(out)
    own = store is None
    if own:
        store = ResultStore(out, readonly=True)
    try:
        c = collect(store)
        sections: list[Section] = []
        exps = c.plan.get("experiments", [])
        for exp in exps:
            if exp == "table1":
                sections.append(_section_table1(c))
            elif exp == "table2":
                sections.append(_section_table2(c))
            elif exp == "table3":
                sections.append(_section_table3(c))
            else:
                sections.append(_section_figure(c, exp, out))
            for part, reason in c.plan.get("skipped", {}).items():
                if part == exp or part.startswith(exp + "/"):
                    sections[-1].paragraphs.append(f"Left out — {part}: {reason}")
            for note in c.plan.get("notes", {}).get(exp, []):
                sections[-1].paragraphs.append(f"Note: {note}")
        sections.append(_section_timings(c))
        sections.append(_section_settings(c))
        counts = store.counts()
        preset = c.config.get("preset", "?")
        head = [f"Preset “{preset}”: {counts.get('finished', 0)} units finished, {counts.get('failed', 0)} failed, "
                f"{counts.get('pending', 0) + counts.get('submitted', 0)} pending in the store "
                f"({store.db_path.name}). Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.",
                "Every number labelled “ours” is read from the results store; numbers labelled "
                f"“{PAPER_LABEL}” are the paper's (NUMBERS.md)."]
        if preset != "full":
            head.append("This is not the full run: few images, fewer iterations and a subset of layers — the numbers "
                        "show the pipeline works, they are not a reproduction of the paper's values.")
        html_text, md_text = _render(sections, head)
        from .store import atomic_write_bytes
        paths = {"html": atomic_write_bytes(out / "report.html", html_text.encode("utf-8")),
                 "markdown": atomic_write_bytes(out / "report.md", md_text.encode("utf-8"))}
        paths["figures"] = sorted((out / "report").glob("fig*.png")) if (out / "report").is_dir() else []
        return paths
    finally:
        if own:
            store.close()
