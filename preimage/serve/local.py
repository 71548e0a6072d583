"""A server on this machine in a child process, for scripts, tests and benchmarks:
:class:`LocalServer` starts ``preimage serve`` on 127.0.0.1 and a free port, waits until it
answers, and stops it on exit::

    with LocalServer(data_dir, workers=1) as server:
        server.json("GET", "/api/info")
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """``preimage serve --host 127.0.0.1 --port <free>`` in a child process with one torch thread.

    Args:
        data_dir: the server's ``--data-dir``.
        args: further flags (``--workers``, ``--queue``, ``--token``, ``--model`` …).
        timeout: seconds to wait for it to answer.
    Attributes: ``port``, ``url``, ``process`` (the :class:`subprocess.Popen`), ``log`` (its output file).
    """

    def __init__(self, data_dir: str | Path, *args: str, token: str | None = None, timeout: float = 60.0):
        self.data_dir, self.args, self.token, self.timeout = Path(data_dir), list(args), token, timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.log = self.data_dir / "server.log"

    def __enter__(self) -> "LocalServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        """Start the child and wait until ``/api/info`` answers (``RuntimeError`` with its log if not)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "preimage.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), *self.args] + (["--token", self.token] if self.token else [])
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                self.request("GET", "/api/info", timeout=2)
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"preimage serve did not start: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after 15 s)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 60) -> tuple[int, dict, bytes]:
        """One HTTP request (with the token when there is one) → ``(status, headers, body)``."""
        headers = dict(headers or {})
        if self.token and "authorization" not in {k.lower() for k in headers}:
            headers["Authorization"] = f"Bearer {self.token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers)
            res = conn.getresponse()
            return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, payload=None, **kw) -> tuple[int, dict]:
        """A JSON request (``payload`` sent as JSON when given) → ``(status, decoded body)``."""
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"content-type": "application/json"} if body is not None else {}
        status, _, data = self.request(method, path, body, headers, **kw)
        return status, json.loads(data) if data else {}

    def upload(self, data: bytes, filename: str = "image.png") -> tuple[int, dict]:
        """``POST /api/images`` with ``data`` as the multipart ``file``."""
        boundary = "preimage-" + os.urandom(8).hex()
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        status, _, out = self.request("POST", "/api/images", body,
                                      {"content-type": f"multipart/form-data; boundary={boundary}"})
        return status, json.loads(out) if out else {}

    def events(self, run_id: str, timeout: float = 120, stop_after: int | None = None):
        """The run's server-sent events as ``(event, data, seconds since the request)``, until a
        final one (or ``stop_after`` events, then the connection is closed)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        t0 = time.monotonic()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            conn.request("GET", f"/api/runs/{run_id}/events", headers=headers)
            res = conn.getresponse()
            if res.status != 200:
                raise RuntimeError(f"events: HTTP {res.status} {res.read()[:300]!r}")
            event, count = None, 0
            while True:
                line = res.readline()
                if not line:
                    return
                line = line.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    yield event, json.loads(line[6:]), time.monotonic() - t0
                    count += 1
                    if event in ("done", "failed", "cancelled", "interrupted") or count == stop_after:
                        return
        finally:
            conn.close()
