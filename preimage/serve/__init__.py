"""``preimage serve``: an interactive explorer in the browser, and the HTTP API under it.

* :mod:`~preimage.serve.app`: the FastAPI app (:func:`create_app`), its routes and the token guard;
* :mod:`~preimage.serve.jobs`: job requests, the bounded queue and the worker threads;
* :mod:`~preimage.serve.work`: what a worker does (representation, image, inversion with live
  frames, the run's files through :func:`preimage.io.artefacts.write_inversion`);
* :mod:`~preimage.serve.uploads`: checked uploads; :mod:`~preimage.serve.store`: the SQLite gallery;
* ``static/``: the page (HTML, CSS, JavaScript; no build step, nothing fetched from elsewhere).

Needs the ``serve`` extra (``pip install -e '.[serve]'``: FastAPI, uvicorn, python-multipart).
"""

from __future__ import annotations

from .config import ServeConfig, require_token

__all__ = ["ServeConfig", "create_app", "require_token"]


def create_app(cfg: ServeConfig):
    """The FastAPI app for ``cfg`` (see :func:`preimage.serve.app.create_app`)."""
    from .app import create_app as _create
    return _create(cfg)
