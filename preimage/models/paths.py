"""Where model files are found: the model search path and the catalogue of named files.

A named model (``mobilenet_v2`` …) is one or more files (:data:`MODEL_FILES`) looked up, in order,
in the folders of :func:`search_path`:

1. ``model_dir`` given by the caller (the CLI's ``--model-dir``), a folder or a list of folders;
2. ``PREIMAGE_MODELS``: folders separated by ``os.pathsep`` (``:`` on Linux/macOS);
3. the shared data's ``models/`` (``PREIMAGE_DATA``, or ``../shared``, see :mod:`preimage.data`);
4. the user folder ``~/.cache/preimage/models`` (``$XDG_CACHE_HOME/preimage/models`` when set).

Third-party weight files are never part of the repository: users keep them in one of these
folders. When a file is missing, :class:`ModelNotFoundError` says where it looked and where the
file can be downloaded (:func:`missing_message`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..data import ENV_VAR as DATA_ENV_VAR
from ..data import shared_dir
from ..errors import PreimageError

__all__ = ["MODELS_ENV_VAR", "ModelFile", "MODEL_FILES", "ModelNotFoundError", "search_path", "find_model_file",
           "user_model_dir", "missing_message", "describe_search_path", "MODEL_SUFFIXES", "list_model_files",
           "named_model_files"]

#: Environment variable naming extra model folders (``os.pathsep``-separated).
MODELS_ENV_VAR = "PREIMAGE_MODELS"
#: File name endings recognised as models by ``preimage models`` and ``--model PATH``.
MODEL_SUFFIXES = (".tflite", ".onnx")

_CORAL = "https://github.com/google-coral/test_data/raw/master/"


@dataclass(frozen=True)
class ModelFile:
    """One file of a named model: its name and the public place it can be downloaded from."""

    name: str
    url: str
    licence: str = "Apache-2.0"


def _coral(name: str) -> ModelFile:
    return ModelFile(name, _CORAL + name)


#: Named model → the files it needs (run in sequence), each with its public source.
MODEL_FILES: dict[str, tuple[ModelFile, ...]] = {
    "mobilenet_v2": (_coral("mobilenet_v2_1.0_224_quant.tflite"),),
    "mobilenet_v2_tf2": (_coral("tf2_mobilenet_v2_1.0_224_ptq.tflite"),),
    "mobilenet_v1": (_coral("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"),
                     _coral("mobilenet_quant_v1_224_head_layers.tflite")),
    "mobilenet_v1_small": (_coral("mobilenet_v1_0.25_128_quant.tflite"),),
}


class ModelNotFoundError(PreimageError, FileNotFoundError):
    """A named model's file is in none of the folders of the search path."""


def user_model_dir() -> Path:
    """The per-user model folder: ``$XDG_CACHE_HOME/preimage/models`` or ``~/.cache/preimage/models``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "preimage" / "models"


def _as_list(model_dir) -> list[Path]:
    if model_dir is None:
        return []
    if isinstance(model_dir, (str, os.PathLike)):
        return [Path(p).expanduser() for p in str(model_dir).split(os.pathsep) if p]
    return [Path(p).expanduser() for p in model_dir]


def search_path(model_dir: str | os.PathLike | Sequence | None = None) -> list[tuple[Path, str]]:
    """The folders searched for model files, in order, each with where it comes from
    (``"--model-dir"``, ``"PREIMAGE_MODELS"``, ``"shared data"``, ``"user folder"``). Folders
    that do not exist are listed too (so messages can say where nothing was found)."""
    out: list[tuple[Path, str]] = [(p, "--model-dir") for p in _as_list(model_dir)]
    out += [(p, MODELS_ENV_VAR) for p in _as_list(os.environ.get(MODELS_ENV_VAR) or None)]
    shared = shared_dir()
    env = os.environ.get(DATA_ENV_VAR)
    if shared is None:  # listed anyway, so that messages say where it was looked for
        shared = Path(env).expanduser() if env else Path.cwd().parent / "shared"
    out.append((shared / "models", f"shared data ({DATA_ENV_VAR})" if env else "shared data (../shared)"))
    out.append((user_model_dir(), "user folder"))
    seen, unique = set(), []
    for p, why in out:
        key = str(p.resolve()) if p.exists() else str(p)
        if key not in seen:
            seen.add(key)
            unique.append((p, why))
    return unique


def describe_search_path(model_dir=None) -> str:
    """The folders of :func:`search_path` as one line for messages: ``folder (origin[, missing]); …``."""
    parts = []
    for p, why in search_path(model_dir):
        state = "" if p.is_dir() else ", missing"
        parts.append(f"{p} ({why}{state})")
    return "; ".join(parts)


def missing_message(name: str, files: Sequence[ModelFile], model_dir=None) -> str:
    """The one-line message for a named model whose ``files`` are not found: where it looked and
    how to get them."""
    where = describe_search_path(model_dir)
    get = ", ".join(f"{f.name} from {f.url} ({f.licence})" for f in files)
    return (f"model {name!r} needs {', '.join(f.name for f in files)}, found in none of: {where}. "
            f"Download {get} into {user_model_dir()} (or any folder given with --model-dir or "
            f"{MODELS_ENV_VAR}), or pass --model PATH to a .tflite/.onnx file")


def find_model_file(name: str, model_dir=None) -> Path | None:
    """The first ``name`` (a file name) in the search path, or ``None``."""
    for folder, _ in search_path(model_dir):
        p = folder / name
        if p.is_file():
            return p
    return None


def named_model_files(key: str, model_dir=None) -> list[Path]:
    """The paths of named model ``key``'s files (:data:`MODEL_FILES`). Raises
    :class:`ModelNotFoundError` saying where it looked and how to get the missing files."""
    files = MODEL_FILES[key]
    found = [find_model_file(f.name, model_dir) for f in files]
    missing = [f for f, p in zip(files, found) if p is None]
    if missing:
        raise ModelNotFoundError(missing_message(key, missing, model_dir))
    return found  # type: ignore[return-value]


def list_model_files(model_dir=None) -> list[tuple[Path, str, list[Path]]]:
    """Every folder of the search path with where it comes from and the model files
    (:data:`MODEL_SUFFIXES`) it holds, sorted by name (empty for a missing folder)."""
    out = []
    for folder, why in search_path(model_dir):
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES) \
            if folder.is_dir() else []
        out.append((folder, why, files))
    return out

