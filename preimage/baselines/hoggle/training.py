"""Learning a joint HOG/grey dictionary by online dictionary learning (Mairal et al. 2009) with
non-negative codes, as scikit-learn's ``MiniBatchDictionaryLearning`` does: the default backend
runs that algorithm (same sufficient statistics, forgetting rule, atom update and unused-atom
resampling) with the batched ADMM lasso for the codes; ``backend="sklearn"`` runs
``MiniBatchDictionaryLearning.partial_fit`` itself."""

from __future__ import annotations

import math
import time
from typing import Sequence

import numpy as np
import torch

from ._threads import DEFAULT_THREADS, torch_threads
from .dictionary import DEFAULT_ALPHA, FORMAT, HoggleDictionary
from .geometry import CELL_SIZE, HOG_CHANNELS, HOG_WINDOW, PATCH_CELLS, PATCH_SIZE
from .lasso import positive_lasso
from .pairs import BatchStream, WindowPool
from .recipe import (DEFAULT_BATCH_SIZE, DEFAULT_LASSO_ITER, DEFAULT_N_ATOMS, DEFAULT_N_ITER,
                     DEFAULT_WINDOWS_PER_IMAGE)
from ...version import __version__


def train_hoggle(image_paths: Sequence, n_atoms: int = DEFAULT_N_ATOMS, alpha: float = DEFAULT_ALPHA,
                 windows_per_image: int = DEFAULT_WINDOWS_PER_IMAGE, n_iter: int = DEFAULT_N_ITER,
                 seed: int = 0, progress: bool = True, batch_size: int = DEFAULT_BATCH_SIZE,
                 backend: str = "torch", lasso_iter: int = DEFAULT_LASSO_ITER,
                 threads: int | None = DEFAULT_THREADS) -> HoggleDictionary:
    """Learn a joint HOG/grey dictionary by online dictionary learning (Mairal et al. 2009).

    A training vector is one window's pair (:func:`~preimage.baselines.hoggle.pairs.extract_pairs`),
    each half centred and L2-normalised, concatenated (675 + 3136 numbers). The atoms start as
    randomly chosen training windows (scaled to norm 1) and are updated by seeded mini-batches.
    Two tqdm bars (``progress``) show the HOG of the training images, then the mini-batches.

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
            atoms), with the codes computed by
            :func:`~preimage.baselines.hoggle.lasso.positive_lasso` (``lasso_iter`` batched ADMM
            iterations) instead of one ``Lasso`` fit per window, about 10× faster on two cores;
            ``"sklearn"``: ``MiniBatchDictionaryLearning(positive_code=True, fit_algorithm="cd")``
            itself, fed the same batches through ``partial_fit`` (exact codes, slow: 20–35 s per
            256-window batch measured on the shared two-core machine).
        lasso_iter: ADMM iterations per batch (torch backend).
        threads: torch threads while training (see
            :func:`~preimage.baselines.hoggle._threads.torch_threads`; ``None``: unchanged).
    Returns:
        :class:`HoggleDictionary` with ``K`` atoms ``(K, 3811)`` and the settings as metadata.
    """
    if backend not in ("torch", "sklearn"):
        raise ValueError(f"backend must be 'torch' or 'sklearn', not {backend!r}")
    settings = {"n_atoms": int(n_atoms), "alpha": float(alpha), "seed": int(seed),
                "windows_per_image": int(windows_per_image), "n_iter": int(n_iter),
                "batch_size": int(batch_size), "backend": backend,
                "lasso_iter": int(lasso_iter) if backend == "torch" else None}
    with torch_threads(threads):
        return _train(image_paths, settings, progress)


