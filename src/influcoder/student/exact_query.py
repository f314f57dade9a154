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

from ..teacher.basis import coordinates, principal_basis, unit_rows

__all__ = ["principal_basis", "unit_rows", "coordinates", "form_features", "RidgeHead", "fit_ridge_head",
           "ExactQueryModel", "ExactQueryEncoder", "pool_features", "pool_vectors", "query_vectors", "select_and_fit",
           "top_k_rows", "is_exact_query_folder", "VIEWS"]


def form_features(records: Sequence[Any]) -> np.ndarray:
    """The 8 style features of the response (:func:`influcoder.student.prior_trees.style_features`) and the prompt's
    log word and character counts: (n, 10) float32."""
    from .prior_trees import WORD, prompt_response, style_features

    st = style_features(records)
    pr = np.array([[np.log1p(len(WORD.findall(p))), np.log1p(len(p))] for p, _ in map(prompt_response, records)],
                  dtype=np.float32).reshape(len(records), 2)
    return np.concatenate([st, pr], axis=1)


VIEWS = ("text", "response", "prompt")
"""What the head reads of a pool record: the encoder's embedding of its text (the input contract: the response
kept), of its response alone and of its prompt alone, then :func:`form_features`."""


def pool_features(encoder, records: Sequence[Any], batch_size: int = 32) -> np.ndarray:
    """The head's features of pool records: the three :data:`VIEWS`' embeddings and the 10 form features,
    (n, 3·dim + 10) float32. ``encoder``: an (untrained) :class:`~influcoder.student.encoder.InfluenceEncoder`."""
    from ..data.records import Record

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
    from ..core.metrics import per_anchor_spearman, query_specific_spearman

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
    """What exact-query scoring needs at scoring time: the basis, the pool head and the encoder it reads; for
    encoding queries from their records also the teacher's stocking settings (``teacher``: StockConfig fields
    without data/out), the identity of the gradients the basis was fitted on (``reference``: model, adapter,
    projection and layout hashes of the run's query store) and the run's own stocked queries' coordinates by
    :func:`~influcoder.data.records.record_key` (``known``), so that they are not stocked again."""

    V: np.ndarray
    head: RidgeHead
    encoder: str
    info: dict
    teacher: dict | None = None
    reference: dict | None = None
    known_keys: list[str] | None = None
    known_coordinates: np.ndarray | None = None
    metadata: dict | None = None

    def query_coordinates(self, query_gradients: np.ndarray) -> np.ndarray:
        """Exact coordinates of stocked query gradients (any scale; rows are normalised first)."""
        return coordinates(unit_rows(query_gradients), self.V)

    def pool_coordinates(self, features: np.ndarray) -> np.ndarray:
        """Predicted coordinates of pool rows, each kept inside the unit ball (a unit gradient's coordinates in
        an orthonormal basis never leave it; a longer prediction is scaled back onto the sphere)."""
        C = np.asarray(self.head.predict(features), dtype=np.float64)
        n = np.linalg.norm(C, axis=1, keepdims=True)
        return (C / np.maximum(n, 1.0)).astype(np.float32)

    def save(self, out: str | Path) -> Path:
        from safetensors.numpy import save_file

        from ..core.fileio import atomic_write_text

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        h = self.head
        tensors = {"V": np.ascontiguousarray(self.V, np.float32), "mean": h.mean, "scale": h.scale, "W": h.W, "b": h.b}
        if self.known_coordinates is not None:
            tensors["known_query_coordinates"] = np.ascontiguousarray(self.known_coordinates, np.float32)
        save_file(tensors, str(out / TENSORS_FILE))
        atomic_write_text(out / MODEL_FILE, json.dumps(
            {"format": FORMAT, "encoder": self.encoder, "alpha": h.alpha, "k": int(self.V.shape[1]),
             "info": self.info, "teacher": self.teacher, "reference": self.reference,
             "known_query_keys": self.known_keys, "metadata": self.metadata}, indent=1, default=str))
        return out

    @classmethod
    def load(cls, path: str | Path) -> "ExactQueryModel":
        from safetensors.numpy import load_file

        path = Path(path)
        meta = json.loads((path / MODEL_FILE).read_text())
        t = load_file(str(path / TENSORS_FILE))
        head = RidgeHead(mean=t["mean"], scale=t["scale"], W=t["W"], b=t["b"], alpha=meta["alpha"])
        return cls(V=t["V"], head=head, encoder=meta["encoder"], info=meta.get("info", {}), teacher=meta.get("teacher"),
                   reference=meta.get("reference"), known_keys=meta.get("known_query_keys"),
                   known_coordinates=t.get("known_query_coordinates"), metadata=meta.get("metadata"))

    def describe(self) -> dict:
        return {"k": int(self.V.shape[1]), "alpha": self.head.alpha, "encoder": self.encoder, **self.info}


