"""Embedding and filtering on a Ray cluster (``influcoder embed --ray`` / ``influcoder filter --ray``).

Ray is an optional extra (``pip install influcoder[ray]``); this module imports it only inside functions,
and nothing else in the package imports this module at import time.

``embed --ray`` writes the embedding store ``influcoder embed`` writes (:mod:`influcoder.search.embed`: same
manifest, ids, rows and shard files, read by ``index``, ``attribute`` and ``filter --pool-embeddings``
through :func:`influcoder.search.embed.open_embeddings`), with the same two passes:

1. Ray Data reads the input (JSONL lines with ``read_text``, Parquet with ``read_parquet``; a local path or
   any URL pyarrow or fsspec understands, e.g. ``s3://``, ``gs://``, ``file://``; local .json/.csv are read
   on the driver) into blocks that stay in the object store, numbered with the 0-based source row of
   :func:`influcoder.data.records.iter_rows`. ``map_batches`` checks every row with
   :func:`influcoder.search.embed.check_row`; the driver plans the store from the results with
   :func:`influcoder.search.embed.plan_rows` (first bad row or duplicate id, ``--skip-invalid``, ``--limit``: as
   locally).
2. The driver opens the store with :func:`influcoder.search.embed.open_embedding_writer` (which resumes an
   unfinished one) and hands each missing shard to a pool of encoder actors (one model load each,
   ``cpus_per_actor`` / ``gpus_per_actor``). An actor builds the shard's records from the blocks that hold
   them (:func:`influcoder.search.embed.iter_shards`), embeds them (:func:`influcoder.search.embed.embed_records`) and
   writes the shard file (:func:`influcoder.teacher.store.write_shard_file`); the driver lists each finished shard
   in the manifest as it arrives, and marks the store complete last. A killed run resumes from its
   finished shards.

``filter --ray`` embeds the pool that way into ``OUT/pool_embeddings`` (the store the local filter
makes) and then runs the local filter's scoring and report code (:func:`influcoder.search.filter.filter_store`)
on it: the same scores.jsonl, ranked.jsonl, ood.jsonl, filtered copy and report.json (plus the Ray settings).
"""

from __future__ import annotations

import bisect
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..core.errors import UserError

__all__ = ["RayConfig", "require_ray", "embed_with_ray", "filter_with_ray"]

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
    """Run on Ray Data at this cluster address (``ray://host:10001``, ``host:6379`` or ``auto``); ``local`` (a bare
    ``--ray``): RAY_ADDRESS or a local instance. Needs pip install influcoder[ray]. Commands: not given = not on Ray."""
    num_actors: int = 2
    """Encoder actors (each loads the model once and embeds whole store shards)."""
    cpus_per_actor: float = 1.0
    """CPUs reserved per encoder actor."""
    gpus_per_actor: float = 0.0
    """GPUs per encoder actor (0 = CPU; the actor's encoder then runs on its GPU)."""
    rows_per_batch: int = 1024
    """Rows per ``map_batches`` call of the validation pass (the encoding unit is one store shard)."""
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
    from ..data.records import file_fingerprint

    return file_fingerprint(path)


def _read_numbered(ray, path: str, rcfg: RayConfig) -> tuple[list, list[tuple[int, int]]]:
    """The file's rows as blocks in the object store (refs, in file order), each a pyarrow table with the
    0-based source row in column ``ROW``, and each block's ``(first row, rows)``.

    JSONL: one row per line (column ``line``; blank lines kept, so numbering equals iter_rows). Parquet: the
    file's columns. .json / .csv are read on the driver by :func:`records.iter_rows` and handed to Ray."""
    import pyarrow as pa

    suf = _suffix(path)
    kw = {} if rcfg.read_blocks is None else {"override_num_blocks": rcfg.read_blocks}
    if not _is_url(path) and not Path(path).exists():
        raise UserError(f"{path}: file not found")
    rpath, fs = _filesystem(path)
    if suf in (".json", ".json.gz", ".csv", ".csv.gz") and not _is_url(path):
        from ..data.records import iter_rows

        items = [{ROW: i, "line": json.dumps(obj, ensure_ascii=False, default=str)} for i, obj in iter_rows(path)]
        refs = ray.data.from_items(items, **kw).to_arrow_refs()

        @ray.remote
        def span(t):
            rows = t.column(ROW).to_numpy()
            return (int(rows[0]), len(rows)) if len(rows) else (0, 0)

        return refs, ray.get([span.remote(r) for r in refs])
    if suf in (".jsonl", ".jsonl.gz"):
        ds = ray.data.read_text(rpath, drop_empty_lines=False, filesystem=fs, **kw)
        ds = ds.rename_columns({"text": "line"})
    elif suf == ".parquet":
        ds = ray.data.read_parquet(rpath, filesystem=fs, **kw)
    else:
        raise UserError(f"{path}: --ray reads .jsonl, .jsonl.gz and .parquet (local or URL), and local .json/.csv files")
    refs = ds.to_arrow_refs()  # blocks in file order (materialised once in the object store)

    @ray.remote
    def count(t):
        return t.num_rows

    @ray.remote
    def number(t, offset):
        return t.append_column(ROW, pa.array(np.arange(offset, offset + t.num_rows, dtype=np.int64)))

    counts = [int(c) for c in ray.get([count.remote(r) for r in refs])]
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64).tolist() if counts else []
    return [number.remote(r, o) for r, o in zip(refs, offsets)], list(zip(offsets, counts))