def _train(image_paths: Sequence, s: dict, progress: bool) -> HoggleDictionary:
    """:func:`train_hoggle` with its settings ``s`` (the metadata keys of the same names)."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    rng = np.random.default_rng(s["seed"])
    pool = WindowPool(image_paths, s["windows_per_image"], rng, progress)
    init_idx = rng.choice(len(pool), size=s["n_atoms"], replace=len(pool) < s["n_atoms"])
    init = pool.joint(init_idx) / math.sqrt(2.0)      # joint vectors have norm √2; atoms norm ≤ 1
    batches = BatchStream(pool, rng, s["batch_size"])
    bar = tqdm(range(s["n_iter"]), desc=f"HOGgle training: learning {s['n_atoms']} atoms", unit="batch",
               disable=not progress, dynamic_ncols=True)
    if s["backend"] == "sklearn":
        atoms = _learn_sklearn(init, batches, bar, s)
    else:
        atoms = _learn_torch(init, batches, bar, s)
    bar.close()
    meta = {
        "format": FORMAT, "method": "hoggle", "n_atoms": s["n_atoms"], "alpha": s["alpha"],
        "cell_size": CELL_SIZE, "hog": "uoctti-27 (preimage.representations.hog.HOG, 18 directed + 9 undirected)",
        "hog_channels": HOG_CHANNELS, "hog_window_cells": HOG_WINDOW, "patch_cells": PATCH_CELLS,
        "patch_pixels": PATCH_SIZE, "seed": s["seed"], "windows_per_image": s["windows_per_image"],
        "n_pool_windows": len(pool), "n_iter": s["n_iter"], "batch_size": s["batch_size"],
        "n_windows": s["n_iter"] * s["batch_size"], "n_train_images": len(pool.greys), "backend": s["backend"],
        "lasso_iter": s["lasso_iter"], "grey": "BT.601 luma, 0-255", "preimage_version": __version__,
        "training_seconds": round(time.perf_counter() - t0, 1),
    }
    return HoggleDictionary(atoms, meta)


def _learn_sklearn(init: np.ndarray, batches: BatchStream, bar, s: dict) -> np.ndarray:
    """``MiniBatchDictionaryLearning.partial_fit`` over one batch per step of ``bar``, from the
    ``(K, 3811)`` float64 atoms ``init``. Returns the ``(K, 3811)`` float32 atoms."""
    import warnings

    from sklearn.decomposition import MiniBatchDictionaryLearning
    from sklearn.exceptions import ConvergenceWarning
    learner = MiniBatchDictionaryLearning(
        n_components=s["n_atoms"], alpha=s["alpha"], fit_algorithm="cd", batch_size=s["batch_size"],
        positive_code=True, dict_init=init, random_state=s["seed"], transform_algorithm="lasso_cd",
        transform_alpha=s["alpha"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in bar:
            learner.partial_fit(batches.next())
    return np.asarray(learner.components_, dtype=np.float32)


def _learn_torch(init: np.ndarray, batches: BatchStream, bar, s: dict) -> np.ndarray:
    """scikit-learn's online algorithm with ADMM codes, one batch per step of ``bar``, from the
    ``(K, 3811)`` float64 atoms ``init``. Returns the ``(K, 3811)`` float32 atoms."""
    n_atoms, batch_size = s["n_atoms"], s["batch_size"]
    gen = torch.Generator().manual_seed(s["seed"])
    D = torch.from_numpy(init).float()
    A = torch.zeros(n_atoms, n_atoms)
    Bs = torch.zeros(n_atoms, D.shape[1])
    for step in bar:
        X = torch.from_numpy(batches.next()).float()
        C = positive_lasso(X, D, s["alpha"], n_iter=s["lasso_iter"])
        # sufficient statistics, with scikit-learn's forgetting rule (_update_inner_stats)
        theta = (step + 1) * batch_size if step < batch_size - 1 else batch_size ** 2 + step + 1 - batch_size
        beta = (theta + 1 - batch_size) / (theta + 1)
        A.mul_(beta).add_(C.T @ C, alpha=1.0 / batch_size)
        Bs.mul_(beta).add_(C.T @ X, alpha=1.0 / batch_size)
        _update_atoms(D, A, Bs, X, gen)
    return D.numpy().astype(np.float32)


def _update_atoms(D: torch.Tensor, A: torch.Tensor, Bs: torch.Tensor, X: torch.Tensor,
                  gen: torch.Generator, block: int = 64) -> None:
    """One block-coordinate pass over the atoms ``D`` ``(K, d)`` (in place), as scikit-learn's
    ``_update_dict``, with ``A`` ``(K, K)`` and ``Bs`` ``(K, d)`` the sufficient statistics and
    ``X`` ``(n, d)`` the batch: for k = 0 … K−1 in turn, ``d_k += (b_k − A_k·D) / A_kk`` with the
    current D, projected on ‖d_k‖ ≤ 1; an atom that is (almost) never used (A_kk ≤ 1e-6) is
    replaced by a random window of the batch plus 1 % noise.

    The sequential (Gauss–Seidel) updates are computed exactly, in blocks S of ``block`` atoms:
    ``b_k − A_k·D`` for the whole block is one matrix product with D as it stands at the block's
    start; every change of an atom of S is then a combination of the block's rows of D, of those
    residuals and of the replacement windows, so the sequential loop runs on coefficients over
    these ≤ 3·``block`` vectors (norms through their Gram matrix) and D is written once per block.
    """
    K = D.shape[0]
    for s in range(0, K, block):
        e = min(s + block, K)
        R = Bs[s:e] - A[s:e] @ D                                 # b_k − A_k·D (block start)
        dead = [s + int(r) for r in torch.nonzero(A.diagonal()[s:e] <= 1e-6).flatten()]
        fresh = [_replacement(X, gen) for _ in dead]           # drawn in atom order, as sklearn
        W = torch.cat([D[s:e], R, *[f[None] for f in fresh]])  # (2b + m, d) basis of the changes
        with torch_threads(1):       # tiny sequential ops: threads only add overhead (badly so on busy cores)
            coef = _block_coefficients(A[s:e, s:e].double().numpy(), (W @ W.T).double().numpy(),
                                       [k - s for k in dead])
        D[s:e] += torch.from_numpy(coef).to(W.dtype) @ W


def _replacement(X: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A new atom ``(d,)`` for an unused one: a random row of the batch ``X`` plus 1 % noise."""
    j = int(torch.randint(X.shape[0], (1,), generator=gen))
    new = X[j]
    return new + torch.randn(new.shape, generator=gen) * 0.01 * float(new.std() or 1.0)


