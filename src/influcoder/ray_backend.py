"""Embedding and filtering on a Ray cluster (``influcoder embed --ray`` / ``influcoder filter --ray``).

Ray is an optional extra (``pip install influcoder[ray]``); this module imports it only inside functions,
and nothing else in the package imports this module at import time.

Pipeline (both commands): Ray Data reads the input (JSONL lines with ``read_text``, Parquet with
``read_parquet``; a local path or any URL pyarrow or fsspec understands, e.g. ``s3://``, ``gs://``,
``file://``), every row gets its 0-based source row number (the same numbering as
:func:`influcoder.records.iter_rows`), and ``map_batches`` sends batches to a pool of encoder actors
(class-based UDF: one model load per actor, ``ActorPoolStrategy(size=num_actors)``, ``cpus_per_actor`` /
``gpus_per_actor`` each). An actor turns rows into :class:`Record` s with the same validation and text
formatting as the local path, encodes them with :func:`influcoder.embed.encode_sorted` (length-sorted
batches) and normalises them in float32 exactly as :func:`influcoder.embed.embed_file` does. Results are
written as Parquet shards by Ray; the driver writes a small ``manifest.json`` last (atomically), so a
folder without ``"complete": true`` is not a finished output.

Output of ``embed`` (``RAY_EMBED_FORMAT``)::

    manifest.json           format, encoder (name, path, fingerprint), data, fields, side, dtype, n, dim, complete
    embed_config.json       the EmbedConfig;  ray_config.json: the RayConfig
    shards/*.parquet        columns id (string), row (int64), embedding (list<float16|float32>, unit length)
    invalid.jsonl           rows skipped under --skip-invalid (if any)

Output of ``filter`` (``RAY_FILTER_FORMAT``): ``scores/*.parquet`` (id, row, score), ``ranked.jsonl`` (rank, id,
score, row, selected, kept — the ranking of the local path), ``scores.jsonl``, ``filtered.<ext>`` (local
input only), ``report.json``, ``filter_config.json``, ``ray_config.json``, ``manifest.json``.

Rows are numbered by materialising the read blocks in Ray's object store once (spilled to disk by Ray if
they do not fit) and counting the rows of each block in order; ids default to the row number as locally.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

__all__ = ["RayConfig", "require_ray", "embed_with_ray", "filter_with_ray", "open_ray_embeddings",
           "read_ray_scores", "RAY_EMBED_FORMAT", "RAY_FILTER_FORMAT"]

RAY_EMBED_FORMAT = "influcoder-ray-embeddings/1"
RAY_FILTER_FORMAT = "influcoder-ray-filter/1"
ROW = "__influcoder_row"


def require_ray():
    """Import ray (and ray.data), or raise one clear sentence saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError("--ray needs Ray, which is not installed: pip install influcoder[ray]") from None
    return ray


@dataclass
class RayConfig:
    """How a stage runs on Ray (shared by the ``--ray`` CLI options and the Python API)."""

    address: str | None = None
    """Cluster address (``ray://host:10001``, ``host:6379`` or ``auto``); None or ``local``: RAY_ADDRESS or a local instance."""
    num_actors: int = 2
    """Encoder actors (each loads the model once): the size of ``map_batches``' actor pool."""
    cpus_per_actor: float = 1.0
    """CPUs reserved per encoder actor."""
    gpus_per_actor: float = 0.0
    """GPUs per encoder actor (0 = CPU; the actor's encoder then runs on its GPU)."""
    rows_per_batch: int = 1024
    """Rows handed to an actor per ``map_batches`` call (encoded in length-sorted sub-batches)."""
    read_blocks: int | None = None
    """Blocks the input is read into (``override_num_blocks``; default: Ray decides)."""

    def __post_init__(self):
        errs = []
        if self.num_actors < 1:
            errs.append("num_actors must be ≥ 1")
        if self.cpus_per_actor < 0 or self.gpus_per_actor < 0:
            errs.append("cpus_per_actor and gpus_per_actor must be ≥ 0")
        if self.rows_per_batch < 1:
            errs.append("rows_per_batch must be ≥ 1")
        if self.read_blocks is not None and self.read_blocks < 1:
            errs.append("read_blocks must be ≥ 1")
        if errs:
            raise UserError("; ".join(errs))

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------- reading


