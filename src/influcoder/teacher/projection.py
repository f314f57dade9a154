"""Projectors: compress a d-dimensional gradient into k dimensions, one interface over several kinds.

* ``countsketch`` (default) — Charikar et al.: a seeded hash h: [d] → [k] and signs s: [d] → {±1},
  ``(S g)_j = Σ_{i: h(i)=j} s(i) g_i``. O(d) per example, no dense matrix. E[<Sx, Sy>] = <x, y>.
* ``rademacher`` / ``gaussian`` — dense Johnson–Lindenstrauss projections as in TRAK / LESS, entries
  ±1/√k or N(0, 1/k), generated block by block from the seed and never held whole.
* ``none`` — identity (k = d).

Everything is generated block-wise: the coordinate space [0, d) is cut into blocks of
:data:`BLOCK` coordinates, and block b's hash, signs or matrix rows come from a generator seeded with
``(seed, b)``. So a projector never needs memory proportional to d × k, any process with the same
seed produces bit-identical projections, and gradients can be fed in pieces (module by module) with
:meth:`Projector.project_pieces`.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch

from .config import ProjectionConfig

__all__ = ["ProjectionConfig", "Projector", "CountSketch", "DenseProjector", "Identity", "make_projector", "BLOCK"]

BLOCK = 1 << 16
"""Coordinates per generated block. Part of the projection's definition: changing it changes outputs."""

def _block_generator(seed: int, block: int, salt: int) -> np.random.Generator:
    # Philox keyed by (seed, block, salt): platform-independent and reproducible across processes.
    return np.random.Generator(np.random.Philox(key=[(seed & 0xFFFFFFFFFFFFFFFF), (block << 8) | salt]))


class Projector:
    """Maps (n, d) gradients to (n, k). Subclasses implement :meth:`_project_block`."""

    def __init__(self, input_dim: int, config: ProjectionConfig):
        self.input_dim = int(input_dim)
        self.config = config

    @property
    def output_dim(self) -> int:
        return self.config.dim

    def project(self, grads: torch.Tensor) -> torch.Tensor:
        """Project a whole (n, d) float tensor."""
        if grads.shape[-1] != self.input_dim:
            raise ValueError(f"expected gradients of dimension {self.input_dim}, got {grads.shape[-1]}")
        return self.project_pieces([grads])

    def project_rows(self, G, block: int = 64):
        """Project an (n, d) numpy matrix of any float dtype (or a memmap) ``block`` rows at a time: only one block
        is ever copied to float32. Returns (n, k) float32 numpy."""
        import numpy as np

        return np.concatenate([self.project(torch.from_numpy(np.asarray(G[s:s + block], dtype=np.float32))).numpy()
                               for s in range(0, len(G), block)] or [np.zeros((0, self.output_dim), np.float32)])

    def project_pieces(self, pieces: Iterable[torch.Tensor]) -> torch.Tensor:
        """Project a gradient given as consecutive column pieces (n, d_1), (n, d_2), … with Σ d_i = d.

        Equal to ``project(torch.cat(pieces, 1))`` but never forms the concatenation: pieces are
        regrouped into generation blocks of :data:`BLOCK` coordinates, each projected once.
        """
        out: torch.Tensor | None = None
        pending: list[torch.Tensor] = []
        pending_width = 0
        block = 0
        offset = 0
        for piece in pieces:
            piece = piece.to(torch.float32)
            if out is None:
                out = torch.zeros(piece.shape[0], self.output_dim, dtype=torch.float32, device=piece.device)
            pos = 0
            width = piece.shape[1]
            offset += width
            while pos < width:
                need = min(BLOCK, self.input_dim - block * BLOCK) - pending_width
                if need <= 0:
                    raise ValueError(f"pieces cover more than the projector's {self.input_dim} coordinates")
                take = min(need, width - pos)
                pending.append(piece[:, pos : pos + take])
                pending_width += take
                pos += take
                if take == need:
                    x = pending[0] if len(pending) == 1 else torch.cat(pending, 1)
                    self._project_block(x, block, out)
                    pending, pending_width, block = [], 0, block + 1
        if offset != self.input_dim or pending:
            raise ValueError(f"pieces cover {offset} coordinates, projector expects {self.input_dim}")
        if out is None:
            raise ValueError("no gradient pieces given")
        return out

    def _project_block(self, x: torch.Tensor, block: int, out: torch.Tensor) -> None:
        """Add the projection of coordinates [block·BLOCK, block·BLOCK + x.shape[1]) to ``out``."""
        raise NotImplementedError


class CountSketch(Projector):
    """Seeded CountSketch: each coordinate goes to one output bucket with a random sign."""

    def __init__(self, input_dim: int, config: ProjectionConfig):
        super().__init__(input_dim, config)
        self._cache: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _hash_block(self, block: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        hit = self._cache.get((block, str(device)))
        if hit is None:
            size = min(BLOCK, self.input_dim - block * BLOCK)
            rng = _block_generator(self.config.seed, block, 1)
            buckets = rng.integers(0, self.config.dim, size=size, dtype=np.int64)
            signs = rng.integers(0, 2, size=size, dtype=np.int8).astype(np.float32) * 2 - 1
            hit = (torch.from_numpy(buckets).to(device), torch.from_numpy(signs).to(device))
            self._cache[(block, str(device))] = hit  # d/BLOCK blocks × 12 bytes per coordinate: ~29 MB for 2.4M LoRA dims
        return hit

    def _project_block(self, x, block, out):
        buckets, signs = self._hash_block(block, x.device)
        # index_add_ on CPU accumulates sequentially per output row: deterministic, bit-identical across runs
        out.index_add_(1, buckets, x * signs)


class DenseProjector(Projector):
    """Dense JL projection with Rademacher (±1/√k) or Gaussian (N(0, 1/k)) entries, generated per block."""

    def _project_block(self, x, block, out):
        size = x.shape[1]
        rng = _block_generator(self.config.seed, block, 2 if self.config.kind == "rademacher" else 3)
        k = self.config.dim
        scale = np.float32(1.0 / np.sqrt(k))
        chunk = max(1, (1 << 25) // k)  # rows generated at once: ~128 MB of float32, bounded whatever d is
        for r0 in range(0, size, chunk):
            r1 = min(size, r0 + chunk)
            if self.config.kind == "rademacher":
                m = rng.integers(0, 2, size=(r1 - r0, k), dtype=np.int8).astype(np.float32)
                m = (m * 2 - 1) * scale
            else:
                m = rng.standard_normal(size=(r1 - r0, k), dtype=np.float32) * scale
            out.add_(x[:, r0:r1] @ torch.from_numpy(m).to(x.device))


class Identity(Projector):
    """No compression."""

    @property
    def output_dim(self) -> int:
        return self.input_dim

    def _project_block(self, x, block, out):
        start = block * BLOCK
        out[:, start : start + x.shape[1]] = x


def make_projector(input_dim: int, config: ProjectionConfig) -> Projector:
    """The projector of ``config.kind`` for gradients of dimension ``input_dim``."""
    if config.kind == "countsketch":
        return CountSketch(input_dim, config)
    if config.kind in ("rademacher", "gaussian"):
        return DenseProjector(input_dim, config)
    return Identity(input_dim, config)
