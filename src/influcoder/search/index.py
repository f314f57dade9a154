"""Stage 4b: a FAISS index over an embedding store (inner product = cosine on unit vectors).

``build_index(IndexConfig(...))`` is what ``influcoder index`` runs. Kinds:

* ``flat`` (default): exact inner-product search (``IndexFlatIP``); results equal brute-force cosine.
* ``ivf-flat``: inverted lists over k-means cells (``IndexIVFFlat``), ``nprobe`` cells visited per query.
* ``ivf-pq``: inverted lists with product-quantised residuals (``IndexIVFPQ``), far less memory.
* ``hnsw``: graph search (``IndexHNSWFlat``), ``ef_search`` candidates per query.

An index folder holds ``index.faiss``, ``ids.json`` ({"ids", "rows"} in index order) and ``index_meta.json``
(the :class:`IndexConfig`, encoder name and fingerprint, the embedding store's data fingerprint, field
mapping, build time and, with ``check``, the recall report). Files are written to temporary names and
renamed; ``index_meta.json`` is written last, so a folder without it is not an index.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .embed import EmbeddingStore, normalise, open_embeddings
from ..core.fileio import atomic_write_text
from ..core.errors import UserError

__all__ = [
    "IndexConfig",
    "FaissIndex",
    "IndexError_",
    "build_index",
    "build_faiss",
    "open_index",
    "exact_search",
    "recall_at_k",
    "check_recall",
    "KINDS",
]

KINDS = ("flat", "ivf-flat", "ivf-pq", "hnsw")
FORMAT = "influcoder-faiss-index/1"


class IndexError_(UserError):
    """An index folder that is missing, corrupted, or made with another encoder than requested."""


@dataclass
class IndexConfig:
    """How to build a FAISS index over an embedding store (shared by ``influcoder index`` and the API)."""

    embeddings: str
    """Embedding store folder written by ``influcoder embed``."""
    out: str
    """Index folder to write."""
    kind: str = "flat"
    """flat (exact), ivf-flat, ivf-pq or hnsw."""
    nlist: int | None = None
    """IVF cells (default: about 4·√n, between 1 and n/39)."""
    nprobe: int = 32
    """IVF cells visited per query (stored with the index; overridable at search time)."""
    pq_m: int | None = None
    """IVF-PQ sub-quantisers (default: dim/8 when it divides dim); must divide the dimension."""
    pq_bits: int = 8
    """Bits per IVF-PQ sub-quantiser code."""
    hnsw_m: int = 32
    """HNSW neighbours per node."""
    ef_construction: int = 80
    """HNSW candidate list size while building."""
    ef_search: int = 96
    """HNSW candidate list size per query (stored with the index; overridable at search time)."""
    train_size: int = 100_000
    """Vectors sampled (without replacement) to train IVF centroids / PQ codebooks."""
    seed: int = 0
    """Seed of the training sample, k-means and the check sample."""
    check: bool = False
    """After building, report recall@k of this index against exact search on a sample of stored vectors."""
    check_queries: int = 1000
    """Stored vectors used as queries by the check (their own row is excluded from both result lists)."""
    check_k: int = 10
    """k of the recall@k check."""
    add_block: int = 65536
    """Vectors added per block (bounds the float32 copy held in memory while adding)."""
    overwrite: bool = False
    """Replace an existing index folder at ``out``."""

    def __post_init__(self):
        errs = []
        if self.kind not in KINDS:
            errs.append(f"kind must be one of {', '.join(KINDS)} (got '{self.kind}')")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search", "train_size", "check_queries", "check_k", "add_block"):
            if getattr(self, name) < 1:
                errs.append(f"{name} must be ≥ 1")
        if self.nlist is not None and self.nlist < 1:
            errs.append("nlist must be ≥ 1")
        if not 1 <= self.pq_bits <= 16:
            errs.append("pq_bits must be between 1 and 16")
        if errs:
            raise UserError("; ".join(errs))

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------ core (arrays)


def default_nlist(n: int) -> int:
    return int(max(1, min(int(4 * math.sqrt(n)), n // 39 if n >= 39 else 1)))


def _make_empty(cfg: IndexConfig, dim: int, n: int):
    import faiss

    if cfg.kind == "flat":
        return faiss.IndexFlatIP(dim)
    if cfg.kind == "hnsw":
        idx = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = cfg.ef_construction
        idx.hnsw.efSearch = cfg.ef_search
        return idx
    nlist = cfg.nlist or default_nlist(n)
    quantizer = faiss.IndexFlatIP(dim)
    if cfg.kind == "ivf-flat":
        idx = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        m = cfg.pq_m or (dim // 8 if dim % 8 == 0 else None)
        if not m or dim % m:
            raise UserError(f"--pq-m must divide the embedding dimension {dim} (got {cfg.pq_m})")
        idx = faiss.IndexIVFPQ(quantizer, dim, nlist, m, cfg.pq_bits, faiss.METRIC_INNER_PRODUCT)
    idx.cp.seed = cfg.seed
    idx.nprobe = min(cfg.nprobe, nlist)
    idx.referenced_objects = [quantizer]  # keep the quantizer alive as long as the index
    return idx


def set_search_params(index, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set the query-time accuracy knobs of an IVF (``nprobe``) or HNSW (``efSearch``) index."""
    import faiss

    if nprobe is not None:
        try:
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = min(int(nprobe), ivf.nlist)
        except RuntimeError:
            pass
    if ef_search is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(ef_search)


