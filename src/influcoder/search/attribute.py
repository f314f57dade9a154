"""Stage 4c: attribution (top-k pool examples per query), filtering (aggregate influence over queries)
and out-of-distribution (OOD) reports, all from encoder embeddings.

* :func:`attribute` — for each query, the ``top_k`` most influential pool examples of a FAISS index with
  score (cosine of influence embeddings), id, source row and text; written as JSONL (one object per
  (query, rank)) or CSV, and returned as the same list of dicts.
* :func:`filter_pool` — scores every pool example by its influence aggregated over the queries (mean,
  as DATE-LM does, or max), writes ``scores.jsonl`` (highest first), ``ranked.jsonl`` and a copy of the
  data in its original format with the top fraction / above-threshold examples removed (or kept).
* OOD: each query and pool example gets its nearest-neighbour cosine similarity to the encoder's own
  training examples (queries to training queries, pool to training pool); items below a threshold
  (default: the 5th percentile of the training examples' leave-one-out nearest-neighbour similarity)
  are flagged, because the distilled encoder's scores are unvalidated there.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .embed import EmbedConfig, EmbeddingStore, embed_file, encode_sorted, normalise, open_embeddings
from ..student.loading import encoder_fingerprint, encoder_metadata, load_encoder
from ..core.errors import UserError
from ..core.fileio import atomic_write_text
from .index import FaissIndex, exact_search, open_index
from ..data.records import DataSpec, PRESETS, FieldSpec, Record, iter_records, read_records, record_to_text

__all__ = [
    "AttributeConfig",
    "FilterConfig",
    "OODConfig",
    "attribute",
    "run_attribute",
    "filter_pool",
    "filter_store",
    "pool_embed_config",
    "ood_report",
    "load_items",
    "write_filtered_copy",
    "find_reference_data",
    "records_for_rows",
]


def _spec(preset, prompt_field, response_field, messages_field=None, id_field=None) -> FieldSpec:
    if preset and preset not in PRESETS:
        raise UserError(f"unknown preset '{preset}' (choose from {', '.join(PRESETS)})")
    return FieldSpec.from_names(prompt_field, response_field, messages_field, id_field, preset)


def load_items(path: str | None, texts: Sequence[str] | None, spec: FieldSpec, what: str,
               *, skip_invalid: bool = False, limit: int | None = None) -> tuple[list[str], list[Record | str]]:
    """Queries (or pool items) from a records file and/or texts given on the command line.

    Texts get ids ``text:0``, ``text:1``, ... Returns ``(ids, items)``."""
    ids: list[str] = []
    items: list[Record | str] = []
    if path:
        recs, _ = read_records(path, spec, skip_invalid=skip_invalid, limit=limit)
        ids += [r.id for r in recs]
        items += recs
    for i, t in enumerate(texts or []):
        if not t or not t.strip():
            raise UserError(f"{what} text {i} (given on the command line) is empty")
        ids.append(f"text:{i}")
        items.append(t)
    if not items:
        raise UserError(f"no {what}: give a file or text on the command line")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise UserError(f"duplicate {what} id '{dup}'")
    return ids, items


def _item_text(item: Record | str) -> str:
    return record_to_text(item) if isinstance(item, Record) else str(item)


# ---------------------------------------------------------------------------------------------- OOD


@dataclass
class OODConfig:
    """How items are compared with the encoder's training distribution."""

    reference: list[str] = field(default_factory=list)
    """Reference records files (the encoder's training data); default: found in the encoder's metadata."""
    reference_preset: str | None = None
    """Field mapping preset of the --reference files (ignored for files named by the encoder metadata)."""
    threshold: float | None = None
    """Flag items whose nearest-neighbour cosine to the reference is below this (default: calibrated)."""
    quantile: float = 0.05
    """Calibration: the threshold is this quantile of the reference's leave-one-out NN similarities."""
    max_reference: int = 5000
    """Most reference examples embedded per side (the first ones in file order)."""
    enabled: bool = True
    """Compute the OOD report at all."""


