"""Per-epoch score rows on their way to disk: buffered, then written with the resumable state at
checkpoints.

Why buffer: an epoch of a linear probe on cached features takes tens of milliseconds, and writing a
part file plus a state (each fsync'd and renamed into place) costs about as much again. Checkpointing
on a time interval, and always after the last epoch, keeps the price of resumability at a few writes
per run; a run killed between checkpoints repeats at most one interval of epochs.

Part files: ``scores/epoch-FIRST[-LAST][-rankRRR].parquet`` (one epoch or a range). A checkpoint
writes the part first and the state after it, so the state never claims an epoch whose rows are not
on disk; parts beyond the state's epoch (a kill between the two writes) are dropped on resume.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mimic_explorer.pipeline.distributed import DistContext
from mimic_explorer.recording import epoch_table
from mimic_explorer.store.atomic import atomic_write
from mimic_explorer.store.paths import SCORES_DIR
from mimic_explorer.train import EpochRecord

STATE = "state.pt"


def part_epochs(path: Path) -> tuple[int, int]:
    """(first, last) epoch of a part file named as above."""
    numbers = [int(token) for token in path.name.split(".")[0].split("-")[1:] if token.isdigit()]
    return numbers[0], numbers[-1]


def drop_parts_after(out: Path, epoch: int) -> None:
    """Remove parts holding any epoch after ``epoch`` (written after the last state a kill left)."""
    for part in (out / SCORES_DIR).glob("epoch-*.parquet"):
        if part_epochs(part)[1] > epoch:
            part.unlink(missing_ok=True)


class EpochParts:
    """Collects each epoch's rows and, when a checkpoint is due, writes them and the training state."""

    def __init__(self, out: Path, sample_ids: np.ndarray, ctx: DistContext, last_epoch: int, every_s: float):
        self.out, self.ctx, self.last_epoch, self.every_s = out, ctx, last_epoch, every_s
        self.ids = pa.array(np.asarray(sample_ids, dtype=object).astype(str))
        self.pending: list[tuple[int, pa.Table]] = []
        self.since = time.monotonic()

    def add(self, record: EpochRecord) -> None:
        self.pending.append((record.epoch, epoch_table(record, self.ids)))

    def due(self, epoch: int) -> bool:
        """After the last epoch, or once ``every_s`` seconds passed since the last checkpoint; in a
        distributed run rank 0 decides for all (every rank must reach the barrier together)."""
        due = epoch >= self.last_epoch or time.monotonic() - self.since >= self.every_s
        return bool(self.ctx.broadcast_object(due))

    def checkpoint(self, epoch: int, state: Callable[[], dict]) -> None:
        """Write the pending rows as one part, wait for every rank's part, then the state (rank 0)."""
        if self.pending:
            first, last = self.pending[0][0], self.pending[-1][0]
            name = f"epoch-{first:04d}" if first == last else f"epoch-{first:04d}-{last:04d}"
            if self.ctx.active:
                name += f"-rank{self.ctx.rank:03d}"
            table = pa.concat_tables([table for _, table in self.pending])
            # plain (not dictionary) strings: half the write time of this, the run's largest file, at the same size
            atomic_write(self.out / SCORES_DIR / f"{name}.parquet", lambda tmp: pq.write_table(table, tmp, use_dictionary=False))
            self.pending = []
        self.ctx.barrier()
        if self.ctx.is_main:
            snapshot = {"epoch": epoch, **state()}
            atomic_write(self.out / STATE, lambda tmp: torch.save(snapshot, tmp))
        self.since = time.monotonic()
