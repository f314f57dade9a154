"""Exact-query scoring: the queries keep their exact gradients; only the pool side is learned.

The teacher's influence of pool example p on query q is the cosine of their (projected) LoRA gradients,
⟨u_p, u_q⟩ with u = g / ‖g‖. Its ranking lives in a few dozen directions: with V (D × k) the top-k principal
directions of the stocked *training* gradients (uncentred, so inner products are kept), ⟨V'u_p, V'u_q⟩ ranks the
pool almost as the teacher does (experiment 1: per-anchor 0.77 at k = 8, 0.93 at k = 128). Queries are the few
examples of the behaviour a user asks about and cheap to stock, so their coordinates c_q = V'u_q are taken
exactly; a model of the pool text predicts c_p (ridge regression from the encoder's embedding and the
record's form features), and the score is ⟨ĉ_p, c_q⟩ — one inner product, so a FAISS inner-product index over
the predicted pool coordinates answers top-k exactly. A query added later is stocked and projected on V.

Everything here is numpy on arrays already in memory (stores are memory-mapped); the encoder is only used
through :meth:`InfluenceEncoder.encode`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["principal_basis", "unit_rows", "coordinates", "form_features", "RidgeHead", "fit_ridge_head",
           "ExactQueryModel", "pool_features", "select_and_fit", "top_k_rows", "VIEWS"]


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


def form_features(records: Sequence[Any]) -> np.ndarray:
    """The 8 style features of the response (:func:`influcoder.prior_trees.style_features`) and the prompt's
    log word and character counts: (n, 10) float32."""
    from .prior_trees import _WORD, _prompt_response, style_features

    st = style_features(records)
    pr = np.array([[np.log1p(len(_WORD.findall(p))), np.log1p(len(p))] for p, _ in map(_prompt_response, records)],
                  dtype=np.float32).reshape(len(records), 2)
    return np.concatenate([st, pr], axis=1)


VIEWS = ("text", "response", "prompt")
"""What the head reads of a pool record: the encoder's embedding of its text (the input contract: the response
kept), of its response alone and of its prompt alone, then :func:`form_features`."""


def pool_features(encoder, records: Sequence[Any], batch_size: int = 32) -> np.ndarray:
    """The head's features of pool records: the three :data:`VIEWS`' embeddings and the 10 form features,
    (n, 3·dim + 10) float32. ``encoder``: an (untrained) :class:`~influcoder.encoder.InfluenceEncoder`."""
    from .records import Record

    recs = list(records)
    if not all(isinstance(r, Record) for r in recs):
        raise TypeError("pool_features reads records (prompt and response), not plain strings")
    parts = [encoder.encode(recs, batch_size=batch_size, side="pool"),
             encoder.encode([r.response or " " for r in recs], batch_size=batch_size, side="pool"),
             encoder.encode([r.prompt or " " for r in recs], batch_size=batch_size, side="pool"),
             form_features(recs)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def select_and_fit(X_train: np.ndarray, U_train_pool: np.ndarray, U_train_queries: np.ndarray, ks: Sequence[int],
                   alphas: Sequence[float], selection: float, seed: int = 0) -> tuple[np.ndarray, "RidgeHead", dict]:
    """Choose the basis (training pool + queries, or queries only), k and α on a held-out share ``selection`` of the
    training pool (per-anchor Spearman of ⟨ĉ_p, c_q⟩ against the teacher's cosine over the training queries),
    then fit on the whole training part. Returns (V, head, the choice and its selection figures)."""
    from .metrics import per_anchor_spearman, query_specific_spearman

    n = len(X_train)
    rng = np.random.default_rng(1000 + seed)
    perm = rng.permutation(n)
    n_sel = max(2, int(round(selection * n)))
    if n - n_sel < 2:
        raise ValueError(f"{n} training pool rows are too few to hold {n_sel} out for the selection")
    sel, fit = np.sort(perm[:n_sel]), np.sort(perm[n_sel:])
    truth = U_train_pool[sel] @ U_train_queries.T
    best = None
    for basis in ("train", "queries"):
        B = np.concatenate([U_train_pool[fit], U_train_queries]) if basis == "train" else U_train_queries
        kmax = min(max(ks), len(B))
        try:
            V, _ = principal_basis(B, kmax)
        except ValueError:
            continue
        Cp, Cq = coordinates(U_train_pool, V), coordinates(U_train_queries, V)
        for k in sorted(set(min(k, kmax) for k in ks)):
            for a in alphas:
                pred = fit_ridge_head(X_train[fit], Cp[fit, :k], a).predict(X_train[sel]) @ Cq[:, :k].T
                pa = per_anchor_spearman(pred, truth)
                if best is None or pa > best["selection_per_anchor"]:
                    best = {"basis": basis, "k": int(k), "alpha": float(a), "selection_per_anchor": pa,
                            "selection_query_specific": query_specific_spearman(pred, truth)}
    if best is None:
        raise ValueError("no basis could be formed from the training gradients")
    B = np.concatenate([U_train_pool, U_train_queries]) if best["basis"] == "train" else U_train_queries
    V, _ = principal_basis(B, best["k"])
    head = fit_ridge_head(X_train, coordinates(U_train_pool, V), best["alpha"])
    return V, head, {**best, "n_selection": int(n_sel), "n_fit": int(n - n_sel)}


@dataclass
class RidgeHead:
    """ĉ = ((x − mean) / scale) W + b: ridge regression from pool features to coordinates."""

    mean: np.ndarray
    scale: np.ndarray
    W: np.ndarray
    b: np.ndarray
    alpha: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        Z = (np.asarray(X, dtype=np.float64) - self.mean) / self.scale
        return (Z @ self.W + self.b).astype(np.float32)


def fit_ridge_head(X: np.ndarray, C: np.ndarray, alpha: float) -> RidgeHead:
    """Closed-form ridge (features standardised, intercept not penalised), in float64."""
    X = np.asarray(X, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale[scale == 0] = 1.0
    Z = (X - mean) / scale
    cm = C.mean(axis=0)
    A = Z.T @ Z + alpha * np.eye(Z.shape[1])
    W = np.linalg.solve(A, Z.T @ (C - cm))
    return RidgeHead(mean=mean, scale=scale, W=W, b=cm, alpha=float(alpha))


@dataclass
class ExactQueryModel:
    """What exact-query scoring needs at scoring time: the basis and the pool head (the encoder is named)."""

    V: np.ndarray
    head: RidgeHead
    encoder: str
    info: dict

    def query_coordinates(self, query_gradients: np.ndarray) -> np.ndarray:
        """Exact coordinates of stocked query gradients (any scale; rows are normalised first)."""
        return coordinates(unit_rows(query_gradients), self.V)

    def pool_coordinates(self, features: np.ndarray) -> np.ndarray:
        return self.head.predict(features)

    def save(self, out: str | Path) -> Path:
        from safetensors.numpy import save_file

        from .fileio import atomic_write_text

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        h = self.head
        save_file({"V": np.ascontiguousarray(self.V, np.float32), "mean": h.mean, "scale": h.scale, "W": h.W, "b": h.b},
                  str(out / "exact_query.safetensors"))
        atomic_write_text(out / "exact_query.json", json.dumps(
            {"format": "influcoder-exact-query/1", "encoder": self.encoder, "alpha": h.alpha, "k": int(self.V.shape[1]),
             "info": self.info}, indent=1, default=str))
        return out

    @classmethod
    def load(cls, path: str | Path) -> "ExactQueryModel":
        from safetensors.numpy import load_file

        path = Path(path)
        meta = json.loads((path / "exact_query.json").read_text())
        t = load_file(str(path / "exact_query.safetensors"))
        head = RidgeHead(mean=t["mean"], scale=t["scale"], W=t["W"], b=t["b"], alpha=meta["alpha"])
        return cls(V=t["V"], head=head, encoder=meta["encoder"], info=meta.get("info", {}))

    def describe(self) -> dict:
        return {"k": int(self.V.shape[1]), "alpha": self.head.alpha, "encoder": self.encoder, **self.info}


def top_k_rows(pool_coordinates: np.ndarray, query_coordinates: np.ndarray, query_ids: Sequence[str],
               pool_ids: Sequence[str], k: int) -> list[dict]:
    """The top-``k`` pool rows of every query by ⟨ĉ_p, c_q⟩ (ties by pool order): one dict per (query, rank) with
    ``query_id``, ``rank`` (1-based), ``id`` and ``score``."""
    rows = []
    for j, qid in enumerate(query_ids):
        s = np.asarray(pool_coordinates @ query_coordinates[j], dtype=np.float64)
        rows += [{"query_id": qid, "rank": r + 1, "id": pool_ids[i], "score": float(s[i])}
                 for r, i in enumerate(np.argsort(-s, kind="stable")[:k])]
    return rows


def ranked_pool_rows(pool_coordinates: np.ndarray, query_coordinates: np.ndarray, pool_ids: Sequence[str]) -> list[dict]:
    """Every pool row ranked by its mean score over the queries, ⟨ĉ_p, mean_q c_q⟩ (as ``filter --aggregate mean``
    ranks; ties by pool order), highest first: one dict per row with ``rank`` (1-based), ``id`` and ``score``."""
    agg = np.asarray(pool_coordinates @ np.asarray(query_coordinates, dtype=np.float64).mean(axis=0), dtype=np.float64)
    return [{"rank": r + 1, "id": pool_ids[i], "score": float(agg[i])}
            for r, i in enumerate(np.argsort(-agg, kind="stable"))]
