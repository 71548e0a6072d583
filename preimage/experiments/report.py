"""The reproduction report, built from the results store alone: the rendering machinery.

:func:`write_report` reads ``DIR/results.sqlite`` (and the units' PNGs), asks every experiment of
the plan for its section (:meth:`preimage.experiments.base.Experiment.render`, the experiments
listed in :mod:`.registry`), adds the timings and settings, and writes

* ``DIR/report.html``: self-contained (CSS inline, every image embedded as base64 PNG, no
  network assets),
* ``DIR/report.md``: the same tables in Markdown, figures as relative links to
  ``DIR/report/figN.png``.

A section is a :class:`Section` of paragraphs and blocks (:class:`Table`, :class:`Figure`).
Every number of "ours" comes from the store; the paper's numbers (:mod:`preimage.paper`) are
labelled as the paper's.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .store import ResultStore

__all__ = ["write_report", "collect", "Collected", "Section", "Table", "Figure", "PAPER_LABEL", "pct", "secs",
           "rep_label", "sample", "sample_label"]

PAPER_LABEL = "paper (Mahendran & Vedaldi 2015)"


# ----------------------------------------------------------------------------------------------
# Document model: a list of blocks rendered to HTML and Markdown
# ----------------------------------------------------------------------------------------------

@dataclass
class Table:
    """A table: caption, header, rows of cells (strings), cells in bold as ``(row, col)``, a note."""

    caption: str
    header: list[str]
    rows: list[list[str]]
    bold: set = field(default_factory=set)
    note: str = ""


@dataclass
class Figure:
    """A figure: its name (file ``report/<name>.png``), caption and PNG bytes."""

    name: str
    caption: str
    png: bytes


@dataclass
class Section:
    """One section of the report: id (anchor), title, paragraphs, then blocks."""

    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    blocks: list[Any] = field(default_factory=list)


def pct(mean: float | None, std: float | None = None, digits: int = 2) -> str:
    """``mean ± std`` of percentages (std with one decimal), ``—`` when unknown."""
    if mean is None or not math.isfinite(mean):
        return "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.1f}" if std is not None else "")


def secs(s: float | None) -> str:
    """A duration in s, min or h."""
    if s is None or not math.isfinite(s):
        return "—"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def rep_label(params: dict) -> str:
    """The representation or layer a unit is about (``hoggle`` for the HOGgle units)."""
    rep = params.get("rep") or {}
    if params.get("kind") == "hoggle":
        return "hoggle"
    return rep.get("layer") or rep.get("name") or "?"


# ----------------------------------------------------------------------------------------------
# Reading the store
# ----------------------------------------------------------------------------------------------

@dataclass
class Collected:
    """What the sections are rendered from: the store's latest plan and its rows."""

    store: ResultStore
    plan: dict
    config: dict
    versions: dict
    runs: list[dict]
    units: dict[str, list[dict]]          # experiment → rows (in plan order; missing ones absent)
    missing: dict[str, int]               # experiment → planned units without a row
    out: Path | None = None               # the report folder (figures are written to out/report/)

    def finished(self, exp: str) -> list[dict]:
        """Finished rows of an experiment, in plan order."""
        return [r for r in self.units.get(exp, []) if r["status"] == "finished"]


def collect(store: ResultStore, out: str | Path | None = None) -> Collected:
    """Rows of the latest plan recorded in the store (``meta.plan``), grouped by experiment."""
    plan = store.get_meta("plan") or {}
    units: dict[str, list[dict]] = {}
    missing: dict[str, int] = {}
    planned = plan.get("units")
    if planned is None:  # no plan recorded: everything in the store
        from .registry import EXPERIMENTS
        planned = {}
        for r in store.rows():
            planned.setdefault(r["experiment"], []).append(r["key"])
        plan = {"experiments": [e for e in EXPERIMENTS if e in planned], "units": planned, "skipped": {}, "notes": {}}
    for exp, keys in planned.items():
        rows = [store.get(k) for k in keys]
        units[exp] = [r for r in rows if r is not None]
        missing[exp] = sum(r is None for r in rows)
    return Collected(store, plan, store.get_meta("config", {}) or {}, store.get_meta("versions", {}) or {},
                     store.runs(), units, missing, Path(out) if out is not None else None)


