"""``PoolBatches``: the decoded training batches of one rank of a distributed run."""

from __future__ import annotations

import torch

from mimic_explorer.data.specs import open_source
from mimic_explorer.training.pool_batches import PoolBatches


def test_every_rank_decodes_as_many_batches_and_every_sample_once():
    """1797 digits over two processes in batches of 449: rank 0's 899 made a third batch of one sample
    that rank 1's 898 did not, and rank 0 then waited forever in that step's gradient all-reduce."""
    source = open_source("digits")
    ranks = [[index for index, inputs, targets in PoolBatches(source, source.labels, lambda image: torch.zeros(1), 449, 0,
                                                                 rank=rank, world=2).epoch(3)] for rank in (0, 1)]
    assert [[len(index) for index in batches] for batches in ranks] == [[449, 450], [449, 449]]
    assert sorted(torch.cat([i for batches in ranks for i in batches]).tolist()) == list(range(len(source)))
    alone = [len(index) for index, _, _ in PoolBatches(source, source.labels, lambda image: torch.zeros(1), 449, 0).epoch(3)]
    assert alone == [449, 449, 449, 449, 1]  # one process: unchanged
