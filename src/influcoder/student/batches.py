"""What each step trains on: the leak-free held-out split on both axes and each step's pool candidates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import UserError


# ---------------------------------------------------------------------------------------------- split
@dataclass
class Split:
    """Row (pool) and column (query) indices into the label matrix."""

    train_pool: np.ndarray
    val_pool: np.ndarray
    train_queries: np.ndarray
    val_queries: np.ndarray


def _count(spec: float, n: int, what: str) -> int:
    k = int(round(spec * n)) if spec < 1 else int(spec)
    if k < 2 or n - k < 2:
        raise UserError(f"held-out {what}: {k} of {n} leaves too few for training or validation (need ≥ 2 each)")
    return k


def split_indices(n_pool: int, n_query: int, val_pool: float, val_queries: float, seed: int) -> Split:
    """Disjoint, seeded train/held-out index sets on both axes."""
    rng = np.random.default_rng(seed)
    kp, kq = _count(val_pool, n_pool, "pool"), _count(val_queries, n_query, "queries")
    pp, qq = rng.permutation(n_pool), rng.permutation(n_query)
    return Split(np.sort(pp[kp:]), np.sort(pp[:kp]), np.sort(qq[kq:]), np.sort(qq[:kq]))


def sample_candidates(rng: np.random.Generator, chunk: np.ndarray, queries: np.ndarray, train_labels: np.ndarray,
                      hard_fraction: float, hard_top_k: int, top_cache: dict[int, np.ndarray]) -> np.ndarray:
    """Candidate positions (into the training pool) for one step: the uniform ``chunk``, with
    ``round(hard_fraction·C)`` slots replaced by examples from the top-``hard_top_k`` of the step's queries.
    ``train_labels`` is the training block (train pool × train queries); ``queries`` are its column positions."""
    C = len(chunk)
    n_hard = int(round(hard_fraction * C))
    if n_hard == 0:
        return chunk
    chosen: list[int] = []
    seen: set[int] = set()
    tries = 0
    while len(chosen) < n_hard and tries < 20 * n_hard:
        tries += 1
        q = int(queries[rng.integers(len(queries))])
        if q not in top_cache:
            col = train_labels[:, q]
            k = min(hard_top_k, len(col))
            top_cache[q] = np.argpartition(-col, k - 1)[:k]
        c = int(top_cache[q][rng.integers(len(top_cache[q]))])
        if c not in seen:
            seen.add(c)
            chosen.append(c)
    rest = [int(c) for c in chunk if int(c) not in seen][: C - len(chosen)]
    return np.asarray(chosen + rest, dtype=np.int64)
