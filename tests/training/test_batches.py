"""``training/batches.TensorBatches``: held tensors cut into each epoch's seeded batches, split over
ranks so that every rank steps as often as the others and every sample is seen once an epoch."""

from __future__ import annotations

import pytest
import torch

from mimic_explorer.training.batches import TensorBatches


def test_batches_are_the_seeded_permutation_in_views_of_chunked_gathers():
    x = torch.arange(50, dtype=torch.float32)[:, None].repeat(1, 3)
    y = torch.arange(50)
    batches = TensorBatches(x, y, 8, seed=2, rank=1, world=2)
    seen = []
    for index, inputs, targets in batches.epoch(4):
        assert torch.equal(inputs[:, 0].long(), index) and torch.equal(targets, index)
        seen.append(index)
    order = torch.randperm(50, generator=torch.Generator().manual_seed(2 * 100_003 + 4))[1::2]
    assert torch.equal(torch.cat(seen), order)
    assert [len(s) for s in seen] == [8, 8, 8, 1]


@pytest.mark.parametrize(
    "size, batch, min_batch", [(27, 4, 2), (11, 4, 2), (129, 64, 1), (50, 8, 1), (9, 8, 2), (3, 2, 2)]
)
def test_every_rank_cuts_as_many_batches_each_epoch(size, batch, min_batch):
    """Each step all-reduces the gradients, so a rank with one batch more than its peer waits forever
    (27 pairs in batches of 4 over two processes once gave rank 0 four batches and rank 1 three)."""
    x = torch.arange(size, dtype=torch.float32)[:, None]
    ranks = [
        [index for index, _, _ in TensorBatches(x, None, batch, 0, rank, 2, min_batch=min_batch).epoch(1)]
        for rank in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1])
    seen = torch.cat([index for batches in ranks for index in batches])
    assert sorted(seen.tolist()) == list(range(size))  # every sample once
    assert all(len(index) >= min(min_batch, size // 2) for batches in ranks for index in batches)


def test_fewer_samples_than_processes_is_refused():
    with pytest.raises(ValueError, match="1 sample\\(s\\) cannot be shared by 2 processes"):
        TensorBatches(torch.zeros(1, 3), None, 4, 0, 0, 2)
