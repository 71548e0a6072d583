"""The training recipe of a HOGgle dictionary and its stamp: everything that determines the trained
atoms (the settings, the training images' contents, the HOG and window geometry, the training
code), written as canonical JSON and hashed. The cached default dictionary's file name carries the
stamp and its metadata the whole recipe, so a changed recipe never reuses an old file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

from .dictionary import DEFAULT_ALPHA, HoggleDictionary

#: Bump when the training algorithm changes in a way the source digest would not show (e.g. a
#: dependency's behaviour); the digest of the training modules' source covers edits to them.
TRAINING_VERSION = 2
STAMP_LENGTH = 12        #: hex digits of the stamp

DEFAULT_N_ATOMS = 1000
DEFAULT_WINDOWS_PER_IMAGE = 1000
DEFAULT_N_ITER = 25      # ≈ 50 s on one core; 400 (≈ 6 min) was no better on held-out train images
DEFAULT_BATCH_SIZE = 1024
DEFAULT_LASSO_ITER = 15

# the modules whose source decides the trained atoms (training code, windows, HOG, codes)
_SOURCES = ("training.py", "pairs.py", "geometry.py", "lasso.py")
_HOG_SOURCE = Path(__file__).resolve().parents[2] / "representations" / "hog.py"

# effective speed of one core on this project's 2-core machine, for the announced duration
_GFLOPS = 40.0
_HOG_SECONDS_PER_IMAGE = 0.03


@dataclass(frozen=True)
class Recipe:
    """How a HOGgle dictionary is trained (see :func:`~preimage.baselines.hoggle.train_hoggle`
    for the meaning of each setting).

    Attributes:
        images: ``((file name, sha256 of its bytes), ...)`` of the training images, in order.
        n_atoms, alpha, seed, windows_per_image, n_iter, batch_size, lasso_iter, backend: the
            settings passed to ``train_hoggle``.
    """

    images: tuple[tuple[str, str], ...]
    n_atoms: int = DEFAULT_N_ATOMS
    alpha: float = DEFAULT_ALPHA
    seed: int = 0
    windows_per_image: int = DEFAULT_WINDOWS_PER_IMAGE
    n_iter: int = DEFAULT_N_ITER
    batch_size: int = DEFAULT_BATCH_SIZE
    lasso_iter: int = DEFAULT_LASSO_ITER
    backend: str = "torch"

    @classmethod
    def for_files(cls, paths: Sequence[str | Path], **settings) -> "Recipe":
        """The recipe for training on the image files ``paths`` (each read and hashed: ≈ 0.1 s for
        the 200 shared training images) with ``settings`` (the other fields; defaults otherwise)."""
        images = tuple((Path(p).name, hashlib.sha256(Path(p).read_bytes()).hexdigest()) for p in paths)
        return cls(images, **settings)

    def with_settings(self, **settings) -> "Recipe":
        """A copy with some settings changed."""
        return replace(self, **settings)

    def settings(self) -> dict:
        """The ``train_hoggle`` keyword arguments of this recipe (all fields but ``images``)."""
        out = asdict(self)
        del out["images"]
        return out

    def as_dict(self) -> dict:
        """The whole recipe as JSON-ready data: the settings, the images, the HOG and the window
        geometry, the grey conversion, :data:`TRAINING_VERSION` and the digest of the training
        code's source (the hoggle training modules and the HOG implementation)."""
        from .geometry import CELL_SIZE, HOG_WINDOW, PATCH_SIZE, _hog_module
        out = self.settings()
        out.update(images=[list(i) for i in self.images], hog=f"HOG({_hog_module().extra_repr()})",
                   cell_size=CELL_SIZE, hog_window_cells=HOG_WINDOW, patch_pixels=PATCH_SIZE,
                   grey="BT.601 luma, 0-255", training_version=TRAINING_VERSION, code_digest=code_digest())
        return out

    def canonical(self) -> str:
        """:meth:`as_dict` as canonical JSON (sorted keys, no spaces)."""
        return canonical_json(self.as_dict())

    def stamp(self) -> str:
        """The first :data:`STAMP_LENGTH` hex digits of the SHA-256 of :meth:`canonical`: any
        change of any part of the recipe changes it."""
        return hashlib.sha256(self.canonical().encode("utf-8")).hexdigest()[:STAMP_LENGTH]

    def file_name(self) -> str:
        """``hoggle-k{n_atoms}-a{alpha}-s{seed}-{stamp}.safetensors``."""
        return f"hoggle-k{self.n_atoms}-a{self.alpha:g}-s{self.seed}-{self.stamp()}.safetensors"

    def mismatch(self, dictionary: HoggleDictionary) -> str | None:
        """Why ``dictionary`` was not trained with this recipe (``None`` when it was: its metadata
        holds this recipe and its stamp)."""
        meta = dictionary.metadata
        if "recipe" not in meta or "recipe_stamp" not in meta:
            return "it records no training recipe (an older format)"
        if meta["recipe_stamp"] != self.stamp() or canonical_json(meta["recipe"]) != self.canonical():
            theirs, ours = meta["recipe"] if isinstance(meta["recipe"], dict) else {}, self.as_dict()
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            return f"it was trained with another recipe (differs in: {', '.join(diff) or 'stamp'})"
        return None

    def estimated_seconds(self) -> float:
        """A rough training time on one core of the project's two-core machine: the HOG of the
        images plus the floating-point work of the mini-batches (codes, statistics, atom update)."""
        k, d, b = self.n_atoms, 675 + 3136, self.batch_size
        per_batch = 4.0 * k * k * d + b * (4.0 * k * d + 2.0 * k * k * (self.lasso_iter + 2))
        return len(self.images) * _HOG_SECONDS_PER_IMAGE + self.n_iter * per_batch / (_GFLOPS * 1e9)


def canonical_json(data) -> str:
    """``data`` as canonical JSON: sorted keys, no spaces, tuples as lists."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def code_digest() -> str:
    """SHA-256 (16 hex digits) of the source of the modules that decide the trained atoms: this
    package's training, window, geometry and lasso modules and the HOG representation."""
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for path in [here / name for name in _SOURCES] + [_HOG_SOURCE]:
        h.update(path.name.encode("utf-8"))
        h.update(path.read_bytes() if path.is_file() else b"missing")
    return h.hexdigest()[:16]
