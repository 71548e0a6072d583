"""Non-negative lasso codes of many vectors against one dictionary: a batched ADMM solver
(:func:`positive_lasso`, the default) and scikit-learn's exact ``sparse_encode`` as an option
(:func:`positive_codes` dispatches)."""

from __future__ import annotations

import numpy as np
import torch

ALGORITHMS = ("admm", "lasso_cd", "lasso_lars")   #: see :func:`positive_codes`


def lasso_setup(D: torch.Tensor, rho_scale: float = 4.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """What :func:`positive_lasso` precomputes from the atoms ``D`` ``(K, d)``: ``(D, (DDᵀ + ρI)⁻¹, ρ)``
    (``(K, d)`` and ``(K, K)`` float32, a float) with ``ρ = rho_scale·mean(diag(DDᵀ))``. Reuse it
    when coding many batches against one dictionary."""
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


def positive_codes(X: torch.Tensor, atoms: np.ndarray, alpha: float, *, algorithm: str = "admm",
                   n_iter: int = 20, setup: tuple | None = None) -> torch.Tensor:
    """Non-negative lasso codes of the rows of ``X`` ``(N, d)`` against ``atoms`` ``(K, d)``.

    ``algorithm``: ``"admm"`` (:func:`positive_lasso`, ``n_iter`` iterations, ``setup`` reused
    when given), or ``"lasso_cd"`` / ``"lasso_lars"`` (scikit-learn's
    ``sparse_encode(positive=True)`` in float64: exact, the same solutions ≈ 0.1 % apart in
    objective, 5–20× slower). Returns ``(N, K)`` float32 codes ≥ 0.
    """
    if algorithm == "admm":
        return positive_lasso(X, None if setup is not None else torch.from_numpy(atoms), alpha,
                              n_iter=n_iter, setup=setup)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm must be 'admm', 'lasso_cd' or 'lasso_lars', not {algorithm!r}")
    from sklearn.decomposition import sparse_encode
    return torch.from_numpy(sparse_encode(
        X.double().numpy(), atoms.astype(np.float64), algorithm=algorithm, alpha=alpha, positive=True)).float()
