"""Norms of a dense matrix without a full SVD and without a float64 copy of it.

σ₁(W) comes from Golub–Kahan–Lanczos bidiagonalization with full reorthogonalization,
stopped when the Ritz residual bound β_k·|p_k| ≤ ``SIGMA1_TOL``·σ₁ (the returned σ₁ is then
within that relative distance of a singular value of W, the largest in practice), or after
``MAX_STEPS`` steps (then it is a Ritz value, a lower bound, and reported as not converged).
Matrix–vector products run in float32 (the storage precision of base weights) on the matrix
as read, with float64 vectors and Lanczos arithmetic: no float64 copy of the matrix is made,
and the rounding of the products moves σ₁ by far less than the tolerance (measured ≤ 5e-8
relative on tiny models, 1e-9 to 1e-8 on 600×400 to 11008×4096 matrices), so σ₁ is accurate
to 1e-6 relative. ‖W‖_F is accumulated in float64 over row blocks. Peak memory: the float32
matrix, the Lanczos vectors (≤ 121·(m + n) float64) and a 4 MB block.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_STEPS", "SIGMA1_TOL", "fro_norm", "sigma_max", "sigma_max_checked"]

SIGMA1_TOL = 1e-6
MAX_STEPS = 120


def sigma_max(w: np.ndarray, tol: float = SIGMA1_TOL, max_steps: int | None = None, seed: int = 0) -> float:
    """Largest singular value of a 2-D matrix (see :func:`sigma_max_checked`)."""
    return sigma_max_checked(w, tol, max_steps, seed)[0]


def sigma_max_checked(w: np.ndarray, tol: float = SIGMA1_TOL, max_steps: int | None = None,
                      seed: int = 0) -> tuple[float, bool]:
    """Largest singular value of a 2-D matrix by Golub–Kahan–Lanczos (no full SVD).

    ``w`` (m × n; products in its dtype when float32/float64, so a float32 matrix is never
    copied; vectors and the bidiagonal in float64). Stops when
    the residual bound of the top Ritz value is ≤ ``tol`` relative, or the Krylov space is
    exhausted (then the result is exact up to rounding). Returns ``(σ₁, converged)``; when
    ``max_steps`` (default 120) pass first, the value is a Ritz value, a lower bound on σ₁.
    """
    max_steps = MAX_STEPS if max_steps is None else max_steps
    m, n = w.shape
    if m == 0 or n == 0:
        return 0.0, True
    wt = w.T
    dt = w.dtype if w.dtype in (np.float32, np.float64) else np.float32
    rng = np.random.default_rng(seed)
    k_max = min(max_steps, m, n)
    V = np.zeros((k_max + 1, n))
    U = np.zeros((k_max, m))
    alphas: list[float] = []
    betas: list[float] = []
    v = rng.standard_normal(n)
    v /= np.linalg.norm(v)
    V[0] = v
    u_prev = np.zeros(m)
    beta = 0.0
    best = 0.0
    converged = False
    for k in range(k_max):
        u = (w @ V[k].astype(dt)).astype(np.float64) - beta * u_prev
        if k:
            u -= U[:k].T @ (U[:k] @ u)
        alpha = float(np.linalg.norm(u))
        if alpha == 0.0:
            converged = True  # the Krylov space is exhausted: exact up to rounding
            break
        u /= alpha
        U[k] = u
        alphas.append(alpha)
        vn = (wt @ u.astype(dt)).astype(np.float64) - alpha * V[k]
        vn -= V[: k + 1].T @ (V[: k + 1] @ vn)
        beta = float(np.linalg.norm(vn))
        Bk = np.diag(alphas)
        if k:
            Bk[np.arange(k), np.arange(1, k + 1)] = betas
        P, S, _ = np.linalg.svd(Bk)
        best = float(S[0])
        if beta * abs(P[-1, 0]) <= tol * best or beta == 0.0:
            converged = True
            break
        betas.append(beta)
        V[k + 1] = vn / beta
        u_prev = u
    # Running out of the Krylov space (k_max = the smaller dimension) is exact as well.
    return best, converged or k_max == min(m, n)


def fro_norm(w: np.ndarray, block_bytes: int = 4 << 20) -> float:
    """‖W‖_F of a 2-D matrix, accumulated in float64 over row blocks of at most
    ``block_bytes`` (no whole-matrix float64 copy)."""
    m, n = w.shape
    rows = max(1, block_bytes // (8 * max(n, 1)))
    acc = 0.0
    for i in range(0, m, rows):
        blk = w[i: i + rows].astype(np.float64).ravel()
        acc += float(np.dot(blk, blk))
    return math.sqrt(acc)
