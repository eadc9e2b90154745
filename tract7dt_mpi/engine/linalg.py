"""Pairwise inner products of source columns and the per-band linear (flux + sky) solve.

For every pair of sources whose boxes overlap we form, for all bands at once,
B_st[b] = sum_pix w_b A_s[b, i] A_t[b, j] over the overlap (A = model and derivative columns).
Everything the optimizer needs (flux Gram matrix, Gauss-Newton Hessian, gradients) follows from
these blocks plus the per-source products with w*d and w.
"""
from __future__ import annotations

import numpy as np


def overlapping_pairs(rs) -> list:
    """(s, t) with s <= t whose boxes overlap (non-empty boxes only)."""
    idx = [i for i, r in enumerate(rs) if not r.empty]
    if not idx:
        return []
    b = np.array([[rs[i].y0, rs[i].y1, rs[i].x0, rs[i].x1] for i in idx])
    oy = (np.minimum(b[:, None, 1], b[None, :, 1]) > np.maximum(b[:, None, 0], b[None, :, 0]))
    ox = (np.minimum(b[:, None, 3], b[None, :, 3]) > np.maximum(b[:, None, 2], b[None, :, 2]))
    ii, jj = np.nonzero(np.triu(oy & ox))
    return [(idx[i], idx[j]) for i, j in zip(ii, jj)]


def _sub(r, y0, y1, x0, x1, k=None):
    a = r.A[:, :k, y0 - r.y0:y1 - r.y0, x0 - r.x0:x1 - r.x0]
    return a.reshape(a.shape[0], a.shape[1], -1)


def pair_block(rs, s, t, w, ncols=None) -> np.ndarray:
    """(nb, ks, kt) weighted inner products of the columns of sources s and t over their overlap.

    ``ncols`` = (ks, kt) uses only the first columns of each (e.g. (1, 1): model columns only).
    """
    a, b = rs[s], rs[t]
    ks, kt = ncols if ncols is not None else (None, None)
    y0, y1 = max(a.y0, b.y0), min(a.y1, b.y1)
    x0, x1 = max(a.x0, b.x0), min(a.x1, b.x1)
    ws = w[:, None, y0:y1, x0:x1].astype(a.A.dtype, copy=False)
    As = (a.A[:, :ks, y0 - a.y0:y1 - a.y0, x0 - a.x0:x1 - a.x0] * ws).reshape(ws.shape[0], -1, ws[0].size)
    At = _sub(b, y0, y1, x0, x1, kt)
    if As.shape[1] > 1 and At.shape[1] > 1:   # einsum beats batched sgemm for these thin shapes
        return np.einsum("bkp,blp->bkl", As, At).astype(float)
    return np.matmul(As, At.transpose(0, 2, 1)).astype(float)


def model_block(a, b, a0w) -> np.ndarray:
    """(nb, 1, 1) weighted inner product of the model columns of renderings a and b.

    ``a0w`` is a's model column already multiplied by the weights on a's box (cached by the caller);
    the float32 sum is SIMD-pairwise (relative error ~1e-7).
    """
    y0, y1 = max(a.y0, b.y0), min(a.y1, b.y1)
    x0, x1 = max(a.x0, b.x0), min(a.x1, b.x1)
    if y1 <= y0 or x1 <= x0:
        return np.zeros((a.A.shape[0], 1, 1))
    pa = a0w[:, y0 - a.y0:y1 - a.y0, x0 - a.x0:x1 - a.x0]
    pb = b.A[:, 0, y0 - b.y0:y1 - b.y0, x0 - b.x0:x1 - b.x0]
    return np.einsum("byx,byx->b", pa, pb).astype(np.float64)[:, None, None]


def own_products(r, *weighted) -> list:
    """Products sum_pix A[b, i] * x[b] over the source's box for each full-image array x (nb, H, W)."""
    if r.empty:
        return [np.zeros(r.A.shape[:2]) for _ in weighted]
    nb, k = r.A.shape[:2]
    A = np.ascontiguousarray(r.A).reshape(nb, k, -1)
    out = []
    for x in weighted:   # batched matrix-vector products (BLAS): several x faster than einsum here
        xs = np.ascontiguousarray(x[:, r.y0:r.y1, r.x0:r.x1], dtype=r.A.dtype).reshape(nb, -1, 1)
        out.append(np.matmul(A, xs)[..., 0].astype(float))
    return out


def solve_ridged(M: np.ndarray, b: np.ndarray, ridge) -> np.ndarray:
    """Solve (M + diag(ridge)) x = b for one system (M (n, n), b (n,)) or a batch (M (k, n, n),
    b (k, n)); ``ridge`` broadcasts to b's shape.  Least squares (rcond 1e-12) where the ridged
    matrix is still singular.  The one regularised solve of the engine."""
    n = M.shape[-1]
    Mr = M + np.eye(n) * np.broadcast_to(ridge, b.shape)[..., None, :]
    try:
        return np.linalg.solve(Mr, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        if Mr.ndim == 2:
            return np.linalg.lstsq(Mr, b, rcond=1e-12)[0]
        return np.stack([np.linalg.lstsq(Mr[k], b[k], rcond=1e-12)[0] for k in range(Mr.shape[0])])


def _relative_ridge(G: np.ndarray, rel: float = 1e-12) -> np.ndarray:
    """``rel`` x |diag G| per row (``rel`` where the diagonal is zero)."""
    d = np.abs(np.diagonal(G, axis1=-2, axis2=-1))
    return rel * np.where(d > 0, d, 1.0)


def solve_batched(G: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve G[b] x[b] = rhs[b] with a tiny relative ridge; least squares if still singular."""
    return solve_ridged(G, rhs, _relative_ridge(G))


def inv_batched(G: np.ndarray) -> np.ndarray:
    """Inverse of every G[b] with the same relative ridge; pseudo-inverse if still singular."""
    Gr = G + np.eye(G.shape[-1]) * _relative_ridge(G)[..., None, :]
    try:
        return np.linalg.inv(Gr)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(Gr)
