"""Multi-process execution through torch.distributed (``torchrun``): rank, world size, device, barrier.

``torchrun --nproc-per-node N -m influcoder stock ...`` sets RANK / WORLD_SIZE / LOCAL_RANK /
MASTER_ADDR / MASTER_PORT; :func:`context` initialises the process group from them (gloo on CPU,
nccl when each rank has a GPU) and tells the stage which part of the work is this rank's. Without
those variables everything runs as a single process and no process group is created.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["DistContext", "context"]


@dataclass
class DistContext:
    """Where this process stands in a (possibly single-process) job."""

    rank: int = 0
    """Global rank."""
    world_size: int = 1
    """Number of processes."""
    local_rank: int = 0
    """Rank on this node (selects the GPU)."""
    device: str = "cpu"
    """Torch device of this rank."""
    backend: str | None = None
    """gloo or nccl; None for a single process."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            if self.backend == "nccl":
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()


def _pick_device(requested: str | None, local_rank: int) -> str:
    if requested in (None, "auto"):
        return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return f"cuda:{local_rank}"
    return requested


def context(device: str | None = None) -> DistContext:
    """The job's context from torchrun's environment variables (single process when they are absent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, 0, dev, None)
    import torch.distributed as dist

    backend = "nccl" if dev.startswith("cuda") else "gloo"
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, dev, backend)
