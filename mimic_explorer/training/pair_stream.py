"""Image-text pairs decoded from the pool on every pass, for training a dual encoder whose image tower
learns (no image-tower output can be cached then).

Why streamed rather than held: a preprocessed image costs 3·S² floats — 12 KB at 32 px but 600 KB at
open_clip's 224 px, so a pool of 10,000 photos would need 6 GB of images in memory and a DataComp
pool far more. Each epoch decodes its pairs again through the pool's ``DataLoader`` (``--workers``),
in a seeded permutation split over the ranks like ``PoolBatches``; the batches are re-cut by
``pair_batches.whole_batches`` so that no pair is ever alone (InfoNCE needs negatives). The caption
tokens are small and stay in memory: each photo's set (``tower_training.caption_sets``), one drawn
per photo per batch as ``tower_training.CaptionDraws`` does.

Rows, not positions: batches yield the row of each pair among the run's good pairs (``positions[row]``
is its pool position), the index every other pairs path records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mimic_explorer.data.source import Source
from mimic_explorer.training.pair_batches import whole_batches
from mimic_explorer.training.pool_pass import at_most, pool_pass
from mimic_explorer.training.loop import shared_batch_count


class StreamedPairs:
    """``train.TensorBatches``' interface over decoded pairs: ``epoch(e)`` yields (rows, (images,
    caption tokens), None). ``positions``: pool positions of the good pairs; ``token_sets`` (rows, K,
    L) and ``counts`` (rows,) as ``caption_sets`` returns them."""

    def __init__(self, source: Source, labels: np.ndarray, transform: Callable, positions: np.ndarray, token_sets: Tensor,
                 counts: Tensor, batch_size: int, seed: int, *, rank: int = 0, world: int = 1, workers: int = 0):
        if batch_size < 2:
            raise ValueError(f"a batch of image-text pairs needs at least 2 pairs (InfoNCE's negatives), got batch size {batch_size}")
        self.source, self.labels, self.transform = source, labels, transform
        self.positions = np.asarray(positions, dtype=np.int64)
        self.token_sets, self.counts = token_sets.cpu(), counts.cpu()
        self.batch_size, self.seed, self.rank, self.world, self.workers = batch_size, seed, rank, world, workers
        self.row_of = np.full(len(source), -1, dtype=np.int64)
        self.row_of[self.positions] = np.arange(len(self.positions))

    def __len__(self) -> int:
        return len(self.positions)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Any, None]]:
        order = torch.randperm(len(self.positions), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        order = order[self.rank :: self.world].numpy()
        draws = torch.Generator().manual_seed(self.seed * 100_003 + epoch + 7)
        stream = pool_pass(self.source, self.labels, self.transform, self.batch_size, indices=self.positions[order],
                           workers=self.workers)  # bad samples were recorded by the run's first pass
        count = shared_batch_count(len(self.positions), self.world, self.batch_size, min_batch=2)
        for batch in at_most(whole_batches(stream, self.batch_size), count):  # as many as every other rank
            rows = torch.as_tensor(self.row_of[batch.index.numpy()])
            draw = (torch.rand(len(rows), generator=draws) * self.counts[rows]).long()
            yield rows, (batch.inputs, self.token_sets[rows, draw]), None
