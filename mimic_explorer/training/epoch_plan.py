"""Which samples a rank sees in which batch of an epoch: one plan for every batch source.

Why one home: a run's batches come from several sources — tensors held in memory, images decoded
from the pool every epoch, pairs with a caption drawn per batch — and a resumed run, a streamed run
and a held run must draw *the same* batches (the tests compare them weight for weight). They stay
equal only while each source derives its shuffles and its batch edges the same way, so each asks
this plan instead of spelling the formula itself.

- **Shuffles**: epoch ``e`` of seed ``s`` permutes the samples with ``util.seeds.epoch_generator``;
  a second stream (``CAPTION_STREAM``) draws each photo's caption.
- **Ranks**: under torchrun rank ``r`` of ``w`` takes every ``w``-th sample of the permutation.
- **Shared edges**: every rank must step as often as the others (each step all-reduces the
  gradients: a rank with one batch more waits forever for its peers), and the ranks' shares differ
  by one sample when ``w`` does not divide the size, which changes the count for a share just past a
  multiple of the batch size, or with ``min_batch`` (a last batch smaller than it joins the one
  before; InfoNCE needs two pairs a batch). So the edges are the smallest share's (``size // w``); a
  rank holding one sample more puts it in its last batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mimic_explorer.util.seeds import CAPTION_STREAM, epoch_generator

__all__ = ["CAPTION_STREAM", "EpochPlan", "shared_batch_count", "shared_batch_edges"]


def shared_batch_edges(size: int, world: int, batch_size: int, min_batch: int = 1) -> list[int]:
    """Edges of each rank's batches when ``world`` ranks share ``size`` samples strided (module
    docstring): the smallest share's edges, its last one being that share's end."""
    share = size // world
    bounds = [*range(0, share, batch_size), share]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < min_batch:
        del bounds[-2]
    return bounds


def shared_batch_count(size: int, world: int, batch_size: int, min_batch: int = 1) -> int:
    """How many batches every rank cuts an epoch (``shared_batch_edges``): its step count."""
    return len(shared_batch_edges(size, world, batch_size, min_batch)) - 1


@dataclass(frozen=True)
class EpochPlan:
    """The shuffle, the rank split and the batch edges of one run's epochs (module docstring)."""

    size: int
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1
    min_batch: int = 1

    def generator(self, epoch: int, stream: int = 0) -> torch.Generator:
        """The seeded generator of ``epoch``'s shuffle (``stream`` 0) or of another draw of it."""
        return epoch_generator(self.seed, epoch, stream)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's samples of ``epoch``, in the order it sees them (indices into the run's rows)."""
        return torch.randperm(self.size, generator=self.generator(epoch))[self.rank :: self.world]

    def edges(self, share: int) -> list[int]:
        """Edges of this rank's batches of its ``share`` samples: the shared edges, the last one moved
        to the share's end (a rank with one sample more keeps it in its last batch)."""
        bounds = shared_batch_edges(self.size, self.world, self.batch_size, self.min_batch)
        bounds[-1] = share
        return bounds

    @property
    def batch_count(self) -> int:
        """Batches per epoch on every rank (at least one): the run's steps per epoch."""
        return max(1, shared_batch_count(self.size, self.world, self.batch_size, self.min_batch))
