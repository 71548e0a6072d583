"""The web app: :func:`create_app` (FastAPI) serving the page under ``/`` and the API under
``/api`` (documented at ``/docs``, a page drawn from the schema at ``/openapi.json`` that
needs nothing from elsewhere: FastAPI's Swagger UI and ReDoc load from a CDN, so they are off).

API (every route answers JSON errors ``{"detail": "…"}``, never a traceback)::

    GET  /api/info                      limits, workers, queue, models, representations, samples
    GET  /api/models/{name}/layers      a model's layers (channels, output shape, receptive field)
    POST /api/images                    upload an image (multipart ``file``) → {"id", "height", "width"}
    POST /api/runs                      submit a job (JSON :class:`~preimage.serve.jobs.JobSpec`) → 202 {"id"}; 429 when full
    GET  /api/runs                      the gallery, newest first
    GET  /api/runs/{id}                 one run: status, spec, summary, files
    GET  /api/runs/{id}/events          server-sent events: progress (frame + energies), then done/failed/cancelled
    POST /api/runs/{id}/cancel          stop a queued or running job
    GET  /api/runs/{id}/files/{name}    one of the run's files (PNGs, result.json, reconstructions.safetensors)
    GET  /api/runs/{id}/download        the run's files as a zip
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import zipfile
from contextlib import asynccontextmanager
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, File, HTTPException, Path as PathParam, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from ..errors import PreimageError, UnknownNameError
from ..version import __version__
from .config import ServeConfig
from .jobs import RUN_ID_PATTERN, JobSpec, QueueFull, Scheduler
from .store import RunStore
from .uploads import UploadError, store_upload
from .work import Models, run_job, sample_paths

log = logging.getLogger("preimage.serve")
STATIC = Path(__file__).with_name("static")
TOKEN_COOKIE = "preimage_token"
FILE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$"
TERMINAL = ("done", "failed", "cancelled", "interrupted")


class Guard:
    """ASGI middleware: the token on every request (when the server has one), and the upload
    size limit read from ``Content-Length`` before any body is received."""

    def __init__(self, app, cfg: ServeConfig):
        self.app, self.cfg = app, cfg

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        set_cookie = False
        if self.cfg.token:
            given = _token_of(headers, query)
            if given is None or not secrets.compare_digest(given.encode(), self.cfg.token.encode()):
                why = "missing" if given is None else "wrong"
                return await _json(send, 401, f"token {why}: this server needs its token (open the address "
                                              "it printed, or send 'Authorization: Bearer TOKEN')")
            set_cookie = "token" in query
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.cfg.max_upload_bytes + 64 * 1024:
            return await _json(send, 413, f"the request is {length} bytes, over the upload limit of "
                                          f"{self.cfg.max_upload_bytes}")
        limit, received = self.cfg.max_upload_bytes + 64 * 1024, 0

        async def bounded_receive():
            """The body as it arrives, cut off (as a disconnect) beyond the limit: a request
            without ``Content-Length`` cannot spool an unbounded upload."""
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    return {"type": "http.disconnect"}
            return message
        if not set_cookie:
            return await self.app(scope, bounded_receive, send)

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={self.cfg.token}; Path=/; HttpOnly; SameSite=Strict"
                message = {**message, "headers": list(message.get("headers", [])) + [(b"set-cookie", cookie.encode())]}
            await send(message)
        return await self.app(scope, bounded_receive, send_with_cookie)


def _token_of(headers: dict, query: dict) -> str | None:
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    if "token" in query:
        return query["token"][0]
    if "cookie" in headers:
        morsel = SimpleCookie(headers["cookie"]).get(TOKEN_COOKIE)
        return morsel.value if morsel else None
    return None


async def _json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "invalid request"


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(UploadError)
    async def bad_upload(request: Request, exc: UploadError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(QueueFull)
    async def full(request: Request, exc: QueueFull):
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "2"})

    @app.exception_handler(PreimageError)
    async def user_error(request: Request, exc: PreimageError):
        status = 404 if isinstance(exc, UnknownNameError) else 400
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=status)

    @app.exception_handler(ValueError)
    async def bad_value(request: Request, exc: ValueError):  # the library's checks of user input
        return JSONResponse({"detail": " ".join(str(exc).split()) or "invalid value"}, status_code=400)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server's log"},
                            status_code=500)


def create_app(cfg: ServeConfig) -> FastAPI:
    """The app for ``cfg``: its store (``data_dir/runs.sqlite``; runs left unfinished by a
    previous server are marked interrupted), the scheduler and every route."""
    store = RunStore(cfg.data_dir / "runs.sqlite")
    store.recover()
    models = Models(cfg)
    scheduler = Scheduler(lambda job: run_job(job, cfg, models), store, cfg.workers, cfg.queue_size,
                          cfg.attach_seconds)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        scheduler.shutdown()
        store.close()

    app = FastAPI(title="preimage", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Reconstruct images from their representations (HOG, dense SIFT, CNN layers), "
                              "watch the reconstructions form, compare settings.")
    app.state.cfg, app.state.store, app.state.scheduler, app.state.models = cfg, store, scheduler, models
    _install_errors(app)
    _page_routes(app)
    _info_routes(app, cfg, models, scheduler)
    _run_routes(app, cfg, store, models, scheduler)
    app.add_middleware(Guard, cfg=cfg)
    return app


def _page_routes(app: FastAPI) -> None:
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs():  # FastAPI's own pages load Swagger UI / ReDoc from a CDN: this one works offline
        return HTMLResponse((STATIC / "docs.html").read_text(encoding="utf-8"))


def _info_routes(app: FastAPI, cfg: ServeConfig, models: Models, scheduler: Scheduler) -> None:
    from ..params import PARAMETERISATIONS
    from ..representations import SHALLOW_NAMES

    @app.get("/api/info", summary="What this server offers and its limits")
    def info():
        return {"version": __version__, "representations": list(SHALLOW_NAMES), "models": list(cfg.models),
                "params": sorted(PARAMETERISATIONS), "samples": sorted(sample_paths()),
                "scheduler": scheduler.status(),
                "limits": {"max_upload_bytes": cfg.max_upload_bytes, "max_upload_pixels": cfg.max_upload_pixels,
                           "max_iterations": cfg.max_iterations, "max_restarts": cfg.max_restarts,
                           "max_settings": cfg.max_settings, "max_side": cfg.max_side}}

    @app.get("/api/models/{name}/layers", summary="A model's layers")
    def layers(name: str = PathParam(max_length=200)):
        return {"model": name, "layers": models.layers(name)}

    @app.post("/api/images", summary="Upload an image (checked by decoding; EXIF orientation applied)")
    async def upload(file: UploadFile = File(...)):
        data = await file.read(cfg.max_upload_bytes + 1)
        upload_id, (h, w) = await asyncio.to_thread(store_upload, data, cfg.data_dir / "uploads",
                                                    cfg.max_upload_bytes, cfg.max_upload_pixels)
        return {"id": upload_id, "height": h, "width": w}


def check_spec(spec: JobSpec, cfg: ServeConfig, models: Models) -> None:
    """The server's own limits and names on top of :class:`JobSpec`'s checks (HTTP 422/404)."""
    limits = [(spec.iterations, cfg.max_iterations, "iterations"), (spec.restarts, cfg.max_restarts, "restarts"),
              (len(spec.lambda_tv or ()), cfg.max_settings, "λ_V values")]
    for value, limit, what in limits:
        if value > limit:
            raise HTTPException(422, f"{what}: {value} is over this server's limit of {limit}")
    if spec.restarts * max(1, len(spec.lambda_tv or ())) > cfg.max_restarts * cfg.max_settings // 2:
        raise HTTPException(422, f"restarts × λ_V values = {spec.restarts * len(spec.lambda_tv or ())} is over "
                                 f"this server's limit of {cfg.max_restarts * cfg.max_settings // 2}")
    if spec.upload is not None and not (cfg.data_dir / "uploads" / f"{spec.upload}.png").is_file():
        raise HTTPException(404, f"no uploaded image {spec.upload!r}; upload it first with POST /api/images")
    if spec.sample is not None and spec.sample not in sample_paths():
        raise HTTPException(404, f"unknown sample {spec.sample!r}; see GET /api/info")
    if spec.model is not None:
        names = [layer["name"] for layer in models.layers(spec.model)]
        if spec.layer not in names:
            raise HTTPException(404, f"unknown layer {spec.layer!r} of {spec.model}; see "
                                     f"GET /api/models/{spec.model}/layers")


def _run_routes(app: FastAPI, cfg: ServeConfig, store: RunStore, models: Models, scheduler: Scheduler) -> None:
    run_id_param = PathParam(pattern=RUN_ID_PATTERN, description="a run id")

    @app.post("/api/runs", status_code=202, summary="Submit an inversion (429 when the queue is full)")
    def submit(spec: JobSpec):
        scheduler.refuse_when_full()  # before any further work: refusals must stay cheap
        check_spec(spec, cfg, models)
        job = scheduler.submit(spec)
        return {"id": job.id, "events": f"/api/runs/{job.id}/events", "run": f"/api/runs/{job.id}"}

    @app.get("/api/runs", summary="The gallery: past and current runs, newest first")
    def runs(limit: int = 50, offset: int = 0):
        return {"runs": store.list(max(1, min(limit, 500)), max(0, offset)), "counts": store.count()}

    def record(run_id: str) -> dict:
        rec = store.get(run_id)
        if rec is None:
            raise HTTPException(404, "no such run")
        return rec

    @app.get("/api/runs/{run_id}", summary="One run")
    def run(run_id: str = run_id_param):
        return record(run_id)

    @app.post("/api/runs/{run_id}/cancel", summary="Cancel a queued or running job")
    def cancel(run_id: str = run_id_param):
        rec = record(run_id)
        return {"id": run_id, "cancelled": scheduler.cancel(run_id), "status": rec["status"]}

    @app.get("/api/runs/{run_id}/events", summary="Progress as server-sent events",
             response_class=StreamingResponse)
    async def events(run_id: str = run_id_param):
        rec = record(run_id)
        return StreamingResponse(_event_stream(scheduler, rec), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/runs/{run_id}/files/{name}", summary="One file of a finished run")
    def file(run_id: str = run_id_param, name: str = PathParam(pattern=FILE_PATTERN)):
        if name not in record(run_id)["files"]:
            raise HTTPException(404, "no such file in this run")
        return FileResponse(cfg.data_dir / "runs" / run_id / name)

    @app.get("/api/runs/{run_id}/download", summary="A finished run's files as a zip")
    def download(run_id: str = run_id_param):
        rec = record(run_id)
        if not rec["files"]:
            raise HTTPException(404, "this run has no files (it did not finish)")
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name in rec["files"]:
                z.write(cfg.data_dir / "runs" / run_id / name, f"preimage-{run_id}/{name}")
        return Response(buf.getvalue(), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="preimage-{run_id}.zip"'})


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _event_stream(scheduler: Scheduler, rec: dict):
    """The events of run ``rec``: live ones while its job runs, else its stored outcome. A job
    that is not persistent is cancelled when its last watcher goes away."""
    job = scheduler.watchable(rec["id"])
    if job is None:  # finished a while ago (possibly before a restart): its stored outcome
        rec = scheduler.store.get(rec["id"]) or rec
        data = {"id": rec["id"], "status": rec["status"]}
        data.update({"summary": rec["summary"], "files": rec["files"]} if rec["status"] == "done"
                    else {"message": rec["error"] or rec["status"]})
        yield _sse(rec["status"] if rec["status"] in TERMINAL else "status", data)
        return
    q, missed = job.watch(asyncio.get_running_loop())
    try:
        yield _sse("status", {"id": job.id, "status": job.state})
        for item in missed:
            yield _sse(item["event"], item["data"])
            if item["event"] in TERMINAL:
                return
        while True:
            try:
                item = await asyncio.wait_for(q.get(), timeout=15)
            except asyncio.TimeoutError:
                yield ": keep-alive\n\n"
                continue
            yield _sse(item["event"], item["data"])
            if item["event"] in TERMINAL:
                return
    finally:
        if job.unwatch(q) == 0 and not job.spec.persistent and not job.finished:
            scheduler.cancel(job.id)
