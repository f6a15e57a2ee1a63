"""Per-epoch score rows on their way to disk: buffered, then written with the resumable state at
checkpoints.

Why buffer: an epoch of a linear probe on cached features takes tens of milliseconds, and writing a
part file plus a state (each fsync'd and renamed into place) costs about as much again. Checkpointing
on a time interval, and always after the last epoch, keeps the price of resumability at a few writes
per run; a run killed between checkpoints repeats at most one interval of epochs.

Part files are ``RunLayout.epoch_part``s (one epoch or a range, per rank), sorted by (epoch, position)
in bounded row groups (``store.writer.write_score_part``; the format is in ``store.layout``). A
checkpoint writes the part first and the state after it, so the state never claims an epoch whose rows
are not on disk; parts beyond the state's epoch (a kill between the two writes) are dropped on resume
(``RunLayout.drop_epoch_parts_after``).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch

from mimic_explorer.store.atomic import atomic_write
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.writer import write_score_part
from mimic_explorer.training.loop import EpochRecord
from mimic_explorer.training.recording import epoch_table
from mimic_explorer.util.distributed import DistContext


class EpochParts:
    """Collects each epoch's rows and, when a checkpoint is due, writes them and the training state."""

    def __init__(
        self,
        layout: RunLayout,
        sample_ids: np.ndarray,
        ctx: DistContext,
        last_epoch: int,
        every_s: float,
        positions: np.ndarray | None = None,
    ):
        """``sample_ids`` and ``positions`` (pool positions; default: the index itself) per index the
        training loop records (a linear probe's index is a row of its feature matrix)."""
        self.layout, self.ctx, self.last_epoch, self.every_s = layout, ctx, last_epoch, every_s
        self.ids = pa.array(np.asarray(sample_ids, dtype=object).astype(str))
        self.positions = None if positions is None else np.asarray(positions, dtype=np.int64)
        self.pending: list[tuple[int, pa.Table]] = []
        self.since = time.monotonic()

    def add(self, record: EpochRecord) -> None:
        """Hold one epoch's rows until the next checkpoint writes them."""
        self.pending.append((record.epoch, epoch_table(record, self.ids, self.positions)))

    def due(self, epoch: int) -> bool:
        """After the last epoch, or once ``every_s`` seconds passed since the last checkpoint; in a
        distributed run rank 0 decides for all (every rank must reach the barrier together)."""
        due = epoch >= self.last_epoch or time.monotonic() - self.since >= self.every_s
        return bool(self.ctx.broadcast_object(due))

    def checkpoint(self, epoch: int, state: Callable[[], dict]) -> None:
        """Write the pending rows as one part, wait for every rank's part, then the state (rank 0)."""
        if self.pending:
            part = self.layout.epoch_part(
                self.pending[0][0], self.pending[-1][0], self.ctx.rank if self.ctx.active else None
            )
            write_score_part(part, pa.concat_tables([table for _, table in self.pending]))
            self.pending = []
        self.ctx.barrier()
        if self.ctx.is_main:
            snapshot = {"epoch": epoch, **state()}
            atomic_write(self.layout.state, lambda tmp: torch.save(snapshot, tmp))
        self.since = time.monotonic()


def resume_epoch(run) -> int:
    """The last epoch an unfinished run (a ``lifecycle.RunContext``) saved (-1: start afresh), decided
    by rank 0; epoch parts past it (a kill between a part and its state) are dropped."""
    epoch = -1
    if run.dist.is_main:
        if run.resuming and run.layout.state.exists():
            epoch = int(torch.load(run.layout.state, weights_only=True)["epoch"])
        run.layout.drop_epoch_parts_after(epoch)
    epoch = run.dist.broadcast_object(epoch)
    run.dist.barrier()
    return epoch