MODEL_FILE = "exact_query.json"
TENSORS_FILE = "exact_query.safetensors"
FORMAT = "influcoder-exact-query/1"
REFERENCE_KEYS = ("model_hash", "adapter_hash", "projection", "layout_hash")
"""What must agree between the gradients the basis was fitted on and a query stocked later."""


def check_reference(manifest: dict, reference: dict, what: str) -> None:
    """Refuse gradients (a store's ``manifest``) that differ from the basis's (``reference``) in any of
    :data:`REFERENCE_KEYS`: they could not be projected on its basis. ``what`` names them in the error."""
    from ..core.errors import UserError

    for k in REFERENCE_KEYS:
        if manifest.get(k) != reference.get(k):
            raise UserError(f"{what} differ from the basis's gradients in '{k}' ({manifest.get(k)!r} vs "
                            f"{reference.get(k)!r}); the teacher (model, adapter, projection) it was fitted with is not "
                            "what stocked them, so they cannot be projected on its basis")


def is_exact_query_folder(path: str | Path) -> bool:
    """True for a folder written by :meth:`ExactQueryModel.save` (``load_encoder`` then gives an
    :class:`ExactQueryEncoder`)."""
    return (Path(path) / MODEL_FILE).is_file()


def pool_vectors(C: np.ndarray) -> np.ndarray:
    """Unit vectors (n, k + 2) of predicted pool coordinates (inside the unit ball): [ĉ, √(1 − ‖ĉ‖²), 0]."""
    C = np.asarray(C, dtype=np.float64)
    r = np.sqrt(np.clip(1.0 - (C * C).sum(axis=1, keepdims=True), 0.0, None))
    return np.hstack([C, r, np.zeros_like(r)]).astype(np.float32)


def query_vectors(Q: np.ndarray) -> np.ndarray:
    """Unit vectors (n, k + 2) of exact query coordinates: [c_q, 0, √(1 − ‖c_q‖²)]. The inner product of a pool
    vector and a query vector is ⟨ĉ_p, c_q⟩ exactly — the exact-query score — and both are unit vectors, so every
    cosine consumer (embedding stores, FAISS, attribute, filter, serve) scores them unchanged."""
    Q = np.asarray(Q, dtype=np.float64)
    n = np.linalg.norm(Q, axis=1, keepdims=True)
    Q = Q / np.maximum(n, 1.0)  # ‖V'u‖ ≤ 1 for a unit u; only rounding can exceed it
    r = np.sqrt(np.clip(1.0 - (Q * Q).sum(axis=1, keepdims=True), 0.0, None))
    return np.hstack([Q, np.zeros_like(r), r]).astype(np.float32)


