"""The principal directions of the teacher's unit gradients (uncentred, so inner products are kept): the basis of
the dense distillation targets (``influcoder targets``) and of exact-query scoring's coordinates."""

from __future__ import annotations

import numpy as np

__all__ = ["unit_rows", "principal_basis", "coordinates"]


def unit_rows(G: np.ndarray, block: int = 4096) -> np.ndarray:
    """Rows of ``G`` scaled to unit length (float32; a zero row stays zero), read block-wise (memmaps)."""
    out = np.empty(G.shape, dtype=np.float32)
    for s in range(0, len(G), block):
        b = np.asarray(G[s:s + block], dtype=np.float64)
        n = np.linalg.norm(b, axis=1, keepdims=True)
        out[s:s + block] = (b / np.where(n > 0, n, 1.0)).astype(np.float32)
    return out


def principal_basis(U: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` right singular vectors of ``U`` (n × D, rows = unit gradients; uncentred), as V (D × k, float32,
    orthonormal columns) with the singular values (k,). Through the n × n Gram matrix (n ≪ D), in float64."""
    U64 = np.asarray(U, dtype=np.float64)
    n = len(U64)
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of gradients ({n}), got {k}")
    gram = U64 @ U64.T
    w, E = np.linalg.eigh(gram)
    order = np.argsort(w)[::-1][:k]
    w, E = np.clip(w[order], 0.0, None), E[:, order]
    s = np.sqrt(w)
    keep = s > s[0] * 1e-7
    if not keep.all():
        raise ValueError(f"the training gradients span only {int(keep.sum())} directions; choose k ≤ {int(keep.sum())}")
    V = (U64.T @ E) / s
    return V.astype(np.float32), s


def coordinates(U: np.ndarray, V: np.ndarray, block: int = 4096) -> np.ndarray:
    """Coordinates of the rows of ``U`` (unit gradients) in the basis ``V``: U @ V, (n, k) float32."""
    return np.concatenate([np.asarray(U[s:s + block], dtype=np.float32) @ V for s in range(0, len(U), block)]
                          or [np.zeros((0, V.shape[1]), np.float32)])
