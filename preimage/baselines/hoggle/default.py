"""The default dictionary: where it is cached (``$PREIMAGE_CACHE``, or a file named by
``$PREIMAGE_HOGGLE_DICTIONARY``), training it on the shared training images, and loading it —
trained once, with progress bars, the first time HOGgle is used on a machine."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ...errors import PreimageError
from .dictionary import DEFAULT_ALPHA, HoggleDictionary
from .training import DEFAULT_N_ATOMS, DEFAULT_N_ITER, DEFAULT_WINDOWS_PER_IMAGE, train_hoggle

CACHE_ENV = "PREIMAGE_CACHE"
DICTIONARY_ENV = "PREIMAGE_HOGGLE_DICTIONARY"


def default_dictionary_path(n_atoms: int = DEFAULT_N_ATOMS, alpha: float = DEFAULT_ALPHA, seed: int = 0) -> Path:
    """Where the dictionary for these settings is cached: ``$PREIMAGE_CACHE`` (default
    ``~/.cache/preimage``) ``/hoggle-k{n_atoms}-a{alpha}-s{seed}-v1.safetensors``. With the default
    settings, ``$PREIMAGE_HOGGLE_DICTIONARY`` (a file) overrides it."""
    env = os.environ.get(DICTIONARY_ENV)
    if env and (n_atoms, alpha, seed) == (DEFAULT_N_ATOMS, DEFAULT_ALPHA, 0):
        return Path(env).expanduser()
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "preimage").expanduser()
    return root / f"hoggle-k{n_atoms}-a{alpha:g}-s{seed}-v1.safetensors"


def train_command(out_path: str | Path | None = None, n_atoms: int = DEFAULT_N_ATOMS,
                  alpha: float = DEFAULT_ALPHA, seed: int = 0, max_images: int | None = None,
                  windows_per_image: int = DEFAULT_WINDOWS_PER_IMAGE, n_iter: int = DEFAULT_N_ITER,
                  progress: bool = True) -> Path:
    """Train on the shared training images (the first ``max_images`` of them, sorted; all 200 by
    default), save, print a one-line summary and return the file's path
    (default :func:`default_dictionary_path` for these settings)."""
    from ...data import train_images
    paths = train_images()
    if max_images:
        paths = paths[:max_images]
    if not paths:
        raise PreimageError("no training images found under data/imagenet-sample/train")
    out = Path(out_path) if out_path else default_dictionary_path(n_atoms, alpha, seed)
    d = train_hoggle(paths, n_atoms=n_atoms, alpha=alpha, windows_per_image=windows_per_image,
                     n_iter=n_iter, seed=seed, progress=progress)
    d.save(out)
    print(f"HOGgle dictionary: {n_atoms} atoms, {d.metadata['n_windows']} windows from "
          f"{d.metadata['n_train_images']} images in {d.metadata['training_seconds']:.0f} s → {out}",
          file=sys.stderr)
    return out


def load_or_train_default(progress: bool = True) -> HoggleDictionary:
    """The default dictionary (:func:`default_dictionary_path`), trained once on the shared training
    images (≈ 10 minutes on two cores, shown by tqdm bars when ``progress``) when it is not there yet."""
    path = default_dictionary_path()
    if path.is_file():
        return HoggleDictionary.load(path)
    if os.environ.get(DICTIONARY_ENV):
        raise PreimageError(f"{DICTIONARY_ENV}={os.environ[DICTIONARY_ENV]}: no such file")
    print(f"No HOGgle dictionary at {path}: training one on the shared training images "
          f"(once; about 10 minutes on two cores; `preimage hoggle train` does this ahead of time).",
          file=sys.stderr)
    train_command(path, progress=progress)
    return HoggleDictionary.load(path)
