"""Scores that need no model: the length heuristic, the baseline every fidelity report and evaluation compares with."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["length_scores"]


def length_scores(pool: Sequence, n_queries: int) -> np.ndarray:
    """Shorter pool response ⇒ more influence: −len(response) in characters, the same for every query
    (float32, pool × queries)."""
    s = -np.array([len(r.response) for r in pool], dtype=np.float32)
    return np.repeat(s[:, None], n_queries, axis=1)
