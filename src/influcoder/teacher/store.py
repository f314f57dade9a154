"""Gradient stores: sharded, memory-mappable (n × k) matrices with a JSON manifest.

Layout of a store folder::

    manifest.json          what made the store (model + weight hash, LoRA, projection, dtype, data
                           fingerprint, library version), the shard list with row ranges and sha256,
                           and ``complete`` once every row is written
    ids.json               the example ids, in row order
    shards/shard-00000.npy rows [0, shard_size) as an .npy array (memory-mappable), etc.
    invalid.jsonl          rows skipped under --skip-invalid, with the reason (if any)
    adapter/               the LoRA adapter used (only after a warm-up), to stock queries with

Writing is crash-safe: a shard is written to a temporary file, fsynced and renamed, and only then
recorded (with its checksum) in the manifest, which is itself replaced atomically. After a kill, the
manifest lists exactly the shards that are whole; the rerun recomputes the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .. import __version__
from ..core.errors import UserError
from ..core.fileio import atomic_write_text as _atomic_write_text
from ..core.fileio import read_manifest
from ..core.fileio import sha256_file as _sha256_file

__all__ = ["StoreError", "StoreWriter", "GradientStore", "ShardedMatrix", "open_store", "write_shard_file",
           "COMPAT_KEYS", "check_compatible"]

MANIFEST = "manifest.json"
FORMAT = "influcoder-gradient-store/1"

COMPAT_KEYS = ("model_hash", "adapter_hash", "lora", "projection", "gradient_dim", "layout_hash", "dtype", "loss")
"""Manifest entries that must agree for two stores' gradients to be compared."""

LORA_PROVENANCE = ("adapter", "warmup_steps", "warmup_lr")

EXTRA_KEYS = ("dim", "encoder_metadata")
"""Manifest entries written at :meth:`StoreWriter.finish` and not compared when a store is resumed."""
_NOT_HEADER = ("shards", "complete", "stats") + EXTRA_KEYS
"""Entries of the manifest's ``lora`` block that record where the adapter came from, not what it is."""


class StoreError(UserError):
    """A store that is missing, incomplete, corrupted or incompatible."""


def check_compatible(a: dict, b: dict, what_a: str = "pool store", what_b: str = "query store") -> None:
    """Raise :class:`StoreError` naming the first setting in which two manifests differ."""
    for key in COMPAT_KEYS:
        va, vb = a.get(key), b.get(key)
        if key == "lora" and isinstance(va, dict) and isinstance(vb, dict):
            # where the adapter came from (a warm-up here, or --adapter there) is provenance; the adapter
            # weights themselves are compared through adapter_hash
            va, vb = ({k: v for k, v in d.items() if k not in LORA_PROVENANCE} for d in (va, vb))
        if va != vb:
            raise StoreError(
                f"{what_a} and {what_b} were made with different {key}: {json.dumps(a.get(key))[:200]} vs "
                f"{json.dumps(b.get(key))[:200]}; influence between them would be meaningless"
            )


def shard_file_name(index: int) -> str:
    return f"shard-{index:05d}.npy"