def _is_url(path: str) -> bool:
    return "://" in str(path)


def _suffix(path: str) -> str:
    name = str(path).lower().rstrip("/")
    for s in (".jsonl.gz", ".jsonl", ".parquet", ".json.gz", ".json", ".csv.gz", ".csv"):
        if name.endswith(s):
            return s
    return ""


def _filesystem(path: str):
    """(path, pyarrow filesystem or None) — fsspec-only schemes are wrapped for Ray Data's readers."""
    if not _is_url(path):
        return str(Path(path).resolve()), None
    import pyarrow.fs as pafs

    try:
        pafs.FileSystem.from_uri(path)
        return path, None  # pyarrow handles it (s3, gs, hdfs, file)
    except (pafs.ArrowInvalid, ValueError, TypeError, OSError):
        pass
    try:
        import fsspec
    except ImportError:
        raise UserError(f"{path}: reading this URL needs fsspec (pip install fsspec)") from None
    fs, p = fsspec.core.url_to_fs(path)
    return p, pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def _data_fingerprint(path: str) -> dict:
    if _is_url(path):
        return {"path": str(path), "sha256": None}
    from .records import file_fingerprint

    return file_fingerprint(path)


def _read_numbered(ray, path: str, rcfg: RayConfig):
    """A Ray Dataset of the file's rows with their 0-based row number in column ``ROW``.

    JSONL: one row per line ({"line": text}, blank lines kept so numbering equals iter_rows). Parquet:
    the file's columns. .json / .csv are read on the driver (whole-file formats) and handed to Ray."""
    import pyarrow as pa

    suf = _suffix(path)
    kw = {} if rcfg.read_blocks is None else {"override_num_blocks": rcfg.read_blocks}
    if not _is_url(path) and not Path(path).exists():
        raise UserError(f"{path}: file not found")
    rpath, fs = _filesystem(path)
    if suf in (".jsonl", ".jsonl.gz"):
        ds = ray.data.read_text(rpath, drop_empty_lines=False, filesystem=fs, **kw)
        ds = ds.rename_columns({"text": "line"})
    elif suf == ".parquet":
        ds = ray.data.read_parquet(rpath, filesystem=fs, **kw)
    elif suf in (".json", ".json.gz", ".csv", ".csv.gz") and not _is_url(path):
        from .records import iter_rows

        rows = [{ROW: i, "line": json.dumps(obj, ensure_ascii=False, default=str)} for i, obj in iter_rows(path)]
        return ray.data.from_items(rows, **kw)
    else:
        raise UserError(f"{path}: --ray reads .jsonl, .jsonl.gz and .parquet (local or URL), and local .json/.csv files")
    refs = ds.to_arrow_refs()  # blocks in file order (materialised once in the object store)

    @ray.remote
    def count(t):
        return t.num_rows

    @ray.remote
    def number(t, offset):
        return t.append_column(ROW, pa.array(np.arange(offset, offset + t.num_rows, dtype=np.int64)))

    counts = ray.get([count.remote(r) for r in refs])
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64) if counts else []
    return ray.data.from_arrow_refs([number.remote(r, int(o)) for r, o in zip(refs, offsets)])


