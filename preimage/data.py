"""Where the shared data lives: one setting, ``PREIMAGE_DATA``.

``PREIMAGE_DATA`` points at a folder laid out like the project's ``shared/`` (``data/``,
``models/``, ``paper/``). When unset, ``../shared`` next to the current checkout (or next to the
package's source tree) is used when it exists. Tests and benchmarks call :func:`shared_dir` and
skip with the returned reason when it is ``None``.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "PREIMAGE_DATA"


def shared_dir() -> Path | None:
    """The shared data folder, or ``None`` when it cannot be found."""
    env = os.environ.get(ENV_VAR)
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    candidates = [Path.cwd() / ".." / "shared", Path(__file__).resolve().parents[2] / "shared"]
    for p in candidates:
        if (p / "data").is_dir() or (p / "models").is_dir():
            return p.resolve()
    return None


def missing_reason(what: str = "shared data") -> str:
    """The message used when :func:`shared_dir` finds nothing."""
    return (f"{what} not found: set {ENV_VAR} to the folder holding data/ and models/ "
            f"(the project's shared/), or place it at ../shared")


def require_shared(*parts: str) -> Path:
    """Path under the shared folder; raises ``FileNotFoundError`` with a clear message if absent."""
    root = shared_dir()
    if root is None:
        raise FileNotFoundError(missing_reason())
    p = root.joinpath(*parts)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist (under {ENV_VAR}={root})")
    return p


def eval_images() -> list[Path]:
    """The 100 evaluation images (sorted), ``data/imagenet-sample/eval``."""
    return sorted(require_shared("data", "imagenet-sample", "eval").glob("*.JPEG"))


def train_images() -> list[Path]:
    """The 200 training images (sorted), ``data/imagenet-sample/train``; fit things here, never on eval."""
    return sorted(require_shared("data", "imagenet-sample", "train").glob("*.JPEG"))


def spread(items, m: int | None) -> list:
    """``m`` of ``items`` spread evenly over the list (item ``round(i·len/m)`` for i < m): the eval
    set is sorted by class, so this keeps classes varied; used for images and layers alike. All of
    them when ``m`` is None or not smaller than the list."""
    items = list(items)
    if m is not None and m < 1:
        raise ValueError(f"cannot take {m} items")
    if m and m < len(items):
        items = [items[round(i * len(items) / m)] for i in range(m)]
    return items