def build_faiss(vectors_or_blocks, cfg: IndexConfig, *, n: int | None = None, dim: int | None = None, sample=None):
    """Build a FAISS index from an (n × dim) float32 array of unit vectors, or from an iterable of
    ``(start, block)`` pairs with ``n``, ``dim`` and a training ``sample`` given. Rows get ids 0..n-1."""
    if isinstance(vectors_or_blocks, np.ndarray):
        x = np.ascontiguousarray(vectors_or_blocks, dtype=np.float32)
        n, dim = x.shape
        blocks = ((a, x[a : a + cfg.add_block]) for a in range(0, n, cfg.add_block))
        if sample is None and cfg.kind in ("ivf-flat", "ivf-pq"):
            rng = np.random.default_rng(cfg.seed)
            take = np.sort(rng.choice(n, size=min(n, cfg.train_size), replace=False))
            sample = x[take]
    else:
        blocks = vectors_or_blocks
        assert n is not None and dim is not None
    index = _make_empty(cfg, dim, n)
    if not index.is_trained:
        if sample is None or len(sample) < 1:
            raise UserError("an IVF index needs a training sample")
        nlist = index.nlist
        if len(sample) < nlist:
            raise UserError(f"{len(sample)} training vectors for {nlist} IVF cells; lower --nlist or raise --train-size")
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    added = 0
    for start, block in blocks:
        if start != added:
            raise RuntimeError("blocks must be contiguous")
        index.add(np.ascontiguousarray(block, dtype=np.float32))
        added += block.shape[0]
    if added != n:
        raise RuntimeError(f"added {added} vectors, expected {n}")
    return index


