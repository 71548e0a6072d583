"""The server's settings: :class:`ServeConfig` (what ``preimage serve`` parses its flags into)."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PreimageError

#: Hosts that only this machine can reach: binding to them needs no token.
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
#: Largest upload accepted: 20 MB.
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest decoded image accepted: 40 megapixels (decompression bombs are refused before decoding).
MAX_UPLOAD_PIXELS = 40_000_000


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@dataclass
class ServeConfig:
    """Everything the app needs to know.

    Attributes:
        data_dir: where uploads, run folders and the SQLite gallery (``runs.sqlite``) live.
        host, port: the address served (``host`` decides whether a token is needed).
        workers: jobs run at once (threads, one torch thread each).
        queue_size: jobs that may wait for a worker; one more gets HTTP 429.
        token: the secret every request must carry (``Authorization: Bearer``, ``?token=`` or the
            cookie the page sets), or ``None`` for none (local binds only).
        models: model names the web API may use (``preimage.models.get_model`` names; files given
            to ``preimage serve --model`` are registered under their name by the caller).
        model_specs: name → what :func:`preimage.models.get_model` is given for it (a model file
            the server was started with is offered under its file's stem; never taken from a request).
        model_weights: name → weights file for a model the server was started with (never
            taken from a request).
        attach_seconds: a job that is not persistent is cancelled when no client watches its
            progress within this time, or once its last watcher disconnects.
        max_iterations, max_restarts, max_settings, max_side: limits on one job's size.
    """

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = field(default_factory=default_workers)
    queue_size: int = 16
    token: str | None = None
    models: tuple[str, ...] = ("mobilenet_v2", "mobilenet_v2_tf2", "mobilenet_v1", "mobilenet_v1_small",
                               "caffenet")
    model_specs: dict = field(default_factory=dict)
    model_weights: dict = field(default_factory=dict)
    attach_seconds: float = 30.0
    max_iterations: int = 2000
    max_restarts: int = 8
    max_settings: int = 8
    max_side: int = 512
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    max_upload_pixels: int = MAX_UPLOAD_PIXELS

    def __post_init__(self):
        self.data_dir = Path(self.data_dir)
        if self.workers < 1:
            raise PreimageError(f"--workers must be at least 1, got {self.workers}")
        if self.queue_size < 0:
            raise PreimageError(f"the queue size must be 0 or more, got {self.queue_size}")
        if self.token is not None and len(self.token) < 8:
            raise PreimageError("--token must be at least 8 characters long")

    @property
    def local(self) -> bool:
        """Whether the server listens only on this machine."""
        return self.host in LOCAL_HOSTS


def require_token(host: str, token: str | None) -> tuple[str | None, bool]:
    """The token a server on ``host`` uses: the given one; a new random one for a non-local host
    (second value True: generated, to be printed); None on a local host without one."""
    if token:
        return token, False
    if host in LOCAL_HOSTS:
        return None, False
    return secrets.token_urlsafe(24), True