class _Unreadable:
    """A JSONL line that is not a JSON object (an error even with --skip-invalid, as in records.iter_rows)."""

    def __init__(self, problem: str):
        self.problem = problem


def _block_rows(table) -> Iterator[tuple[int, Any]]:
    """``(row, dict)`` of a numbered block, in order; blank JSONL lines are skipped (as iter_rows does) and
    a line that is not a JSON object gives ``(row, _Unreadable)``."""
    rows = table.column(ROW).to_pylist()
    if "line" not in table.column_names:
        yield from zip(rows, table.drop([ROW]).to_pylist())
        return
    for r, line in zip(rows, table.column("line").to_pylist()):
        if line is None or not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield r, _Unreadable(f"invalid JSON ({e.msg} at column {e.colno})")
            continue
        yield r, (obj if isinstance(obj, dict) else _Unreadable(f"expected a JSON object, got {type(obj).__name__}"))


def _check_batch(batch, data_label: str, spec):
    """``map_batches`` UDF of pass 1: :func:`embed.check_row` for every row of a numbered batch."""
    import pyarrow as pa

    from .embed import check_row

    out = []
    for r, obj in _block_rows(batch):
        out.append((r, None, None, obj.problem, True) if isinstance(obj, _Unreadable)
                   else check_row(data_label, r, obj, spec) + (False,))
    cols = list(zip(*out)) if out else [[]] * 5
    schema = pa.schema([("row", pa.int64()), ("id", pa.string()), ("field", pa.string()), ("problem", pa.string()),
                        ("fatal", pa.bool_())])
    return pa.table([pa.array(list(c), type=f.type) for c, f in zip(cols, schema)], schema=schema)


def _plan(ray, cfg, rcfg: RayConfig, refs):
    """Pass 1 on Ray: check the rows where they are, plan the store on the driver (as embed_file does)."""
    import pyarrow as pa

    from .embed import plan_rows

    spec = cfg.field_spec()
    checked = ray.data.from_arrow_refs(refs).map_batches(
        _check_batch, fn_kwargs={"data_label": str(cfg.data.path), "spec": spec}, batch_size=rcfg.rows_per_batch,
        batch_format="pyarrow")
    tables = [t for t in ray.get(checked.to_arrow_refs()) if t.num_rows]
    if not tables:
        raise UserError(f"{cfg.data.path}: no valid records to embed")
    t = pa.concat_tables(tables)
    t = t.take(np.argsort(t.column("row").to_numpy(), kind="stable"))
    cols = [t.column(c).to_pylist() for c in ("row", "id", "field", "problem", "fatal")]
    return plan_rows(zip(*cols), cfg.data.path, spec, skip_invalid=cfg.data.skip_invalid, limit=cfg.data.limit)


class _ShardActor:
    """Ray actor of pass 2: loads the encoder once, then embeds and writes whole store shards."""

    def __init__(self, encoder: str, root: str, data_label: str, spec, side: str, batch_size: int, dtype: str,
                 device: str = "cpu", precision: str = "float32"):
        from ..student.loading import load_encoder

        # precision: the one the driver resolved and wrote into the store's header (every shard alike)
        self.encoder = load_encoder(encoder, device=device, precision=precision)
        self.root, self.data_label, self.spec = root, data_label, spec
        self.side, self.batch_size, self.dtype = side, batch_size, dtype

    def embed_shard(self, index: int, start: int, ids: list[str], rows: np.ndarray, blocks: list) -> dict:
        import ray

        from .embed import EmbedPlan, embed_records, iter_shards
        from ..data.records import RecordError
        from ..teacher.store import write_shard_file

        try:
            tables = ray.get(blocks)
            pairs = (p for t in tables for p in _block_rows(t))
            # this shard's slice of the plan, as a one-shard plan
            (_, recs), = iter_shards(pairs, self.data_label, self.spec, EmbedPlan(ids, np.asarray(rows), []), len(ids), [0])
            emb = embed_records(self.encoder, recs, batch_size=self.batch_size, side=self.side, dtype=self.dtype)
            return write_shard_file(self.root, index, start, emb, self.dtype, tag=f"-{os.getpid()}")
        except RecordError as e:  # its constructor takes four arguments: send the sentence as a plain UserError
            raise UserError(str(e)) from None


