"""Stage 4a: stream a records file through an influence encoder into a sharded, resumable embedding store.

``embed_file(EmbedConfig(...))`` is what ``influcoder embed`` runs; ``influcoder embed --ray``
(:func:`influcoder.search.ray_backend.embed_with_ray`) writes the same store with a pool of Ray actors. Both
run the same two passes, built from the functions of this module:

1. **Plan** (:func:`plan_rows`): stream the file, validate every row (:func:`check_row`) and keep only
   the ids and source rows of the valid records (bad input stops here, before any model runs; with
   ``skip_invalid`` bad rows are listed instead). Store shard ``i`` holds valid records
   ``[i·shard_size, (i+1)·shard_size)``.
2. **Embed** (:func:`iter_shards`, :func:`embed_records`): stream the rows again, build the records of
   each shard still to do, encode them in length-sorted batches, L2-normalise in float32, cast to the
   storage dtype and write the shard atomically. Memory: the encoder and one shard.

The store is written by :class:`influcoder.teacher.store.StoreWriter`, the writer of gradient stores, with its
own format string, and read back by :func:`open_embeddings` (every consumer: ``index``, ``attribute``,
``filter --pool-embeddings``). Layout of an embedding store folder::

    manifest.json            format influcoder-embedding-store/2; encoder (name, folder, fingerprint),
                             data fingerprint, field mapping, side, dtype, limit, n, shard_size, ids and
                             rows sha256, the shard list (index, start, stop, bytes, sha256), complete,
                             dim, encoder metadata, stats
    ids.json                 the ids of the embedded records, in store order (= file order)
    rows.npy                 their 0-based source rows (int64)
    shards/shard-00000.npy   (n_i × dim) float16 (default) or float32, L2-normalised in float32 first
    invalid.jsonl            rows skipped under ``skip_invalid`` (if any)
    embed_config.json        the :class:`EmbedConfig` used (and ray_config.json for a Ray run)

A shard's file is written to a temporary name, fsynced and renamed before the manifest (itself replaced
atomically) lists it with its checksum; after a kill the manifest lists only whole shards, and the rerun
checks them (size, sha256) and computes exactly the others, in any order — no duplicates, nothing lost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from ..student.loading import encoder_identity, load_encoder, read_encoder_metadata
from ..core.errors import UserError
from ..core.fileio import atomic_save_npy, atomic_write_text, read_manifest
from ..data.records import DataSpec, FieldSpec, InvalidRow, Record, RecordError, row_to_record, file_fingerprint, iter_rows, record_to_text
from ..teacher.store import ShardedMatrix, StoreWriter, open_sharded

__all__ = [
    "EmbedConfig",
    "EmbeddingStore",
    "EmbeddingStoreError",
    "EmbedPlan",
    "embed_file",
    "open_embeddings",
    "open_embedding_writer",
    "finish_embedding_store",
    "plan_rows",
    "check_row",
    "iter_shards",
    "embed_records",
    "encode_sorted",
    "item_length",
    "normalise",
]

FORMAT = "influcoder-embedding-store/2"
MANIFEST = "manifest.json"


class EmbeddingStoreError(UserError):
    """An embedding store that is missing, incomplete, corrupted, or made with another encoder."""


# --------------------------------------------------------------------------------------------- encoding


def item_length(item: Record | str) -> int:
    """Length used to sort items into batches (characters of the text the encoder sees)."""
    return len(record_to_text(item)) if isinstance(item, Record) else len(str(item))


def encode_sorted(
    encoder,
    items: Sequence[Record | str],
    *,
    batch_size: int = 64,
    side: str = "pool",
    on_batch: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Encode ``items`` in batches of similar length; returns float32 (n × dim), rows in input order."""
    n = len(items)
    order = sorted(range(n), key=lambda i: (-item_length(items[i]), i))
    out: np.ndarray | None = None
    for b0 in range(0, n, batch_size):
        idx = order[b0 : b0 + batch_size]
        emb = np.asarray(encoder.encode([items[i] for i in idx], batch_size=len(idx), side=side), dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(idx):
            raise RuntimeError(f"encoder returned shape {emb.shape} for {len(idx)} inputs")
        if out is None:
            out = np.empty((n, emb.shape[1]), dtype=np.float32)
        if not np.all(np.isfinite(emb)):
            bad = idx[int(np.nonzero(~np.all(np.isfinite(emb), axis=1))[0][0])]
            what = f"row {items[bad].row} (id '{items[bad].id}')" if isinstance(items[bad], Record) else f"text {bad}"
            raise UserError(f"{what}: the encoder produced a non-finite embedding")
        out[idx] = emb
        if on_batch is not None:
            on_batch(len(idx))
    if out is None:
        raise UserError("nothing to encode")
    return out


# ----------------------------------------------------------------------------------------- config


@dataclass
class EmbedConfig:
    """Everything that defines an embedding store (shared by ``influcoder embed`` and the Python API)."""

    encoder: str
    """Encoder folder (``influcoder train --out``) or the packaged short name ``minilm-l6``."""
    data: DataSpec
    """The records to embed: a file (.jsonl, .json, .csv, .parquet, optionally .gz) and how to read it (a path
    alone is read with the default fields); rows skipped under data.skip_invalid are listed in invalid.jsonl."""
    out: str
    """Store folder (created; an unfinished store there with the same settings is resumed)."""
    side: str = "pool"
    """Which encoder side formats the texts: ``pool`` (training examples) or ``query``."""
    dtype: str = "float16"
    """Storage precision of the embeddings: float16 or float32 (computed at ``precision``)."""
    batch_size: int = 64
    """Examples per encoder batch (batches are formed from length-sorted records)."""
    shard_size: int = 4096
    """Records per shard: the unit of streaming, atomic writing and resume."""
    overwrite: bool = False
    """Delete an existing store at ``out`` first."""
    device: str = "auto"
    """Device of the encoder's forward passes: auto (CUDA when present, else cpu), cpu, cuda or cuda:N."""
    precision: str = "auto"
    """Precision of the encoder's forward passes: auto (bfloat16 where the device computes it natively,
    float32 elsewhere), float32 or bfloat16."""

    def __post_init__(self):
        from ..core.hardware import check_compute

        check_compute(self.device, self.precision)
        self.data = DataSpec.of(self.data)
        errs = []
        if self.side not in ("pool", "query"):
            errs.append("side must be pool or query")
        if self.dtype not in ("float16", "float32"):
            errs.append("dtype must be float16 or float32")
        if self.batch_size < 1 or self.shard_size < 1:
            errs.append("batch_size and shard_size must be ≥ 1")
        if errs:
            raise UserError("; ".join(errs))

    def field_spec(self) -> FieldSpec:
        return self.data.field_spec()

    def to_dict(self) -> dict:
        return asdict(self)


def embed_records(encoder, records: Sequence[Record | str], *, batch_size: int, side: str, dtype: str,
                  on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """The stored rows of one shard: :func:`encode_sorted`, L2-normalised in float32, cast to ``dtype``."""
    emb = encode_sorted(encoder, records, batch_size=batch_size, side=side, on_batch=on_batch)
    return np.ascontiguousarray(normalise(emb).astype(dtype))


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float32 (zero rows left at zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


# ---------------------------------------------------------------------------------------- pass 1: plan


@dataclass
class EmbedPlan:
    """What pass 1 keeps of the data: ids and source rows of the records to embed, and the bad rows."""

    ids: list[str]
    rows: np.ndarray
    invalid: list[InvalidRow]


def check_row(path: str | Path, row: int, obj: dict, spec: FieldSpec) -> tuple:
    """``(row, id, None, None)`` for a row that makes a valid record, else ``(row, None, field, problem)``
    (plain tuples, so that Ray workers can send them to the driver)."""
    try:
        return (row, row_to_record(Path(path), row, obj, spec).id, None, None)
    except RecordError as e:
        return (row, None, e.field, e.problem)


def plan_rows(checked: Iterable[tuple], data: str | Path, spec: FieldSpec, *, skip_invalid: bool = False,
              limit: int | None = None) -> EmbedPlan:
    """Pass 1 from :func:`check_row` results in file order: the first bad row or duplicate id raises a
    :class:`RecordError` naming file, row and field, unless ``skip_invalid`` (then it is listed); rows after
    the first ``limit`` valid ones are not looked at. A result with a fifth element ``True`` is a row that
    cannot be read at all (invalid JSON) and raises even with ``skip_invalid``, as :func:`iter_rows` does."""
    ids: list[str] = []
    rows: list[int] = []
    invalid: list[InvalidRow] = []
    seen: set[str] = set()
    for row, rid, field, problem, *fatal in checked:
        if limit is not None and len(ids) >= limit:
            break
        if rid is not None and rid in seen:
            field, problem = spec.id, f"duplicate id '{rid}'"
        elif rid is not None:
            seen.add(rid)
            ids.append(rid)
            rows.append(row)
            continue
        if not skip_invalid or (fatal and fatal[0]):
            raise RecordError(data, row, field, problem)
        invalid.append(InvalidRow(str(data), row, field, problem))
    if not ids:
        raise UserError(f"{data}: no valid records to embed" + (f" ({len(invalid)} invalid rows)" if invalid else ""))
    return EmbedPlan(ids, np.asarray(rows, dtype=np.int64), invalid)


# --------------------------------------------------------------------------------------- pass 2: shards


def iter_shards(rows: Iterable[tuple[int, dict]], data: str | Path, spec: FieldSpec, plan: EmbedPlan,
                shard_size: int, wanted: Iterable[int]) -> Iterator[tuple[int, list[Record]]]:
    """Pass 2: ``(shard, records)`` for each wanted shard, in order, from ``(row, dict)`` pairs in file
    order — the whole file, or just the rows around the wanted shards. Rows that pass 1 left out are
    skipped; each record's id is checked against the plan (the data must not change in between)."""
    wanted = set(wanted)
    n = len(plan.ids)
    buf: dict[int, list[Record]] = {}
    for row, obj in rows:
        k = int(np.searchsorted(plan.rows, row))
        if k >= n or plan.rows[k] != row:
            continue
        shard = k // shard_size
        if shard not in wanted:
            continue
        rec = row_to_record(Path(data), row, obj, spec)
        if rec.id != plan.ids[k]:
            raise EmbeddingStoreError(f"{data}, row {row}: id '{rec.id}' but '{plan.ids[k]}' when the run started; "
                                      "the data changed while embedding — rerun")
        buf.setdefault(shard, []).append(rec)
        if k == min(n, (shard + 1) * shard_size) - 1:
            yield shard, buf.pop(shard)
            wanted.discard(shard)
            if not wanted:
                return
    if wanted:
        raise EmbeddingStoreError(f"{data} changed while embedding: shards {sorted(wanted)[:10]} no longer complete; rerun")


# ------------------------------------------------------------------------------------------ writing


def resolved_precision(cfg) -> str:
    """The forward precision ``cfg.precision`` resolves to on ``cfg.device`` here."""
    from ..core.hardware import resolve

    return resolve(cfg.device, cfg.precision)[1]


def store_header(cfg: EmbedConfig, data_fingerprint: dict) -> dict:
    """Everything that defines an embedding store's content (compared when a store is resumed)."""
    enc = encoder_identity(cfg.encoder)
    return {
        "encoder": enc,
        "data": data_fingerprint,
        "fields": dataclasses.asdict(cfg.field_spec()),
        "side": cfg.side,
        "dtype": cfg.dtype,
        "precision": resolved_precision(cfg),  # the forward's, resolved (auto → float32 or bfloat16)
        "limit": cfg.data.limit,
        "skip_invalid": cfg.data.skip_invalid,
    }


def open_embedding_writer(cfg: EmbedConfig, plan: EmbedPlan, data_fingerprint: dict | None = None) -> StoreWriter:
    """Create (or resume) the store at ``cfg.out`` for ``plan``: the one writer of embedding stores
    (``embed`` writes its shards through it; a Ray driver lists the shards its actors write)."""
    out = Path(cfg.out)
    if cfg.overwrite and out.exists():
        if (out / MANIFEST).exists() or not any(out.iterdir()):
            shutil.rmtree(out)
        else:
            raise UserError(f"{out} exists and is not an embedding store; refusing to delete it")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise EmbeddingStoreError(f"{out} exists and is not an embedding store; use another --out folder")
    if (out / MANIFEST).exists():
        _read_manifest(out)  # another kind of folder (or an older format) is refused with its own message
    header = store_header(cfg, data_fingerprint or file_fingerprint(cfg.data.path))
    header["rows_sha256"] = hashlib.sha256(np.ascontiguousarray(plan.rows, dtype=np.int64).tobytes()).hexdigest()
    writer = StoreWriter(out, header, plan.ids, cfg.shard_size, cfg.dtype, fmt=FORMAT, error=EmbeddingStoreError)
    if not writer.complete:
        atomic_save_npy(out / "rows.npy", np.ascontiguousarray(plan.rows, dtype=np.int64))
        atomic_write_text(out / "embed_config.json", json.dumps(cfg.to_dict(), indent=1))
    return writer


def finish_embedding_store(writer: StoreWriter, cfg: EmbedConfig, plan: EmbedPlan, stats: dict) -> Path:
    """Write invalid.jsonl and mark the store complete, with its dimension and the encoder metadata."""
    out = writer.root
    if plan.invalid:
        atomic_write_text(out / "invalid.jsonl", "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in plan.invalid))
    first = min(writer.shards, key=lambda s: s["index"])
    dim = int(np.load(out / "shards" / first["file"], mmap_mode="r").shape[1])
    stats = dict(stats, n_invalid=len(plan.invalid),
                 bytes_per_example=round(sum(s["bytes"] for s in writer.shards) / len(plan.ids), 2))
    writer.finish(stats, extra={"dim": dim, "encoder_metadata": read_encoder_metadata(cfg.encoder)})
    return out


# ------------------------------------------------------------------------------------------ reading


@dataclass
class EmbeddingStore:
    """A finished embedding store opened for reading (shards memory-mapped)."""

    root: Path
    manifest: dict
    ids: list[str]
    rows: np.ndarray
    """0-based source-file row of each embedding."""
    data: ShardedMatrix
    """(n × dim) stored rows (float16 or float32), memory-mapped shard by shard."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["encoder"]["fingerprint"]

    @property
    def shards(self) -> list[np.ndarray]:
        """Each shard as a read-only memory map, in row order."""
        return [self.data.shard(i) for i in range(self.data.n_shards)]

    def iter_blocks(self, block_rows: int = 65536) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, float32 rows)`` blocks, each row re-normalised to unit length."""
        start = 0
        for sh in self.shards:
            for a in range(0, sh.shape[0], block_rows):
                block = np.asarray(sh[a : a + block_rows], dtype=np.float32)
                yield start + a, normalise(block)
            start += sh.shape[0]

    def matrix(self) -> np.ndarray:
        """All embeddings as one float32 (n × dim) array with unit-length rows."""
        out = np.empty((len(self), self.dim), dtype=np.float32)
        for start, block in self.iter_blocks():
            out[start : start + block.shape[0]] = block
        return out


def _read_manifest(root: Path) -> dict:
    try:
        return read_manifest(root, MANIFEST, FORMAT, EmbeddingStoreError, "embedding store",
                             f"not an embedding store (no {MANIFEST}); make one with `influcoder embed`")
    except EmbeddingStoreError as e:
        fmt = json.loads((root / MANIFEST).read_text()).get("format") if "unknown" in str(e) else None
        if isinstance(fmt, str) and fmt.startswith("influcoder-embedding-store/") or fmt == "influcoder-ray-embeddings/1":
            raise EmbeddingStoreError(f"{root}: embedding store of an older influcoder (format {fmt}); re-embed "
                                      "(`influcoder embed ... --overwrite`)") from None
        raise


def open_embeddings(root: str | Path, *, verify: bool = False) -> EmbeddingStore:
    """Open a complete store (written by ``embed`` or ``embed --ray``); ``verify`` re-checks every shard's
    sha256 (sizes, shapes and the ids/rows checksums always)."""
    root = Path(root)
    _read_manifest(root)
    m, ids, data = open_sharded(root, FORMAT, EmbeddingStoreError, "embedding store", "influcoder embed", verify=verify)
    try:
        rows = np.load(root / "rows.npy")
    except (OSError, ValueError) as e:
        raise EmbeddingStoreError(f"{root / 'rows.npy'}: missing or unreadable ({e}); re-embed") from None
    if hashlib.sha256(np.ascontiguousarray(rows, dtype=np.int64).tobytes()).hexdigest() != m["rows_sha256"]:
        raise EmbeddingStoreError(f"{root / 'rows.npy'}: does not match the manifest (corrupted?); re-embed")
    if data.shape[1] != m["dim"]:
        raise EmbeddingStoreError(f"{root}: shards hold {data.shape[1]}-d rows, the manifest says {m['dim']}")
    return EmbeddingStore(root, m, ids, rows.astype(np.int64), data)


# ------------------------------------------------------------------------------------------ local run


def embed_file(
    cfg: EmbedConfig,
    *,
    progress: bool = True,
    encoder=None,
    on_shard: Callable[[int], None] | None = None,
) -> Path:
    """Build (or resume) the embedding store described by ``cfg``; returns its folder.

    ``encoder`` may be passed to reuse an already loaded one (it must be ``cfg.encoder``); ``on_shard(i)``
    is called after shard ``i`` is listed in the manifest."""
    t_start = time.perf_counter()
    data = Path(cfg.data.path)
    spec = cfg.field_spec()
    plan = plan_rows((check_row(data, row, obj, spec) for row, obj in iter_rows(data)), data, spec,
                     skip_invalid=cfg.data.skip_invalid, limit=cfg.data.limit)
    writer = open_embedding_writer(cfg, plan)
    if writer.complete:
        return writer.root
    todo = writer.todo()
    if encoder is None:
        encoder = load_encoder(cfg.encoder, device=cfg.device, precision=cfg.precision, stage="embed")

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("embedding"), BarColumn(), TextColumn("{task.completed} ex"),
               TextColumn("{task.fields[rate]} ex/s"), TimeElapsedColumn()]
    t0 = time.perf_counter()
    done_now = 0
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("embed", total=sum(b - a for a, b in map(writer.shard_rows, todo)), rate="-")

        def on_batch(k: int):
            nonlocal done_now
            done_now += k
            bar.update(task, advance=k, rate=f"{done_now / max(time.perf_counter() - t0, 1e-9):.1f}")

        for index, recs in iter_shards(iter_rows(data), data, spec, plan, cfg.shard_size, todo):
            writer.write_shard(index, embed_records(encoder, recs, batch_size=cfg.batch_size, side=cfg.side,
                                                    dtype=cfg.dtype, on_batch=on_batch))
            if on_shard is not None:
                on_shard(index)
    elapsed = time.perf_counter() - t0
    return finish_embedding_store(writer, cfg, plan, {
        "examples_per_s_last_run": (done_now / elapsed) if done_now else None,
        "rows_computed_last_run": done_now,
        "seconds_last_run": round(time.perf_counter() - t_start, 2),
    })
