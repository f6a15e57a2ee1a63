"""``training/pool_batches``: the decoded training batches of one rank of a distributed run
(``PoolBatches``), and the scoring batches of an image-text pool, which keep pool order, hold ``size``
pairs and never leave one alone (``whole_batches``, ``chunk_bounds``)."""

from __future__ import annotations

import pytest
import torch

from mimic_explorer.data.specs import open_source
from mimic_explorer.training.pool_batches import PoolBatches, chunk_bounds, whole_batches
from mimic_explorer.training.pool_pass import PassBatch


def decoded(sizes: list[int]) -> list[PassBatch]:
    """Decoded batches of the given sizes (bad pairs already dropped), positions counting up."""
    out, start = [], 0
    for n in sizes:
        index = torch.arange(start, start + n)
        out.append(PassBatch(index, index.float().view(-1, 1), torch.full((n,), -1), [b"t"] * n, []))
        start += n
    return out


@pytest.mark.parametrize(
    "sizes, size, expected",
    [
        ([4, 4, 4], 4, [4, 4, 4]),
        ([4, 4, 1], 4, [4, 5]),  # a last pair alone joins the batch before it
        ([3, 2, 4, 1], 4, [4, 4, 2]),  # bad pairs dropped from decoded batches: re-cut to full batches
        ([4, 2], 4, [4, 2]),
        ([1], 4, [1]),  # one pair in all: the caller records it
        ([], 4, []),
    ],
)
def test_whole_batches_recut_in_order(sizes, size, expected):
    batches = list(whole_batches(decoded(sizes), size))
    assert [len(b.index) for b in batches] == expected
    positions = torch.cat([b.index for b in batches]).tolist() if batches else []
    assert positions == list(range(sum(sizes)))
    assert all(
        b.inputs.view(-1).tolist() == b.index.float().tolist() and len(b.thumbs) == len(b.index) for b in batches
    )


def test_chunk_bounds_never_end_with_one_position():
    assert chunk_bounds(30, 12) == [(0, 12), (12, 24), (24, 30)]
    assert chunk_bounds(25, 12, 2) == [(0, 12), (12, 25)] and chunk_bounds(25, 12) == [(0, 12), (12, 24), (24, 25)]
    assert chunk_bounds(1, 12) == [(0, 1)]
    assert chunk_bounds(0, 12) == []


def test_every_rank_decodes_as_many_batches_and_every_sample_once():
    """1797 digits over two processes in batches of 449: rank 0's 899 made a third batch of one sample
    that rank 1's 898 did not, and rank 0 then waited forever in that step's gradient all-reduce."""
    source = open_source("digits")
    ranks = [
        [
            index
            for index, inputs, targets in PoolBatches(
                source, source.labels, lambda image: torch.zeros(1), 449, 0, rank=rank, world=2
            ).epoch(3)
        ]
        for rank in (0, 1)
    ]
    assert [[len(index) for index in batches] for batches in ranks] == [[449, 450], [449, 449]]
    assert sorted(torch.cat([i for batches in ranks for i in batches]).tolist()) == list(range(len(source)))
    alone = [
        len(index) for index, _, _ in PoolBatches(source, source.labels, lambda image: torch.zeros(1), 449, 0).epoch(3)
    ]
    assert alone == [449, 449, 449, 449, 1]  # one process: unchanged