# ----------------------------------------------------------------------------------------------
# Timings, settings, versions
# ----------------------------------------------------------------------------------------------

def _section_timings(c: Collected) -> Section:
    """Units and compute time per experiment, and the runs of the store."""
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
                     secs(comp), secs(comp / len(done)) if done else "—", secs(span)])
    s.blocks.append(Table(f"Per part: units and time, preset “{c.config.get('preset', '?')}” (compute = sum of the "
                          "units' worker time; span = first submission to last result, over all runs)",
                          ["part", "units", "finished", "failed", "pending", "compute", "per unit", "span"], body))
    runs = []
    for r in c.runs:
        info = r["info"]
        dur = (r["finished_at"] - r["started_at"]) if r.get("finished_at") else None
        runs.append([str(r["id"]), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started_at"])),
                     r["status"], secs(dur), str(info.get("planned", "")), str(info.get("already_finished", "")),
                     str(info.get("computed", "")), str(info.get("failed", "")),
                     str((info.get("cluster") or {}).get("scheduler") or info.get("scheduler", "")),
                     str((info.get("cluster") or {}).get("workers", info.get("workers", ""))),
                     str(info.get("preset") or (info.get("config") or {}).get("preset", "")), str(info.get("device", ""))])
    s.blocks.append(Table("Runs of this store (a killed run shows as 'running' without an end)",
                          ["run", "started", "status", "wall time", "planned", "reused", "computed", "failed",
                           "scheduler", "workers", "preset", "device"], runs))
    s.paragraphs.append(f"Total compute over finished units: {secs(total_compute)}.")
    return s


