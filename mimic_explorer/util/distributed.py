"""torch.distributed glue for ``torchrun -m mimic_explorer train|score``.

Why this way: each rank reads a disjoint strided part of every epoch's permutation, records only its
own samples into its own part files, and averages gradients with one all-reduce per step (the same
arithmetic DDP does, but after the Grad-Mimic head gradient has been written, which DDP's backward
hooks would miss). A pass over the pool (feature extraction, ``score``) is cut into chunks of
positions handed to the ranks in turn (chunk c to rank c mod world), each rank writing its own chunks;
rank 0 then reads the chunks back in position order, one range at a time, never all at once. Rank 0
alone finalises the run. Single-process runs get a no-op context.

Across several machines the usual rendezvous flags apply (``torchrun --nnodes N --node-rank I
--rdzv-backend c10d --rdzv-endpoint HOST:PORT``); ``--out`` must then be on a filesystem every node
sees, and the feature cache (``MIMIC_EXPLORER_CACHE``) should be too (a node that cannot see another's
cached chunks extracts them itself).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    """This process's place in a ``torchrun`` job (rank, world size, local rank); a single process is rank 0 of 1 and
    every collective below is then a no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes ``meta.json`` and finalises the run)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.active:
            dist.barrier()

    def average_gradients(self, model: nn.Module) -> None:
        """Average ``model``'s gradients over the ranks with one all-reduce (after the Grad-Mimic head gradient is
        written, which DDP's hooks would miss)."""
        if not self.active:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def broadcast_object(self, value):
        """``value`` as rank 0 has it, on every rank (rank 0 decides, the others follow)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_ok(self, ok: bool) -> bool:
        """True when every rank reports ok (used to fail all ranks together)."""
        if not self.active:
            return ok
        flag = torch.tensor([0 if ok else 1], dtype=torch.int64, device=self._collective_device())
        dist.all_reduce(flag)
        return int(flag.item()) == 0

    def _collective_device(self) -> torch.device:
        """Where a tensor for a collective must live: this rank's GPU under NCCL, else the CPU."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def close(self) -> None:
        """Leave the group together: a rank that tears gloo down while its peer still talks to it can
        abort the process (``terminate called without an active exception``)."""
        if self.active and dist.is_initialized():
            try:
                dist.barrier()
            finally:
                dist.destroy_process_group()


def init_distributed(device: str) -> DistContext:
    """Join the process group when started by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return DistContext(rank, world, local_rank)


def resolve_device(device: str, ctx: DistContext | None = None) -> str:
    """``auto`` → ``cuda`` (this rank's GPU) when available, else ``cpu``; a clear error for an
    unavailable explicit ``cuda``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA GPU is available")
        if device == "cuda" and ctx is not None and ctx.active:
            device = f"cuda:{ctx.local_rank}"
    elif device != "cpu":
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device
