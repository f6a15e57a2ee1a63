"""Smoke check of the NCCL process group the way ``torchrun`` starts it, on however many GPUs it is given.

Why its own script: a one-GPU ``torchrun`` of ``mimic-explorer`` has a world of one, where the run
never joins a process group; this joins one with the NCCL backend whatever the world size and uses
the collectives the pipeline relies on (``DistContext.all_ok``, ``broadcast_object``,
``average_gradients``, ``barrier``) on CUDA tensors. Run by ``benchmarks/gpu_check.sh`` as
``python -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/gpu_nccl_smoke.py OUT.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

from mimic_explorer.util.distributed import DistContext


class _AlwaysActive(DistContext):
    """A context that uses its collectives even in a world of one (the smoke's point)."""

    @property
    def active(self) -> bool:
        return True


def main(out: str) -> int:
    rank, world, local_rank = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl", timeout=datetime.timedelta(minutes=2))
    ctx = _AlwaysActive(rank, world, local_rank)
    try:
        checks = {"backend": dist.get_backend(), "world": world}
        checks["all_ok"] = ctx.all_ok(True) and not ctx.all_ok(rank != 0)
        checks["broadcast"] = ctx.broadcast_object({"from": rank} if rank == 0 else None) == {"from": 0}
        layer = nn.Linear(3, 2).cuda()
        layer(torch.ones(4, 3, device="cuda")).sum().backward()
        before = layer.weight.grad.clone()
        ctx.average_gradients(layer)
        checks["average_gradients"] = bool(torch.allclose(layer.weight.grad, before))  # same batch on every rank
        ctx.barrier()
        checks["ok"] = all(v for k, v in checks.items() if k in ("all_ok", "broadcast", "average_gradients"))
    finally:
        dist.destroy_process_group()
    if rank == 0:
        with open(out, "w") as handle:
            json.dump(checks, handle, indent=1)
    return 0 if checks["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
