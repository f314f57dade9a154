"""Stage 2: cosine influence labels between a pool store and a query store (METHOD.md Eq. 1).

``Inf(p, q) = <g(p), g(q)> / (|g(p)| |g(q)|)`` on the projected gradients, computed block by block
(pool rows × query rows) into a memory-mapped float32 .npy, so a pool much larger than RAM works.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .. import __version__
from .labels import write_meta
from .store import GradientStore, StoreError, check_compatible, open_store

__all__ = ["compute_influence", "compute_dense_targets", "normalised"]


def normalised(block: np.ndarray, ids: list[str], start: int, what: str) -> np.ndarray:
    """Rows divided by their L2 norm (float32); a zero or non-finite row is an error naming its id."""
    x = np.asarray(block, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    bad = np.nonzero(~np.isfinite(norms) | (norms == 0))[0]
    if len(bad):
        raise StoreError(f"{what}: gradient of id '{ids[start + int(bad[0])]}' is zero or not finite")
    return x / norms[:, None]


def _open_pair(pool, query, out, verify: bool, what: str) -> tuple[GradientStore, GradientStore, Path]:
    """The two stores (opened, checked compatible) and the output path (a .npy)."""
    pool_s = pool if isinstance(pool, GradientStore) else open_store(pool, verify=verify)
    query_s = query if isinstance(query, GradientStore) else open_store(query, verify=verify)
    check_compatible(pool_s.manifest, query_s.manifest)
    out = Path(out)
    if out.suffix != ".npy":
        raise StoreError(f"{out}: the {what} must end in .npy")
    return pool_s, query_s, out


def compute_influence(
    pool: str | Path | GradientStore,
    query: str | Path | GradientStore,
    out: str | Path,
    *,
    pool_block: int = 8192,
    query_block: int = 8192,
    verify: bool = True,
    progress: bool = True,
    query_cache_mb: int = 1024,
) -> Path:
    """Write the (pool × query) cosine influence matrix to ``out`` (.npy) and its metadata; returns ``out``."""
    pool_s, query_s, out = _open_pair(pool, query, out, verify, "label file")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n_p, n_q = len(pool_s), len(query_s)
    t0 = time.perf_counter()
    # Queries are normalised once and kept if they fit in `query_cache_mb`; otherwise re-read per pool block.
    cache_queries = n_q * query_s.dim * 4 <= query_cache_mb * 2**20
    q_cache = [normalised(query_s.matrix.rows(q0, q0 + query_block), query_s.ids, q0, f"query store {query_s.root}")
               for q0 in range(0, n_q, query_block)] if cache_queries else None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    # The result is written row block by row block, sequentially (no memory map of the output), so resident
    # memory is one pool block, its (block × n_query) result and the query blocks, whatever n_pool is.
    with open(tmp, "wb") as f, Progress(TextColumn("influence"), BarColumn(), MofNCompleteColumn(),
                                         TimeRemainingColumn(), disable=not progress) as bar:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                 "fortran_order": False, "shape": (n_p, n_q)})
        task = bar.add_task("influence", total=n_p)
        for p0, block in pool_s.iter_blocks(pool_block):
            pn = normalised(block, pool_s.ids, p0, f"pool store {pool_s.root}")
            del block
            result = np.empty((len(pn), n_q), dtype="<f4")
            for qi, q0 in enumerate(range(0, n_q, query_block)):
                qn = q_cache[qi] if q_cache is not None else normalised(
                    query_s.matrix.rows(q0, q0 + query_block), query_s.ids, q0, f"query store {query_s.root}")
                result[:, q0 : q0 + len(qn)] = pn @ qn.T
            f.write(result.tobytes(order="C"))
            bar.update(task, advance=len(pn))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    write_meta(out, {
        "pool_ids": pool_s.ids,
        "query_ids": query_s.ids,
        "pool_store": {"path": str(pool_s.root), "data": pool_s.manifest.get("data"), "n": n_p},
        "query_store": {"path": str(query_s.root), "data": query_s.manifest.get("data"), "n": n_q},
        "teacher": pool_s.teacher(),
        "measure": "cosine of projected LoRA gradients",
        "seconds": round(time.perf_counter() - t0, 3),
        "influcoder_version": __version__,
    })
    return out


def compute_dense_targets(
    pool: str | Path | GradientStore,
    query: str | Path | GradientStore,
    out: str | Path,
    k: int,
    *,
    basis_pool_ids: list[str] | None = None,
    basis_query_ids: list[str] | None = None,
    verify: bool = True,
) -> Path:
    """Write every stocked example's coordinates in the top-``k`` principal directions of the unit gradients
    (uncentred, so inner products are kept: ⟨c_p, c_q⟩ ≈ Inf(p, q)) to ``out`` (.npy) and its metadata.

    The basis is fitted on the rows named by ``basis_pool_ids`` / ``basis_query_ids`` (default: every row of
    both stores): fit it on the training rows only when a later step holds rows out. Both stores are read into
    memory (float32) and the basis is found through the n × n Gram matrix, so this is for stocked samples
    (tens of thousands of rows), not whole corpora."""
    from .basis import coordinates, principal_basis

    pool_s, query_s, out = _open_pair(pool, query, out, verify, "dense-target file")
    t0 = time.perf_counter()
    Up = normalised(pool_s.matrix.rows(0, len(pool_s)), pool_s.ids, 0, f"pool store {pool_s.root}")
    Uq = normalised(query_s.matrix.rows(0, len(query_s)), query_s.ids, 0, f"query store {query_s.root}")

    def pick(ids, all_ids, what):
        if ids is None:
            return np.arange(len(all_ids))
        at = {i: n for n, i in enumerate(all_ids)}
        missing = [i for i in ids if i not in at]
        if missing:
            raise StoreError(f"{what}: basis id {missing[0]!r} is not stocked there ({len(missing)} missing)")
        return np.array([at[i] for i in ids], dtype=int)

    bp = pick(basis_pool_ids, pool_s.ids, f"pool store {pool_s.root}")
    bq = pick(basis_query_ids, query_s.ids, f"query store {query_s.root}")
    try:
        V, sv = principal_basis(np.concatenate([Up[bp], Uq[bq]]), k)
    except ValueError as e:
        raise StoreError(f"dense targets: {e}") from None
    C = np.concatenate([coordinates(Up, V), coordinates(Uq, V)]).astype(np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..core.fileio import atomic_save_npy

    atomic_save_npy(out, C)
    write_meta(out, {
        "kind": "dense-targets",
        "pool_ids": pool_s.ids,
        "query_ids": query_s.ids,
        "k": int(k),
        "basis_rows": {"pool": int(len(bp)), "query": int(len(bq)),
                       "pool_ids": None if basis_pool_ids is None else list(basis_pool_ids),
                       "query_ids": None if basis_query_ids is None else list(basis_query_ids)},
        "singular_values": [float(x) for x in sv],
        "pool_store": {"path": str(pool_s.root), "data": pool_s.manifest.get("data"), "n": len(pool_s)},
        "query_store": {"path": str(query_s.root), "data": query_s.manifest.get("data"), "n": len(query_s)},
        "teacher": pool_s.teacher(),
        "measure": "coordinates of unit projected LoRA gradients in their top-k uncentred principal directions",
        "seconds": round(time.perf_counter() - t0, 3),
        "influcoder_version": __version__,
    })
    return out
