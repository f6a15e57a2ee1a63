"""Mini-batches of rows held in memory: features of a linear probe, tower outputs, images and captions.

Every batch source of a run has the interface ``len(batches)`` (its rows) and ``batches.epoch(e)``
yielding ``(index, inputs, targets)``, where ``index`` is each sample's row; the loop
(``training.loop.train``) never asks where the rows came from. Shuffles, the rank split and the
batch edges come from one ``EpochPlan`` (``training.epoch_plan``); the sources that decode their
rows from the pool every epoch are in ``training.pool_batches``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from mimic_explorer.training.epoch_plan import CAPTION_STREAM, EpochPlan

#: the fewest pairs an InfoNCE batch holds: a pair's loss needs another pair as its negative
MIN_PAIR_BATCH = 2


def check_pair_batch_size(batch_size: int) -> None:
    """Refuse a pairs batch size below ``MIN_PAIR_BATCH`` with the reason."""
    if batch_size < MIN_PAIR_BATCH:
        raise ValueError(
            f"a batch of image-text pairs needs at least {MIN_PAIR_BATCH} pairs (InfoNCE's negatives), "
            f"got batch size {batch_size}"
        )


class TensorBatches:
    """Seeded, shuffled mini-batches of in-memory tensors, yielding (index, inputs, targets).

    ``inputs``: a tensor, or a tuple of tensors sharing their first dimension (a dual encoder's images
    and tokens), batched alike. ``targets``: a tensor, or None for a loss without labels (InfoNCE:
    pair i's caption is text i), then yielded as None. ``rank``/``world`` split each epoch's
    permutation into disjoint strided parts (one per process of a distributed run); ``index`` is
    always the position in the full tensors. ``min_batch``: a last batch smaller than this joins the
    one before it (InfoNCE needs two pairs a batch), so every sample is still seen each epoch.
    """

    def __init__(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        targets: Tensor | None,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        *,
        min_batch: int = 1,
    ):
        self.inputs, self.targets, self.batch_size, self.seed = inputs, targets, batch_size, seed
        self.rank, self.world, self.min_batch = rank, world, min_batch
        self._tensors = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
        self._size = len(self._tensors[0])
        if any(len(t) != self._size for t in self._tensors) or (targets is not None and len(targets) != self._size):
            raise ValueError("inputs and targets must share their first dimension (one row per sample)")
        if self._size < world:
            raise ValueError(f"{self._size} sample(s) cannot be shared by {world} processes (each needs at least one)")
        self.plan = EpochPlan(self._size, batch_size, seed, rank, world, min_batch)

    def __len__(self) -> int:
        return self._size

    def _take(self, rows: Tensor):
        taken = [t.index_select(0, rows.to(t.device)) for t in self._tensors]
        inputs = tuple(taken) if isinstance(self.inputs, (tuple, list)) else taken[0]
        targets = None if self.targets is None else self.targets.index_select(0, rows.to(self.targets.device))
        return inputs, targets

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Any, Tensor | None]]:
        """``(index, inputs, targets)`` per batch of epoch ``epoch``: the plan's seeded order and batch edges, this
        rank's share (so a held, a streamed and a resumed run draw the same batches)."""
        order = self.plan.order(epoch)
        bounds = self.plan.edges(len(order))
        # gather many batches at once (bounded, ~32 MB) and hand out views: a gather per batch costs more
        # than a probe step's math, a gather per epoch would copy a memory-mapped feature matrix whole
        row_bytes = max(1, sum(t[0].numel() * t.element_size() for t in self._tensors))
        per_chunk = max(1, (32 << 20) // (row_bytes * self.batch_size))
        for first in range(0, len(bounds) - 1, per_chunk):
            last = min(first + per_chunk, len(bounds) - 1)
            low = bounds[first]
            inputs, targets = self._take(order[low : bounds[last]])
            for k in range(first, last):
                start, end = bounds[k] - low, bounds[k + 1] - low
                part = tuple(t[start:end] for t in inputs) if isinstance(inputs, tuple) else inputs[start:end]
                yield order[bounds[k] : bounds[k + 1]], part, None if targets is None else targets[start:end]


def pair_batches(
    inputs: Tensor | tuple[Tensor, ...], batch_size: int, seed: int, rank: int = 0, world: int = 1
) -> TensorBatches:
    """Seeded shuffled batches of pairs (no targets: pair i's caption is text i); a last batch of one
    pair joins the one before, since InfoNCE needs negatives."""
    check_pair_batch_size(batch_size)
    return TensorBatches(inputs, None, batch_size, seed, rank, world, min_batch=MIN_PAIR_BATCH)


def draw_captions(plan: EpochPlan, epoch: int):
    """The generator of ``epoch``'s caption draws (``CaptionDraws`` and ``StreamedPairs`` alike)."""
    return plan.generator(epoch, CAPTION_STREAM)


class CaptionDraws(TensorBatches):
    """``TensorBatches`` of (image inputs, caption tokens) where each photo's caption is drawn at random
    from its ``counts[i]`` captions each time the photo is drawn into a batch (``--all-captions``:
    every caption is used, and two captions of one photo never meet in one batch as each other's
    false negatives).

    ``images``: (N, …) preprocessed images or image-tower outputs; ``token_sets``: (N, K, L) from
    ``training.towers.caption_sets``. With K = 1 every photo keeps its one caption."""

    def __init__(
        self,
        images: Tensor,
        token_sets: Tensor,
        counts: Tensor,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ):
        check_pair_batch_size(batch_size)
        super().__init__((images, token_sets, counts), None, batch_size, seed, rank, world, min_batch=MIN_PAIR_BATCH)

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Any, None]]:
        """``(index, (images, tokens), None)`` per batch: each photo with one of its captions, drawn by the epoch's
        seeded generator."""
        generator = draw_captions(self.plan, epoch)
        for index, (images, sets, counts), _ in super().epoch(epoch):
            draw = (torch.rand(len(index), generator=generator) * counts.cpu()).long().to(sets.device)
            yield index, (images, sets[torch.arange(len(index), device=sets.device), draw]), None
