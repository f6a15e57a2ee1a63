"""Mini-batches decoded from the pool every epoch: images of a fine-tuned classifier, image-text pairs
of a dual encoder whose image tower learns (no image-tower output can be cached then).

Why decoded rather than held: a preprocessed image costs 3·S² floats — 12 KB at 32 px but 600 KB at
open_clip's 224 px, so a pool of 10,000 photos would need 6 GB of images in memory and a DataComp
pool far more. Each epoch decodes its samples again through the pool's ``DataLoader`` (``--workers``)
in the run's seeded permutation, split over the ranks (``training.epoch_plan.EpochPlan``, the same
plan the in-memory sources use, so a streamed run draws the batches a held run would). Every rank
cuts as many batches as the others (``pool_pass.at_most`` joins a rank's surplus into its last
batch). Pairs are re-cut by ``whole_batches`` so that no pair is ever alone (InfoNCE needs
negatives); their caption tokens are small and stay in memory, one drawn per photo per batch as
``training.batches.CaptionDraws`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mimic_explorer.data.errors import ErrorLog
from mimic_explorer.data.source import Source
from mimic_explorer.training.batches import MIN_PAIR_BATCH, check_pair_batch_size, draw_captions
from mimic_explorer.training.epoch_plan import EpochPlan
from mimic_explorer.training.pool_pass import PassBatch, at_most, concat_batches, pool_pass


class PoolBatches:
    """``TensorBatches``' interface over decoded samples: ``epoch(e)`` yields (pool position, inputs,
    targets); bad samples drop out of their batch and are logged once."""

    def __init__(
        self,
        source: Source,
        labels: np.ndarray,
        transform: Callable,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        errors: ErrorLog | None = None,
    ):
        self.source, self.labels, self.transform = source, labels, transform
        self.batch_size, self.seed, self.rank, self.world, self.workers = batch_size, seed, rank, world, workers
        self.errors = errors if errors is not None else ErrorLog()
        self.plan = EpochPlan(len(source), batch_size, seed, rank, world)

    def __len__(self) -> int:
        return len(self.source)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        """As many batches as every other rank (``pool_pass.at_most``)."""
        order = self.plan.order(epoch).numpy()
        for batch in at_most(
            pool_pass(
                self.source,
                self.labels,
                self.transform,
                self.batch_size,
                indices=order,
                workers=self.workers,
                errors=self.errors,
            ),
            self.plan.batch_count,
        ):
            yield batch.index, batch.inputs, batch.targets


def chunk_bounds(count: int, size: int, min_size: int = 1) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk of ``count`` positions; a last chunk smaller than ``min_size``
    joins the one before (a pool of pairs never ends a chunk with a single pair)."""
    bounds = [(start, min(start + size, count)) for start in range(0, count, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_size:
        bounds[-2:] = [(bounds[-2][0], count)]
    return bounds


def _split(batch: PassBatch, size: int) -> tuple[PassBatch, PassBatch]:
    def cut(lo: int, hi: int | None) -> PassBatch:
        return PassBatch(batch.index[lo:hi], batch.inputs[lo:hi], batch.targets[lo:hi], batch.thumbs[lo:hi], [])

    return cut(0, size), cut(size, None)


def whole_batches(stream: Iterable[PassBatch], size: int) -> Iterator[PassBatch]:
    """Re-cut ``stream`` (decoded batches of good pairs, in order): every batch holds exactly ``size``
    good pairs, except that the last holds the remainder — and a remainder of one joins the batch
    before it (``size + 1`` pairs). The cut depends only on the stream, so a resumed run scores every
    pair in the same batch. A stream of one good pair in all yields that single pair: the caller
    records it as unscorable."""
    held: PassBatch | None = None
    pending: list[PassBatch] = []
    count = 0
    for batch in stream:
        pending.append(batch)
        count += len(batch.index)
        while count >= size:
            full, rest = _split(concat_batches(pending), size)
            if held is not None:
                yield held
            held, pending, count = full, ([rest] if len(rest.index) else []), len(rest.index)
    rest = concat_batches(pending) if pending else None
    if rest is not None and len(rest.index) == 1 and held is not None:
        yield concat_batches([held, rest])
        return
    if held is not None:
        yield held
    if rest is not None and len(rest.index):
        yield rest


class StreamedPairs:
    """``TensorBatches``' interface over decoded pairs: ``epoch(e)`` yields (rows, (images, caption
    tokens), None). ``positions``: pool positions of the good pairs (row ``r`` is ``positions[r]``,
    the index every other pairs source records); ``token_sets`` (rows, K, L) and ``counts`` (rows,)
    as ``training.towers.caption_sets`` returns them."""

    def __init__(
        self,
        source: Source,
        labels: np.ndarray,
        transform: Callable,
        positions: np.ndarray,
        token_sets: Tensor,
        counts: Tensor,
        batch_size: int,
        seed: int,
        *,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
    ):
        check_pair_batch_size(batch_size)
        self.source, self.labels, self.transform = source, labels, transform
        self.positions = np.asarray(positions, dtype=np.int64)
        self.token_sets, self.counts = token_sets.cpu(), counts.cpu()
        self.batch_size, self.seed, self.rank, self.world, self.workers = batch_size, seed, rank, world, workers
        self.row_of = np.full(len(source), -1, dtype=np.int64)
        self.row_of[self.positions] = np.arange(len(self.positions))
        self.plan = EpochPlan(len(self.positions), batch_size, seed, rank, world, MIN_PAIR_BATCH)

    def __len__(self) -> int:
        return len(self.positions)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Any, None]]:
        """``(rows, (images, tokens), None)`` per batch of epoch ``epoch``: the plan's order decoded again, in batches
        that never leave a pair alone, each photo with a drawn caption; every rank takes as many batches as the others.
        """
        order = self.plan.order(epoch).numpy()
        draws = draw_captions(self.plan, epoch)
        stream = pool_pass(
            self.source,
            self.labels,
            self.transform,
            self.batch_size,
            indices=self.positions[order],
            workers=self.workers,
        )  # bad samples were recorded by the run's first pass
        for batch in at_most(whole_batches(stream, self.batch_size), self.plan.batch_count):
            rows = torch.as_tensor(self.row_of[batch.index.numpy()])
            draw = (torch.rand(len(rows), generator=draws) * self.counts[rows]).long()
            yield rows, (batch.inputs, self.token_sets[rows, draw]), None
