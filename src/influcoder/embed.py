"""Stage 4a: stream a records file through an influence encoder into a sharded, resumable embedding store.

``embed_file(EmbedConfig(...))`` is what ``influcoder embed`` runs. The input is read with
:func:`records.iter_records` one shard (``shard_size`` records) at a time, so memory is bounded by one
shard whatever the file size. Each shard is sorted by text length and cut into batches (little padding
waste), encoded, put back in file order and written atomically.

Layout of an embedding store folder::

    manifest.json            format, encoder (name, folder, fingerprint, dim, metadata), data fingerprint,
                             field mapping, side, dtype, shard list (rows, files, sha256), ``complete``
    shards/emb-00000.npy     (n_i × dim) float16 (default) or float32, L2-normalised in float32 first
    shards/ids-00000.json    {"ids": [...], "rows": [...]}: ids and 0-based source rows of those embeddings
    invalid.jsonl            rows skipped under ``skip_invalid`` (if any)
    embed_config.json        the :class:`EmbedConfig` used

A shard's files are written to temporary names, fsynced and renamed before the manifest (itself replaced
atomically) lists them; after a kill, the manifest lists only whole shards, the rerun skips exactly those
records (checking their ids) and computes the rest — no duplicates, nothing lost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from . import __version__
from .errors import UserError
from .fileio import atomic_write as _atomic_write_bytes
from .fileio import atomic_write_text, read_manifest
from .fileio import sha256_file as _sha256_file
from .records import FieldSpec, InvalidRow, Record, file_fingerprint, iter_records, record_to_text

__all__ = [
    "EmbedConfig",
    "EmbeddingStore",
    "EmbeddingStoreError",
    "embed_file",
    "open_embeddings",
    "load_encoder",
    "encoder_fingerprint",
    "encode_sorted",
    "item_length",
]

FORMAT = "influcoder-embedding-store/1"
MANIFEST = "manifest.json"

# Files of a (sentence-transformers / transformers) model folder that determine its embeddings.
_FINGERPRINT_NAMES = {
    "config.json", "config_sentence_transformers.json", "modules.json", "sentence_bert_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
    "merges.txt", "spiece.model", "sentencepiece.bpe.model", "added_tokens.json",
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


class EmbeddingStoreError(UserError):
    """An embedding store that is missing, incomplete, corrupted, or made with another encoder."""


# --------------------------------------------------------------------------------------------- encoder


def _resolve_encoder_path(name: str) -> Path:
    from .models import resolve_encoder

    path = Path(resolve_encoder(str(name)))
    if not path.is_dir():
        raise UserError(
            f"encoder '{name}' is not a folder here; give a trained encoder folder (influcoder train --out) or 'minilm-l6'"
        )
    return path


def encoder_fingerprint(name_or_path: str | Path) -> dict[str, Any]:
    """sha256 over the names and bytes of the files that determine an encoder's embeddings.

    Weights (``*.safetensors``/``*.bin``) and configuration/tokenizer files of the folder and of the
    sentence-transformers module folders it lists in ``modules.json``; README, logs, metrics and
    training checkpoints are ignored, so re-reading the same model always gives the same fingerprint.
    """
    root = _resolve_encoder_path(str(name_or_path))
    folders = [root]
    modules = root / "modules.json"
    if modules.exists():
        try:
            for m in json.loads(modules.read_text()):
                sub = m.get("path") or ""
                if sub and (root / sub).is_dir():
                    folders.append(root / sub)
        except (json.JSONDecodeError, AttributeError, TypeError):
            pass
    files: list[Path] = []
    for folder in folders:
        for p in sorted(folder.iterdir()):
            if p.is_file() and (p.name in _FINGERPRINT_NAMES or p.name.endswith(_WEIGHT_SUFFIXES)):
                files.append(p)
    if not any(p.name.endswith(_WEIGHT_SUFFIXES) for p in files):
        raise UserError(f"{root}: no model weights (*.safetensors / *.bin) found; not an encoder folder")
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        h.update(b"\0")
    return {"sha256": h.hexdigest(), "files": [p.relative_to(root).as_posix() for p in files]}


def load_encoder(name: str):
    """Load an :class:`influcoder.encoder.InfluenceEncoder` (folder or ``minilm-l6``)."""
    from .encoder import InfluenceEncoder

    _resolve_encoder_path(name)
    try:
        return InfluenceEncoder.from_pretrained(name)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load encoder '{name}': {e}") from None


def encoder_metadata(encoder) -> dict[str, Any]:
    meta = getattr(encoder, "metadata", None)
    return dict(meta) if isinstance(meta, dict) else {}


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
    data: str
    """Records file (.jsonl, .json, .csv, .parquet, optionally .gz)."""
    out: str
    """Store folder (created; an unfinished store there with the same settings is resumed)."""
    side: str = "pool"
    """Which encoder side formats the texts: ``pool`` (training examples) or ``query``."""
    preset: str | None = None
    """Named field mapping: alpaca, dolly, bbh, gsm8k, xstest-completions, prompt-response."""
    prompt_field: str | None = None
    """Prompt field(s), comma-separated to join several (default: prompt, or the preset's)."""
    response_field: str | None = None
    """Response field (default: response, or the preset's)."""
    messages_field: str | None = None
    """Chat-style messages field (default: messages)."""
    id_field: str | None = None
    """Id field (default: id; the row number when absent)."""
    limit: int | None = None
    """Embed only the first N valid records."""
    skip_invalid: bool = False
    """Skip bad rows (listed in invalid.jsonl) instead of stopping at the first."""
    dtype: str = "float16"
    """Storage precision of the embeddings: float16 or float32 (computed in float32 either way)."""
    batch_size: int = 64
    """Examples per encoder batch (batches are formed from length-sorted records)."""
    shard_size: int = 4096
    """Records per shard: the unit of streaming, atomic writing and resume."""
    overwrite: bool = False
    """Delete an existing store at ``out`` first."""

    def __post_init__(self):
        errs = []
        if self.side not in ("pool", "query"):
            errs.append("side must be pool or query")
        if self.dtype not in ("float16", "float32"):
            errs.append("dtype must be float16 or float32")
        if self.batch_size < 1 or self.shard_size < 1:
            errs.append("batch_size and shard_size must be ≥ 1")
        if self.limit is not None and self.limit < 1:
            errs.append("limit must be ≥ 1")
        if errs:
            raise UserError("; ".join(errs))

    def field_spec(self) -> FieldSpec:
        from .records import PRESETS

        if self.preset and self.preset not in PRESETS:
            raise UserError(f"unknown preset '{self.preset}' (choose from {', '.join(PRESETS)})")
        return FieldSpec.from_names(self.prompt_field, self.response_field, self.messages_field, self.id_field, self.preset)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ store


@dataclass
class EmbeddingStore:
    """A finished embedding store opened for reading (shards memory-mapped)."""

    root: Path
    manifest: dict
    ids: list[str]
    rows: np.ndarray
    """0-based source-file row of each embedding."""
    shards: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["encoder"]["fingerprint"]

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


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float32 (zero rows left at zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def _read_manifest(root: Path) -> dict:
    return read_manifest(root, MANIFEST, FORMAT, EmbeddingStoreError, "embedding store",
                         f"not an embedding store (no {MANIFEST}); make one with `influcoder embed`")


def open_embeddings(root: str | Path, *, verify: bool = False) -> EmbeddingStore:
    """Open a complete store; ``verify`` re-checks every file's sha256 (sizes and shapes always)."""
    root = Path(root)
    m = _read_manifest(root)
    if not m.get("complete"):
        raise EmbeddingStoreError(
            f"{root}: embedding store is incomplete ({len(m.get('shards', []))} shards written); rerun the same "
            "`influcoder embed` command to finish it"
        )
    ids: list[str] = []
    rows: list[int] = []
    shards: list[np.ndarray] = []
    for s in m["shards"]:
        ep, ip = root / "shards" / s["file"], root / "shards" / s["ids_file"]
        if not ep.exists() or not ip.exists() or ep.stat().st_size != s["bytes"]:
            raise EmbeddingStoreError(f"{root}: shard {s['index']} is missing or truncated; re-embed")
        if verify and (_sha256_file(ep) != s["sha256"] or _sha256_file(ip) != s["ids_sha256"]):
            raise EmbeddingStoreError(f"{root}: shard {s['index']} fails its checksum; re-embed")
        arr = np.load(ep, mmap_mode="r")
        meta = json.loads(ip.read_text())
        if arr.shape != (s["n"], m["dim"]) or len(meta["ids"]) != s["n"]:
            raise EmbeddingStoreError(f"{root}: shard {s['index']} has shape {arr.shape}, expected ({s['n']}, {m['dim']})")
        shards.append(arr)
        ids.extend(meta["ids"])
        rows.extend(meta["rows"])
    return EmbeddingStore(root, m, ids, np.asarray(rows, dtype=np.int64), shards)


def _chunks(it: Iterable[Record], size: int) -> Iterator[list[Record]]:
    chunk: list[Record] = []
    for rec in it:
        chunk.append(rec)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def embed_file(
    cfg: EmbedConfig,
    *,
    progress: bool = True,
    encoder=None,
    on_shard: Callable[[int], None] | None = None,
) -> Path:
    """Build (or resume) the embedding store described by ``cfg``; returns its folder.

    ``encoder`` may be passed to reuse an already loaded one (it must be ``cfg.encoder``).
    """
    t_start = time.perf_counter()
    out = Path(cfg.out)
    data = Path(cfg.data)
    spec = cfg.field_spec()
    if cfg.overwrite and out.exists():
        if (out / MANIFEST).exists() or not any(out.iterdir()):
            shutil.rmtree(out)
        else:
            raise UserError(f"{out} exists and is not an embedding store; refusing to delete it")
    fp = encoder_fingerprint(cfg.encoder)
    if encoder is None:
        encoder = load_encoder(cfg.encoder)
    header = {
        "format": FORMAT,
        "influcoder_version": __version__,
        "encoder": {"name": cfg.encoder, "path": str(_resolve_encoder_path(cfg.encoder)), "fingerprint": fp["sha256"],
                    "fingerprint_files": fp["files"]},
        "data": file_fingerprint(data),
        "fields": dataclasses.asdict(spec),
        "side": cfg.side,
        "dtype": cfg.dtype,
        "shard_size": cfg.shard_size,
        "limit": cfg.limit,
        "skip_invalid": cfg.skip_invalid,
    }
    header = _jsonable(header)  # tuples → lists, as they read back from the manifest
    out.mkdir(parents=True, exist_ok=True)
    (out / "shards").mkdir(exist_ok=True)
    mpath = out / MANIFEST
    shards: list[dict] = []
    stats: dict = {}
    if mpath.exists():
        old = _read_manifest(out)
        old_header = {k: old.get(k) for k in header if k != "influcoder_version"}
        new_header = {k: v for k, v in header.items() if k != "influcoder_version"}
        if old_header != new_header:
            diff = sorted(k for k in new_header if old_header.get(k) != new_header.get(k))
            raise EmbeddingStoreError(
                f"{out} already holds an embedding store made with other settings (differs in: {', '.join(diff)}); "
                "use another --out folder or --overwrite"
            )
        # keep the longest run of whole shards 0, 1, 2, ... (anything after a damaged shard is recomputed)
        for s in sorted(old.get("shards", []), key=lambda s: s["index"]):
            ep, ip = out / "shards" / s["file"], out / "shards" / s["ids_file"]
            ok = (s["index"] == len(shards) and ep.exists() and ip.exists() and ep.stat().st_size == s["bytes"]
                  and _sha256_file(ep) == s["sha256"] and _sha256_file(ip) == s["ids_sha256"])
            if not ok:
                break
            shards.append(s)
        stats = old.get("stats", {})
        if old.get("complete") and len(shards) == len(old["shards"]):
            return out
    dim: int | None = shards[0]["dim"] if shards else None

    encoder_meta: dict = {}

    def write_manifest(complete: bool = False, n: int | None = None):
        m = dict(header)
        m["encoder_metadata"] = encoder_meta
        m["dim"] = dim
        m["shards"] = shards
        m["complete"] = complete
        m["n"] = n
        m["stats"] = stats
        atomic_write_text(mpath, json.dumps(m, indent=1))

    write_manifest()
    atomic_write_text(out / "embed_config.json", json.dumps(cfg.to_dict(), indent=1))
    # Remove files of shards the manifest does not list (a kill between rename and manifest update).
    listed = {s["file"] for s in shards} | {s["ids_file"] for s in shards}
    for p in (out / "shards").iterdir():
        if p.name not in listed:
            p.unlink()

    n_done = sum(s["n"] for s in shards)
    done_ids = None
    if shards:
        done_ids = []
        for s in shards:
            done_ids.extend(json.loads((out / "shards" / s["ids_file"]).read_text())["ids"])

    invalid: list[InvalidRow] = []
    records = iter_records(data, spec, skip_invalid=cfg.skip_invalid, invalid=invalid)

    def limited(it):
        for i, rec in enumerate(it):
            if cfg.limit is not None and i >= cfg.limit:
                return
            if i < n_done:
                if rec.id != done_ids[i]:
                    raise EmbeddingStoreError(
                        f"{data}, row {rec.row}: id '{rec.id}' differs from the id '{done_ids[i]}' stored at position {i} "
                        f"in {out}; the data changed since the store was started — use --overwrite"
                    )
                continue
            yield rec

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("embedding"), BarColumn(), TextColumn("{task.completed} ex"),
               TextColumn("{task.fields[rate]} ex/s"), TimeElapsedColumn()]
    t0 = time.perf_counter()
    done_now = 0
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("embed", total=cfg.limit - n_done if cfg.limit else None, rate="-")

        def on_batch(k: int):
            nonlocal done_now
            done_now += k
            bar.update(task, advance=k, rate=f"{done_now / max(time.perf_counter() - t0, 1e-9):.1f}")

        for chunk in _chunks(limited(records), cfg.shard_size):
            emb = encode_sorted(encoder, chunk, batch_size=cfg.batch_size, side=cfg.side, on_batch=on_batch)
            if dim is None:
                dim = int(emb.shape[1])
            elif emb.shape[1] != dim:
                raise RuntimeError(f"encoder dimension changed from {dim} to {emb.shape[1]}")
            index = len(shards)
            efile, ifile = f"emb-{index:05d}.npy", f"ids-{index:05d}.json"
            epath, ipath = out / "shards" / efile, out / "shards" / ifile
            _atomic_write_bytes(epath, lambda f: np.save(f, np.ascontiguousarray(normalise(emb).astype(cfg.dtype))))
            atomic_write_text(ipath, json.dumps({"ids": [r.id for r in chunk], "rows": [r.row for r in chunk]}))
            shards.append({"index": index, "file": efile, "ids_file": ifile, "start": n_done, "n": len(chunk),
                           "dim": dim, "bytes": epath.stat().st_size, "sha256": _sha256_file(epath),
                           "ids_sha256": _sha256_file(ipath)})
            n_done += len(chunk)
            write_manifest()
            if on_shard is not None:
                on_shard(index)
    if n_done == 0:
        raise UserError(f"{data}: no valid records to embed" + (f" ({len(invalid)} invalid rows)" if invalid else ""))
    if invalid:
        atomic_write_text(out / "invalid.jsonl", "".join(json.dumps(dataclasses.asdict(r)) + "\n" for r in invalid))
    elapsed = time.perf_counter() - t0
    stats.update({
        "examples_per_s_last_run": (done_now / elapsed) if done_now else None,
        "rows_computed_last_run": done_now,
        "seconds_last_run": round(time.perf_counter() - t_start, 2),
        "n_invalid": len(invalid),
        "bytes_per_example": round(sum(s["bytes"] for s in shards) / n_done, 2),
    })
    encoder_meta.update(_jsonable(encoder_metadata(encoder)))
    write_manifest(complete=True, n=n_done)
    return out


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