def _block_coefficients(A_ss: np.ndarray, G: np.ndarray, dead: list[int]) -> np.ndarray:
    """The changes of one block's ``b`` atoms as coefficients ``(b, 2b + m)`` over the basis
    ``W`` = (the block's atoms at its start, their residuals ``b_k − A_k·D``, the ``m``
    replacement windows): ``A_ss`` ``(b, b)`` is the block of A, ``G`` ``(2b + m, 2b + m)`` the
    Gram matrix of W, ``dead`` the block positions of the atoms to replace (in order).
    Float64; atom r's change is ``coef[r] @ W``, exactly as the per-atom update computes it."""
    b, n = A_ss.shape[0], G.shape[0]
    coef = np.zeros((b, n))
    replaced = {r: 2 * b + q for q, r in enumerate(dead)}
    for r in range(b):
        v = np.zeros(n)
        if r in replaced:
            v[replaced[r]] = 1.0                                   # the replacement window
        else:
            v[b + r] = 1.0
            if r:
                v -= A_ss[r, :r] @ coef[:r]                        # earlier atoms' changes
            v /= A_ss[r, r]
            v[r] += 1.0                                            # d_k + (b_k − A_k·D) / A_kk
        v /= max(float(np.sqrt(max(v @ G @ v, 0.0))), 1.0)         # projection on ‖d_k‖ ≤ 1
        v[r] -= 1.0                                                # change = new − old
        coef[r] = v
    return coef
