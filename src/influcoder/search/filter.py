"""Filtering: every pool example scored by its influence aggregated over the queries (mean, as DATE-LM does, or
max) (:func:`filter_pool`), written as ``scores.jsonl`` (highest first), ``ranked.jsonl`` and a copy of the data
in its original format with the top fraction / above-threshold examples removed (or kept)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .embed import EmbedConfig, EmbeddingStore, embed_file, encode_sorted, normalise, open_embeddings
from ..student.loading import encoder_fingerprint, load_encoder
from ..core.errors import UserError
from ..core.fileio import atomic_write_text
from ..data.records import DataSpec
from .attribute import query_embeddings
from .items import load_items
from .ood import OODConfig, build_references, ood_report

__all__ = ["FilterConfig", "select_examples", "pool_embed_config", "filter_pool", "filter_store", "write_filtered_copy"]


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
    q_ids, q_items, q_emb = query_embeddings(cfg.queries, cfg.query_texts, encoder, fp, cfg.batch_size)

    p_ids: list[str] = []
    p_rows: list[int] = []
    t_items: list[str] = []
    if store is not None:
        p_ids += store.ids
        p_rows += store.rows.tolist()
    if cfg.pool_texts:
        t_ids, t_items = load_items(None, cfg.pool_texts, "pool")
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