def _rows_from_batch(batch, data_label: str) -> list[tuple[int, Any]]:
    """(row, dict or RecordError) of a pyarrow batch from :func:`_read_numbered`."""
    from .records import RecordError

    rows = batch.column(ROW).to_pylist()
    if "line" in batch.column_names:
        out = []
        for r, line in zip(rows, batch.column("line").to_pylist()):
            if line is None or not line.strip():
                out.append((r, None))
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                out.append((r, RecordError(data_label, r, None, f"invalid JSON ({e.msg} at column {e.colno})")))
                continue
            if not isinstance(obj, dict):
                out.append((r, RecordError(data_label, r, None, f"expected a JSON object, got {type(obj).__name__}")))
                continue
            out.append((r, obj))
        return out
    cols = [c for c in batch.column_names if c != ROW]
    objs = batch.select(cols).to_pylist()
    return list(zip(rows, objs))


# ------------------------------------------------------------------------------------- actor UDFs


class _EncoderActor:
    """Class-based ``map_batches`` UDF: loads the encoder once per actor, then encodes batches.

    Returns id, row and either the embedding (``mode="embed"``) or the aggregated score (``mode="score"``);
    rows that fail validation come back with ``error`` set (and no embedding)."""

    def __init__(self, encoder: str, spec: dict, side: str, batch_size: int, dtype: str, data_label: str,
                 mode: str = "embed", queries: np.ndarray | None = None, aggregate: str = "mean", device: str = "cpu"):
        from .encoder import InfluenceEncoder
        from .records import FieldSpec

        self.encoder = InfluenceEncoder.from_pretrained(encoder, device=device)
        self.spec = FieldSpec(**{k: tuple(v) if k == "prompt" else v for k, v in spec.items()})
        self.side, self.batch_size, self.dtype, self.data_label = side, batch_size, dtype, data_label
        self.mode, self.aggregate = mode, aggregate
        self.queries = None if queries is None else np.asarray(queries, dtype=np.float32)
        self.q_mean = None if queries is None else self.queries.astype(np.float64).mean(0)

    def __call__(self, batch):
        import pyarrow as pa

        from .embed import encode_sorted, normalise
        from .records import RecordError, _row_to_record

        recs, rows, errors = [], [], []
        for r, obj in _rows_from_batch(batch, self.data_label):
            if obj is None:
                continue
            if isinstance(obj, RecordError):
                errors.append((r, obj))
                continue
            try:
                recs.append(_row_to_record(Path(self.data_label), r, obj, self.spec))
                rows.append(r)
            except RecordError as e:
                errors.append((r, e))
        cols: dict[str, Any] = {"id": [x.id for x in recs] + [None] * len(errors),
                                "row": rows + [r for r, _ in errors],
                                "error": [None] * len(recs) + [json.dumps({"field": e.field, "problem": e.problem})
                                                               for _, e in errors]}
        dim = self.encoder.dim
        emb = (normalise(encode_sorted(self.encoder, recs, batch_size=self.batch_size, side=self.side))
               if recs else np.zeros((0, dim), dtype=np.float32))
        if self.mode == "embed":
            full = np.zeros((len(recs) + len(errors), dim), dtype=self.dtype)
            full[: len(recs)] = emb.astype(self.dtype)
            cols["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1)), dim)
        else:
            # as the local filter: scores come from the stored (dtype-rounded) embeddings, re-normalised
            emb = normalise(emb.astype(self.dtype))
            if self.aggregate == "mean":
                scores = emb.astype(np.float64) @ self.q_mean
            else:
                scores = (emb @ self.queries.T).max(1).astype(np.float64) if len(emb) else np.zeros(0)
            cols["score"] = np.concatenate([scores, np.full(len(errors), np.nan)])
        return pa.table({k: (v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v)) for k, v in cols.items()})


def _connect(ray, rcfg: RayConfig) -> bool:
    """ray.init for the configured address; returns whether this call started (and should stop) Ray."""
    if ray.is_initialized():
        return False
    address = None if rcfg.address in (None, "", "local") else rcfg.address
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    return True


