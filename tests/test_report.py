"""The reproduction report: built from the results store alone, self-contained HTML + Markdown,
rendered by headless Chromium (skipped with a reason when it is not installed)."""

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import noisy_ramp as _picture
from preimage.paper import TABLE1 as PAPER_TABLE1
from preimage.experiments.report import write_report
from preimage.io.cache import stable_key as unit_key
from preimage.experiments.store import ResultStore

IMAGES = ["a.JPEG", "b.JPEG", "c.JPEG"]
DIST = {"hog": [1.0, 2.0, 3.0], "hogb": [0.5, 0.5, 1.0]}
NORM = {"hog": {"paper": 10.0, "authors": 200.0}, "hogb": {"paper": 4.0, "authors": 20.0}}


def make_store(root: Path) -> dict:
    """A small store with Table 1 (HOG, HOGb), Table 2, Figure 4 and a failed unit, all made up."""
    plan = {"experiments": ["table1", "table2", "fig4"], "units": {}, "skipped": {"table1/hoggle": "not here"},
            "notes": {"table1": ["made-up numbers for a test"]}, "info": {}}
    with ResultStore(root) as st:
        def add(exp, params, metrics=None, pngs=None, fail=None, timings=None):
            params = {"v": 1, "experiment": exp, **params}
            key = unit_key(params)
            st.register([(key, exp, params["kind"], params)])
            st.mark_submitted([key])
            if fail:
                st.fail(key, fail)
            else:
                st.finish(key, metrics=metrics, pngs=pngs, timings=timings or {"seconds": 1.5}, worker="t:1")
            plan["units"].setdefault(exp, []).append(key)
        for rep in ("hog", "hogb"):
            rp = {"type": "shallow", "name": rep}
            add("table1", {"kind": "codes", "rep": rp, "images": IMAGES, "mode": "grey", "size": 64},
                {"normaliser": NORM[rep], "n": 3})
            add("table1", {"kind": "invert", "rep": rp, "images": IMAGES, "mode": "grey", "size": 64,
                           "lambda_tv": [5.0], "beta": 2.0, "restarts": 1},
                {"distance": [[[d]] for d in DIST[rep]], "relative_error": [[[0.3]]] * 3, "shape": [3, 1, 1],
                 "optimisation_seconds": 6.0, "iterations": 300, "image_shape": [1, 64, 64],
                 "ssim": [[[0.5]], [[0.6]], [[0.7]]], "orientation": [[[0.9]], [[0.8]], [[0.7]]]},
                {"original_n0": _picture(0), "recon_n0_r0_k0": _picture(1)})
        add("table1", {"kind": "invert", "rep": {"type": "shallow", "name": "dsift"}, "images": IMAGES,
                       "lambda_tv": [5.0]}, fail="RuntimeError: made-up failure")
        layers = [{"name": n, "channels": c, "rf_size": [float(r), float(r)], "output_shape": [c, 1, 1]}
                  for n, c, r in [("conv1", 96, 11), ("relu1", 96, 11)]]
        add("table2", {"kind": "layers", "model": "caffenet", "size": None}, {"layers": layers})
        add("fig4", {"kind": "invert", "rep": {"type": "shallow", "name": "hog"}, "images": IMAGES[:1],
                     "lambda_tv": [0.5, 5.0, 50.0], "beta": 2.0, "restarts": 1},
            {"distance": [[[1, 2, 3]]], "relative_error": [[[0.1, 0.2, 0.3]]], "shape": [1, 1, 3],
             "iterations": 300, "image_shape": [1, 40, 40]},
            {"original_n0": _picture(2), **{f"recon_n0_r0_k{k}": _picture(3 + k) for k in range(3)}})
        st.set_meta("plan", plan)
        st.set_meta("config", {"preset": "test", "n_images": 3, "shallow_reps": ["hog", "hogb", "dsift"]})
        st.set_meta("versions", {"python": "3.x", "torch": "2.13.0", "dask": "test"})
        rid = st.start_run({"planned": 7})
        st.end_run(rid, "finished", {"planned": 7, "computed": 6, "failed": 1, "scheduler": "LocalCluster"})
    return plan