def write_shard_file(root: str | Path, index: int, start: int, rows: np.ndarray, dtype: str = "float32",
                     tag: str = "") -> dict:
    """Write shard ``index`` (rows ``[start, start + len(rows))``) of the store at ``root``: temporary file,
    fsync, rename. Returns the manifest entry (with size and sha256) that :meth:`StoreWriter.record_shard`
    lists. Only touches the shard's own file, so any process that sees ``root`` may call it (torchrun ranks,
    Ray actors); ``tag`` keeps concurrent writers' temporary names apart."""
    name = shard_file_name(index)
    final = Path(root) / "shards" / name
    tmp = final.with_name(f"{name}.tmp{tag}")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(rows, dtype=np.dtype(dtype)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return {"index": int(index), "file": name, "start": int(start), "stop": int(start) + int(rows.shape[0]),
            "bytes": final.stat().st_size, "sha256": _sha256_file(final)}


class StoreWriter:
    """Creates or resumes a store. ``header`` holds everything that defines the store's content.

    Several processes (ranks) can write one store: shard ``i`` belongs to rank ``i % world_size``; each
    rank records its finished shards in ``parts/rank-R.json`` and rank 0 merges them into the manifest
    in :meth:`finish`. ``barrier`` synchronises the ranks (e.g. ``torch.distributed.barrier``).

    Alternatively one process (a Ray driver) owns the manifest while workers write shard files with
    :func:`write_shard_file`; the owner lists each returned entry with :meth:`record_shard`.

    ``fmt`` and ``error`` name the kind of store (gradient store by default; embedding stores use the same
    writer with their own format string and error class)."""

    def __init__(self, root: str | Path, header: dict, ids: list[str], shard_size: int, dtype: str = "float32",
                 *, rank: int = 0, world_size: int = 1, barrier: Callable[[], None] | None = None,
                 fmt: str = FORMAT, error: type[UserError] = StoreError):
        self.root = Path(root)
        self.shard_size = int(shard_size)
        self.dtype = np.dtype(dtype)
        self.ids = list(ids)
        self.rank, self.world_size = int(rank), int(world_size)
        self._barrier = barrier or (lambda: None)
        self._error = error
        if len(set(self.ids)) != len(self.ids):
            raise error("duplicate example ids")
        self.header = dict(header)
        self.header.update(
            format=fmt,
            influcoder_version=__version__,
            n=len(self.ids),
            shard_size=self.shard_size,
            store_dtype=self.dtype.name,
            ids_sha256=hashlib.sha256(json.dumps(self.ids).encode()).hexdigest(),
        )
        self.header = json.loads(json.dumps(self.header))  # as it reads back from disk (tuples → lists)
        mpath = self.root / MANIFEST
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            (self.root / "shards").mkdir(exist_ok=True)
            (self.root / "parts").mkdir(exist_ok=True)
            if not mpath.exists():
                (self.root / "ids.json").write_text(json.dumps(self.ids))
                self.shards, self.stats = [], {}
                self._write_manifest()
            for p in (self.root / "shards").glob("*.tmp*"):  # left by a killed writer
                p.unlink()
        self._barrier()
        try:
            old = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise error(f"{mpath}: corrupted manifest ({e}); use another --out folder or --overwrite") from None
        old_header = {k: v for k, v in old.items() if k not in _NOT_HEADER}
        if old_header != self.header:
            from ..core.config import differences

            diff = sorted(k for k in set(old_header) | set(self.header) if old_header.get(k) != self.header.get(k))
            both = "\n  ".join(differences({k: old_header.get(k) for k in diff}, {k: self.header.get(k) for k in diff}))
            raise error(
                f"{self.root} already holds a store made with other settings (differs in: {', '.join(diff)}); "
                f"use another --out folder or --overwrite. Saved vs now:\n  {both}"
            )
        self.stats = old.get("stats", {})
        self.extra = {k: old[k] for k in old if k in _NOT_HEADER and k not in ("shards", "complete", "stats")}
        entries = {s["index"]: s for s in old["shards"]}
        for part in sorted((self.root / "parts").glob("rank-*.json")):
            for s in json.loads(part.read_text())["shards"]:
                entries[s["index"]] = s
        self.shards = [s for s in entries.values() if self._shard_ok(s)]
        self.complete = bool(old.get("complete")) and len(self.shards) == self.n_shards
        """The store was already finished (every shard whole)."""

    @property
    def n_shards(self) -> int:
        return (len(self.ids) + self.shard_size - 1) // self.shard_size

    def shard_rows(self, index: int) -> tuple[int, int]:
        start = index * self.shard_size
        return start, min(len(self.ids), start + self.shard_size)

    def done(self) -> set[int]:
        return {s["index"] for s in self.shards}

    def todo(self) -> list[int]:
        """Shards this rank still has to write, in order."""
        done = self.done()
        return [i for i in range(self.n_shards) if i % self.world_size == self.rank and i not in done]

    def _shard_ok(self, s: dict) -> bool:
        p = self.root / "shards" / s["file"]
        return p.exists() and p.stat().st_size == s["bytes"] and _sha256_file(p) == s["sha256"]

    def _write_manifest(self, complete: bool = False) -> None:
        m = dict(self.header)
        m.update(getattr(self, "extra", {}))
        m["shards"] = sorted(self.shards, key=lambda s: s["index"])
        m["complete"] = complete
        m["stats"] = self.stats
        _atomic_write_text(self.root / MANIFEST, json.dumps(m, indent=1))

    def _part_path(self) -> Path:
        return self.root / "parts" / f"rank-{self.rank:05d}.json"

    def write_shard(self, index: int, rows: np.ndarray) -> None:
        if index % self.world_size != self.rank:
            raise ValueError(f"shard {index} belongs to rank {index % self.world_size}, not {self.rank}")
        start, stop = self.shard_rows(index)
        if rows.shape[0] != stop - start:
            raise ValueError(f"shard {index} needs {stop - start} rows, got {rows.shape[0]}")
        entry = write_shard_file(self.root, index, start, rows, self.dtype.name, tag=str(self.rank))
        if self.world_size == 1:
            self.record_shard(entry)
        else:
            self.shards = [s for s in self.shards if s["index"] != index] + [entry]
            part = self._part_path()
            previous = json.loads(part.read_text())["shards"] if part.exists() else []
            merged = {s["index"]: s for s in previous}
            merged[index] = entry
            _atomic_write_text(part, json.dumps({"rank": self.rank, "shards": list(merged.values())}))

    def record_shard(self, entry: dict) -> None:
        """List a shard written by :func:`write_shard_file` in the manifest (single-owner mode)."""
        if self.world_size != 1:
            raise ValueError("record_shard is for a store with one manifest owner (world_size 1)")
        start, stop = self.shard_rows(entry["index"])
        if (entry["start"], entry["stop"]) != (start, stop):
            raise ValueError(f"shard {entry['index']} covers rows [{entry['start']}, {entry['stop']}), "
                             f"expected [{start}, {stop})")
        self.shards = [s for s in self.shards if s["index"] != entry["index"]] + [entry]
        self._write_manifest()

    def finish(self, stats: dict | None = None, extra: dict | None = None) -> None:
        """Mark the store complete (rank 0, after every rank reached this point). ``extra`` entries are
        written into the manifest beside the header without being compared on resume (e.g. values derived
        from the header, such as an embedding dimension)."""
        if stats and self.world_size > 1:
            _atomic_write_text(self.root / "parts" / f"stats-{self.rank:05d}.json", json.dumps(stats))
        self._barrier()
        if self.rank == 0:
            entries = {s["index"]: s for s in self.shards}
            for part in sorted((self.root / "parts").glob("rank-*.json")):
                for s in json.loads(part.read_text())["shards"]:
                    entries[s["index"]] = s
            self.shards = list(entries.values())
            missing = sorted(set(range(self.n_shards)) - self.done())
            if missing:
                raise self._error(f"cannot finish {self.root}: shards {missing[:10]} missing")
            if self.world_size > 1:
                per_rank = [json.loads(p.read_text()) for p in sorted((self.root / "parts").glob("stats-*.json"))]
                self.stats.update({"ranks": per_rank, "world_size": self.world_size})
            elif stats:
                self.stats.update(stats)
            if extra:
                bad = set(extra) - set(EXTRA_KEYS)
                if bad:
                    raise ValueError(f"manifest extras must be among {EXTRA_KEYS}, got {sorted(bad)}")
                self.extra.update(json.loads(json.dumps(extra, default=str)))
            self._write_manifest(complete=True)
            self.complete = True
            for p in (self.root / "parts").glob("*.json"):
                p.unlink()
            try:
                (self.root / "parts").rmdir()
            except OSError:
                pass
        self._barrier()


class ShardedMatrix:
    """Row-wise concatenation of .npy shards; behaves like an (n × k) read-only array.

    Each access memory-maps the shard(s) it needs and copies the rows out, so resident memory stays
    bounded by what the caller keeps, however large the store (see ``shard(i)`` for a zero-copy view)."""

    def __init__(self, paths: list[Path], shapes: list[tuple[int, int]], dtype: np.dtype):
        self._paths = list(paths)
        self._starts = np.cumsum([0] + [s[0] for s in shapes])
        self.shape = (int(self._starts[-1]), shapes[0][1] if shapes else 0)
        self.dtype = np.dtype(dtype)
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def n_shards(self) -> int:
        return len(self._paths)

    def shard(self, i: int) -> np.ndarray:
        """Shard ``i`` as a read-only memory map (zero-copy)."""
        return np.load(self._paths[i], mmap_mode="r")

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as a new in-memory array."""
        start, stop = max(0, start), min(self.shape[0], stop)
        if start >= stop:
            return np.empty((0, self.shape[1]), dtype=self.dtype)
        out = np.empty((stop - start, self.shape[1]), dtype=self.dtype)
        pos = 0
        i = int(np.searchsorted(self._starts, start, side="right") - 1)
        while start < stop:
            s0 = int(self._starts[i])
            take = min(stop, int(self._starts[i + 1])) - start
            m = self.shard(i)
            out[pos : pos + take] = m[start - s0 : start - s0 + take]
            del m  # unmap: pages read through it leave this process's resident set
            start += take
            pos += take
            i += 1
        return out

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows = self[key[0]]
            return rows[(slice(None),) + key[1:]] if not np.isscalar(key[0]) else rows[key[1:]]
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            block = self.rows(start, stop)
            return block[::step] if step != 1 else block
        if isinstance(key, (int, np.integer)):
            k = int(key) + (self.shape[0] if key < 0 else 0)
            return self.rows(k, k + 1)[0]
        idx = np.asarray(key)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        return np.stack([self[int(i)] for i in idx]) if len(idx) else np.empty((0, self.shape[1]), self.dtype)

    def __array__(self, dtype=None, copy=None):
        out = self.rows(0, self.shape[0])
        return out.astype(dtype, copy=False) if dtype is not None else out


@dataclass
class GradientStore:
    """A finished store opened for reading."""

    root: Path
    manifest: dict
    ids: list[str]
    matrix: ShardedMatrix
    """(n × k) gradients, memory-mapped shard by shard."""

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def __len__(self) -> int:
        return len(self.ids)

    def iter_blocks(self, block_rows: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start_row, rows)`` blocks of at most ``block_rows`` rows."""
        for start in range(0, len(self), block_rows):
            yield start, self.matrix.rows(start, start + block_rows)

    def losses(self) -> np.ndarray | None:
        """Each row's training loss (mean response-token CE) at stocking time, if recorded."""
        files = [self.root / "losses" / f"loss-{s['index']:05d}.npy" for s in sorted(self.manifest["shards"], key=lambda s: s["index"])]
        if not files or not all(f.exists() for f in files):
            return None
        return np.concatenate([np.load(f) for f in files])

    def teacher(self) -> dict:
        """The settings that define the gradients (what downstream artefacts record)."""
        return {k: self.manifest.get(k) for k in ("model", "model_hash", "adapter_hash", "lora", "projection", "dtype", "loss")}


def open_store(root: str | Path, *, verify: bool = False, allow_incomplete: bool = False) -> GradientStore:
    """Open a store; ``verify`` re-checks every shard's sha256 (sizes are always checked)."""
    root = Path(root)
    manifest, ids, matrix = open_sharded(root, FORMAT, StoreError, "gradient store", "influcoder stock",
                                         verify=verify, allow_incomplete=allow_incomplete)
    return GradientStore(root, manifest, ids, matrix)


def open_sharded(root: str | Path, fmt: str, error: type[UserError], what: str, command: str, *,
                 verify: bool = False, allow_incomplete: bool = False) -> tuple[dict, list[str], ShardedMatrix]:
    """Read and check a store written by :class:`StoreWriter` (any kind): ``(manifest, ids, matrix)``.

    Every problem raises ``error`` naming the file; ``command`` is what the user reruns to finish it."""
    root = Path(root)
    manifest = read_manifest(root, MANIFEST, fmt, error, what, f"not a {what} (no {MANIFEST}); make one with `{command}`")
    if not manifest.get("complete") and not allow_incomplete:
        raise error(
            f"{root}: store is incomplete ({len(manifest['shards'])} shards written); rerun the same `{command}` command to finish it"
        )
    ids = json.loads((root / "ids.json").read_text())
    if hashlib.sha256(json.dumps(ids).encode()).hexdigest() != manifest["ids_sha256"]:
        raise error(f"{root / 'ids.json'}: does not match the manifest (corrupted?)")
    paths, shapes = [], []
    expected = 0
    for s in sorted(manifest["shards"], key=lambda s: s["index"]):
        p = root / "shards" / s["file"]
        if not p.exists():
            raise error(f"{p}: shard missing")
        if p.stat().st_size != s["bytes"]:
            raise error(f"{p}: shard is {p.stat().st_size} bytes, manifest says {s['bytes']} (truncated or corrupted)")
        if verify and _sha256_file(p) != s["sha256"]:
            raise error(f"{p}: checksum mismatch (corrupted shard)")
        if s["start"] != expected and not allow_incomplete:
            raise error(f"{root}: shards do not cover rows contiguously at row {expected}")
        try:
            arr = np.load(p, mmap_mode="r")
        except ValueError as e:
            raise error(f"{p}: unreadable shard ({e})") from None
        if arr.ndim != 2 or arr.shape[0] != s["stop"] - s["start"]:
            raise error(f"{p}: has shape {arr.shape}, manifest says {s['stop'] - s['start']} rows")
        if shapes and arr.shape[1] != shapes[0][1]:
            raise error(f"{p}: has {arr.shape[1]} columns, other shards {shapes[0][1]}")
        paths.append(p)
        shapes.append(arr.shape)
        del arr
        expected = s["stop"]
    if not allow_incomplete and expected != len(ids):
        raise error(f"{root}: shards hold {expected} rows but there are {len(ids)} ids")
    if not paths and not allow_incomplete:
        raise error(f"{root}: store has no shards")
    dtype = np.dtype(manifest.get("store_dtype", "float32"))
    return manifest, ids, ShardedMatrix(paths, shapes, dtype)