def _run_pipeline(ray, data: str, rcfg: RayConfig, actor_kwargs: dict, out_dir: Path) -> None:
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ds = _read_numbered(ray, data, rcfg)
    device = "cuda" if rcfg.gpus_per_actor > 0 else "cpu"
    ds = ds.map_batches(_EncoderActor, fn_constructor_kwargs=dict(actor_kwargs, device=device),
                        batch_size=rcfg.rows_per_batch, batch_format="pyarrow",
                        compute=ray.data.ActorPoolStrategy(size=rcfg.num_actors),
                        num_cpus=rcfg.cpus_per_actor, num_gpus=rcfg.gpus_per_actor or None)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ds.write_parquet(str(tmp.resolve()))
    except Exception as e:  # a UserError raised inside an actor arrives wrapped; surface its sentence
        cause = _user_error_in(e)
        if cause is not None:
            raise cause from None
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def _user_error_in(e: BaseException) -> UserError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None


def _read_parquet_dir(folder: Path, columns: list[str]):
    import pyarrow.parquet as pq

    files = sorted(folder.glob("*.parquet"))
    if not files:
        return None
    return pq.read_table(files, columns=columns) if len(files) > 1 else pq.read_table(files[0], columns=columns)


def _split_errors(table, data: str, skip_invalid: bool, limit: int | None, id_field: str = "id"):
    """Rows in file order, validated like :func:`records.iter_records` (first bad row or duplicate id raises
    unless ``skip_invalid``; rows after the first ``limit`` valid ones are not looked at). Returns
    ``(table of valid rows, invalid rows)``."""
    from .records import InvalidRow, RecordError

    order = np.argsort(np.asarray(table.column("row").to_numpy(), dtype=np.int64), kind="stable")
    table = table.take(order)
    err = table.column("error").to_pylist()
    rows = table.column("row").to_pylist()
    ids = table.column("id").to_pylist()
    keep = np.zeros(len(rows), dtype=bool)
    invalid: list = []
    seen: set[str] = set()
    n_valid = 0
    for i in range(len(rows)):
        if limit is not None and n_valid >= limit:
            break
        if err[i] is not None:
            e = json.loads(err[i])
            field, problem = e["field"], e["problem"]
        elif ids[i] in seen:
            field, problem = id_field, f"duplicate id '{ids[i]}'"
        else:
            seen.add(ids[i])
            keep[i] = True
            n_valid += 1
            continue
        if not skip_invalid:
            raise RecordError(data, rows[i], field, problem)
        invalid.append(InvalidRow(str(data), rows[i], field, problem))
    return table.filter(keep), invalid


def _header(encoder_name: str, data: str, spec, side: str) -> dict:
    from .embed import _jsonable, _resolve_encoder_path, encoder_fingerprint

    fp = encoder_fingerprint(encoder_name)
    return _jsonable({
        "encoder": {"name": encoder_name, "path": str(_resolve_encoder_path(encoder_name)), "fingerprint": fp["sha256"]},
        "data": _data_fingerprint(data),
        "fields": dataclasses.asdict(spec),
        "side": side,
    })


# ------------------------------------------------------------------------------------------- embed


