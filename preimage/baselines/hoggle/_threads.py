"""HOGgle's torch thread setting: a context manager that runs a block on ``n`` intra-op threads."""

from __future__ import annotations

import contextlib

import torch

DEFAULT_THREADS = 1      #: torch threads for HOGgle's work (see :func:`torch_threads`)


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with ``torch.set_num_threads(n)`` (``None``: leave the setting alone), restoring
    the previous value. HOGgle's work defaults to one thread: on the shared two-core machine,
    with other processes busy, two OpenMP threads made the same products ≈ 2× slower and small
    LAPACK calls (the 1000×1000 Cholesky inverse) up to 50× slower than one thread (measured)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)
