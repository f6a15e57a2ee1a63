"""Shuffled mini-batches decoded from a ``Source`` with the run's own (possibly noisy) labels."""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch

from mimic_explorer.data.errors import ErrorLog
from mimic_explorer.data.source import Source
from mimic_explorer.training.pool_pass import at_most, pool_pass
from mimic_explorer.training.loop import shared_batch_count


class PoolBatches:
    """Same interface as ``train.TensorBatches``: ``epoch(e)`` yields (source position, inputs, targets).

    Each epoch's seeded permutation is split strided over ``world`` ranks; bad samples drop out of
    their batch and are logged once.
    """

    def __init__(self, source: Source, labels: np.ndarray, transform: Callable, batch_size: int, seed: int,
                 *, rank: int = 0, world: int = 1, workers: int = 0, errors: ErrorLog | None = None):
        self.source, self.labels, self.transform = source, labels, transform
        self.batch_size, self.seed, self.rank, self.world, self.workers = batch_size, seed, rank, world, workers
        self.errors = errors if errors is not None else ErrorLog()

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """As many batches as every other rank (``pool_pass.at_most``)."""
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.source), generator=generator)[self.rank :: self.world].numpy()
        count = shared_batch_count(len(self.source), self.world, self.batch_size)
        for batch in at_most(pool_pass(self.source, self.labels, self.transform, self.batch_size, indices=order,
                                       workers=self.workers, errors=self.errors), count):
            yield batch.index, batch.inputs, batch.targets