def _section_settings(c: Collected) -> Section:
    """Configuration, library versions, notes, left-out parts and failed units."""
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
                              [[r["experiment"], rep_label(r["params"]), (r["error"] or "").splitlines()[0][:300]]
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
    """A :class:`Table` as HTML (caption, header, bold cells, note)."""
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
    """A :class:`Table` as Markdown."""
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
    """``(html, markdown)`` of the whole report."""
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


def sample(c: Collected, exp: str) -> dict:
    """The sample of experiment ``exp``: ``{"planned": images its units name, "finished": images of
    its finished units, "units", "done", "failed", "pending"}`` (pending includes planned units
    without a row)."""
    rows = c.units.get(exp, [])
    planned, finished = set(), set()
    for r in rows:
        names = r["params"].get("images") or []
        planned.update(names)
        if r["status"] == "finished" and r["kind"] != "codes":
            finished.update(names)
    done = sum(r["status"] == "finished" for r in rows)
    failed = sum(r["status"] == "failed" for r in rows)
    units = len(rows) + c.missing.get(exp, 0)
    return {"planned": len(planned), "finished": len(finished), "units": units, "done": done, "failed": failed,
            "pending": units - done - failed}


def sample_label(c: Collected, exp: str) -> str:
    """``preset “standard”; sample: 20 eval images`` (``12 of 20 … finished`` while incomplete)."""
    n = sample(c, exp)
    preset = c.config.get("preset", "?")
    if not n["planned"]:
        return f"preset “{preset}”; no images (network structure)" if n["units"] else f"preset “{preset}”"
    if n["finished"] < n["planned"]:
        return f"preset “{preset}”; sample: {n['finished']} of {n['planned']} eval images finished"
    return f"preset “{preset}”; sample: {n['planned']} eval image{'s' if n['planned'] != 1 else ''}"


def _label_blocks(section: Section, label: str) -> None:
    """Append the preset and sample size to the caption of every table and figure of ours (the
    paper's own tables are left as they are)."""
    for b in section.blocks:
        if isinstance(b, (Table, Figure)) and not b.caption.startswith(PAPER_LABEL):
            b.caption = f"{b.caption} [{label}]"


def _completeness(c: Collected, exp: str) -> str | None:
    """A paragraph stating what is missing of an unfinished experiment (None when complete)."""
    n = sample(c, exp)
    if n["units"] and n["done"] == n["units"]:
        return None
    return (f"Incomplete: {n['done']} of {n['units']} units finished ({n['failed']} failed, {n['pending']} not "
            "computed yet); the numbers and pictures above cover the finished units only. Re-running the same "
            "command computes the rest.")


def _experiment_sections(c: Collected) -> list[Section]:
    """The section of every planned experiment (:data:`.registry.REGISTRY`), with its skip reasons
    and notes appended."""
    from .registry import REGISTRY
    sections = []
    for exp in c.plan.get("experiments", []):
        section = REGISTRY[exp].render(c)
        _label_blocks(section, sample_label(c, exp))
        missing = _completeness(c, exp)
        if missing:
            section.paragraphs.insert(1 if section.paragraphs else 0, missing)
        for part, reason in c.plan.get("skipped", {}).items():
            if part == exp or part.startswith(exp + "/"):
                section.paragraphs.append(f"Left out — {part}: {reason}")
        for note in c.plan.get("notes", {}).get(exp, []):
            section.paragraphs.append(f"Note: {note}")
        sections.append(section)
    return sections


def _preset_lines(c: Collected) -> list[str]:
    """What the preset changes from the paper's protocol, and which experiments are unfinished."""
    from .base import PRESETS
    preset = c.config.get("preset", "?")
    full = PRESETS["full"].to_dict()
    diff = [f"{k}={json.dumps(v)}" for k, v in c.config.items() if k in full and k != "preset" and v != full[k]]
    out = []
    if preset == "standard":
        out.append("Preset “standard”: the paper's method (its schedules, λ and β) on fewer or smaller inputs so "
                   "that it runs in under 2 hours on a 2-core CPU — differs from the full protocol in: "
                   + ", ".join(diff) + ". Each table states its sample.")
    elif preset != "full":
        out.append("This is not the full run: few images, fewer iterations and a subset of layers — the numbers "
                   "show the pipeline works, they are not a reproduction of the paper's values. Differs from the "
                   "full protocol in: " + ", ".join(diff) + ".")
    elif diff:
        out.append("Full protocol with changed settings: " + ", ".join(diff) + ".")
    unfinished = []
    for exp in c.plan.get("experiments", []):
        n = sample(c, exp)
        if n["done"] < n["units"]:
            unfinished.append(f"{exp} ({n['done']}/{n['units']} units)")
    if unfinished:
        out.append("Partial run — unfinished: " + ", ".join(unfinished) + "; every other experiment is complete.")
    return out


def write_report(out: str | Path, store: ResultStore | None = None) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` into ``out`` from its results store.

    Returns ``{"html": path, "markdown": path, "figures": [paths]}``.
    """
    out = Path(out)
    own = store is None
    if own:
        store = ResultStore(out, readonly=True)
    try:
        c = collect(store, out)
        sections = _experiment_sections(c)
        sections.append(_section_timings(c))
        sections.append(_section_settings(c))
        counts = store.counts()
        preset = c.config.get("preset", "?")
        head = [f"Preset “{preset}”: {counts.get('finished', 0)} units finished, {counts.get('failed', 0)} failed, "
                f"{counts.get('pending', 0) + counts.get('submitted', 0)} pending in the store "
                f"({store.db_path.name}). Generated {time.strftime('%Y-%m-%d %H:%M:%S')}.",
                "Every number labelled “ours” is read from the results store; numbers labelled "
                f"“{PAPER_LABEL}” are the paper's (NUMBERS.md)."]
        head += _preset_lines(c)
        html_text, md_text = _render(sections, head)
        from ..io.cache import atomic_write_bytes
        paths = {"html": atomic_write_bytes(out / "report.html", html_text.encode("utf-8")),
                 "markdown": atomic_write_bytes(out / "report.md", md_text.encode("utf-8"))}
        paths["figures"] = sorted((out / "report").glob("fig*.png")) if (out / "report").is_dir() else []
        return paths
    finally:
        if own:
            store.close()
