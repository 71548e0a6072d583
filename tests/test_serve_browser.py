"""``preimage serve`` in a real browser: headless Debian Chromium driven by Playwright (no
downloaded browser). Uploads an evaluation image, inverts its HOG with two λ_V while progress
frames arrive, checks the grid of two reconstructions and downloads ``result.json``; then the
same through a MobileNet layer. Screenshots go to the test's temporary folder."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
sync_api = pytest.importorskip("playwright.sync_api")

from preimage.serve.local import LocalServer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser_page(tmp_path_factory):
    if CHROMIUM is None:
        pytest.skip("headless Chromium not installed (apt-get install -y chromium)")
    root = tmp_path_factory.mktemp("serve-browser")
    with LocalServer(root / "data", "--workers", "1", "--model", "mobilenet_v1_small") as server:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            page = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True).new_page()
            page.set_default_timeout(90_000)
            page.goto(server.url + "/")
            page.wait_for_function("document.querySelectorAll('#sample option').length > 1")
            yield page, root
            browser.close()


def eval_image(root) -> str:
    from preimage.data import eval_images, shared_dir
    if shared_dir() is not None:
        try:
            return str(eval_images()[3])
        except Exception:  # noqa: BLE001 - fall back to a synthetic picture
            pass
    path = root / "picture.png"
    yy, xx = np.mgrid[0:96, 0:128]
    Image.fromarray(((np.sin(xx / 6) + np.cos(yy / 9)) * 60 + 128).astype(np.uint8)).save(path)
    return str(path)


def run_in_page(page, iterations: int, lambdas: str = "0.5, 5", slow_submit: float = 0.0) -> dict:
    """Start a run from the form, wait for its grid; returns what the page showed.
    ``slow_submit``: seconds the submission waits before it reaches the server, as on a busy
    machine (the previous run's grid must be gone at once, never taken for the new one's)."""
    page.fill("#lambdas", lambdas)
    page.fill("#iterations", str(iterations))
    page.evaluate("document.getElementById('live-frame').dataset.frames = '0'")
    page.evaluate("""(ms) => {  // the page's own fetch, its submissions held back ms milliseconds
        const fetch = window.__fetch = window.__fetch || window.fetch;
        window.fetch = (url, opts) => (opts && opts.method === "POST" && String(url).endsWith("/api/runs")
            ? new Promise((ok) => setTimeout(ok, ms)).then(() => fetch(url, opts)) : fetch(url, opts));
    }""", int(1000 * slow_submit))
    page.click("#start")
    page.wait_for_selector("#results figure.reconstruction")
    page.wait_for_function("document.querySelectorAll('#results figure.reconstruction img').length === 2 && "
                           "[...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)")
    return {"frames": int(page.get_attribute("#live-frame", "data-frames")),
            "frame": page.get_attribute("#live-frame", "src"),
            "captions": page.locator("#results figcaption").all_inner_texts(),
            "message": page.inner_text("#message")}


def download_result(page) -> dict:
    with page.expect_download() as info:
        page.click("#download-json")
    return json.loads(open(info.value.path()).read())


def check_screenshot(page, path) -> None:
    page.screenshot(path=str(path), full_page=True)
    im = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    assert im.std() > 5 and len(np.unique(im)) > 50


def test_hog_with_two_lambdas(browser_page):
    page, root = browser_page
    page.set_input_files("#image-file", eval_image(root))
    page.wait_for_function("document.getElementById('upload-status').textContent.includes('pixels')")
    page.select_option("#kind", "rep:hog")
    page.fill("#max-side", "80")
    shown = run_in_page(page, iterations=150)
    assert shown["frames"] >= 2, shown
    frame = Image.open(io.BytesIO(__import__("base64").b64decode(shown["frame"].split(",", 1)[1])))
    assert frame.width > 2 * 40  # two λ side by side
    assert "done" in shown["message"] and shown["captions"][:2] == ["original", "HOG picture"]
    assert [c.split(":")[0] for c in shown["captions"][2:]] == ["λV=0.5 r0", "λV=5 r0"]
    record = download_result(page)
    assert record["rep"] == "hog" and record["image"] == "upload"
    assert record["settings"]["lambda_tv"] == [0.5, 5.0] and len(record["relative_errors"][0]) == 2
    check_screenshot(page, root / "serve-hog.png")
    assert page.locator("#gallery a").count() >= 1


def test_mobilenet_layer(browser_page):
    page, root = browser_page
    from preimage.data import shared_dir
    if shared_dir() is None or not (shared_dir() / "models" / "mobilenet_v1_0.25_128_quant.tflite").is_file():
        pytest.skip("the shared MobileNets are not here")
    page.select_option("#kind", "model:mobilenet_v1_small")
    page.wait_for_function("document.querySelectorAll('#layer option').length > 3")
    layer = page.locator("#layer option").nth(3).get_attribute("value")
    page.select_option("#layer", layer)
    assert "receptive field" in page.inner_text("#layer-info")
    shown = run_in_page(page, iterations=40, lambdas="1, 10", slow_submit=1.5)
    assert shown["frames"] >= 1 and len(shown["captions"]) == 3  # original + two reconstructions
    assert "done" in shown["message"] and [c.split(":")[0] for c in shown["captions"][1:]] == ["λV=1 r0", "λV=10 r0"]
    record = download_result(page)
    assert (record["model"], record["layer"]) == ("mobilenet_v1_small", layer)
    check_screenshot(page, root / "serve-mobilenet.png")


def test_docs_page_renders_offline(browser_page):
    """The API page draws /openapi.json itself (FastAPI's Swagger UI would need a CDN). Last: it
    leaves the explorer."""
    page, root = browser_page
    requested = []
    page.on("request", lambda r: requested.append(r.url))
    host = "/".join(page.url.split("/", 3)[:3])  # http://127.0.0.1:PORT
    page.goto(host + "/docs")
    page.wait_for_function("document.querySelectorAll('#routes .route').length >= 8")
    text = page.inner_text("#routes")
    assert "/api/runs/{run_id}/events" in text and "POST" in text
    assert requested and all(u.startswith(host) for u in requested), requested
