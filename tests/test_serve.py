"""``preimage serve``'s API, against a real server on 127.0.0.1 started by the tests: submit,
stream, results, gallery, cancel, 429, restarts, bad uploads and parameters, the token."""

from __future__ import annotations

import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from preimage.serve.config import require_token  # noqa: E402
from preimage.serve.local import LocalServer  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

HOG = {"sample": "astronaut", "representation": "hog", "max_side": 48, "iterations": 20}
#: A run that is still going when a test cancels it or hangs up: the largest side and iterations
#: the server allows (at 48 px, 2000 compiled HOG iterations can end in about 2 s, before the
#: disconnect is noticed on a loaded machine).
LONG = {**HOG, "max_side": 512, "iterations": 2000}


def png_bytes(h: int = 40, w: int = 56, seed: int = 0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **save)
    return buf.getvalue()


def bomb_png(side: int = 20_000) -> bytes:
    """A tiny PNG declaring side × side grey pixels (400 megapixels) of zeros."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = zlib.compress(b"\0" * (side + 1) * 64, 9)  # a few rows: decoding must never be reached
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with LocalServer(tmp_path_factory.mktemp("serve"), "--workers", "1", "--queue", "2",
                     "--model", "mobilenet_v1_small") as srv:
        yield srv


def run_to_end(server, spec: dict) -> tuple[str, list]:
    status, body = server.json("POST", "/api/runs", spec)
    assert status == 202, body
    return body["id"], list(server.events(body["id"]))


def test_submit_stream_and_results(server):
    status, up = server.upload(png_bytes())
    assert status == 200 and (up["height"], up["width"]) == (40, 56)
    run_id, events = run_to_end(server, {"upload": up["id"], "representation": "hog", "lambda_tv": [0.5, 5],
                                         "restarts": 2, "iterations": 30})
    kinds = [e for e, _, _ in events]
    assert kinds[-1] == "done", events[-1]
    progress = [d for e, d, _ in events if e == "progress"]
    assert progress and all(d["frame"].startswith("data:image/png;base64,") for d in progress)
    assert np.asarray(progress[-1]["energy"]).shape == (2, 2)  # restarts × λ
    assert all(np.isfinite(progress[-1]["energy"]).ravel())
    summary = events[-1][1]["summary"]
    assert summary["lambda_tv"] == [0.5, 5.0] and len(summary["tiles"]) == 4
    status, _, body = server.request("GET", f"/api/runs/{run_id}/files/result.json")
    record = json.loads(body)
    assert status == 200 and record["rep"] == "hog" and record["settings"]["iterations"] == 30
    assert np.asarray(record["relative_errors"]).shape == (2, 2)
    for tile in summary["tiles"] + [{"file": "summary.png"}, {"file": "code.png"}]:
        status, headers, body = server.request("GET", f"/api/runs/{run_id}/files/{tile['file']}")
        assert status == 200 and body.startswith(b"\x89PNG"), tile
    status, headers, body = server.request("GET", f"/api/runs/{run_id}/download")
    assert status == 200 and headers["content-type"] == "application/zip" and body[:2] == b"PK"
    status, listing = server.json("GET", "/api/runs")
    assert run_id in [r["id"] for r in listing["runs"]]
    # a client arriving just after the end still gets the last frame, then the outcome
    late = [e for e, _, _ in server.events(run_id)]
    assert late[-2:] == ["progress", "done"]


def test_a_late_watcher_gets_the_last_frame_then_the_end(server):
    """A client that subscribes only after its job has finished (a busy machine) still gets the
    last step's progress frame, then ``done``; so does a second one."""
    status, body = server.json("POST", "/api/runs", {**HOG, "iterations": 7, "persistent": True})
    assert status == 202
    run_id = body["id"]
    for _ in range(1200):
        if server.json("GET", f"/api/runs/{run_id}")[1]["status"] not in ("queued", "running"):
            break
        time.sleep(0.05)
    assert server.json("GET", f"/api/runs/{run_id}")[1]["status"] == "done"
    for _ in range(2):
        events = list(server.events(run_id))
        assert [e for e, _, _ in events] == ["status", "progress", "done"], [e for e, _, _ in events]
        frame = events[1][1]
        assert (frame["iteration"], frame["iterations"]) == (7, 7)  # the last step's frame
        assert frame["frame"].startswith("data:image/png;base64,") and np.asarray(frame["energy"]).shape == (1, 1)
        assert events[2][1]["id"] == run_id and events[2][1]["files"]