class ExactQueryEncoder:
    """An exact-query model behind the encoder interface (:meth:`encode` / ``encode_query`` / ``encode_document``),
    so that ``embed``, ``index``, ``attribute``, ``filter``, ``serve``, ``run`` and Ray use it as they use an
    :class:`~influcoder.student.encoder.InfluenceEncoder`: a pool record's vector is its predicted coordinates (the head on
    the base encoder's features), a query record's vector its exact coordinates — its LoRA gradient, stocked with
    the teacher's settings (the run's own queries are read from the saved coordinates, not stocked again),
    projected on the basis. Vectors are unit (:func:`pool_vectors`, :func:`query_vectors`); their cosine is the
    exact-query score ⟨ĉ_p, c_q⟩. Plain strings are refused on both sides: the pool features and a query's
    gradient both need the record's prompt and response."""

    prior = None

    def __init__(self, folder: str | Path, device: str = "cpu", precision: str = "float32"):
        from .encoder import InfluenceEncoder

        self.folder = Path(folder)
        self.model = ExactQueryModel.load(self.folder)
        self.precision = precision
        """Precision asked of this encoder; the features use the precision the head was fitted on, the decoder
        passes that stock new queries the teacher's recorded dtype."""
        self.feature_precision = self.model.info.get("feature_precision", "float32")
        self.base = InfluenceEncoder.from_pretrained(self.model.encoder, max_length=self.model.info.get("max_length"),
                                                     device=device)
        self.base.precision = self.feature_precision  # the features the head was fitted on
        self._device = device
        self._known = dict(zip(self.model.known_keys or [], range(len(self.model.known_keys or []))))
        self.stocked = 0
        """Queries stocked by this object so far (the run's own queries are not)."""
        self.metadata = {**(self.model.metadata or {}), "kind": "exact-query", "base_encoder": self.model.encoder,
                         "exact_query": self.model.describe(), "text": self.base.metadata.get("text")}

    # the encoder interface ---------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.model.V.shape[1]) + 2

    embedding_dim = dim

    @property
    def device(self) -> str:
        return self._device

    @property
    def max_length(self) -> int:
        return self.base.max_length

    @property
    def text_mode(self) -> str:
        return self.base.text_mode

    def texts(self, items, side: str = "pool") -> list[str]:
        return self.base.texts(items, side)

    def response_seen(self, items, side: str = "pool") -> dict[str, float]:
        return self.base.response_seen(items, side)

    def score_vectors(self, emb: np.ndarray, side: str, items=None, lengths=None) -> np.ndarray:
        return emb

    def _records(self, items, side: str) -> list:
        from .encoder import InfluenceEncoder
        from ..core.errors import UserError
        from ..data.records import Record

        recs = InfluenceEncoder.feature_items(items)
        bad = [i for i, x in enumerate(recs) if not isinstance(x, Record)]
        if bad:
            what = ("a pool example's predicted coordinates read its prompt and response" if side == "pool"
                    else "a query's vector is its gradient, which needs its prompt and response")
            raise UserError(f"{len(bad)} {side} item(s) (the first: item {bad[0]}) are plain strings; an exact-query "
                            f"scorer ({self.folder}) reads records: {what}. Give prompt/response (or messages) rows")
        return recs

    def encode(self, items, batch_size: int = 32, side: str = "pool", show_progress_bar: bool = False) -> np.ndarray:
        recs = self._records(items, side)
        if not recs:
            return np.zeros((0, self.dim), dtype=np.float32)
        if side == "pool":
            return pool_vectors(self.model.pool_coordinates(pool_features(self.base, recs, batch_size)))
        return query_vectors(self.query_coordinates(recs))

    def encode_query(self, items, **kwargs) -> np.ndarray:
        return self.encode(items, side="query", **kwargs)

    def encode_document(self, items, **kwargs) -> np.ndarray:
        return self.encode(items, side="pool", **kwargs)

    @staticmethod
    def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        from .encoder import cosine_rows

        return cosine_rows(a, b)

    def eval(self) -> "ExactQueryEncoder":
        return self

    # the query side ----------------------------------------------------------------------------------------
    def query_coordinates(self, recs: Sequence[Any]) -> np.ndarray:
        """Exact coordinates of query records: the run's own from the saved ones, the others stocked (in one
        stocking pass) with the teacher's settings and checked against the basis's gradients."""
        from ..data.records import record_key

        keys = [record_key(r) for r in recs]
        out = np.zeros((len(recs), self.model.V.shape[1]), dtype=np.float32)
        new = [i for i, k in enumerate(keys) if k not in self._known]
        for i, k in enumerate(keys):
            if k in self._known:
                out[i] = self.model.known_coordinates[self._known[k]]
        if new:
            out[new] = self.model.query_coordinates(self.stock_gradients([recs[i] for i in new]))
            self.stocked += len(new)
        return out

    def stock_gradients(self, recs: Sequence[Any]) -> np.ndarray:
        """LoRA gradients of query records (store rows in the order given), stocked in a temporary store with the
        teacher's settings; refused when they would not be comparable with the basis's."""
        import tempfile

        from ..core.errors import UserError
        from ..data.records import Record, write_records
        from ..teacher.config import StockConfig
        from ..teacher.stock import stock
        from ..teacher.store import open_store

        if not self.model.teacher or not self.model.reference:
            raise UserError(f"{self.folder}: this exact-query model records no stocking settings; only queries whose "
                            "gradients it saved can be scored — stock others with the run's teacher settings")
        teacher = dict(self.model.teacher)  # as the run stocked: its resolved dtype, not this machine's auto
        if teacher.get("adapter") and not Path(teacher["adapter"]).is_absolute():
            teacher["adapter"] = str(self.folder / teacher["adapter"])  # the warmed-up adapter saved beside the model
        with tempfile.TemporaryDirectory(prefix="influcoder-queries-") as d:
            rows = [Record(id=f"q{i}", prompt=r.prompt, response=r.response, messages=r.messages)
                    for i, r in enumerate(recs)]
            data = write_records(Path(d) / "queries.jsonl", rows)
            try:
                stock(StockConfig(data=str(data), out=str(Path(d) / "store"), **teacher), progress=False)
            except UserError as e:
                raise UserError(f"stocking {len(recs)} query record(s) for exact-query scoring (row i is the i-th "
                                f"query given, first id '{getattr(recs[0], 'id', '?')}'): {e}") from None
            store = open_store(Path(d) / "store")
            check_reference(store.manifest, self.model.reference, f"{self.folder}: the queries stocked now")
            where = {i: n for n, i in enumerate(store.ids)}
            G = np.asarray(store.matrix)[[where[r.id] for r in rows]]
        return np.asarray(G, dtype=np.float32)


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