def embed_with_ray(cfg, rcfg: RayConfig, *, on_shard: Callable[[int], None] | None = None) -> Path:
    """``influcoder embed --ray``: build (or resume) the embedding store of an :class:`EmbedConfig` on Ray.

    ``on_shard(i)`` is called on the driver after shard ``i`` is listed in the manifest."""
    from .embed import finish_embedding_store, open_embedding_writer
    from ..core.fileio import atomic_write_text

    ray = require_ray()
    t_start = time.perf_counter()
    cfg.field_spec()  # an unknown preset or a missing file fails before Ray starts
    if not _is_url(cfg.data.path) and not Path(cfg.data.path).exists():
        raise UserError(f"{cfg.data.path}: file not found")
    data_fp = _data_fingerprint(cfg.data.path)
    started = _connect(ray, rcfg)
    actors: list = []
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        refs, spans = _read_numbered(ray, cfg.data.path, rcfg)
        plan = _plan(ray, cfg, rcfg, refs)
        writer = open_embedding_writer(cfg, plan, data_fp)
        if writer.complete:
            return writer.root
        todo = writer.todo()
        t0 = time.perf_counter()
        done_now = 0
        if todo:
            from ray.util import ActorPool

            device = "cuda" if rcfg.gpus_per_actor > 0 else "cpu"
            actor_cls = ray.remote(_ShardActor).options(num_cpus=rcfg.cpus_per_actor, num_gpus=rcfg.gpus_per_actor or None)
            actors = [actor_cls.remote(cfg.encoder, str(writer.root.resolve()), str(cfg.data.path), cfg.field_spec(), cfg.side,
                                       cfg.batch_size, cfg.dtype, device, writer.header["precision"]) for _ in range(min(rcfg.num_actors, len(todo)))]

            firsts = [first for first, _ in spans]  # blocks are in row order

            def work(i):
                a, b = writer.shard_rows(i)
                lo, hi = int(plan.rows[a]), int(plan.rows[b - 1])
                j = max(0, bisect.bisect_right(firsts, lo) - 1)
                blocks = []
                while j < len(refs) and spans[j][0] <= hi:
                    if spans[j][1] and spans[j][0] + spans[j][1] > lo:
                        blocks.append(refs[j])
                    j += 1
                return i, a, plan.ids[a:b], plan.rows[a:b], blocks

            pool = ActorPool(actors)
            try:
                for entry in pool.map_unordered(lambda actor, args: actor.embed_shard.remote(*args), [work(i) for i in todo]):
                    writer.record_shard(entry)
                    done_now += entry["stop"] - entry["start"]
                    if on_shard is not None:
                        on_shard(entry["index"])
            except ray.exceptions.RayError as e:  # a UserError raised in an actor arrives wrapped
                cause = _user_error_in(e)
                if cause is not None:
                    raise cause from None
                raise
        elapsed = time.perf_counter() - t0
        atomic_write_text(writer.root / "ray_config.json", json.dumps(rcfg.to_dict(), indent=1))
        return finish_embedding_store(writer, cfg, plan, {
            "examples_per_s_last_run": (done_now / elapsed) if done_now else None,
            "rows_computed_last_run": done_now,
            "seconds_last_run": round(time.perf_counter() - t_start, 2),
            "ray_actors": len(actors),
        })
    finally:
        for a in actors:  # no actor of this run may still write into the store after it returns or fails
            ray.kill(a)
        if started:
            ray.shutdown()


def filter_with_ray(cfg, rcfg: RayConfig) -> Path:
    """``influcoder filter --ray``: embed the pool file of a :class:`FilterConfig` on Ray into
    ``OUT/pool_embeddings`` (the store the local filter makes, resumable), then score it and write every
    output with the local filter's code (:func:`influcoder.search.filter.filter_store`)."""
    from .filter import filter_store, pool_embed_config
    from .embed import open_embeddings
    from ..core.fileio import atomic_write_text

    if not cfg.data.path:
        raise UserError("--ray filters a pool file: give --data (pool texts on the command line need no cluster)")
    if cfg.pool_embeddings:
        raise UserError("--pool-embeddings reuses a finished store: nothing to run on Ray; drop --ray")
    t0 = time.perf_counter()
    store = open_embeddings(embed_with_ray(pool_embed_config(cfg), rcfg))
    out = filter_store(cfg, store, t0=t0, report_extra={"ray": rcfg.to_dict()})
    atomic_write_text(out / "ray_config.json", json.dumps(rcfg.to_dict(), indent=1))
    return out


def _connect(ray, rcfg: RayConfig) -> bool:
    """ray.init for the configured address; returns whether this call started (and should stop) Ray."""
    if ray.is_initialized():
        return False
    address = None if rcfg.address in (None, "", "local") else rcfg.address
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    return True


def _user_error_in(e: BaseException) -> UserError | None:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, UserError):
            return e
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return None