def _walk(obj: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield f"{prefix}{k}", v
            yield from _walk(v, f"{prefix}{k}.")


def find_reference_data(meta: dict) -> dict[str, list[tuple[str, FieldSpec]]]:
    """The encoder's training data files named by its metadata: ``{"pool": [...], "query": [...]}``.

    Uses the typed data specs saved with the encoder (``data_specs``: path + field mapping, see
    :class:`influcoder.records.DataSpec`) when present. Otherwise looks (at any depth) for ``pool_data`` /
    ``query_data`` entries: a data spec (a training config's ``pool_data: {path, preset, …}``), or a path read
    with the field mapping of its sibling entries: ``<side>_fields``, or ``<side>_preset`` /
    ``<side>_prompt_field`` / ``<side>_response_field`` / ``<side>_id_field`` (older encoders' training configs)."""
    from ..data.records import DataSpec

    found: dict[str, list[tuple[str, FieldSpec]]] = {"pool": [], "query": []}
    specs = meta.get("data_specs")
    if isinstance(specs, dict):
        for side in ("pool", "query"):
            d = specs.get(side)
            if isinstance(d, dict) and d.get("path") and Path(d["path"]).exists():
                try:
                    found[side].append((d["path"], DataSpec(**d).field_spec()))
                except (TypeError, UserError):
                    pass
        if found["pool"] or found["query"]:
            return found
    flat = dict(_walk(meta))
    for key, value in flat.items():
        leaf = key.rsplit(".", 1)[-1]
        for side in ("pool", "query"):
            if leaf == f"{side}_data" and isinstance(value, dict) and isinstance(value.get("path"), str):
                try:  # a training config's data spec (pool_data: {path, preset, prompt_field, ...})
                    d = DataSpec(**value)
                    spec = d.field_spec()
                except (TypeError, UserError):
                    continue
                if d.path and Path(d.path).exists() and d.path not in [p for p, _ in found[side]]:
                    found[side].append((d.path, spec))
                continue
            if leaf in (f"{side}_data", f"{side}_data_path") and isinstance(value, str) and value:
                parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
                spec = FieldSpec()
                fields = flat.get(f"{parent}{side}_fields")
                names = {k: flat.get(f"{parent}{side}_{k}_field") for k in ("prompt", "response", "id")}
                preset = flat.get(f"{parent}{side}_preset")
                preset = preset if isinstance(preset, str) and preset in PRESETS else None
                if isinstance(fields, dict):
                    try:
                        spec = FieldSpec(**{k: tuple(v) if k == "prompt" else v for k, v in fields.items()})
                    except TypeError:
                        spec = FieldSpec()
                elif preset or any(isinstance(v, str) and v for v in names.values()):
                    spec = FieldSpec.from_names(**{k: v if isinstance(v, str) and v else None for k, v in names.items()},
                                                preset=preset)
                if Path(value).exists() and value not in [p for p, _ in found[side]]:
                    found[side].append((value, spec))
    return found


class _Reference:
    """Reference embeddings of one side, with its calibrated threshold."""

    def __init__(self, emb: np.ndarray, ids: list[str], sources: list[str], quantile: float, threshold: float | None):
        self.emb = emb
        self.ids = ids
        self.sources = sources
        self.loo = None
        if len(emb) >= 2:
            s, _ = exact_search(emb, emb, 2)
            self.loo = s[:, 1]  # nearest other reference example (column 0 is itself)
        if threshold is not None:
            self.threshold, self.calibrated = float(threshold), False
        elif self.loo is not None:
            self.threshold, self.calibrated = float(np.quantile(self.loo, quantile)), True
        else:
            self.threshold, self.calibrated = None, False

    def nearest(self, x: np.ndarray) -> tuple[np.ndarray, list[str]]:
        # vectors of an encoder with a pool prior carry one score coordinate after the embedding: the
        # nearest-neighbour similarity is the cosine of the embeddings alone
        x = normalise(np.asarray(x, dtype=np.float32)[:, : self.emb.shape[1]])
        s, i = exact_search(x, self.emb, 1)
        return s[:, 0], [self.ids[j] for j in i[:, 0]]

    def summary(self) -> dict:
        return {"files": self.sources, "n": len(self.ids), "threshold": self.threshold, "calibrated": self.calibrated,
                "loo_nn_similarity_median": float(np.median(self.loo)) if self.loo is not None else None}


def build_references(encoder, ood: OODConfig, batch_size: int) -> tuple[dict[str, _Reference], str | None]:
    if not ood.enabled:
        return {}, "OOD report disabled"
    if ood.reference:
        spec = _spec(ood.reference_preset, None, None)
        files = {"pool": [(p, spec) for p in ood.reference], "query": [(p, spec) for p in ood.reference]}
    else:
        files = find_reference_data(encoder_metadata(encoder))
    if not files["pool"] and not files["query"]:
        return {}, ("no reference data: the encoder's metadata names no training data files that exist here "
                    "(pool_data / query_data); pass --reference FILE to get the OOD report")
    files = {"pool": files["pool"] or files["query"], "query": files["query"] or files["pool"]}
    refs = {}
    for side, sources in files.items():
        items: list[Record] = []
        for path, spec in sources:
            recs, _ = read_records(path, spec, skip_invalid=True, limit=ood.max_reference - len(items))
            items += recs
            if len(items) >= ood.max_reference:
                break
        emb = encode_sorted(encoder, items, batch_size=batch_size, side=side)
        emb = emb[:, : getattr(encoder, "embedding_dim", emb.shape[1])]  # the cosine part (no prior coordinate)
        refs[side] = _Reference(normalise(emb), [r.id for r in items], [p for p, _ in sources], ood.quantile, ood.threshold)
    return refs, None


def ood_report(refs: dict[str, _Reference], side: str, ids: list[str], emb: np.ndarray) -> list[dict]:
    """Per item: nearest-neighbour similarity to the reference of ``side``, nearest reference id, flag."""
    if side not in refs:
        return [{"side": side, "id": i, "nn_similarity": None, "nearest_reference_id": None, "ood": None} for i in ids]
    ref = refs[side]
    out = []
    for a in range(0, len(ids), 4096):
        s, nn = ref.nearest(emb[a : a + 4096])
        for i, sim, r in zip(ids[a : a + 4096], s, nn):
            out.append({"side": side, "id": i, "nn_similarity": float(sim), "nearest_reference_id": r,
                        "ood": bool(ref.threshold is not None and sim < ref.threshold)})
    return out


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


def _query_embeddings(cfg_queries, query_texts, spec, encoder, fp: str, batch_size: int, what_index: FaissIndex | None):
    """(ids, items or None, float32 unit embeddings) for queries from a file, an embedding store, or texts."""
    if cfg_queries and Path(cfg_queries).is_dir():
        store = open_embeddings(cfg_queries)
        if store.fingerprint != fp:
            raise UserError(
                f"query embeddings {cfg_queries} were made with encoder '{store.manifest['encoder']['name']}' "
                f"(fingerprint {store.fingerprint[:12]}), not the given encoder (fingerprint {fp[:12]}); re-embed them"
            )
        ids, emb, items = list(store.ids), store.matrix(), None
        if query_texts:
            t_ids, t_items = load_items(None, query_texts, spec, "query")
            ids += t_ids
            emb = np.concatenate([emb, normalise(encode_sorted(encoder, t_items, batch_size=batch_size, side="query"))])
        return ids, items, emb
    ids, items = load_items(cfg_queries, query_texts, spec, "query")
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
    spec = cfg.queries.field_spec()
    if query_records is not None:
        q_ids, q_items = [r.id for r in query_records], list(query_records)
        q_emb = normalise(encode_sorted(encoder, q_items, batch_size=cfg.batch_size, side="query"))
    else:
        q_ids, q_items, q_emb = _query_embeddings(cfg.queries.path or None, cfg.query_texts, spec, encoder, fp, cfg.batch_size, index)
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
                rec["query_text"] = _item_text(q_items[qi]) if q_items is not None else None
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


# ----------------------------------------------------------------------------------------------- filter


@dataclass
class FilterConfig:
    """Score a pool by influence aggregated over queries and write a filtered copy (``influcoder filter``)."""

    encoder: str
    """Encoder folder or ``minilm-l6``."""
    out: str
    """Output folder: scores.jsonl, ranked.jsonl, filtered.<ext>, ood.jsonl, report.json."""
    data: DataSpec = field(default_factory=DataSpec)
    """Pool records file (.jsonl/.json/.csv/.parquet) and how to read it; its filtered copy keeps this format
    (empty path: the pool is pool_texts)."""
    pool_texts: list[str] = field(default_factory=list)
    """Pool given as text instead (ids text:0, ...; the filtered copy is JSONL {"id", "text"})."""
    pool_embeddings: str | None = None
    """Reuse this embedding store of ``data`` (must come from the same encoder) instead of embedding again."""
    queries: DataSpec = field(default_factory=DataSpec)
    """Queries records file and how to read it."""
    query_texts: list[str] = field(default_factory=list)
    """Queries given as text."""
    aggregate: str = "mean"
    """How a pool example's influence is aggregated over the queries: mean (DATE-LM) or max."""
    fraction: float | None = None
    """Select the top fraction of the pool by score (default 0.1 when no threshold is given)."""
    threshold: float | None = None
    """Select pool examples whose aggregated score is above this instead."""
    keep: bool = False
    """Keep only the selected examples (default: remove them)."""
    dtype: str = "float16"
    """Storage precision of the pool embeddings written under OUT/pool_embeddings."""
    batch_size: int = 64
    """Encoder batch size."""
    block_rows: int = 65536
    """Pool rows scored per block (bounds memory)."""
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
        self.data, self.queries = DataSpec.of(self.data), DataSpec.of(self.queries)
        if isinstance(self.ood, dict):
            self.ood = OODConfig(**self.ood)
        errs = []
        if self.aggregate not in ("mean", "max"):
            errs.append("aggregate must be mean or max")
        if self.fraction is not None and self.threshold is not None:
            errs.append("give either a fraction or a threshold, not both")
        if self.fraction is None and self.threshold is None:
            self.fraction = 0.1
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            errs.append("fraction must be between 0 and 1")
        if not self.data.path and not self.pool_texts and not self.pool_embeddings:
            errs.append("give the pool as a file (--data) or as text (--pool-text)")
        if self.pool_embeddings and not self.data.path:
            errs.append("--pool-embeddings needs the pool file (--data) it was made from")
        if errs:
            raise UserError("; ".join(errs))

    def to_dict(self) -> dict:
        return asdict(self)


def select_examples(scores: np.ndarray, threshold: float | None, fraction: float, keep: bool):
    """Rank by score (highest first, ties by position) and select above ``threshold``, else the top
    ``fraction``. Returns ``(order, selected, kept)``; ``kept`` is ``selected`` with ``keep``, else its complement."""
    n = len(scores)
    order = np.lexsort((np.arange(n), -scores))
    if threshold is not None:
        selected = scores > threshold
    else:
        selected = np.zeros(n, dtype=bool)
        selected[order[: int(round(fraction * n))]] = True
    return order, selected, (selected if keep else ~selected)


def pool_embed_config(cfg: FilterConfig) -> EmbedConfig:
    """The embedding store ``filter`` makes of its pool file (``OUT/pool_embeddings``; local or on Ray)."""
    return EmbedConfig(encoder=cfg.encoder, data=cfg.data, out=str(Path(cfg.out) / "pool_embeddings"), side="pool", dtype=cfg.dtype, batch_size=cfg.batch_size, device=cfg.device, precision=cfg.precision)


def filter_pool(cfg: FilterConfig, *, encoder=None, progress: bool = True,
                references: tuple[dict, str | None] | None = None) -> Path:
    """Run the filter described by ``cfg``; returns the output folder (``references``: as for
    :func:`run_attribute`)."""
    t0 = time.perf_counter()
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    fp = encoder_fingerprint(cfg.encoder)["sha256"]
    if encoder is None:
        encoder = load_encoder(cfg.encoder, device=cfg.device, precision=cfg.precision, stage="filter")
    # pool embeddings: a store (streamed, resumable) for files, in memory for command-line texts
    store: EmbeddingStore | None = None
    if cfg.data.path:
        if cfg.pool_embeddings:
            store = open_embeddings(cfg.pool_embeddings)
            if store.fingerprint != fp:
                raise UserError(
                    f"pool embeddings {cfg.pool_embeddings} were made with encoder '{store.manifest['encoder']['name']}' "
                    f"(fingerprint {store.fingerprint[:12]}), not '{cfg.encoder}' (fingerprint {fp[:12]}); re-embed the pool"
                )
            if store.manifest["data"]["sha256"] != _sha(cfg.data.path):
                raise UserError(f"pool embeddings {cfg.pool_embeddings} were made from another file than {cfg.data.path}")
        else:
            store = open_embeddings(embed_file(pool_embed_config(cfg), progress=progress, encoder=encoder))
    return filter_store(cfg, store, encoder=encoder, t0=t0, references=references)


def filter_store(cfg: FilterConfig, store: EmbeddingStore | None, *, encoder=None, t0: float | None = None,
                 report_extra: dict | None = None, references: tuple[dict, str | None] | None = None) -> Path:
    """Score the pool (``store``, made from ``cfg.data``, plus ``cfg.pool_texts``) against the queries and write
    scores.jsonl, ranked.jsonl, ood.jsonl, the filtered copy and report.json. ``filter`` and ``filter --ray``
    both end here (``report_extra`` adds entries to report.json, e.g. the Ray settings)."""
    t0 = time.perf_counter() if t0 is None else t0
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fp = encoder_fingerprint(cfg.encoder)["sha256"]
    if store is not None and store.fingerprint != fp:
        raise UserError(f"pool embeddings {store.root} were made with another encoder than '{cfg.encoder}'")
    if encoder is None:
        encoder = load_encoder(cfg.encoder, device=cfg.device, precision=cfg.precision, stage="filter")
    q_spec = cfg.queries.field_spec()
    q_ids, q_items, q_emb = _query_embeddings(cfg.queries.path or None, cfg.query_texts, q_spec, encoder, fp, cfg.batch_size, None)

    p_ids: list[str] = []
    p_rows: list[int] = []
    t_items: list[str] = []
    if store is not None:
        p_ids += store.ids
        p_rows += store.rows.tolist()
    if cfg.pool_texts:
        t_ids, t_items = load_items(None, cfg.pool_texts, FieldSpec(), "pool")
        p_ids += t_ids
        p_rows += [-1] * len(t_ids)

    def pool_blocks():
        if store is not None:
            yield from store.iter_blocks(cfg.block_rows)
        if t_items:
            yield (len(store) if store is not None else 0), normalise(encode_sorted(encoder, t_items, batch_size=cfg.batch_size, side="pool"))

    # aggregated influence: mean over queries of cos(p, q) = p · mean(q) (exact, by linearity); max blockwise
    n = len(p_ids)
    scores = np.empty(n, dtype=np.float64)
    q_mean = q_emb.astype(np.float64).mean(0)
    refs, ood_note = references if references is not None else build_references(encoder, cfg.ood, cfg.batch_size)
    pool_ood: list[dict] = []
    for start, block in pool_blocks():
        if cfg.aggregate == "mean":
            scores[start : start + len(block)] = block.astype(np.float64) @ q_mean
        else:
            scores[start : start + len(block)] = (block @ q_emb.T).max(1)
        pool_ood += ood_report(refs, "pool", p_ids[start : start + len(block)], block)
    query_ood = ood_report(refs, "query", q_ids, q_emb)

    order, selected, kept = select_examples(scores, cfg.threshold, cfg.fraction, cfg.keep)

    atomic_write_text(out / "scores.jsonl", "".join(json.dumps({"id": p_ids[i], "score": float(scores[i])}) + "\n" for i in order))
    atomic_write_text(out / "ranked.jsonl", "".join(
        json.dumps({"rank": r + 1, "id": p_ids[i], "score": float(scores[i]), "row": p_rows[i], "selected": bool(selected[i]),
                    "kept": bool(kept[i]), "nn_similarity": pool_ood[i]["nn_similarity"], "ood": pool_ood[i]["ood"]}) + "\n"
        for r, i in enumerate(order)))
    atomic_write_text(out / "ood.jsonl", "".join(json.dumps(r) + "\n" for r in query_ood + pool_ood))

    outputs = []
    notes = [ood_note]
    if store is not None:
        if "://" in cfg.data.path:
            notes.append(f"no filtered copy of the URL input {cfg.data.path}: ranked.jsonl's kept column says which rows to keep")
        else:
            keep_rows = {p_rows[i] for i in range(len(store)) if kept[i]}
            outputs.append(str(write_filtered_copy(cfg.data.path, out, keep_rows)))
    if t_items:
        base = len(store) if store is not None else 0
        dst = out / ("filtered_texts.jsonl" if store is not None else "filtered.jsonl")
        atomic_write_text(dst, "".join(json.dumps({"id": p_ids[base + j], "text": t}) + "\n"
                                       for j, t in enumerate(t_items) if kept[base + j]))
        outputs.append(str(dst))
    report = {
        "config": cfg.to_dict(),
        "encoder_fingerprint": fp,
        "n_pool": n,
        "n_queries": len(q_ids),
        "n_selected": int(selected.sum()),
        "n_written": int(kept.sum()),
        "mode": "keep" if cfg.keep else "remove",
        "selection": {"threshold": cfg.threshold} if cfg.threshold is not None else {"fraction": cfg.fraction},
        "score_quantiles": {str(q): float(np.quantile(scores, q)) for q in (0.0, 0.1, 0.5, 0.9, 1.0)},
        "outputs": outputs,
        "ood_reference": {k: v.summary() for k, v in refs.items()},
        "queries_ood": sum(1 for r in query_ood if r["ood"]),
        "pool_ood": sum(1 for r in pool_ood if r["ood"]),
        "notes": [n_ for n_ in notes if n_],
        **(report_extra or {}),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(out / "filter_config.json", json.dumps(cfg.to_dict(), indent=1))
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    return out


def _sha(path: str) -> str:
    from ..data.records import file_fingerprint

    return file_fingerprint(path)["sha256"]


# ------------------------------------------------------------------------------ filtered copy writer


def _open_out(path: Path, gz: bool, newline: str | None = None):
    if gz:
        return io.TextIOWrapper(gzip.open(path, "wb"), encoding="utf-8", newline=newline)
    return open(path, "w", encoding="utf-8", newline=newline)


def write_filtered_copy(src: str | Path, out_dir: str | Path, keep_rows: set[int]) -> Path:
    """Copy the rows of ``src`` whose 0-based row index (as :func:`records.iter_rows` numbers them) is in
    ``keep_rows`` to ``out_dir/filtered<same suffix>``, in the same format (JSONL lines copied verbatim;
    a JSON wrapper object such as ``{"examples": [...]}`` preserved; CSV header and Parquet schema kept)."""
    src = Path(src)
    name = src.name.lower()
    gz = name.endswith(".gz")
    base = name[:-3] if gz else name
    suffix = "." + base.rsplit(".", 1)[-1]
    dst = Path(out_dir) / ("filtered" + suffix + (".gz" if gz else ""))
    tmp = dst.with_name(dst.name + ".tmp")
    if suffix == ".jsonl":
        src_open = (lambda: io.TextIOWrapper(gzip.open(src, "rb"), encoding="utf-8")) if gz else (lambda: open(src, encoding="utf-8"))
        with src_open() as fin, _open_out(tmp, gz) as fout:
            for i, line in enumerate(fin):
                if line.strip() and i in keep_rows:
                    fout.write(line if line.endswith("\n") else line + "\n")
    elif suffix == ".json":
        opener = (lambda: io.TextIOWrapper(gzip.open(src, "rb"), encoding="utf-8")) if gz else (lambda: open(src, encoding="utf-8"))
        with opener() as f:
            data = json.load(f)
        if isinstance(data, dict):
            key = next(k for k, v in data.items() if isinstance(v, list))
            data = {**data, key: [r for i, r in enumerate(data[key]) if i in keep_rows]}
        else:
            data = [r for i, r in enumerate(data) if i in keep_rows]
        with _open_out(tmp, gz) as fout:
            json.dump(data, fout, ensure_ascii=False, indent=1)
    elif suffix == ".csv":
        opener = (lambda: io.TextIOWrapper(gzip.open(src, "rb"), encoding="utf-8", newline="")) if gz else (lambda: open(src, encoding="utf-8", newline=""))
        with opener() as fin, _open_out(tmp, gz, newline="") as fout:
            reader = csv.DictReader(fin)
            writer = csv.DictWriter(fout, fieldnames=reader.fieldnames)
            writer.writeheader()
            for i, row in enumerate(reader):
                if i in keep_rows:
                    writer.writerow(row)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(src)
        i = 0
        with pq.ParquetWriter(tmp, pf.schema_arrow) as w:
            for batch in pf.iter_batches(batch_size=4096):
                mask = pa.array([(i + j) in keep_rows for j in range(batch.num_rows)])
                w.write_table(pa.Table.from_batches([batch]).filter(mask))
                i += batch.num_rows
            if i == 0:
                w.write_table(pf.schema_arrow.empty_table())
    else:
        raise UserError(f"{src}: cannot write a filtered copy of a '{suffix}' file")
    os.replace(tmp, dst)
    return dst