def exact_search(queries: np.ndarray, vectors_or_blocks, k: int, *, block_rows: int = 65536):
    """Brute-force top-k inner product (numpy), ties broken by lower row: returns (scores, rows)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((q.shape[0], 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((q.shape[0], 0), dtype=np.int64)
    if isinstance(vectors_or_blocks, np.ndarray):
        x = vectors_or_blocks
        vectors_or_blocks = ((a, x[a : a + block_rows]) for a in range(0, x.shape[0], block_rows))
    for start, block in vectors_or_blocks:
        s = q @ np.asarray(block, dtype=np.float32).T
        ids = np.broadcast_to(np.arange(start, start + block.shape[0], dtype=np.int64), s.shape)
        all_s = np.concatenate([best_s, s], 1)
        all_i = np.concatenate([best_i, ids], 1)
        order = np.lexsort((all_i, -all_s), axis=1)[:, :k]
        best_s = np.take_along_axis(all_s, order, 1)
        best_i = np.take_along_axis(all_i, order, 1)
    return best_s, best_i


def recall_at_k(approx_rows: np.ndarray, exact_rows: np.ndarray, k: int) -> float:
    """Mean over queries of |approximate top-k ∩ exact top-k| / k."""
    hits = [len(set(a[:k].tolist()) & set(e[:k].tolist())) for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits) / k)


def check_recall(index, vectors_or_blocks, queries: np.ndarray, k: int, *, exclude: np.ndarray | None = None,
                 lookup=None, tie_tol: float = 1e-5) -> dict:
    """recall@k of ``index`` against exact search for ``queries``; ``exclude[i]`` (a row id) is removed
    from both result lists of query i (used when the queries are stored vectors themselves).

    With ``lookup(rows) -> vectors``, the check is tie-aware: an approximate result whose true score is
    within ``tie_tol`` of the exact k-th score counts as a hit even if exact search returned a tied row."""
    extra = 1 if exclude is not None else 0
    t0 = time.perf_counter()
    _, approx = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + extra)
    t_index = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, exact = exact_search(queries, vectors_or_blocks, k + extra)
    t_exact = time.perf_counter() - t0

    def drop(rows):
        if exclude is None:
            return rows[:, :k]
        return np.stack([np.array([r for r in row if r != ex][:k] + [-1] * max(0, k - len([r for r in row if r != ex])))
                         for row, ex in zip(rows, exclude)])

    a, e = drop(approx), drop(exact)
    if lookup is None:
        recall = recall_at_k(a, e, k)
    else:
        hits = []
        for qi in range(len(queries)):
            ev, av = lookup(e[qi][e[qi] >= 0]), lookup(a[qi][a[qi] >= 0])
            kth = float(np.min(ev @ queries[qi])) if len(ev) else np.inf
            exact_set = set(e[qi].tolist())
            true = av @ queries[qi] if len(av) else np.zeros(0)
            hits.append(sum(1 for r, t in zip(a[qi][a[qi] >= 0], true) if r in exact_set or t >= kth - tie_tol))
        recall = float(np.mean(hits) / k)
    return {
        "k": k,
        "queries": int(len(queries)),
        "recall": recall,
        "tie_aware": lookup is not None,
        "index_ms_per_query_batched": 1000 * t_index / max(1, len(queries)),
        "exact_ms_per_query_batched": 1000 * t_exact / max(1, len(queries)),
        "self_match_excluded": exclude is not None,
    }


# ---------------------------------------------------------------------------------------- folders


@dataclass
class FaissIndex:
    """An index folder opened for searching."""

    root: Path
    index: Any
    meta: dict
    ids: list[str]
    rows: np.ndarray
    """Source-file row of each indexed example (index order)."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def fingerprint(self) -> str:
        return self.meta["encoder"]["fingerprint"]

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None, ef_search: int | None = None):
        """Top-``k`` (scores, positions) for unit-norm float32 queries; positions index ``ids``/``rows``.

        Ties in score are ordered by position, so results do not depend on FAISS's internal order."""
        set_search_params(self.index, nprobe=nprobe or self.meta["config"]["nprobe"],
                          ef_search=ef_search or self.meta["config"]["ef_search"])
        k_eff = min(int(k), len(self))
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.meta["dim"]:
            raise IndexError_(f"query embeddings have shape {q.shape}, the index holds {self.meta['dim']}-d vectors")
        scores, pos = self.index.search(q, k_eff)
        order = np.lexsort((np.where(pos < 0, np.iinfo(np.int64).max, pos), -scores), axis=1)
        return np.take_along_axis(scores, order, 1), np.take_along_axis(pos, order, 1)

    def require_encoder(self, fingerprint: str, what: str = "the encoder") -> None:
        """Refuse embeddings from another encoder than the one the index was built with."""
        if fingerprint != self.fingerprint:
            raise IndexError_(
                f"{what} (fingerprint {fingerprint[:12]}) is not the encoder the index {self.root} was built with "
                f"('{self.meta['encoder']['name']}', fingerprint {self.fingerprint[:12]}); embeddings from different "
                "encoders are not comparable — re-embed and re-index with one encoder"
            )


