"""HOGgle: the paired-dictionary HOG inversion baseline (Vondrick et al., ICCV 2013), as compared
with in the paper's Table 1 (66.2 ± 13.7 % error, 2–3 s per image).

What it does
------------
* **Training** (:func:`train_hoggle`): grey training images (BT.601 luma, 0–255) are described by
  the paper's HOG (:class:`preimage.representations.hog.HOG`, UoCTTI, cell 8, the 27 channels
  18 directed + 9 undirected). A training pair is a window of 5×5 HOG cells (27·25 = 675 numbers,
  layout channel-major ``(27, 5, 5)``) and the grey patch covering the 7×7 cells around it
  (56×56 px: one cell of margin on each side). With VLFeat's geometry cell ``b`` covers pixels
  ``[8b, 8b + 8)``, so the window whose top-left cell is ``(i, j)`` pairs with pixels
  ``[8i − 8, 8i + 48) × [8j − 8, 8j + 48)``; only windows whose patch lies inside the image are
  sampled. Each half is centred (mean removed) and L2-normalised; the two halves are concatenated
  into one joint vector (675 + 3136 = 3811 numbers), and one joint dictionary is learned by online
  dictionary learning with non-negative codes (λ = ``alpha``), initialised with randomly chosen
  training windows and fed seeded mini-batches. The default backend runs scikit-learn's
  ``MiniBatchDictionaryLearning`` algorithm (same sufficient statistics, forgetting rule, atom
  update and unused-atom resampling) with a batched ADMM lasso (:func:`positive_lasso`) for the
  codes; ``backend="sklearn"`` runs ``MiniBatchDictionaryLearning.partial_fit`` itself, which
  codes one window at a time and was ≈ 10–30× slower here (see :func:`train_hoggle`).
* **Inversion** (:func:`invert_hoggle`): the HOG map is zero-padded by ``pad`` cells (default 4:
  every 5×5 window that holds at least one real cell; ihog pads by 5, which adds a ring of
  all-zero windows), every 5×5 window (stride 1 cell) is centred and normalised as in training and
  coded by a positive lasso against the HOG half of the atoms (batched ADMM by default, or
  ``sklearn.decomposition.sparse_encode(positive=True)`` with ``algorithm="lasso_cd"`` /
  ``"lasso_lars"``: the same solutions, ≈ 0.1 % apart in objective, 5–20× slower); the grey half
  reconstructs a 56×56 patch per window, which is weighted by a Gaussian window (σ = 9 px, as
  ihog), accumulated at the window's position and divided by the accumulated weight (a
  Gaussian-weighted average of the overlapping patches), cropped to the image size and min–max
  stretched to [0, 255].

Differences from ihog: ihog uses DPM's 32-channel HOG (27 + 4 texture + a zero truncation
channel), SPAMS (exact LARS codes, ≈ 10⁶ windows of PASCAL images) and divides the accumulated
patches by the overlap *count* (so the Gaussian tapers rather than weights); here the HOG is the
paper's 27 channels, the dictionary is learned on ≈ 4·10⁵ windows (2 passes over 2·10⁵ distinct
ones) of the project's 200 ImageNet training images, and the accumulation is a Gaussian-weighted
average.

Speed: by default the work runs on one torch thread (:func:`torch_threads`): on the shared
two-core machine, two threads were slower whenever other processes were busy.

Dictionaries are saved as safetensors (or ``.npz`` read with ``allow_pickle=False``) with their
training settings as metadata; nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidTargetError, PreimageError

# ----------------------------------------------------------------------------------------------
# Geometry and defaults

CELL_SIZE = 8            #: pixels per HOG cell
HOG_CHANNELS = 27        #: the paper's HOG: 18 directed + 9 undirected UoCTTI channels
HOG_WINDOW = 5           #: HOG window side, in cells
PATCH_CELLS = HOG_WINDOW + 2   #: grey patch side, in cells (one cell of margin each side)
PATCH_SIZE = PATCH_CELLS * CELL_SIZE   #: 56 px
HOG_DIM = HOG_CHANNELS * HOG_WINDOW * HOG_WINDOW   #: 675
GREY_DIM = PATCH_SIZE * PATCH_SIZE                 #: 3136
SIGMA = 9.0              #: Gaussian blending window, pixels (ihog's value)
DEFAULT_PAD = 4          #: HOG-map zero padding at inversion, cells

DEFAULT_N_ATOMS = 1000
DEFAULT_ALPHA = 0.02
DEFAULT_WINDOWS_PER_IMAGE = 1000
DEFAULT_N_ITER = 400
DEFAULT_BATCH_SIZE = 1024
DEFAULT_THREADS = 1
FORMAT = "preimage-hoggle/1"
_META_KEY = "preimage_hoggle"
_EPS = 1e-8

CACHE_ENV = "PREIMAGE_CACHE"
DICTIONARY_ENV = "PREIMAGE_HOGGLE_DICTIONARY"


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


def _version() -> str:
    from . import __version__
    return __version__


_HOG_MODULE = None


def _hog_module():
    """The paper's HOG (one shared instance: it caches its per-size pooling matrices)."""
    global _HOG_MODULE
    if _HOG_MODULE is None:
        from .representations.hog import HOG
        _HOG_MODULE = HOG(cell_size=CELL_SIZE, num_orientations=9, variant="uoctti", bilinear=False,
                          keep_texture=False)
    return _HOG_MODULE


