"""The joint HOG/grey dictionary and its files: safetensors (default) or ``.npz`` read with
``allow_pickle=False``, the training settings as JSON metadata; nothing is ever unpickled."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...errors import PreimageError
from .geometry import GREY_DIM, HOG_DIM

DEFAULT_ALPHA = 0.02     #: λ of the non-negative lasso (training and, by default, inversion)
FORMAT = "preimage-hoggle/1"
_META_KEY = "preimage_hoggle"


@dataclass(eq=False)
class HoggleDictionary:
    """A joint HOG/grey dictionary.

    Attributes:
        atoms: ``(K, 675 + 3136)`` float32; the first 675 numbers of an atom are its HOG half
            (a 5×5-cell window, layout ``(27, 5, 5)``), the rest its grey half (a 56×56 patch, row
            major). Both halves live in the centred, L2-normalised space of the training vectors.
        metadata: training settings (JSON-serialisable; saved with the atoms).
    """

    atoms: np.ndarray
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.atoms = np.ascontiguousarray(self.atoms, dtype=np.float32)
        if self.atoms.ndim != 2 or self.atoms.shape[1] != HOG_DIM + GREY_DIM:
            raise PreimageError(f"HOGgle atoms must be (K, {HOG_DIM + GREY_DIM}), got {self.atoms.shape}")

    @property
    def n_atoms(self) -> int:
        """K, the number of atoms."""
        return int(self.atoms.shape[0])

    @property
    def hog_atoms(self) -> np.ndarray:
        """``(K, 675)`` HOG halves."""
        return self.atoms[:, :HOG_DIM]

    @property
    def grey_atoms(self) -> np.ndarray:
        """``(K, 3136)`` grey halves (56×56 patches, flattened row-major)."""
        return self.atoms[:, HOG_DIM:]

    def lasso_setup(self) -> tuple:
        """:func:`~preimage.baselines.hoggle.lasso.lasso_setup` of the HOG half, computed once per
        dictionary object."""
        cached = getattr(self, "_lasso_setup", None)
        if cached is None:
            from .lasso import lasso_setup
            cached = self._lasso_setup = lasso_setup(torch.from_numpy(self.hog_atoms))
        return cached

    @property
    def alpha(self) -> float:
        """The lasso λ the dictionary was trained with (default 0.02)."""
        return float(self.metadata.get("alpha", DEFAULT_ALPHA))

    def save(self, path: str | Path) -> Path:
        """Write to ``path``: safetensors (default) or ``.npz`` (no pickled objects). Returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps(self.metadata, sort_keys=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")     # atomic: write, then rename
        if path.suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, atoms=self.atoms, metadata=np.frombuffer(meta.encode("utf-8"), dtype=np.uint8))
        else:
            from safetensors.numpy import save_file
            save_file({"atoms": self.atoms}, str(tmp), metadata={_META_KEY: meta, "format": FORMAT})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "HoggleDictionary":
        """Read a dictionary written by :meth:`save`. Anything else (pickles included) raises
        :class:`PreimageError` without being deserialised."""
        path = Path(path)
        if not path.is_file():
            raise PreimageError(f"{path}: no such HOGgle dictionary file")
        with open(path, "rb") as f:
            head = f.read(16)
        if head[:4] == b"PK\x03\x04":   # zip → npz
            return cls(*_read_npz(path))
        n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
        if not (0 < n < 100_000_000 and head[8:9] == b"{"):
            raise PreimageError(f"{path}: not a HOGgle dictionary (expected safetensors or .npz; "
                                f"pickled files are refused)")
        return cls(*_read_safetensors(path))


def _read_npz(path: Path) -> tuple[np.ndarray, dict]:
    """``(atoms (K, 3811), metadata)`` of an ``.npz`` dictionary, read without unpickling."""
    try:
        with np.load(path, allow_pickle=False) as z:
            atoms = np.array(z["atoms"])
            meta = json.loads(bytes(z["metadata"]).decode("utf-8"))
    except (ValueError, KeyError, OSError) as exc:
        raise PreimageError(f"{path}: not a HOGgle dictionary .npz ({exc})") from None
    return atoms, meta


def _read_safetensors(path: Path) -> tuple[np.ndarray, dict]:
    """``(atoms (K, 3811), metadata)`` of a safetensors dictionary."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta_raw = (f.metadata() or {}).get(_META_KEY)
            atoms = f.get_tensor("atoms")
    except Exception as exc:  # safetensors raises its own error types
        raise PreimageError(f"{path}: unreadable safetensors file ({exc})") from None
    if meta_raw is None:
        raise PreimageError(f"{path}: safetensors file without HOGgle metadata")
    return atoms, json.loads(meta_raw)
