"""Metrics, kept apart from the methods that produce scores (METHOD.md §3).

All score matrices are (n_pool × n_query): column j holds every pool example's score for query j.

Ties: Spearman is the Pearson correlation of *average ranks* (``scipy.stats.rankdata(method="average")``),
so tied values share their mean rank. A constant column has no defined Spearman; it counts as 0
(``nan_policy``-free, documented) so that a method predicting a constant is not rewarded.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

__all__ = [
    "spearman",
    "per_anchor_spearman",
    "per_anchor_spearman_values",
    "aggregated_spearman",
    "query_specific_spearman",
]


def _pearson_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=0, keepdims=True)
    b = b - b.mean(axis=0, keepdims=True)
    na = np.sqrt((a * a).sum(axis=0))
    nb = np.sqrt((b * b).sum(axis=0))
    denom = na * nb
    out = np.zeros(a.shape[1], dtype=np.float64)
    ok = denom > 0
    out[ok] = (a[:, ok] * b[:, ok]).sum(axis=0) / denom[ok]
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation of two 1-D arrays (average ranks for ties; 0 if either is constant)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    return float(_pearson_cols(rankdata(x)[:, None], rankdata(y)[:, None])[0])


def per_anchor_spearman_values(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Spearman over the pool, one value per query (anchor)."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(f"expected two (pool × query) matrices of one shape, got {pred.shape} and {true.shape}")
    return _pearson_cols(rankdata(pred, axis=0), rankdata(true, axis=0))


def per_anchor_spearman(pred: np.ndarray, true: np.ndarray) -> float:
    """Mean over queries of the Spearman between predicted and true influence over the pool."""
    return float(per_anchor_spearman_values(pred, true).mean())


def aggregated_spearman(pred: np.ndarray, true: np.ndarray) -> float:
    """Average each pool example's influence over the queries (true and predicted separately), then one Spearman."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if pred.shape != true.shape:
        raise ValueError(f"shapes differ: {pred.shape} vs {true.shape}")
    return spearman(pred.mean(axis=1), true.mean(axis=1))


def query_specific_spearman(pred: np.ndarray, true: np.ndarray) -> float:
    """Per-anchor Spearman after removing each pool example's mean over the queries from both matrices.

    It measures whether a method ranks the pool differently for different queries, rather than only
    knowing which pool examples are influential in general."""
    pred = np.asarray(pred, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    return per_anchor_spearman(pred - pred.mean(axis=1, keepdims=True), true - true.mean(axis=1, keepdims=True))
