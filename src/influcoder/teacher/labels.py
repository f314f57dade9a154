"""Influence label files: the (pool × query) float32 matrix written by ``influcoder influence``.

On disk, for ``--out labels.npy``:
  * ``labels.npy``       — float32 array of shape (n_pool, n_query), row i = pool id i, column j = query id j;
  * ``labels.meta.json`` — ``{"pool_ids": [...], "query_ids": [...], "pool_store": {...},
    "query_store": {...}, "teacher": {...}, "influcoder_version": ...}`` (the teacher block records the
    decoder name and weight hash, LoRA and projection config).

Both are written atomically (temporary name, then rename), the matrix last-but-one and the metadata
last, so a label file without its metadata is never mistaken for a complete one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.fileio import atomic_write_text
from ..core.fileio import sha256_file as file_sha256

__all__ = ["Labels", "DenseTargets", "meta_path", "load_labels", "load_dense_targets", "write_meta", "file_sha256"]


def meta_path(npy_path: str | Path) -> Path:
    p = Path(npy_path)
    stem = p.name[:-4] if p.name.endswith(".npy") else p.name
    return p.with_name(stem + ".meta.json")


@dataclass
class Labels:
    """A loaded label file."""

    matrix: np.ndarray
    """(n_pool, n_query) float32, memory-mapped."""
    pool_ids: list[str]
    query_ids: list[str]
    meta: dict
    path: Path

    def fingerprint(self) -> dict:
        """What a downstream artefact records about the labels it was made from."""
        return {
            "path": str(self.path),
            "sha256": file_sha256(self.path),
            "shape": list(self.matrix.shape),
            "teacher": self.meta.get("teacher"),
        }


def _open_npy(path: str | Path, what: str, command: str) -> tuple[Path, dict, np.ndarray]:
    """A .npy written by ``influcoder <command>`` and its metadata (memory-mapped); errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: {what} not found")
    mp = meta_path(path)
    if not mp.exists():
        raise ValueError(f"{path}: its metadata {mp.name} is missing (was `influcoder {command}` interrupted?)")
    meta = json.loads(mp.read_text())
    try:
        matrix = np.load(path, mmap_mode="r")
    except ValueError as e:
        raise ValueError(f"{path}: not a readable .npy array ({e})") from None
    return path, meta, matrix


def load_labels(path: str | Path) -> Labels:
    """Open a label file and its metadata; errors name the file and what is wrong."""
    path, meta, matrix = _open_npy(path, "label file", "influence")
    if matrix.ndim != 2 or matrix.dtype != np.float32:
        raise ValueError(f"{path}: expected a 2-D float32 array, got {matrix.dtype} {matrix.shape}")
    pool_ids, query_ids = list(meta["pool_ids"]), list(meta["query_ids"])
    if matrix.shape != (len(pool_ids), len(query_ids)):
        raise ValueError(
            f"{path}: shape {matrix.shape} does not match {len(pool_ids)} pool ids × {len(query_ids)} query ids in its metadata"
        )
    return Labels(matrix, pool_ids, query_ids, meta, path)


def write_meta(npy_path: str | Path, meta: dict) -> Path:
    mp = meta_path(npy_path)
    atomic_write_text(mp, json.dumps(meta, indent=1))
    return mp


@dataclass
class DenseTargets:
    """A loaded dense-target file (``influcoder targets``): every stocked example's coordinates in the top-k
    principal directions of the teacher's unit gradients, so that ⟨c_p, c_q⟩ ≈ the label of (p, q).

    On disk: ``targets.npy`` — float32 (n_pool + n_query, k), the pool rows first, in ``pool_ids`` order, then the
    queries in ``query_ids`` order; ``targets.meta.json`` — ids, k, the rows the basis was fitted on, the
    singular values and the teacher (as a label file's)."""

    matrix: np.ndarray
    pool_ids: list[str]
    query_ids: list[str]
    meta: dict
    path: Path

    @property
    def k(self) -> int:
        return int(self.matrix.shape[1])

    def rows(self, ids: list[str], side: str) -> np.ndarray:
        """The coordinates of ``ids`` on ``side`` (pool or query), in that order; an id without a target is an
        error naming the file and the id."""
        names = self.pool_ids if side == "pool" else self.query_ids
        offset = 0 if side == "pool" else len(self.pool_ids)
        at = {i: k for k, i in enumerate(names)}
        missing = [i for i in ids if i not in at]
        if missing:
            raise ValueError(f"{self.path}: no dense target for {side} id {missing[0]!r} "
                             f"({len(missing)} of {len(ids)} {side} ids missing)")
        return np.asarray(self.matrix[[offset + at[i] for i in ids]], dtype=np.float32)

    def fingerprint(self) -> dict:
        return {"path": str(self.path), "sha256": file_sha256(self.path), "shape": list(self.matrix.shape),
                "teacher": self.meta.get("teacher")}


def load_dense_targets(path: str | Path) -> DenseTargets:
    """Open a dense-target file and its metadata; errors name the file and what is wrong."""
    path, meta, matrix = _open_npy(path, "dense-target file", "targets")
    if meta.get("kind") != "dense-targets":
        raise ValueError(f"{path}: not a dense-target file ({meta_path(path).name} has kind {meta.get('kind')!r})")
    pool_ids, query_ids = list(meta["pool_ids"]), list(meta["query_ids"])
    if matrix.ndim != 2 or matrix.dtype != np.float32 or len(matrix) != len(pool_ids) + len(query_ids):
        raise ValueError(f"{path}: expected float32 ({len(pool_ids)} + {len(query_ids)}) × k, got {matrix.dtype} {matrix.shape}")
    return DenseTargets(matrix, pool_ids, query_ids, meta, path)