def test_a_slow_watcher_gets_the_latest_frame_before_the_end():
    """A watcher whose queue is full misses progress frames, but the latest one comes again just
    before the final event; one that arrives after the end gets the latest frame and the end."""
    import asyncio

    from preimage.serve.jobs import Job, JobSpec

    async def scenario():
        job = Job("j" * 22, JobSpec(**HOG))
        q, missed = job.watch(asyncio.get_running_loop())
        assert missed == []
        for i in range(1, 21):
            job.publish("progress", {"iteration": i})
            await asyncio.sleep(0)  # delivered, never read: the queue fills up
        job.publish("done", {"status": "done"})
        await asyncio.sleep(0)
        got = [q.get_nowait() for _ in range(q.qsize())]
        late = job.watch(asyncio.get_running_loop())[1]
        return got, late
    got, late = asyncio.run(scenario())
    iterations = [e["data"].get("iteration") for e in got]
    assert iterations[-2:] == [20, None] and got[-1]["event"] == "done"
    assert iterations[:-2] == list(range(1, len(iterations) - 1)) and len(iterations) < 21  # some skipped
    assert [(e["event"], e["data"].get("iteration")) for e in late] == [("progress", 20), ("done", None)]


def test_docs_page_works_offline(server):
    status, headers, body = server.request("GET", "/docs")
    assert status == 200 and headers["content-type"].startswith("text/html")
    page = body.decode()
    assert "/openapi.json" in page and "http://" not in page and "https://" not in page  # nothing from a CDN
    assert server.request("GET", "/redoc")[0] == 404


def test_cancel_a_running_job(server):
    status, body = server.json("POST", "/api/runs", {**LONG, "persistent": True})
    assert status == 202
    run_id = body["id"]
    events = server.events(run_id)
    for event, _, _ in events:
        if event == "progress":
            break
    assert server.json("POST", f"/api/runs/{run_id}/cancel")[1]["cancelled"] is True
    assert [e for e, _, _ in events][-1] == "cancelled"
    assert server.json("GET", f"/api/runs/{run_id}")[1]["status"] == "cancelled"


def test_disconnect_cancels_unless_persistent(server):
    status, body = server.json("POST", "/api/runs", LONG)
    run_id = body["id"]
    assert [e for e, _, _ in server.events(run_id, stop_after=2)][-1] == "progress"  # then hang up
    for _ in range(100):
        if server.json("GET", f"/api/runs/{run_id}")[1]["status"] == "cancelled":
            break
        time.sleep(0.1)
    assert server.json("GET", f"/api/runs/{run_id}")[1]["status"] == "cancelled"


def test_queue_full_gets_429_and_nothing_is_lost(server):
    ids, refused = [], 0
    for _ in range(6):  # one worker + a queue of 2
        status, body = server.json("POST", "/api/runs", {**LONG, "persistent": True})
        if status == 429:
            refused += 1
            assert "busy" in body["detail"]
        else:
            ids.append(body["id"])
    assert refused >= 3 and 1 <= len(ids) <= 3
    for run_id in ids:
        server.json("POST", f"/api/runs/{run_id}/cancel")
    for run_id in ids:
        assert [e for e, _, _ in server.events(run_id)][-1] == "cancelled"


@pytest.mark.parametrize("data, status, words", [
    (b"GIF89a not really", 415, "not an image"),
    (b"hello, world", 415, "not an image"),
    (png_bytes()[:300], 400, "truncated"),
    (bomb_png(), 413, "pixels"),
    (b"", 400, "empty"),
])
def test_bad_uploads(server, data, status, words):
    got, body = server.upload(data)
    assert (got, words in body["detail"]) == (status, True), body
    assert "Traceback" not in body["detail"]


def test_oversized_upload(server):
    big = b"\x89PNG" + b"\0" * (21 * 1024 * 1024)
    status, _, body = server.request("POST", "/api/images", big,
                                     {"content-type": "multipart/form-data; boundary=x"})
    assert status == 413 and b"limit" in body


def test_chunked_upload_without_length_is_cut_off(server):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunks = (b"\0" * (1024 * 1024) for _ in range(40))  # 40 MB, sent chunked
    try:
        conn.request("POST", "/api/images", body=chunks, headers={"content-type": "multipart/form-data; boundary=x"},
                     encode_chunked=True)
        status = conn.getresponse().status
    except OSError:  # the server stopped reading
        status = None
    finally:
        conn.close()
    assert status is None or status >= 400
    assert not list((server.data_dir / "uploads").glob("*.png")) or all(
        p.stat().st_size < 1024 * 1024 for p in (server.data_dir / "uploads").glob("*.png"))
    assert server.request("GET", "/api/info")[0] == 200


