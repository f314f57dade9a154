"""Stage 2: cosine influence labels between a pool store and a query store (METHOD.md Eq. 1).

``Inf(p, q) = <g(p), g(q)> / (|g(p)| |g(q)|)`` on the projected gradients, computed block by block
(pool rows × query rows) into a memory-mapped float32 .npy, so a pool much larger than RAM works.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from . import __version__
from .labels import write_meta
from .store import GradientStore, StoreError, check_compatible, open_store

__all__ = ["compute_influence", "normalised"]


def normalised(block: np.ndarray, ids: list[str], start: int, what: str) -> np.ndarray:
    """Rows divided by their L2 norm (float32); a zero or non-finite row is an error naming its id."""
    x = np.asarray(block, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    bad = np.nonzero(~np.isfinite(norms) | (norms == 0))[0]
    if len(bad):
        raise StoreError(f"{what}: gradient of id '{ids[start + int(bad[0])]}' is zero or not finite")
    return x / norms[:, None]


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
    pool_s = pool if isinstance(pool, GradientStore) else open_store(pool, verify=verify)
    query_s = query if isinstance(query, GradientStore) else open_store(query, verify=verify)
    check_compatible(pool_s.manifest, query_s.manifest)
    out = Path(out)
    if out.suffix != ".npy":
        raise StoreError(f"{out}: the label file must end in .npy")
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