def embed_with_ray(cfg, rcfg: RayConfig) -> Path:
    """``influcoder embed --ray``: embed ``cfg.data`` (an :class:`EmbedConfig`) on Ray into Parquet shards."""
    from .embed import atomic_write_text

    ray = require_ray()
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        m = out / "manifest.json"
        if not cfg.overwrite:
            raise UserError(f"{out} already exists; use another --out or --overwrite")
        if not m.exists() or json.loads(m.read_text()).get("format") != RAY_EMBED_FORMAT:
            raise UserError(f"{out} exists and is not a Ray embedding output; refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = cfg.field_spec()
    header = _header(cfg.encoder, cfg.data, spec, cfg.side)
    t0 = time.perf_counter()
    started = _connect(ray, rcfg)
    try:
        _run_pipeline(ray, cfg.data, rcfg, dict(encoder=cfg.encoder, spec=header["fields"], side=cfg.side,
                                                batch_size=cfg.batch_size, dtype=cfg.dtype, data_label=str(cfg.data),
                                                mode="embed"), out / "shards")
    finally:
        if started:
            ray.shutdown()
    table = _read_parquet_dir(out / "shards", ["id", "row", "error"])
    if table is None or table.num_rows == 0:
        raise UserError(f"{cfg.data}: no valid records to embed")
    valid, invalid = _split_errors(table, cfg.data, cfg.skip_invalid, cfg.limit, spec.id)
    if valid.num_rows == 0:
        raise UserError(f"{cfg.data}: no valid records to embed ({len(invalid)} invalid rows)")
    if invalid:
        atomic_write_text(out / "invalid.jsonl", "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in invalid))
    emb_type = _read_parquet_dir(out / "shards", ["embedding"]).schema.field("embedding").type
    manifest = dict(header, format=RAY_EMBED_FORMAT, dtype=cfg.dtype, dim=emb_type.list_size, n=valid.num_rows,
                    n_invalid=len(invalid), limit=cfg.limit, seconds=round(time.perf_counter() - t0, 2),
                    shards=sorted(p.name for p in (out / "shards").glob("*.parquet")), complete=True)
    atomic_write_text(out / "embed_config.json", json.dumps(cfg.to_dict(), indent=1))
    atomic_write_text(out / "ray_config.json", json.dumps(rcfg.to_dict(), indent=1))
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    return out


@dataclass
class RayEmbeddings:
    """A finished ``embed --ray`` output, loaded in row order."""

    root: Path
    manifest: dict
    ids: list[str]
    rows: np.ndarray
    matrix: np.ndarray
    """(n × dim) float32, unit-length rows, in source-row order (limit and invalid rows applied)."""


def open_ray_embeddings(root: str | Path) -> RayEmbeddings:
    """Load a finished ``embed --ray`` output (all of it: for checks and moderate sizes)."""
    root = Path(root)
    mp = root / "manifest.json"
    if not mp.exists():
        raise UserError(f"{root}: not a Ray embedding output (no manifest.json)")
    m = json.loads(mp.read_text())
    if m.get("format") != RAY_EMBED_FORMAT or not m.get("complete"):
        raise UserError(f"{root}: not a complete Ray embedding output")
    t = _read_parquet_dir(root / "shards", ["id", "row", "error", "embedding"])
    valid, _ = _split_errors(t, m["data"]["path"], True, m.get("limit"), m["fields"]["id"])
    emb = valid.column("embedding").combine_chunks()
    mat = np.asarray(emb.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(len(emb), m["dim"])
    from .embed import normalise

    return RayEmbeddings(root, m, valid.column("id").to_pylist(), np.asarray(valid.column("row").to_numpy()), normalise(mat))


# ------------------------------------------------------------------------------------------ filter


def filter_with_ray(cfg, rcfg: RayConfig) -> Path:
    """``influcoder filter --ray``: score the pool file of a :class:`FilterConfig` on Ray.

    Queries (few) are embedded on the driver; the pool is scored by encoder actors (mean or max cosine over
    the queries, exactly as the local path) and written as Parquet shards; the driver ranks the scores
    (highest first, ties in file order) and writes ranked.jsonl, scores.jsonl, a filtered copy (local input)
    and report.json. The OOD report is not computed on Ray (use the local path on a sample)."""
    from .attribute import _query_embeddings, _spec, select_examples, write_filtered_copy
    from .embed import atomic_write_text, encoder_fingerprint, load_encoder

    ray = require_ray()
    if not cfg.data:
        raise UserError("--ray filters a pool file: give --data (pool texts on the command line need no cluster)")
    if cfg.pool_texts or cfg.pool_embeddings:
        raise UserError("--ray takes the pool from --data only (not --pool-text or --pool-embeddings)")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fp = encoder_fingerprint(cfg.encoder)["sha256"]
    encoder = load_encoder(cfg.encoder)
    q_spec = _spec(cfg.query_preset, cfg.query_prompt_field, cfg.query_response_field)
    q_ids, _, q_emb = _query_embeddings(cfg.queries, cfg.query_texts, q_spec, encoder, fp, cfg.batch_size, None)
    del encoder
    spec = _spec(cfg.preset, cfg.prompt_field, cfg.response_field)
    header = _header(cfg.encoder, cfg.data, spec, "pool")
    started = _connect(ray, rcfg)
    try:
        _run_pipeline(ray, cfg.data, rcfg, dict(encoder=cfg.encoder, spec=header["fields"], side="pool",
                                                batch_size=cfg.batch_size, dtype=cfg.dtype, data_label=str(cfg.data),
                                                mode="score", queries=q_emb, aggregate=cfg.aggregate), out / "scores")
    finally:
        if started:
            ray.shutdown()
    table = _read_parquet_dir(out / "scores", ["id", "row", "error", "score"])
    if table is None:
        raise UserError(f"{cfg.data}: no valid records to score")
    valid, invalid = _split_errors(table, cfg.data, False, None, spec.id)
    ids = valid.column("id").to_pylist()
    rows = np.asarray(valid.column("row").to_numpy(), dtype=np.int64)
    scores = np.asarray(valid.column("score").to_numpy(), dtype=np.float64)
    n = len(ids)
    order, selected, kept = select_examples(scores, cfg.threshold, cfg.fraction, cfg.keep)
    atomic_write_text(out / "scores.jsonl", "".join(json.dumps({"id": ids[i], "score": float(scores[i])}) + "\n" for i in order))
    atomic_write_text(out / "ranked.jsonl", "".join(
        json.dumps({"rank": r + 1, "id": ids[i], "score": float(scores[i]), "row": int(rows[i]),
                    "selected": bool(selected[i]), "kept": bool(kept[i])}) + "\n" for r, i in enumerate(order)))
    outputs = [str(out / "scores")]
    notes = ["OOD report not computed with --ray (run the local filter on a sample for it)"]
    if _is_url(cfg.data):
        notes.append("filtered copy not written for a URL input; use ranked.jsonl's kept column")
    else:
        outputs.append(str(write_filtered_copy(cfg.data, out, {int(rows[i]) for i in range(n) if kept[i]})))
    report = {
        "format": RAY_FILTER_FORMAT, "config": cfg.to_dict(), "ray": rcfg.to_dict(), "encoder_fingerprint": fp,
        "n_pool": n, "n_queries": len(q_ids), "n_selected": int(selected.sum()), "n_written": int(kept.sum()),
        "mode": "keep" if cfg.keep else "remove",
        "selection": {"threshold": cfg.threshold} if cfg.threshold is not None else {"fraction": cfg.fraction},
        "score_quantiles": {str(q): float(np.quantile(scores, q)) for q in (0.0, 0.1, 0.5, 0.9, 1.0)},
        "outputs": outputs, "ood_reference": {}, "queries_ood": 0, "pool_ood": 0, "notes": notes,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(out / "filter_config.json", json.dumps(cfg.to_dict(), indent=1))
    atomic_write_text(out / "ray_config.json", json.dumps(rcfg.to_dict(), indent=1))
    atomic_write_text(out / "report.json", json.dumps(report, indent=1))
    atomic_write_text(out / "manifest.json", json.dumps(dict(header, format=RAY_FILTER_FORMAT, n=n, complete=True), indent=1))
    return out


def read_ray_scores(root: str | Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, rows, scores) of a ``filter --ray`` output, in source-row order."""
    t = _read_parquet_dir(Path(root) / "scores", ["id", "row", "error", "score"])
    valid, _ = _split_errors(t, str(root), True, None)
    return (valid.column("id").to_pylist(), np.asarray(valid.column("row").to_numpy()),
            np.asarray(valid.column("score").to_numpy(), dtype=np.float64))
