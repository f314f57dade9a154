"""Baseline attribution methods behind one interface (METHOD.md §3, issue 5).

Every method maps ``(pool_records, query_records)`` to a float32 ``(n_pool × n_query)`` score matrix
(higher = more influential / more similar) through :meth:`Method.scores`, and fills ``method.cost``
with what it spent (seconds to featurise the pool and the queries, seconds to score, bytes stored per
example). Methods built on the decoder share a :class:`DecoderFeatures` object that runs each
forward/backward pass once per example and caches the per-example features on disk (keyed by the
feature's definition and each record's content), so LESS r8, DataInf and LoGra read one pass and a
rerun computes nothing.

Methods (definitions and where they deviate from their papers):

* ``tfidf`` — cosine of sklearn TF-IDF vectors (fit on pool ∪ queries, unigrams, ``sublinear_tf``).
* ``bm25`` — Okapi BM25 of each query's tokens against each pool example (k1 = 1.5, b = 0.75,
  idf = ln(1 + (N − n_t + 0.5)/(n_t + 0.5)) over the pool, query-term repeats counted), i.e. the
  Lucene/``rank_bm25.BM25Plus``-free form; tokens from sklearn's default word pattern, lower-cased.
* ``semantic`` / ``influcoder`` — cosine of :class:`influcoder.student.encoder.InfluenceEncoder` embeddings
  (the untrained ``minilm-l6`` / a distilled student folder).
* ``length`` — shorter response ⇒ more influence: score = −(characters of the pool response),
  the same for every query (the distillation issue's heuristic).
* ``repsim`` — cosine of the decoder's last hidden state averaged over the example's tokens
  (prompt and response, chat template applied, padding masked).
* ``rds`` — RDS+ (Ivison et al. 2025): cosine of a position-weighted mean of the last hidden
  states, weight of the t-th real token ∝ t (t = 1..T), padding masked (their code runs at batch size 1
  precisely because it does not mask; masking makes batching exact).
* ``gradsim`` — Grad-Sim / LESS: cosine of LoRA gradients (rank r, B matrices; the same loss as the
  teacher: mean response-token CE) after an 8,192-d Rademacher projection (:mod:`influcoder.teacher.projection`,
  entries ±1/√k). Deviation from LESS: no Adam normalisation of the training gradients and one
  checkpoint (the freshly initialised adapter, or the adapter the teacher was warmed up to when
  :class:`DecoderFeatures` is given ``adapters``; every gradient method then shares it), so it is DATE-LM's
  "Grad-Sim" with LESS's projection; with r = 8 and the teacher's LoRA seed it is the teacher's own
  gradient under a different, smaller projection.
* ``logra`` — LoGra (Choe et al. 2024): for every linear layer of the blocks, the per-example weight
  gradient Σ_t δ_t x_tᵀ is projected on both sides, P_o (Σ_t δ_t x_tᵀ) P_iᵀ = Σ_t (P_o δ_t)(P_i x_t)ᵀ
  (k_o = k_i = ``logra_k``, seeded Gaussian N(0, 1/k)), without ever forming it; features are the
  concatenation over modules, scores their cosine. With ``fim=True`` each module's block is
  preconditioned by (F + λI)^(−1/2), F = the pool's raw covariance of that module's projected
  gradients (LogIX's "raw" Hessian), λ = 0.1 · trace(F)/dim, applied to both sides before the
  cosine (as Bergson does with unit norm). Deviation: LogIX's default is a dot product with the
  inverse on one side; the cosine keeps it comparable to the cosine teacher.
* ``datainf`` — DataInf (Kwon et al. 2024, ``ykwon0407/DataInf:src/influence.py``): per LoRA
  tensor l, λ_l = 0.1 · mean_i mean_j g_il[j]², and
  score(p, q) = Σ_l (1/(nλ_l)) [ n ⟨g_ql, g_pl⟩ − Σ_i ⟨g_ql, g_il⟩⟨g_il, g_pl⟩ / (λ_l + |g_il|²) ]
  over the n pool examples. Deviations: the query gradient g_q replaces the mean validation gradient
  (one column per query; the mean of the columns is DataInf's own score), and the sign is flipped
  (DataInf reports the change in validation loss, negative = helpful) so that higher = more
  influential like every other method here. Exact LoRA gradients (no projection) are used.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from ..data.records import Record, record_to_text

from .features import DecoderFeatures

__all__ = [
    "Method",
    "TfidfMethod",
    "BM25Method",
    "EncoderMethod",
    "LengthMethod",
    "RepSimMethod",
    "RDSPlusMethod",
    "GradSimMethod",
    "LoGraMethod",
    "DataInfMethod",
    "RandomMethod",
    "cosine_matrix",
    "bm25_scores",
    "datainf_scores",
    "make_method",
    "METHOD_KINDS",
]


def cosine_matrix(a: np.ndarray, b: np.ndarray, block: int = 256) -> np.ndarray:
    """(len(a) × len(b)) cosine similarities in float32 (zero rows give 0). ``a`` is read ``block`` rows at a
    time, so a float16 (or memory-mapped) matrix of exact gradients is never copied whole to float32."""
    def unit(x):
        x = np.asarray(x, dtype=np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)

    b = unit(b)
    out = np.empty((len(a), len(b)), np.float32)
    for s in range(0, len(a), block):
        out[s:s + block] = unit(a[s:s + block]) @ b.T
    return out


# ============================================================================ base
class Method:
    """A scorer: ``scores(pool, queries)`` → float32 (n_pool × n_query), higher = more influential."""

    name: str = "method"

    def __init__(self) -> None:
        self.cost: dict = {}

    def scores(self, pool: Sequence[Record], queries: Sequence[Record]) -> np.ndarray:
        t0 = time.perf_counter()
        out = self._scores(list(pool), list(queries))
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (len(pool), len(queries)):
            raise RuntimeError(f"{self.name}: score matrix {out.shape}, expected {(len(pool), len(queries))}")
        self.cost.setdefault("seconds_total", 0.0)
        self.cost["seconds_total"] = time.perf_counter() - t0
        return out

    def _scores(self, pool, queries) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "class": type(self).__name__}


class RandomMethod(Method):
    """Uniform random scores (seeded): the chance line."""

    name = "random"

    def __init__(self, seed: int = 0):
        super().__init__()
        self.seed = seed

    def _scores(self, pool, queries):
        rng = np.random.default_rng(self.seed)
        self.cost.update(bytes_per_example=0)
        return rng.random((len(pool), len(queries)), dtype=np.float32)


class LengthMethod(Method):
    """Shorter pool response ⇒ more influence: −len(response) in characters, the same for every query."""

    name = "length"

    def _scores(self, pool, queries):
        from ..data.heuristics import length_scores

        t0 = time.perf_counter()
        s = length_scores(pool, len(queries))
        self.cost.update(seconds_pool=time.perf_counter() - t0, seconds_query=0.0, bytes_per_example=4)
        return s


class TfidfMethod(Method):
    """Cosine of TF-IDF vectors (sklearn ``TfidfVectorizer``, fit on pool ∪ queries)."""

    name = "tfidf"

    def _scores(self, pool, queries):
        from sklearn.feature_extraction.text import TfidfVectorizer

        t0 = time.perf_counter()
        vec = TfidfVectorizer(sublinear_tf=True)
        X = vec.fit_transform([record_to_text(r) for r in pool] + [record_to_text(r) for r in queries])
        P, Q = X[: len(pool)], X[len(pool):]
        t1 = time.perf_counter()
        s = (P @ Q.T).toarray()  # rows are L2-normalised by the vectorizer: this is the cosine
        nnz = P.nnz / max(len(pool), 1)
        self.cost.update(seconds_pool=(t1 - t0) * len(pool) / (len(pool) + len(queries)),
                         seconds_query=(t1 - t0) * len(queries) / (len(pool) + len(queries)),
                         seconds_score=time.perf_counter() - t1, bytes_per_example=float(nnz * 8))
        return s


def bm25_scores(pool_counts, query_counts, k1: float = 1.5, b: float = 0.75) -> np.ndarray:
    """Okapi BM25 (pool documents × query term counts), idf = ln(1 + (N − n_t + 0.5)/(n_t + 0.5)).

    ``pool_counts``: (n_pool × V) term counts (scipy sparse or dense); ``query_counts``: (n_query × V).
    score(p, q) = Σ_t c_q(t) · idf(t) · f(t,p)(k1 + 1) / (f(t,p) + k1(1 − b + b·|p|/avgdl))."""
    import scipy.sparse as sp

    F = sp.csr_matrix(pool_counts, dtype=np.float64)
    Qc = sp.csr_matrix(query_counts, dtype=np.float64)
    n = F.shape[0]
    dl = np.asarray(F.sum(axis=1)).ravel()
    avgdl = dl.mean() if n else 1.0
    df = np.asarray((F > 0).sum(axis=0)).ravel()
    idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
    F = F.tocoo()
    denom = F.data + k1 * (1 - b + b * dl[F.row] / max(avgdl, 1e-12))
    W = sp.csr_matrix((idf[F.col] * F.data * (k1 + 1) / denom, (F.row, F.col)), shape=F.shape)
    return np.asarray((W @ Qc.T).toarray(), dtype=np.float64)


class BM25Method(Method):
    """Okapi BM25 with sklearn tokenisation; see :func:`bm25_scores`."""

    name = "bm25"

    def __init__(self, k1: float = 1.5, b: float = 0.75):
        super().__init__()
        self.k1, self.b = k1, b

    def _scores(self, pool, queries):
        from sklearn.feature_extraction.text import CountVectorizer

        t0 = time.perf_counter()
        vec = CountVectorizer()
        Pc = vec.fit_transform([record_to_text(r) for r in pool])
        Qc = vec.transform([record_to_text(r) for r in queries])
        t1 = time.perf_counter()
        s = bm25_scores(Pc, Qc, self.k1, self.b)
        self.cost.update(seconds_pool=t1 - t0, seconds_query=0.0, seconds_score=time.perf_counter() - t1,
                         bytes_per_example=float(Pc.nnz / max(len(pool), 1) * 8))
        return s


class EncoderMethod(Method):
    """Cosine of :class:`InfluenceEncoder` embeddings (``semantic``: untrained; ``influcoder``: distilled)."""

    def __init__(self, encoder: str = "minilm-l6", name: str = "semantic", batch_size: int = 32,
                 device: str = "cpu", precision: str = "float32", prior: bool = True):
        super().__init__()
        self.encoder_name, self.name, self.batch_size = encoder, name, batch_size
        self.device, self.precision = device, precision
        self.prior = prior  # False: the bare embeddings' cosine, without the encoder's pool prior (a diagnostic)
        self._enc = None

    def encoder(self):
        if self._enc is None:
            from ..student.encoder import InfluenceEncoder

            t0 = time.perf_counter()
            self._enc = InfluenceEncoder.from_pretrained(self.encoder_name, device=self.device)
            self._enc.precision = self.precision
            self.cost["seconds_load"] = time.perf_counter() - t0
        return self._enc

    def embed(self, records, side: str) -> np.ndarray:
        with torch.no_grad():
            return self.encoder().encode(list(records), batch_size=self.batch_size, side=side)

    def _scores(self, pool, queries):
        enc = self.encoder()
        t0 = time.perf_counter()
        P = self.embed(pool, "pool")
        t1 = time.perf_counter()
        Q = self.embed(queries, "query")
        t2 = time.perf_counter()
        if not self.prior:  # the score vectors' first embedding_dim columns are the embedding, scaled
            P, Q = P[:, :enc.embedding_dim], Q[:, :enc.embedding_dim]
        s = cosine_matrix(P, Q)
        self.cost.update(seconds_pool=t1 - t0, seconds_query=t2 - t1, seconds_score=time.perf_counter() - t2,
                         bytes_per_example=float(P.shape[1] * 4))
        return s

    def describe(self) -> dict:
        return {**super().describe(), "encoder": self.encoder_name, "device": self.device, "precision": self.precision,
                **({} if self.prior else {"prior": False})}


# ============================================================================ decoder methods
class _DecoderMethod(Method):
    def __init__(self, features: DecoderFeatures):
        super().__init__()
        self.features = features

    def _time(self, fn, records):
        t0 = time.perf_counter()
        out = fn(records)
        return out, time.perf_counter() - t0

    def describe(self) -> dict:
        d = {**super().describe(), "model": self.features.model_name, "max_length": self.features.max_length,
             "device": getattr(self.features, "device", "cpu"), "precision": getattr(self.features, "precision", "float32")}
        if self.features.adapters is not None and hasattr(self, "lora_seed"):
            d["adapter"] = self.features.adapter(self.rank, self.lora_seed)
        return d


class RepSimMethod(_DecoderMethod):
    """Rep-Sim: cosine of the token-mean last hidden state."""

    name = "repsim"
    part = "mean"

    def _scores(self, pool, queries):
        P, tp = self._time(self.features.hidden, pool)
        Q, tq = self._time(self.features.hidden, queries)
        t0 = time.perf_counter()
        s = cosine_matrix(P[self.part], Q[self.part])
        self.cost.update(seconds_pool=tp, seconds_query=tq, seconds_score=time.perf_counter() - t0,
                         seconds_per_example_featurize=self.features.cache.seconds_per_example(self.features.key("hidden")),
                         bytes_per_example=float(P[self.part].shape[1] * 4))
        return s


class RDSPlusMethod(RepSimMethod):
    """RDS+: cosine of the position-weighted mean last hidden state (weights ∝ position)."""

    name = "rds"
    part = "rds"


class GradSimMethod(_DecoderMethod):
    """Grad-Sim / LESS: cosine of Rademacher-projected (k = ``proj_dim``) LoRA rank-``rank`` gradients;
    ``proj_dim`` None: cosine of the exact gradients (Grad-Sim unprojected, the exact teacher's score)."""

    def __init__(self, features: DecoderFeatures, rank: int = 8, proj_dim: int | None = 8192, seed: int = 0,
                 lora_seed: int = 0, logra_k: int | None = None, name: str | None = None):
        super().__init__(features)
        self.rank, self.proj_dim, self.seed, self.lora_seed = rank, proj_dim, seed, lora_seed
        self.logra_k = logra_k  # share the pass with LoGra when both are evaluated
        self.name = name or f"gradsim_r{rank}"

    def project(self, grads: dict) -> np.ndarray:
        """Rademacher projection of the exact gradients (rows rescaled by their norms first). Every row at once,
        fed a column block at a time: the dense matrix is generated once (not once per batch of rows) and the
        gradients are never copied whole to float32."""
        from ..teacher.projection import BLOCK, ProjectionConfig, make_projector

        unit, norm = grads["unit"], torch.from_numpy(np.asarray(grads["norm"])).float()[:, None]
        d = unit.shape[1]
        proj = make_projector(d, ProjectionConfig("rademacher", self.proj_dim, self.seed))
        pieces = (torch.from_numpy(np.asarray(unit[:, c:c + BLOCK], dtype=np.float32)) * norm for c in range(0, d, BLOCK))
        return proj.project_pieces(pieces).numpy()

    def _proj_key(self) -> str:
        return self.features.key("rademacher", rank=self.rank, lora_seed=self.lora_seed, logra_k=self.logra_k,
                                 dim=self.proj_dim, seed=self.seed, **self.features.adapter_key(self.rank, self.lora_seed))

    def prepare(self, records: Sequence[Record]) -> None:
        """Project every missing record in one call (the dense matrix is generated once per call)."""
        f = self.features
        f.cache.get(self._proj_key(), list(records),
                    lambda rs: {"proj": self.project(f.lora(rs, self.rank, self.lora_seed, self.logra_k))}, ("proj",))

    def _scores(self, pool, queries):
        f = self.features
        if not self.proj_dim:
            gp, tp = self._time(lambda r: f.lora(r, self.rank, self.lora_seed, self.logra_k), pool)
            gq, tq = self._time(lambda r: f.lora(r, self.rank, self.lora_seed, self.logra_k), queries)
            t1 = time.perf_counter()
            s = cosine_matrix(gp["unit"], gq["unit"])  # a block of rows at a time: no float32 copy of the pool
            self.cost.update(seconds_pool=tp, seconds_query=tq, seconds_score=time.perf_counter() - t1,
                             gradient_dim=int(gp["unit"].shape[1]), seconds_per_example_featurize=gp["seconds_per_example"],
                             bytes_per_example=float(gp["unit"].shape[1] * 4))
            return s
        # projected: only the projections are loaded (the gradients of rows not yet projected are computed or
        # read inside prepare, and dropped once projected)
        t0 = time.perf_counter()
        self.prepare(list(pool) + list(queries))
        pk = self._proj_key()
        P = f.cache.get(pk, list(pool), None, ("proj",))["proj"]
        Q = f.cache.get(pk, list(queries), None, ("proj",))["proj"]
        t1 = time.perf_counter()
        s = cosine_matrix(P, Q)
        g1 = f.lora(list(pool[:1]), self.rank, self.lora_seed, self.logra_k)  # cached: dimension and featurisation rate
        self.cost.update(seconds_prepare=t1 - t0,
                         seconds_score=time.perf_counter() - t1, gradient_dim=int(g1["unit"].shape[1]),
                         seconds_per_example_featurize=g1["seconds_per_example"],
                         seconds_per_example_project=f.cache.seconds_per_example(pk),
                         bytes_per_example=float(self.proj_dim * 4))
        return s

    def describe(self) -> dict:
        return {**super().describe(), "rank": self.rank, "proj_dim": self.proj_dim,
                "projection": "rademacher" if self.proj_dim else "none"}


def logra_preconditioner(pool_feats: np.ndarray, k: int, damping: float = 0.1) -> list[np.ndarray]:
    """Per-module (F + λI)^(−1/2) with F = (1/n) Σ g gᵀ of the pool's projected module gradients."""
    n, D = pool_feats.shape
    m = k * k
    out = []
    for s in range(0, D, m):
        G = torch.from_numpy(np.ascontiguousarray(pool_feats[:, s:s + m], dtype=np.float64))
        F = G.T @ G / n
        lam = damping * float(torch.trace(F)) / m
        w, V = torch.linalg.eigh(F + lam * torch.eye(m, dtype=torch.float64))
        out.append(((V * w.clamp_min(1e-300).rsqrt()) @ V.T).numpy())
    return out


def apply_blocks(feats: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    m = blocks[0].shape[0]
    return np.concatenate([feats[:, i * m:(i + 1) * m].astype(np.float64) @ B for i, B in enumerate(blocks)], 1)


class LoGraMethod(_DecoderMethod):
    """LoGra: per-module two-sided projections of the gradient, cosine; optionally FIM-preconditioned."""

    def __init__(self, features: DecoderFeatures, k: int = 16, fim: bool = False, seed: int = 0,
                 rank: int = 8, lora_seed: int = 0, share_full: bool = False, damping: float = 0.1,
                 name: str | None = None):
        super().__init__(features)
        self.k, self.fim, self.seed, self.rank, self.lora_seed = k, fim, seed, rank, lora_seed
        self.share_full, self.damping = share_full, damping
        self.name = name or ("logra_fim" if fim else "logra")

    def _feats(self, records):
        return self.features.lora(records, self.rank, self.lora_seed, logra_k=self.k, logra_seed=self.seed,
                                  want_full=self.share_full)

    def _scores(self, pool, queries):
        gp, tp = self._time(self._feats, pool)
        gq, tq = self._time(self._feats, queries)
        t0 = time.perf_counter()
        P, Q = gp["logra"], gq["logra"]
        if self.fim:
            blocks = logra_preconditioner(P, self.k, self.damping)
            P, Q = apply_blocks(P, blocks), apply_blocks(Q, blocks)
        s = cosine_matrix(P, Q)
        self.cost.update(seconds_pool=tp, seconds_query=tq, seconds_score=time.perf_counter() - t0,
                         seconds_per_example_featurize=gp["seconds_per_example"],
                         bytes_per_example=float(gp["logra"].shape[1] * 4))
        return s

    def describe(self) -> dict:
        return {**super().describe(), "k": self.k, "fim": self.fim, "damping": self.damping if self.fim else None}


def datainf_scores(pool_grads: Sequence[np.ndarray], query_grads: Sequence[np.ndarray],
                   lambda_param: float = 10.0) -> np.ndarray:
    """DataInf on per-tensor gradients: lists (one entry per LoRA tensor l) of (n_pool, d_l) and (n_query, d_l).

    score(p, q) = Σ_l (1/(nλ_l)) [ n⟨g_q,g_p⟩ − Σ_i ⟨g_q,g_i⟩⟨g_i,g_p⟩/(λ_l + |g_i|²) ],
    λ_l = mean_i mean_j g_il[j]² / lambda_param. Returns (n_pool × n_query) float64. The lists may be iterables
    that make each tensor's rows when asked (only one tensor's gradients are then held at a time)."""
    out = None
    for gp, gq in zip(pool_grads, query_grads):  # lists, or iterables made one tensor at a time
        P = torch.as_tensor(np.asarray(gp), dtype=torch.float64)
        Qg = torch.as_tensor(np.asarray(gq), dtype=torch.float64)
        n = P.shape[0]
        if out is None:
            out = torch.zeros(n, Qg.shape[0], dtype=torch.float64)
        sq = (P * P).sum(1)
        lam = float(sq.mean()) / P.shape[1] / lambda_param
        Gpp = P @ P.T
        Gpq = P @ Qg.T
        c = 1.0 / (lam + sq)
        out += (n * Gpq - Gpp @ (c[:, None] * Gpq)) / (n * lam)
    return out.numpy()


class DataInfMethod(_DecoderMethod):
    """DataInf (closed-form LoRA influence) on exact rank-``rank`` LoRA gradients; see :func:`datainf_scores`."""

    def __init__(self, features: DecoderFeatures, rank: int = 8, lora_seed: int = 0, lambda_param: float = 10.0,
                 logra_k: int | None = None, name: str = "datainf"):
        super().__init__(features)
        self.rank, self.lora_seed, self.lambda_param, self.logra_k = rank, lora_seed, lambda_param, logra_k
        self.name = name

    def _split(self, g: dict, layout: list[dict]):
        """The gradient of each LoRA tensor (rows rescaled by their norms), made one tensor at a time in float32,
        so the whole gradient matrix is never copied."""
        sizes = [int(np.prod(item["shape"])) for item in layout]
        unit, norm = g["unit"], g["norm"].astype(np.float32)[:, None]
        if sum(sizes) != unit.shape[1]:
            raise RuntimeError("DataInf: layout does not match the gradient dimension")
        o = 0
        for d in sizes:
            yield np.asarray(unit[:, o:o + d], dtype=np.float32) * norm
            o += d

    def _scores(self, pool, queries):
        f = self.features
        gp, tp = self._time(lambda r: f.lora(r, self.rank, self.lora_seed, self.logra_k), pool)
        gq, tq = self._time(lambda r: f.lora(r, self.rank, self.lora_seed, self.logra_k), queries)
        t0 = time.perf_counter()
        layout = f.lora_layout(self.rank, self.lora_seed)
        s = datainf_scores(self._split(gp, layout), self._split(gq, layout), self.lambda_param)
        self.cost.update(seconds_pool=tp, seconds_query=tq, seconds_score=time.perf_counter() - t0,
                         seconds_per_example_featurize=gp["seconds_per_example"],
                         bytes_per_example=float(gp["unit"].shape[1] * 4), gradient_dim=int(gp["unit"].shape[1]))
        return s

    def describe(self) -> dict:
        return {**super().describe(), "rank": self.rank, "lambda_param": self.lambda_param}


# ============================================================================ factory
METHOD_KINDS = ("random", "length", "tfidf", "bm25", "semantic", "influcoder", "repsim", "rds", "gradsim",
                "logra", "datainf")


def make_method(spec: dict, features: DecoderFeatures | None = None, *, device: str = "cpu",
                precision: str = "float32") -> Method:
    """Build a method from a config entry ``{"kind": ..., "name": ..., <options>}``. Decoder methods run where
    ``features`` runs; encoder methods on ``device`` in ``precision`` (both resolved)."""
    spec = dict(spec)
    kind = spec.pop("kind")
    name = spec.pop("name", None)
    if kind not in METHOD_KINDS:
        raise ValueError(f"unknown method kind '{kind}' (known: {', '.join(METHOD_KINDS)})")
    if kind == "random":
        m = RandomMethod(**spec)
    elif kind == "length":
        m = LengthMethod(**spec)
    elif kind == "tfidf":
        m = TfidfMethod(**spec)
    elif kind == "bm25":
        m = BM25Method(**spec)
    elif kind in ("semantic", "influcoder"):
        m = EncoderMethod(name=name or kind, **{"device": device, "precision": precision, **spec})
    else:
        if features is None:
            raise ValueError(f"method '{kind}' needs decoder features")
        cls = {"repsim": RepSimMethod, "rds": RDSPlusMethod, "gradsim": GradSimMethod, "logra": LoGraMethod,
               "datainf": DataInfMethod}[kind]
        m = cls(features, **spec)
    if name:
        m.name = name
    return m