def build_index(cfg: IndexConfig, *, progress: bool = True) -> Path:
    """Build the index described by ``cfg`` from its embedding store; returns the index folder."""
    import faiss

    store: EmbeddingStore = open_embeddings(cfg.embeddings)
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise UserError(f"{out} already exists; use another --out or --overwrite")
        if not (out / "index_meta.json").exists() and not (out / "index.faiss.tmp").exists():
            raise UserError(f"{out} exists and is not an index folder; refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    n, dim = len(store), store.dim
    t0 = time.perf_counter()
    sample = None
    if cfg.kind in ("ivf-flat", "ivf-pq"):
        rng = np.random.default_rng(cfg.seed)
        take = np.sort(rng.choice(n, size=min(n, cfg.train_size), replace=False))
        sample = gather_rows(store, take)
    index = build_faiss(store.iter_blocks(cfg.add_block), cfg, n=n, dim=dim, sample=sample)
    build_s = time.perf_counter() - t0
    check = None
    if cfg.check:
        rng = np.random.default_rng(cfg.seed + 1)
        qrows = np.sort(rng.choice(n, size=min(n, cfg.check_queries), replace=False))
        check = check_recall(index, store.iter_blocks(cfg.add_block), gather_rows(store, qrows), cfg.check_k, exclude=qrows,
                             lookup=lambda rows: _gather_any(store, rows))
        check["kind"] = cfg.kind
        check["nprobe"] = cfg.nprobe if cfg.kind.startswith("ivf") else None
        check["ef_search"] = cfg.ef_search if cfg.kind == "hnsw" else None
    tmp = out / "index.faiss.tmp"
    faiss.write_index(index, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out / "index.faiss")
    atomic_write_text(out / "ids.json", json.dumps({"ids": store.ids, "rows": store.rows.tolist()}))
    m = store.manifest
    meta = {
        "format": FORMAT,
        "influcoder_version": __version__,
        "config": cfg.to_dict(),
        "kind": cfg.kind,
        "n": n,
        "dim": dim,
        "nlist": getattr(index, "nlist", None),
        "encoder": {k: m["encoder"][k] for k in ("name", "path", "fingerprint")},
        "encoder_metadata": m.get("encoder_metadata", {}),
        "embeddings": {"path": str(Path(cfg.embeddings).resolve()), "dtype": m["dtype"], "side": m["side"]},
        "data": m["data"],
        "fields": m["fields"],
        "build_seconds": round(build_s, 3),
        "index_bytes": (out / "index.faiss").stat().st_size,
        "check": check,
    }
    atomic_write_text(out / "index_meta.json", json.dumps(meta, indent=1))
    return out


def gather_rows(store: EmbeddingStore, rows: np.ndarray) -> np.ndarray:
    """Normalised float32 copies of the given (sorted) rows of a store, reading shard by shard."""
    out = np.empty((len(rows), store.dim), dtype=np.float32)
    start = 0
    j = 0
    for sh in store.shards:
        stop = start + sh.shape[0]
        k = int(np.searchsorted(rows, stop))
        if k > j:
            out[j:k] = normalise(np.asarray(sh[rows[j:k] - start], dtype=np.float32))
            j = k
        start = stop
    return out


def _gather_any(store: EmbeddingStore, rows) -> np.ndarray:
    """Like :func:`gather_rows` for rows in any order (distinct)."""
    rows = np.asarray(rows, dtype=np.int64)
    return gather_rows(store, np.sort(rows))[np.argsort(np.argsort(rows))]


def open_index(root: str | Path) -> FaissIndex:
    """Open an index folder written by :func:`build_index`."""
    import faiss

    root = Path(root)
    mp = root / "index_meta.json"
    if not mp.exists() or not (root / "index.faiss").exists():
        raise IndexError_(f"{root}: not an index folder (needs index.faiss and index_meta.json); build one with `influcoder index`")
    try:
        meta = json.loads(mp.read_text())
        ids = json.loads((root / "ids.json").read_text())
    except (json.JSONDecodeError, FileNotFoundError) as e:
        raise IndexError_(f"{root}: corrupted index metadata ({e})") from None
    if meta.get("format") != FORMAT:
        raise IndexError_(f"{root}: unknown index format {meta.get('format')!r}")
    index = faiss.read_index(str(root / "index.faiss"))
    if index.ntotal != meta["n"] or len(ids["ids"]) != meta["n"]:
        raise IndexError_(f"{root}: index holds {index.ntotal} vectors and {len(ids['ids'])} ids, metadata says {meta['n']}")
    return FaissIndex(root, index, meta, ids["ids"], np.asarray(ids["rows"], dtype=np.int64))
