"""Attribution: for each query, the ``top_k`` most influential pool examples of a FAISS index (:func:`attribute`,
:func:`run_attribute`) with score (cosine of influence embeddings), id, source row and text; written as JSONL (one
object per (query, rank)) or CSV, and returned as the same list of dicts. Each query's OOD flag comes from
:mod:`influcoder.search.ood`."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .embed import encode_sorted, normalise, open_embeddings
from ..student.loading import encoder_fingerprint, load_encoder
from ..core.errors import UserError
from ..core.fileio import atomic_write_text
from .index import FaissIndex, open_index
from ..data.records import DataSpec, FieldSpec, Record, iter_records, record_to_text
from .items import item_text, load_items
from .ood import OODConfig, build_references, ood_report

__all__ = ["AttributeConfig", "attribute", "run_attribute", "records_for_rows", "query_embeddings"]


# -------------------------------------------------------------------------------------------- attribute


@dataclass
class AttributeConfig:
    """Top-k attribution of queries against a pool index (shared by ``influcoder attribute`` and the API)."""

    encoder: str
    """Encoder folder or ``minilm-l6``: must be the encoder the index was built with."""
    index: str
    """Index folder written by ``influcoder index``."""
    queries: DataSpec = field(default_factory=DataSpec)
    """Queries: a records file and how to read it, or an embedding store folder made with the same encoder
    (side query); empty path: only query_texts."""
    query_texts: list[str] = field(default_factory=list)
    """Extra queries given as text (ids text:0, text:1, ...)."""
    top_k: int = 10
    """Pool examples returned per query."""
    out: str | None = None
    """Output file (JSONL; CSV with ``csv``); None: only return the records."""
    csv: bool = False
    """Write CSV instead of JSONL."""
    data: str | None = None
    """Pool data file to take texts from (default: the file the index's embeddings were made from)."""
    with_text: bool = True
    """Include pool and query texts in the output."""
    nprobe: int | None = None
    """Override the IVF nprobe stored with the index."""
    ef_search: int | None = None
    """Override the HNSW efSearch stored with the index."""
    batch_size: int = 64
    """Encoder batch size for the queries."""
    device: str = "auto"
    """Device of the encoder's forward passes: auto (CUDA when present, else cpu), cpu, cuda or cuda:N."""
    precision: str = "auto"
    """Precision of the encoder's forward passes: auto (bfloat16 where the device computes it natively,
    float32 elsewhere), float32 or bfloat16."""
    ood: OODConfig = field(default_factory=OODConfig)
    """Out-of-distribution report settings."""

    def __post_init__(self):
        from ..core.hardware import check_compute

        check_compute(self.device, self.precision)
        self.queries = DataSpec.of(self.queries)
        if isinstance(self.ood, dict):
            self.ood = OODConfig(**self.ood)
        if self.top_k < 1:
            raise UserError("top_k must be ≥ 1")
        if self.batch_size < 1:
            raise UserError("batch_size must be ≥ 1")

    def to_dict(self) -> dict:
        return asdict(self)


def records_for_rows(path: str, fields: dict, wanted: dict[int, str]) -> tuple[dict[int, Record], str | None]:
    """Records of the given source rows (row → expected id) of a data file, read in one streaming pass."""
    p = Path(path)
    if not p.exists():
        return {}, f"pool data {path} not found: texts omitted (give --data)"
    spec = FieldSpec(**{k: tuple(v) if k == "prompt" else v for k, v in fields.items()})
    out: dict[int, Record] = {}
    for rec in iter_records(p, spec, skip_invalid=True):
        if rec.row in wanted:
            if rec.id != wanted[rec.row]:
                return {}, f"{path}, row {rec.row}: id '{rec.id}' but the index has '{wanted[rec.row]}' there; texts omitted (data changed?)"
            out[rec.row] = rec
            if len(out) == len(wanted):
                break
    return out, None


def _texts_for_rows(path: str, fields: dict, wanted: dict[int, str]) -> tuple[dict[int, str], str | None]:
    """Texts of the given source rows (row → expected id) of a data file, read in one streaming pass."""
    recs, note = records_for_rows(path, fields, wanted)
    return {row: record_to_text(rec) for row, rec in recs.items()}, note


def query_embeddings(queries: DataSpec, query_texts, encoder, fp: str, batch_size: int):
    """(ids, items or None, float32 unit embeddings) for queries from a file, an embedding store, or texts."""
    if queries.path and Path(queries.path).is_dir():
        store = open_embeddings(queries.path)
        if store.fingerprint != fp:
            raise UserError(
                f"query embeddings {queries.path} were made with encoder '{store.manifest['encoder']['name']}' "
                f"(fingerprint {store.fingerprint[:12]}), not the given encoder (fingerprint {fp[:12]}); re-embed them"
            )
        ids, emb, items = list(store.ids), store.matrix(), None
        if query_texts:
            t_ids, t_items = load_items(None, query_texts, "query")
            ids += t_ids
            emb = np.concatenate([emb, normalise(encode_sorted(encoder, t_items, batch_size=batch_size, side="query"))])
        return ids, items, emb
    ids, items = load_items(queries, query_texts, "query")
    return ids, items, normalise(encode_sorted(encoder, items, batch_size=batch_size, side="query"))


def attribute(cfg: AttributeConfig, *, encoder=None) -> list[dict]:
    """Top-k pool examples per query (see :func:`run_attribute`); returns the records only."""
    return run_attribute(cfg, encoder=encoder)[0]


def run_attribute(cfg: AttributeConfig, *, encoder=None, index: FaissIndex | None = None, fingerprint: str | None = None,
                  references: tuple[dict, str | None] | None = None,
                  query_records: Sequence[Record] | None = None) -> tuple[list[dict], dict]:
    """Top-k pool examples per query. Returns one dict per (query, rank) with ``query_id``, ``rank``
    (1-based), ``id``, ``score``, ``row`` and (with ``with_text``) ``text``/``query_text``, plus the
    query's and the pool example's OOD similarity and flag; writes them to ``cfg.out`` when set.

    A long-lived caller (``influcoder serve``) passes the loaded ``encoder``, the opened ``index`` (of
    ``cfg.index``), the encoder's ``fingerprint`` and the OOD ``references`` (from
    :func:`build_references`) so that they are made once, not per call; and ``query_records`` (instead of the
    config's queries) to score records as records — the encoder keeps their response — not as flat strings."""
    index = index if index is not None else open_index(cfg.index)
    fp = fingerprint or encoder_fingerprint(cfg.encoder)["sha256"]
    index.require_encoder(fp, f"encoder '{cfg.encoder}'")
    if encoder is None:
        encoder = load_encoder(cfg.encoder, device=cfg.device, precision=cfg.precision, stage="attribute")
    if query_records is not None:
        q_ids, q_items = [r.id for r in query_records], list(query_records)
        q_emb = normalise(encode_sorted(encoder, q_items, batch_size=cfg.batch_size, side="query"))
    else:
        q_ids, q_items, q_emb = query_embeddings(cfg.queries, cfg.query_texts, encoder, fp, cfg.batch_size)
    scores, pos = index.search(q_emb, cfg.top_k, nprobe=cfg.nprobe, ef_search=cfg.ef_search)

    refs, ood_note = references if references is not None else build_references(encoder, cfg.ood, cfg.batch_size)
    q_ood = ood_report(refs, "query", q_ids, q_emb)
    hit_pos = np.unique(pos[pos >= 0])
    p_ood: dict[int, dict] = {}
    if refs and len(hit_pos):
        p_emb = _index_vectors(index, hit_pos)
        if p_emb is not None:
            for p, r in zip(hit_pos, ood_report(refs, "pool", [index.ids[i] for i in hit_pos], p_emb)):
                p_ood[int(p)] = r

    texts: dict[int, str] = {}
    text_note = None
    if cfg.with_text and len(hit_pos):
        wanted = {int(index.rows[i]): index.ids[i] for i in hit_pos}
        texts, text_note = _texts_for_rows(cfg.data or index.meta["data"]["path"], index.meta["fields"], wanted)

    out: list[dict] = []
    for qi, qid in enumerate(q_ids):
        for rank, (s, p) in enumerate(zip(scores[qi], pos[qi]), start=1):
            if p < 0:
                continue
            row = int(index.rows[p])
            rec = {"query_id": qid, "rank": rank, "id": index.ids[p], "score": float(s), "row": row}
            if cfg.with_text:
                rec["text"] = texts.get(row)
                rec["query_text"] = item_text(q_items[qi]) if q_items is not None else None
            rec["query_nn_similarity"] = q_ood[qi]["nn_similarity"]
            rec["query_ood"] = q_ood[qi]["ood"]
            rec["pool_nn_similarity"] = p_ood.get(int(p), {}).get("nn_similarity")
            rec["pool_ood"] = p_ood.get(int(p), {}).get("ood")
            out.append(rec)
    summary = {
        "config": cfg.to_dict(),
        "index": str(index.root),
        "encoder_fingerprint": fp,
        "n_queries": len(q_ids),
        "ood_reference": {k: v.summary() for k, v in refs.items()},
        "queries_ood": sum(1 for r in q_ood if r["ood"]),
        "query_ood": q_ood,
        "notes": [n for n in (ood_note, text_note) if n],
    }
    if cfg.out:
        _write_records(Path(cfg.out), out, as_csv=cfg.csv)
        atomic_write_text(Path(str(cfg.out) + ".report.json"), json.dumps(summary, indent=1))
    return out, summary


def _index_vectors(index: FaissIndex, positions: np.ndarray) -> np.ndarray | None:
    """Stored vectors at the given index positions: from the embedding store, else reconstructed."""
    emb_path = index.meta.get("embeddings", {}).get("path")
    if emb_path and Path(emb_path).exists():
        try:
            from .index import gather_rows

            store = open_embeddings(emb_path)
            if store.fingerprint == index.fingerprint and len(store) == len(index):
                return gather_rows(store, np.sort(positions))
        except UserError:
            pass
    try:
        return normalise(np.stack([index.index.reconstruct(int(p)) for p in np.sort(positions)]))
    except RuntimeError:
        return None


def _write_records(path: Path, rows: list[dict], *, as_csv: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if as_csv:
        cols = list(rows[0].keys()) if rows else ["query_id", "rank", "id", "score"]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})
        atomic_write_text(path, buf.getvalue())
    else:
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
