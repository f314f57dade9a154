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
    "aggregate_scores",
    "auprc",
    "precision_recall",
    "precision_at_k",
    "recall_at_k",
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


# ------------------------------------------------------------------------------ detection (DATE-LM)
def aggregate_scores(scores: np.ndarray) -> np.ndarray:
    """One score per pool example: the mean of its scores over the reference (query) set.

    DATE-LM averages over the reference set (``torch.mean(scores, dim=1)`` on a train × reference matrix,
    ``methods/dattri.py``); a 1-D array is returned unchanged."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim == 1:
        return s
    if s.ndim != 2:
        raise ValueError(f"expected a (pool × query) matrix or a 1-D score vector, got shape {s.shape}")
    return s.mean(axis=1)


def _check_detection(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = aggregate_scores(scores)
    y = np.asarray(positive)
    if y.ndim != 1 or len(y) != len(s):
        raise ValueError(f"{len(s)} scores but {y.shape} labels")
    y = y.astype(bool)
    if not y.any():
        raise ValueError("no positive example: precision-recall is undefined")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or inf")
    return s, y


def precision_recall(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sklearn.metrics.precision_recall_curve`` of the aggregated scores: (precision, recall, thresholds)."""
    from sklearn.metrics import precision_recall_curve

    s, y = _check_detection(scores, positive)
    return precision_recall_curve(y.astype(int), s)


def auprc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the precision-recall curve exactly as DATE-LM computes it.

    ``scores``: (pool × reference) matrix (averaged over references first) or a 1-D vector;
    ``positive``: 1 for the examples to find (e.g. the planted unsafe ones). Computation:
    ``precision, recall, _ = precision_recall_curve(y, s)`` then ``auc(recall, precision)`` (trapezoidal
    rule over sklearn's curve, which begins at recall 1 and ends at the (recall 0, precision 1) point;
    this is *not* sklearn's ``average_precision_score``, which uses a step interpolation)."""
    from sklearn.metrics import auc

    precision, recall, _ = precision_recall(scores, positive)
    return float(auc(recall, precision))


def _top_k(s: np.ndarray, k: int) -> np.ndarray:
    if not 1 <= k <= len(s):
        raise ValueError(f"k must be in [1, {len(s)}], got {k}")
    # stable sort on -score: ties are broken by position (lower index first), stated and deterministic
    return np.argsort(-s, kind="stable")[:k]


def precision_at_k(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Share of positives among the k highest-scoring examples (ties broken by lower index first)."""
    s, y = _check_detection(scores, positive)
    return float(y[_top_k(s, k)].mean())


def recall_at_k(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Share of all positives found among the k highest-scoring examples (ties broken by lower index first)."""
    s, y = _check_detection(scores, positive)
    return float(y[_top_k(s, k)].sum() / y.sum())