class _Parse(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self.imgs, self.cells, self.links = 0, [], [], []
        self._cell = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables += 1
        elif tag == "img":
            self.imgs.append(a.get("src", ""))
        elif tag in ("td", "th"):
            self._cell = ""
        for k in ("src", "href"):
            if k in a and tag not in ("img",):
                self.links.append(a[k])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    make_store(root)
    paths = write_report(root)
    return root, paths


def test_report_numbers_come_from_the_store(report):
    root, paths = report
    html = paths["html"].read_text(encoding="utf-8")
    p = _Parse()
    p.feed(html)
    # HOG: distances 1, 2, 3 over N = 10 → 20 ± 8.2 %; squared over 200 → 2.33 ± 1.7 %
    d = np.asarray(DIST["hog"])
    paper = d / NORM["hog"]["paper"] * 100
    authors = d ** 2 / NORM["hog"]["authors"] * 100
    assert f"{paper.mean():.2f} ± {paper.std():.1f}" in p.cells
    assert f"{authors.mean():.2f} ± {authors.std():.1f}" in p.cells
    hb = np.asarray(DIST["hogb"]) / NORM["hogb"]["paper"] * 100
    assert f"{hb.mean():.2f} ± {hb.std():.1f}" in p.cells
    assert "2.00" in p.cells  # seconds per image: 6 s / 3 images
    assert "0.600 / 0.800" in p.cells  # image-space similarity: mean SSIM / orientation intersection
    # the paper's numbers sit beside ours, labelled as the paper's
    assert f"{PAPER_TABLE1['hog'][0]:.2f} ± {PAPER_TABLE1['hog'][1]:.1f}" in p.cells
    assert any(c.startswith("paper (Mahendran") for c in p.cells)
    # the failed unit, the skip reason, the run and versions are reported
    assert "made-up failure" in html and "not here" in html and "2.13.0" in html
    assert "0/1 (1 failed)" in p.cells


def test_report_is_self_contained_html_and_markdown(report):
    root, paths = report
    html = paths["html"].read_text(encoding="utf-8")
    p = _Parse()
    p.feed(html)
    assert p.tables >= 5  # Table 1, Table 2, timings, runs, settings, versions …
    assert len(p.imgs) == 1 and all(s.startswith("data:image/png;base64,") for s in p.imgs)
    im = Image.open(io.BytesIO(base64.b64decode(p.imgs[0].split(",", 1)[1])))
    assert im.width > 4 * 40 and im.height > 40
    assert not [u for u in p.links if u.startswith(("http:", "https:", "//"))]
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    md = paths["markdown"].read_text(encoding="utf-8")
    assert "| HOG |" in md and "![" in md
    for link in [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]:
        assert (root / link).is_file()


def test_report_of_an_empty_plan(tmp_path):
    with ResultStore(tmp_path) as st:
        st.set_meta("plan", {"experiments": ["fig1"], "units": {"fig1": ["0" * 64]}, "skipped": {}, "notes": {}})
    html = write_report(tmp_path)["html"].read_text()
    assert "No finished unit" in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium not installed (apt-get install -y chromium); "
                                                 "the HTML report is checked without a screenshot")
def test_screenshot_with_headless_chromium(report, tmp_path):
    root, paths = report
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
           paths["html"].resolve().as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert shot.is_file(), f"no screenshot (exit {res.returncode}): {res.stderr[-2000:]}"
    im = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert im.shape == (2000, 1200)
    assert im.std() > 5 and len(np.unique(im)) > 20, "the screenshot is blank"
    assert (im < 100).mean() > 0.002  # some dark text/picture pixels on the white page