def test_exif_orientation_is_applied(server):
    img = Image.fromarray(np.zeros((20, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° on display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    status, body = server.upload(buf.getvalue(), "photo.jpg")
    assert status == 200 and (body["height"], body["width"]) == (50, 20)


@pytest.mark.parametrize("change, status, words", [
    ({"lambda_tv": [-1]}, 422, "finite number ≥ 0"),
    ({"lambda_tv": [float("nan")]}, 422, "finite"),
    ({"lambda_tv": [float("inf")]}, 422, "finite"),
    ({"iterations": 0}, 422, "iterations"),
    ({"iterations": 99999}, 422, "limit"),
    ({"restarts": 100}, 422, "restarts"),
    ({"representation": "sift"}, 422, "representation"),
    ({"representation": None, "model": "caffenet", "layer": "conv1"}, 404, "unknown model"),
    ({"representation": None, "model": "/etc/passwd", "layer": "x"}, 404, "unknown model"),
    ({"representation": None, "model": "mobilenet_v1_small", "layer": "nope"}, 404, "unknown layer"),
    ({"sample": "../../etc/passwd"}, 404, "unknown sample"),
    ({"sample": None, "upload": "A" * 22}, 404, "no uploaded image"),
    ({"sample": None, "upload": "../../../etc/passwd"}, 422, "upload"),
    ({"weights": "/tmp/x.pt"}, 422, "weights"),
])
def test_bad_parameters(server, change, status, words):
    spec = {k: v for k, v in {**HOG, **change}.items() if v is not None}
    body = json.dumps(spec).encode()  # NaN/Infinity as JSON's extensions, as a careless client sends them
    got, _, out = server.request("POST", "/api/runs", body, {"content-type": "application/json"})
    detail = json.loads(out)["detail"]
    assert got == status and words in detail, detail
    assert "Traceback" not in detail


@pytest.mark.parametrize("path", ["/api/runs/..%2F..%2Fetc%2Fpasswd", "/api/runs/abc",
                                  "/api/runs/AAAAAAAAAAAAAAAAAAAAAA", "/api/runs/AAAAAAAAAAAAAAAAAAAAAA/files/result.json"])
def test_run_ids_are_not_paths(server, path):
    status, _, _ = server.request("GET", path)
    assert status in (404, 422)


def test_file_names_are_checked(server):
    run_id, events = run_to_end(server, HOG)
    assert events[-1][0] == "done"
    for name in ("..%2Frun.sqlite", "server.log", "result.json.bak", ".hidden"):
        status, _, _ = server.request("GET", f"/api/runs/{run_id}/files/{name}")
        assert status in (404, 422), name


def test_mobilenet_layer_and_its_list(server):
    pytest.importorskip("tflite")
    from preimage.data import shared_dir
    if shared_dir() is None or not (shared_dir() / "models" / "mobilenet_v1_0.25_128_quant.tflite").is_file():
        pytest.skip("the shared MobileNets are not here")
    status, body = server.json("GET", "/api/models/mobilenet_v1_small/layers")
    assert status == 200 and body["layers"][0]["channels"] > 0 and body["layers"][0]["rf_size"]
    layer = body["layers"][2]["name"]
    run_id, events = run_to_end(server, {"sample": "astronaut", "model": "mobilenet_v1_small", "layer": layer,
                                         "lambda_tv": [1, 10], "iterations": 10})
    assert events[-1][0] == "done", events[-1]
    assert events[-1][1]["summary"]["model"] == "mobilenet_v1_small"
    # the central 3×3 code window: its receptive-field box drawn on the reconstructions
    run_id, events = run_to_end(server, {"sample": "astronaut", "model": "mobilenet_v1_small", "layer": layer,
                                         "neighbourhood": 3, "iterations": 5})
    assert events[-1][0] == "done", events[-1]
    assert [t["file"] for t in events[-1][1]["summary"]["tiles"]] == ["boxed_n0_r0_k0.png"]
    assert server.request("GET", f"/api/runs/{run_id}/files/boxed_n0_r0_k0.png")[0] == 200


def test_store_marks_unfinished_runs_interrupted(tmp_path):
    from preimage.serve.store import RunStore
    store = RunStore(tmp_path / "runs.sqlite")
    store.add("a" * 22, {"sample": "astronaut"})
    store.add("b" * 22, {"sample": "astronaut"})
    store.update("b" * 22, "done", summary={"best_error": 0.1}, files=["result.json"])
    store.close()
    store = RunStore(tmp_path / "runs.sqlite")
    assert store.recover() == 1
    assert store.get("a" * 22)["status"] == "interrupted" and store.get("b" * 22)["files"] == ["result.json"]
    assert store.count() == {"interrupted": 1, "done": 1}
    store.close()


def test_non_local_hosts_get_a_token():
    from preimage.cli import build_parser
    from preimage.cli.serve import serve_config
    from preimage.errors import PreimageError
    assert require_token("127.0.0.1", None) == (None, False)
    assert require_token("0.0.0.0", "mine-mine-mine") == ("mine-mine-mine", False)
    cfg, generated = serve_config(build_parser().parse_args(["serve", "--host", "0.0.0.0"]))
    assert generated and len(cfg.token) >= 24 and not cfg.local
    cfg, generated = serve_config(build_parser().parse_args(["serve"]))
    assert cfg.token is None and cfg.local and not generated
    cfg, _ = serve_config(build_parser().parse_args(["serve", "--model", "/models/net.onnx", "--model", "mobilenet_v2"]))
    assert cfg.models == ("net", "mobilenet_v2") and cfg.model_specs["net"] == "/models/net.onnx"
    for flags in (["--weights", "caffenet"], ["--weights", "caffenet=x.safetensors"], ["--token", "short"],
                  ["--workers", "0"], ["--port", "70000"]):
        with pytest.raises(PreimageError):
            serve_config(build_parser().parse_args(["serve", *flags]))


def test_openapi_documents_the_api(server):
    status, schema = server.json("GET", "/openapi.json")
    assert status == 200
    for path in ("/api/runs", "/api/runs/{run_id}/events", "/api/runs/{run_id}/cancel", "/api/images"):
        assert path in schema["paths"]


def test_restart_keeps_finished_runs_and_a_token_guards_every_request(server):
    """The last test of the module's server: stops it, then serves its data again with a token."""
    run_id, events = run_to_end(server, HOG)
    assert events[-1][0] == "done"
    server.stop()
    token = "s3cret-token-for-tests"
    with LocalServer(server.data_dir, "--workers", "1", token=token) as srv:  # on 127.0.0.1, with a token
        status, rec = srv.json("GET", f"/api/runs/{run_id}")
        assert status == 200 and rec["status"] == "done"
        assert [e for e, _, _ in srv.events(run_id)] == ["done"]  # the stored outcome
        assert srv.request("GET", f"/api/runs/{run_id}/files/result.json")[0] == 200
        assert run_id in [r["id"] for r in srv.json("GET", "/api/runs")[1]["runs"]]
        for path in ("/api/info", "/api/runs", "/", "/openapi.json", f"/?token={token}x",
                     f"/api/runs/{run_id}/files/result.json"):
            status, _, body = srv.request("GET", path, headers={"Authorization": "Bearer nope-nope-nope"})
            assert status == 401 and b"token wrong" in body
        srv.token = None
        for method, path in (("GET", "/api/runs"), ("GET", "/"), ("POST", "/api/runs"),
                             ("GET", f"/api/runs/{run_id}/events")):
            status, _, body = srv.request(method, path)
            assert status == 401 and b"token missing" in body
        status, headers, _ = srv.request("GET", f"/?token={token}")
        assert status == 200 and "preimage_token=" in headers["set-cookie"]
        assert srv.request("GET", "/api/info", headers={"Cookie": f"preimage_token={token}"})[0] == 200


def test_scheduler_queue_janitor_and_cancel(tmp_path):
    """The scheduler on its own: capacity, a job nobody watches is cancelled, a queued job too."""
    from preimage.serve.jobs import JobCancelled, JobSpec, QueueFull, Scheduler
    from preimage.serve.store import RunStore

    def runner(job):
        for _ in range(200):
            if job.cancelled.wait(0.05):
                raise JobCancelled()
        return {"ok": True}, []
    store = RunStore(tmp_path / "runs.sqlite")
    sched = Scheduler(runner, store, workers=1, queue_size=1, attach_seconds=0.3)
    try:
        spec = JobSpec(**HOG)
        first, second = sched.submit(spec), None
        for _ in range(50):  # the worker takes the first job, the queue has room for one more
            if first.state == "running":
                break
            time.sleep(0.02)
        second = sched.submit(spec)
        with pytest.raises(QueueFull):
            sched.submit(spec)
        assert sched.cancel(second.id) and store.get(second.id)["status"] == "cancelled"
        for _ in range(100):  # nobody watches the first: cancelled after attach_seconds
            if first.finished:
                break
            time.sleep(0.05)
        assert store.get(first.id)["status"] == "cancelled"
        assert sched.status()["cancelled"] == 2 and sched.status()["refused"] == 1
        persistent = sched.submit(JobSpec(**HOG, persistent=True))
        time.sleep(0.6)
        assert not persistent.finished  # a persistent job is left running
    finally:
        sched.shutdown()
        store.close()