def to_grey(image: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` or ``(B, C, H, W)`` on 0–255, C ∈ {1, 3} → same with C = 1 (BT.601 luma)."""
    from .imageio import GREY_WEIGHTS
    x = image if image.dim() == 4 else image[None]
    if x.shape[1] == 3:
        w = torch.tensor(GREY_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True)
    elif x.shape[1] != 1:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    return x if image.dim() == 4 else x[0]


@torch.no_grad()
def compute_hog(grey: torch.Tensor) -> torch.Tensor:
    """The paper's HOG of grey images: ``(B, 1, H, W)`` or ``(1, H, W)`` on 0–255 →
    ``(B, 27, h, w)`` or ``(27, h, w)``, ``h = (H + 4) // 8`` (float32)."""
    x = grey if grey.dim() == 4 else grey[None]
    out = _hog_module()(x.float())
    return out if grey.dim() == 4 else out[0]


def _centre_normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``(N, D)``: subtract the row mean, divide by the row norm (all-zero rows stay 0)."""
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.sqrt((x * x).sum(axis=1, keepdims=True) + _EPS)


def gaussian_window(size: int = PATCH_SIZE, sigma: float = SIGMA) -> np.ndarray:
    """``(size, size)`` Gaussian centred on the patch (peak 1), as MATLAB's ``fspecial``."""
    r = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(r * r) / (2.0 * sigma * sigma))
    return np.outer(g, g)


# ----------------------------------------------------------------------------------------------
# The dictionary


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
        """:func:`lasso_setup` of the HOG half, computed once per dictionary object."""
        cached = getattr(self, "_lasso_setup", None)
        if cached is None:
            cached = self._lasso_setup = lasso_setup(torch.from_numpy(self.hog_atoms))
        return cached

    @property
    def alpha(self) -> float:
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
            try:
                with np.load(path, allow_pickle=False) as z:
                    atoms = np.array(z["atoms"])
                    meta = json.loads(bytes(z["metadata"]).decode("utf-8"))
            except (ValueError, KeyError, OSError) as exc:
                raise PreimageError(f"{path}: not a HOGgle dictionary .npz ({exc})") from None
            return cls(atoms, meta)
        n = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
        if not (0 < n < 100_000_000 and head[8:9] == b"{"):
            raise PreimageError(f"{path}: not a HOGgle dictionary (expected safetensors or .npz; "
                                f"pickled files are refused)")
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta_raw = (f.metadata() or {}).get(_META_KEY)
                atoms = f.get_tensor("atoms")
        except Exception as exc:  # safetensors raises its own error types
            raise PreimageError(f"{path}: unreadable safetensors file ({exc})") from None
        if meta_raw is None:
            raise PreimageError(f"{path}: safetensors file without HOGgle metadata")
        return cls(atoms, json.loads(meta_raw))


# ----------------------------------------------------------------------------------------------
# Training


def valid_window_range(height: int, width: int) -> tuple[range, range]:
    """Top-left cells ``(i, j)`` of the 5×5 windows whose 56×56 patch lies inside an
    ``height × width`` image (and whose cells exist in the HOG map)."""
    h, w = (height + CELL_SIZE // 2) // CELL_SIZE, (width + CELL_SIZE // 2) // CELL_SIZE
    imax = min((height - PATCH_SIZE) // CELL_SIZE + 1, h - HOG_WINDOW)
    jmax = min((width - PATCH_SIZE) // CELL_SIZE + 1, w - HOG_WINDOW)
    return range(1, imax + 1), range(1, jmax + 1)


def extract_pairs(grey: np.ndarray, hog: np.ndarray, positions: np.ndarray,
                  normalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Training pairs of one image.

    Args:
        grey: ``(H, W)`` grey image on 0–255.
        hog: ``(27, h, w)`` its HOG.
        positions: ``(N, 2)`` int top-left cells ``(i, j)`` (see :func:`valid_window_range`).
        normalise: centre and L2-normalise each half (as training does).
    Returns:
        ``(N, 675)`` HOG windows ``hog[:, i:i+5, j:j+5]`` and ``(N, 3136)`` grey patches
        ``grey[8i-8 : 8i+48, 8j-8 : 8j+48]``, float32.
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
    n = len(positions)
    hw = np.empty((n, HOG_DIM), dtype=np.float64)
    gp = np.empty((n, GREY_DIM), dtype=np.float64)
    for k, (i, j) in enumerate(positions):
        y, x = CELL_SIZE * (i - 1), CELL_SIZE * (j - 1)
        if y < 0 or x < 0 or y + PATCH_SIZE > grey.shape[0] or x + PATCH_SIZE > grey.shape[1]:
            raise ValueError(f"window at cell ({i}, {j}) has its patch outside the image")
        hw[k] = hog[:, i:i + HOG_WINDOW, j:j + HOG_WINDOW].reshape(-1)
        gp[k] = grey[y:y + PATCH_SIZE, x:x + PATCH_SIZE].reshape(-1)
    if normalise:
        hw, gp = _centre_normalise(hw), _centre_normalise(gp)
    return hw.astype(np.float32), gp.astype(np.float32)


def _as_grey_array(item) -> np.ndarray:
    from .imageio import load_image
    if isinstance(item, (str, Path)):
        t = load_image(item, mode="grey")
    else:
        t = torch.as_tensor(item)
        t = t[None] if t.dim() == 2 else t
        t = to_grey(t)
    return t[0].double().numpy()


def lasso_setup(D: torch.Tensor, rho_scale: float = 4.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """What :func:`positive_lasso` precomputes from the atoms ``D`` ``(K, d)``: ``(D, (DDᵀ + ρI)⁻¹, ρ)``
    with ``ρ = rho_scale·mean(diag(DDᵀ))``. Reuse it when coding many batches against one dictionary."""
    D = torch.as_tensor(D).float()
    G = (D @ D.T).double()
    rho = rho_scale * float(G.diagonal().mean().clamp_min(1e-12))
    L = torch.linalg.cholesky(G + rho * torch.eye(G.shape[0], dtype=torch.float64))
    minv = torch.cholesky_inverse(L).float()
    return D, minv, rho


def positive_lasso(X: torch.Tensor, D: torch.Tensor, alpha: float, *, n_iter: int = 20,
                   rho_scale: float = 4.0, relax: float = 1.6, chunk: int = 4096,
                   setup: tuple | None = None) -> torch.Tensor:
    """Non-negative lasso codes of many vectors at once (batched ADMM, float32).

    Solves, for each row x of ``X``: ``min_c ½‖x − Dᵀc‖² + alpha·Σc`` subject to ``c ≥ 0`` (the
    objective of sklearn's ``sparse_encode(..., positive=True, alpha=alpha)`` and of SPAMS'
    ``mexLasso`` with ``pos=true``), by ADMM on the Gram matrix with penalty
    ``ρ = rho_scale·mean(diag(DDᵀ))`` and over-relaxation ``relax``, for a fixed number of
    iterations (deterministic). On HOG windows 15 iterations come within ≈ 0.3 % of the optimal
    objective, 25 within ≈ 0.03 % (measured against sklearn's ``lasso_cd``).

    Args:
        X: ``(N, d)`` float tensor.
        D: ``(K, d)`` atoms (ignored when ``setup`` from :func:`lasso_setup` is given).
    Returns:
        ``(N, K)`` float32 codes, exactly ≥ 0 and sparse (the ADMM ``z`` iterate).
    """
    D, minv, rho = setup if setup is not None else lasso_setup(D, rho_scale)
    X = torch.as_tensor(X).float()
    out = torch.empty(X.shape[0], D.shape[0])
    for s in range(0, X.shape[0], chunk):
        bm = (X[s:s + chunk] @ D.T - alpha) @ minv
        z = torch.zeros_like(bm)
        u = torch.zeros_like(bm)
        for _ in range(n_iter):
            c = torch.addmm(bm, z - u, minv, alpha=rho)       # (G + ρI)⁻¹ (b + ρ(z − u))
            c = torch.lerp(z, c, relax)                       # over-relaxation
            u += c
            z = u.clamp_min(0.0)                              # projection on c ≥ 0
            u -= z
        out[s:s + chunk] = z
    return out


def train_hoggle(image_paths: Sequence, n_atoms: int = DEFAULT_N_ATOMS, alpha: float = DEFAULT_ALPHA,
                 windows_per_image: int = DEFAULT_WINDOWS_PER_IMAGE, n_iter: int = DEFAULT_N_ITER,
                 seed: int = 0, progress: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
                 backend: str = "torch", lasso_iter: int = 15,
                 threads: int | None = DEFAULT_THREADS) -> HoggleDictionary:
    """Learn a joint HOG/grey dictionary by online dictionary learning (Mairal et al. 2009).

    Args:
        image_paths: image files (read as grey, BT.601), or grey/RGB images as ``(H, W)``,
            ``(1, H, W)`` or ``(3, H, W)`` arrays/tensors on 0–255. Use training images only
            (:func:`preimage.data.train_images`), never the evaluation set.
        n_atoms: dictionary size K.
        alpha: λ of the non-negative lasso (½‖x − Dᵀc‖² + λ‖c‖₁, c ≥ 0; sklearn's ``alpha``).
        windows_per_image: windows sampled (without replacement, seeded) per image; images with
            fewer valid windows give all of theirs.
        n_iter: mini-batches of ``batch_size`` windows; the pool of sampled windows is traversed in
            seeded random order, reshuffled at every pass.
        seed: everything random (window sampling, initial atoms, batch order, atom resampling)
            derives from it; the same seed and inputs give the same dictionary.
        progress: show tqdm progress bars.
        backend: ``"torch"`` (default): the online algorithm of scikit-learn's
            ``MiniBatchDictionaryLearning`` (same sufficient statistics and forgetting rule, same
            block-coordinate atom update with projection on the unit ball and resampling of unused
            atoms), with the codes computed by :func:`positive_lasso` (``lasso_iter`` batched ADMM
            iterations) instead of one ``Lasso`` fit per window, about 10× faster on two cores;
            ``"sklearn"``: ``MiniBatchDictionaryLearning(positive_code=True, fit_algorithm="cd")``
            itself, fed the same batches through ``partial_fit`` (exact codes, slow: 20–35 s per
            256-window batch measured on the shared two-core machine).
        lasso_iter: ADMM iterations per batch (torch backend).
        threads: torch threads while training (see :func:`torch_threads`; ``None``: unchanged).
    Returns:
        :class:`HoggleDictionary` with ``K`` atoms and the settings as metadata.
    """
    with torch_threads(threads):
        return _train(image_paths, n_atoms, alpha, windows_per_image, n_iter, seed, progress, batch_size,
                      backend, lasso_iter)


def _train(image_paths, n_atoms, alpha, windows_per_image, n_iter, seed, progress, batch_size, backend,
           lasso_iter) -> HoggleDictionary:
    from tqdm.auto import tqdm

    if backend not in ("torch", "sklearn"):
        raise ValueError(f"backend must be 'torch' or 'sklearn', not {backend!r}")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    hogs, greys, pos_img, pos_ij = [], [], [], []
    items = list(image_paths)
    if not items:
        raise PreimageError("train_hoggle needs at least one training image")
    for item in tqdm(items, desc="HOGgle: HOG of training images", disable=not progress, dynamic_ncols=True):
        g = _as_grey_array(item)
        rows, cols = valid_window_range(*g.shape)
        if len(rows) == 0 or len(cols) == 0:
            continue
        k = len(greys)
        hogs.append(compute_hog(torch.from_numpy(g)[None].float()).double().numpy())
        greys.append(g)
        n_valid = len(rows) * len(cols)
        take = rng.choice(n_valid, size=min(windows_per_image, n_valid), replace=False)
        pos_ij.append(np.stack([rows.start + take // len(cols), cols.start + take % len(cols)], 1))
        pos_img.append(np.full(len(take), k))
    if not greys:
        raise PreimageError(f"no training image is at least {PATCH_SIZE}×{PATCH_SIZE} pixels")
    pos_img, pos_ij = np.concatenate(pos_img), np.concatenate(pos_ij)
    n_pool = len(pos_img)

    def joint(idx: np.ndarray) -> np.ndarray:
        """Centred, normalised joint vectors ``(len(idx), 3811)`` of pool windows ``idx``."""
        hw = np.empty((len(idx), HOG_DIM))
        gp = np.empty((len(idx), GREY_DIM))
        for r, k in enumerate(idx):
            hw[r], gp[r] = extract_pairs(greys[pos_img[k]], hogs[pos_img[k]], pos_ij[k:k + 1], normalise=False)
        return np.concatenate([_centre_normalise(hw), _centre_normalise(gp)], 1)

    init_idx = rng.choice(n_pool, size=n_atoms, replace=n_pool < n_atoms)
    dictionary = joint(init_idx) / math.sqrt(2.0)      # joint vectors have norm √2; atoms norm ≤ 1
    perm, cursor = rng.permutation(n_pool), 0

    def next_batch() -> np.ndarray:
        nonlocal perm, cursor
        if cursor + batch_size > n_pool:
            perm, cursor = rng.permutation(n_pool), 0
        idx = perm[cursor:cursor + batch_size]
        cursor += batch_size
        return joint(idx)

    bar = tqdm(range(n_iter), desc="HOGgle: dictionary learning", disable=not progress, dynamic_ncols=True)
    if backend == "sklearn":
        import warnings

        from sklearn.decomposition import MiniBatchDictionaryLearning
        from sklearn.exceptions import ConvergenceWarning
        learner = MiniBatchDictionaryLearning(
            n_components=n_atoms, alpha=alpha, fit_algorithm="cd", batch_size=batch_size,
            positive_code=True, dict_init=dictionary, random_state=seed, transform_algorithm="lasso_cd",
            transform_alpha=alpha)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for _ in bar:
                learner.partial_fit(next_batch())
        atoms = np.asarray(learner.components_, dtype=np.float32)
    else:
        gen = torch.Generator().manual_seed(seed)
        D = torch.from_numpy(dictionary).float()
        A = torch.zeros(n_atoms, n_atoms)
        Bs = torch.zeros(n_atoms, D.shape[1])
        for step in bar:
            X = torch.from_numpy(next_batch()).float()
            C = positive_lasso(X, D, alpha, n_iter=lasso_iter)
            # sufficient statistics, with scikit-learn's forgetting rule (_update_inner_stats)
            theta = (step + 1) * batch_size if step < batch_size - 1 else batch_size ** 2 + step + 1 - batch_size
            beta = (theta + 1 - batch_size) / (theta + 1)
            A.mul_(beta).add_(C.T @ C, alpha=1.0 / batch_size)
            Bs.mul_(beta).add_(C.T @ X, alpha=1.0 / batch_size)
            _update_atoms(D, A, Bs, X, gen)
        atoms = D.numpy().astype(np.float32)
    bar.close()
    seconds = time.perf_counter() - t0
    meta = {
        "format": FORMAT, "method": "hoggle", "n_atoms": int(n_atoms), "alpha": float(alpha),
        "cell_size": CELL_SIZE, "hog": "uoctti-27 (preimage.representations.hog.HOG, 18 directed + 9 undirected)",
        "hog_channels": HOG_CHANNELS, "hog_window_cells": HOG_WINDOW, "patch_cells": PATCH_CELLS,
        "patch_pixels": PATCH_SIZE, "seed": int(seed), "windows_per_image": int(windows_per_image),
        "n_pool_windows": int(n_pool), "n_iter": int(n_iter), "batch_size": int(batch_size),
        "n_windows": int(n_iter * batch_size), "n_train_images": len(greys), "backend": backend,
        "lasso_iter": int(lasso_iter) if backend == "torch" else None,
        "grey": "BT.601 luma, 0-255", "preimage_version": _version(), "training_seconds": round(seconds, 1),
    }
    return HoggleDictionary(atoms, meta)


def _update_atoms(D: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, X: torch.Tensor,
                  gen: torch.Generator, block: int = 64) -> None:
    """One block-coordinate pass over the atoms (in place), as scikit-learn's ``_update_dict``:
    for k = 0 … K−1 in turn, ``d_k += (b_k − A_k·D) / A_kk`` with the current D, projected on
    ‖d_k‖ ≤ 1; an atom that is (almost) never used (A_kk ≤ 1e-6) is replaced by a random window of
    the batch plus 1 % noise.

    The sequential (Gauss–Seidel) updates are computed exactly, in blocks: ``A_S·D`` for a block S
    of atoms is one matrix product with D as it stands at the block's start, and the changes of the
    atoms of S updated before k are added back (``Σ_{j∈S, j<k} A_kj Δd_j``), so D is read once per
    block instead of once per atom.
    """
    K = D.shape[0]
    for s in range(0, K, block):
        e = min(s + block, K)
        R = Bs[s:e] - A[s:e] @ D                                 # b_k − A_k·D (block start)
        delta = torch.zeros_like(R)
        with torch_threads(1):       # tiny sequential ops: threads only add overhead (badly so on busy cores)
            _update_block(D, A, R, delta, X, gen, s, e)


def _update_block(D, A, R, delta, X, gen, s, e) -> None:
    for r in range(e - s):
        k = s + r
        akk = float(A[k, k])
        old = D[k].clone()
        if akk > 1e-6:
            resid = R[r] - A[k, s:k] @ delta[:r] if r else R[r]
            D[k] += resid / akk
        else:
            j = int(torch.randint(X.shape[0], (1,), generator=gen))
            new = X[j]
            D[k] = new + torch.randn(new.shape, generator=gen) * 0.01 * float(new.std() or 1.0)
        D[k] /= max(float(D[k].norm()), 1.0)
        delta[r] = D[k] - old


# ----------------------------------------------------------------------------------------------
# Inversion


def _assemble(patches: torch.Tensor, n_rows: int, n_cols: int, pad: int, image_size: tuple[int, int],
              sigma: float = SIGMA) -> torch.Tensor:
    """Blend per-window patches into an image.

    Args:
        patches: ``(n_rows·n_cols, 56, 56)`` float64, window ``a·n_cols + b`` being the one whose
            top-left cell is ``(a − pad, b − pad)`` in the unpadded HOG map; its patch covers
            image pixels ``[8(a − pad − 1), 8(a − pad − 1) + 56)`` (rows), likewise columns.
        image_size: ``(H, W)`` of the output.
    Returns:
        ``(H, W)`` Gaussian-weighted average of the patches (not stretched).
    """
    g = torch.from_numpy(gaussian_window(PATCH_SIZE, sigma)).to(patches.dtype)
    out_h = CELL_SIZE * (n_rows - 1) + PATCH_SIZE
    out_w = CELL_SIZE * (n_cols - 1) + PATCH_SIZE
    cols = (patches * g).reshape(n_rows * n_cols, GREY_DIM).T[None]            # (1, 3136, L)
    acc = F.fold(cols, (out_h, out_w), kernel_size=PATCH_SIZE, stride=CELL_SIZE)[0, 0]
    wts = F.fold(g.reshape(GREY_DIM, 1).expand(GREY_DIM, n_rows * n_cols)[None], (out_h, out_w),
                 kernel_size=PATCH_SIZE, stride=CELL_SIZE)[0, 0]
    img = acc / wts.clamp_min(1e-30)
    off = CELL_SIZE * (pad + 1)           # canvas pixel `off` is image pixel 0
    H, W = image_size
    if off + H > out_h or off + W > out_w:
        raise ValueError(f"HOG map too small for a {H}×{W} image")
    return img[off:off + H, off:off + W]


def invert_hoggle(hog_code: torch.Tensor, dictionary: HoggleDictionary,
                  image_size: tuple[int, int] | None = None, *, pad: int = DEFAULT_PAD,
                  sigma: float = SIGMA, alpha: float | None = None, algorithm: str = "admm",
                  lasso_iter: int = 20, threads: int | None = DEFAULT_THREADS) -> torch.Tensor:
    """Reconstruct grey images from HOG codes with a paired dictionary.

    Args:
        hog_code: ``(27, h, w)`` or ``(B, 27, h, w)`` HOG (the paper's 27 UoCTTI channels, cell 8).
        dictionary: a :class:`HoggleDictionary`.
        image_size: ``(H, W)`` of the output; default ``(8h, 8w)``. ``(H + 4) // 8 == h`` gives
            the geometry the code came from.
        pad: zero cells added around the HOG map (4: every window holding at least one real cell).
        sigma: Gaussian blending window, pixels.
        alpha: lasso λ (default: the dictionary's training value).
        algorithm: ``"admm"`` (default: :func:`positive_lasso`, ``lasso_iter`` batched iterations),
            or ``"lasso_cd"`` / ``"lasso_lars"`` (exact, sklearn ``sparse_encode(positive=True)``,
            ≈ 5–10× slower).
        lasso_iter: ADMM iterations (``"admm"``).
        threads: torch threads (see :func:`torch_threads`; ``None``: unchanged).
    Returns:
        ``(1, H, W)`` (or ``(B, 1, H, W)``) float32, min–max stretched to [0, 255].
    """
    with torch_threads(threads):
        return _invert(hog_code, dictionary, image_size, pad, sigma, alpha, algorithm, lasso_iter)


def _invert(hog_code, dictionary, image_size, pad, sigma, alpha, algorithm, lasso_iter) -> torch.Tensor:
    from .imageio import stretch

    code = torch.as_tensor(hog_code)
    batched = code.dim() == 4
    code = code if batched else code[None]
    if code.dim() != 4 or code.shape[1] != HOG_CHANNELS:
        raise InvalidTargetError(f"HOGgle needs a (27, h, w) or (B, 27, h, w) HOG code, "
                                 f"got {tuple(hog_code.shape)}")
    if not torch.isfinite(code).all():
        raise InvalidTargetError("the HOG code contains NaN or Inf")
    if algorithm not in ("admm", "lasso_cd", "lasso_lars"):
        raise ValueError(f"algorithm must be 'admm', 'lasso_cd' or 'lasso_lars', not {algorithm!r}")
    B, _, h, w = code.shape
    if image_size is None:
        image_size = (CELL_SIZE * h, CELL_SIZE * w)
    H, W = int(image_size[0]), int(image_size[1])
    if pad < 0 or h + 2 * pad < HOG_WINDOW or w + 2 * pad < HOG_WINDOW:
        raise ValueError(f"pad={pad} leaves the {h}×{w} HOG map smaller than one "
                         f"{HOG_WINDOW}×{HOG_WINDOW} window")
    padded = F.pad(code.detach().float().cpu(), (pad, pad, pad, pad))
    n_rows, n_cols = h + 2 * pad - HOG_WINDOW + 1, w + 2 * pad - HOG_WINDOW + 1
    windows = F.unfold(padded, HOG_WINDOW)                   # (B, 675, L), channel-major (27, 5, 5)
    X = windows.transpose(1, 2).reshape(-1, HOG_DIM)
    X = X - X.mean(1, keepdim=True)
    X = X / (X.pow(2).sum(1, keepdim=True) + _EPS).sqrt()
    lam = dictionary.alpha if alpha is None else float(alpha)
    live = X.abs().sum(1) > 0                                # all-zero windows code to 0
    codes = torch.zeros(X.shape[0], dictionary.n_atoms)
    if bool(live.any()):
        if algorithm == "admm":
            codes[live] = positive_lasso(X[live], None, lam, n_iter=lasso_iter, setup=dictionary.lasso_setup())
        else:
            from sklearn.decomposition import sparse_encode
            codes[live] = torch.from_numpy(sparse_encode(
                X[live].double().numpy(), dictionary.hog_atoms.astype(np.float64), algorithm=algorithm,
                alpha=lam, positive=True)).float()
    patches = (codes @ torch.from_numpy(dictionary.grey_atoms)).double()
    patches = patches.reshape(B, n_rows * n_cols, PATCH_SIZE, PATCH_SIZE)
    out = torch.stack([_assemble(patches[b], n_rows, n_cols, pad, (H, W), sigma) for b in range(B)])
    out = stretch(out[:, None].float())
    return out if batched else out[0]


def hoggle_invert_image(image: torch.Tensor, dictionary: HoggleDictionary, **kwargs) -> torch.Tensor:
    """HOGgle reconstruction of an image from its HOG.

    Args:
        image: ``(C, H, W)`` or ``(B, C, H, W)`` on 0–255, C = 1 or 3 (colour → BT.601 grey).
        dictionary: a :class:`HoggleDictionary`.
        **kwargs: passed to :func:`invert_hoggle` (``pad``, ``sigma``, ``alpha``, ``algorithm``,
            ``lasso_iter``, ``threads``).
    Returns:
        ``(1, H, W)`` (or ``(B, 1, H, W)``) on 0–255 (min–max stretched).
    """
    image = torch.as_tensor(image)
    with torch_threads(kwargs.get("threads", DEFAULT_THREADS)):
        grey = to_grey(image.detach().cpu() if image.dim() == 4 else image.detach().cpu()[None])
        hog = compute_hog(grey)
        out = invert_hoggle(hog, dictionary, tuple(grey.shape[-2:]), **kwargs)
    return out if image.dim() == 4 else out[0]


# ----------------------------------------------------------------------------------------------
# Evaluation (the paper's Table 1 column)


def evaluate_hoggle(paths: Sequence, dictionary: HoggleDictionary, *, progress: bool = True,
                    **invert_kwargs) -> dict:
    """HOGgle-invert every image (grey, native size) and score it as the paper's Table 1.

    The error of image i is ‖HOG(x*) − HOG(xᵢ)‖ / N_HOG (``"paper"``: N_HOG the mean pairwise
    distance between the HOG codes of the set, codes zero-padded to the largest) and the squared
    version (``"authors"``: squared distance / mean squared pairwise distance, diagonal included),
    see :mod:`preimage.metrics`.

    Returns:
        ``{"representation": "hoggle", "n", "seconds_per_image", "hog_seconds_per_image",
        "images", "paper": {mean, std, n, normaliser, per_image}, "authors": {...}, "settings"}``,
        means and standard deviations in percent, per-image errors as fractions; seconds are the
        inversion wall time from the HOG code (HOG extraction timed separately; the dictionary's
        one-off Gram inverse, ≈ 0.1 s, is computed before timing starts).
    """
    from tqdm.auto import tqdm

    from .imageio import load_image
    from .metrics import normalised_errors, pairwise_normaliser, summarise

    paths = list(paths)
    if len(paths) < 2:
        raise ValueError("the normalised error needs at least two images")
    targets, recons = [], []
    inv_seconds = hog_seconds = 0.0
    dictionary.lasso_setup()               # once per dictionary, not counted per image
    with torch_threads(invert_kwargs.get("threads", DEFAULT_THREADS)):
        for p in tqdm(paths, desc="HOGgle", disable=not progress, dynamic_ncols=True):
            img = load_image(p, mode="grey")
            t0 = time.perf_counter()
            target = compute_hog(img)
            t1 = time.perf_counter()
            recon = invert_hoggle(target, dictionary, tuple(img.shape[-2:]), **invert_kwargs)
            t2 = time.perf_counter()
            hog_seconds += t1 - t0
            inv_seconds += t2 - t1
            targets.append(target)
            recons.append(compute_hog(recon))
    out = {"representation": "hoggle", "n": len(paths), "seconds_per_image": inv_seconds / len(paths),
           "hog_seconds_per_image": hog_seconds / len(paths), "images": [Path(p).name for p in paths],
           "settings": {"pad": invert_kwargs.get("pad", DEFAULT_PAD), "sigma": invert_kwargs.get("sigma", SIGMA),
                        "algorithm": invert_kwargs.get("algorithm", "admm"),
                        "alpha": invert_kwargs.get("alpha", dictionary.alpha), "dictionary": dictionary.metadata}}
    for conv in ("paper", "authors"):
        norm = pairwise_normaliser(targets, conv)
        errs = normalised_errors(recons, targets, normaliser=norm, convention=conv)
        out[conv] = {**summarise(errs), "normaliser": norm, "per_image": errs.tolist()}
    return out


# ----------------------------------------------------------------------------------------------
# CLI hooks


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
    from .data import train_images
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
    images (≈ 10 minutes on two cores) when it is not there yet."""
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


__all__ = ["HoggleDictionary", "train_hoggle", "invert_hoggle", "hoggle_invert_image", "evaluate_hoggle",
           "train_command", "default_dictionary_path", "load_or_train_default", "extract_pairs",
           "valid_window_range", "compute_hog", "gaussian_window", "positive_lasso", "lasso_setup",
           "torch_threads", "to_grey"]
