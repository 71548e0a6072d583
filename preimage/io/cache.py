"""Files keyed by their content's parameters, written atomically.

* :func:`canonical_json` / :func:`stable_key`: a deterministic JSON text of a parameter dict and
  its SHA-256, the key of every cached or stored result (experiment units, evaluation batches).
* :func:`atomic_write_bytes`: a file either exists complete or not at all (temporary name in the
  same folder, flush, fsync, rename), so a run killed at any point leaves no torn file.
* :func:`png_bytes`, :func:`tensors_bytes`: the two file formats results are kept in (PNG and
  safetensors: nothing is ever pickled).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

#: Marks the temporary files of :func:`atomic_write_bytes` (a killed writer's leftovers).
TMP_MARK = ".tmp-"


def json_ready(obj: Any) -> Any:
    """JSON-ready copy: tuples → lists, numpy scalars → Python, floats kept exactly (repr)."""
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None if math.isnan(obj) else (1e308 if obj > 0 else -1e308)
    return obj


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) of ``obj``: the text hashed by :func:`stable_key`."""
    return json.dumps(json_ready(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def stable_key(params: Mapping[str, Any]) -> str:
    """Stable key of a set of parameters: hex SHA-256 of its canonical JSON parameters (64 characters).

    Equal parameters (whatever their dict order, tuples or lists) give the same key; any change
    of a parameter gives another key.
    """
    return hashlib.sha256(canonical_json(params).encode("utf-8")).hexdigest()


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{time.monotonic_ns()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def png_bytes(image: np.ndarray, compress_level: int = 6) -> bytes:
    """``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` uint8 array → PNG bytes (zlib ``compress_level``
    0–9: 6 is Pillow's default, 1 the fastest)."""
    from PIL import Image
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"PNG images must be uint8 arrays, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def tensors_bytes(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """A dict of torch tensors (or numpy arrays) → safetensors bytes."""
    import torch
    from safetensors.torch import save
    clean = {str(k): (torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v).detach().cpu().contiguous()
             for k, v in tensors.items()}
    return save(clean, metadata=dict(metadata) if metadata else None)


def weights_fingerprint(module) -> str:
    """Short SHA-256 (16 hex digits) of a module's parameters and buffers, so results cached for a
    network follow its weights (a changed weights file is never served stale results)."""
    import torch
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        if torch.is_tensor(t):
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
