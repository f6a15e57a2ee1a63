"""Pairs decoded every epoch (``training/pool_batches.StreamedPairs``) for training a dual encoder whose
image tower learns: each epoch covers every good pair once, never a pair alone, split disjointly over
ranks, with a caption drawn from each photo's set; and training on the stream gives the very weights
and records that training on the same pairs held in memory (``training/batches.CaptionDraws``) gives."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mimic_explorer.data.specs import open_source
from mimic_explorer.tasks.dual_models import dual_transform
from mimic_explorer.training.loop import TrainConfig
from mimic_explorer.training.pool_batches import StreamedPairs
from mimic_explorer.training.pool_pass import no_input
from mimic_explorer.training.towers import caption_sets, train_tower_batches, train_towers
from tests.pairs_helpers import SHAPE, flickr_pool, needs_flickr, tiny_dual

pytestmark = [needs_flickr]
PAIRS = 13


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    source = open_source(f"wds:{flickr_pool(tmp_path_factory.mktemp('stream') / 'pool.tar', PAIRS)}")
    positions = np.array([p for p in range(PAIRS) if p != 4])  # a pool position that is not a good pair
    sets = [source.all_captions(int(p)) for p in positions]
    model = tiny_dual([c for row in sets for c in row])
    tokens, counts = caption_sets(model.tokenizer, sets)
    return source, positions, model, tokens, counts


def _stream(pool, transform=no_input, **kw) -> StreamedPairs:
    source, positions, _, tokens, counts = pool
    return StreamedPairs(
        source, source.labels, transform, positions, tokens, counts, kw.pop("batch_size", 5), seed=3, **kw
    )


def test_every_good_pair_once_an_epoch_never_alone_with_one_of_its_own_captions(pool):
    _, positions, _, tokens, counts = pool
    batches = list(_stream(pool).epoch(0))
    rows = torch.cat([b[0] for b in batches]).tolist()
    assert sorted(rows) == list(range(len(positions))) and [len(b[0]) for b in batches] == [5, 5, 2]
    assert [len(b[0]) for b in _stream(pool, batch_size=11).epoch(0)] == [
        12
    ]  # a last pair alone joins the batch before
    for index, (images, drawn), targets in batches:
        assert targets is None and images.shape[0] == len(index)
        for row, caption in zip(index.tolist(), drawn):
            assert any(torch.equal(caption, tokens[row, k]) for k in range(int(counts[row])))
    again = [b[0].tolist() for b in _stream(pool).epoch(0)]
    assert again == [b[0].tolist() for b in batches] and again != [b[0].tolist() for b in _stream(pool).epoch(1)]


def test_ranks_split_an_epoch_disjointly(pool):
    ranks = [torch.cat([b[0] for b in _stream(pool, rank=r, world=2).epoch(0)]).tolist() for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == list(range(PAIRS - 1))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        _stream(pool, batch_size=1)


@pytest.mark.slow
def test_training_on_the_stream_equals_training_on_the_same_pairs_in_memory(pool):
    source, positions, model, tokens, counts = pool
    transform = dual_transform(model, {"arch": "small_cnn", "input_shape": list(SHAPE)})
    images = torch.stack([transform(source.load(int(p))) for p in positions])
    config = TrainConfig(epochs=2, batch_size=5, lr=1e-2, seed=3)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        reference.text_projection.weight.mul_(1.5)
    held, streamed = copy.deepcopy(model), copy.deepcopy(model)
    a = train_towers(held, images, tokens, counts, config, reference=reference)
    b = train_tower_batches(streamed, _stream(pool, transform=transform), config, reference=reference)
    for x, y in zip(a.records, b.records):
        assert np.array_equal(x.index, y.index) and np.array_equal(x.step, y.step)
        np.testing.assert_allclose(x.proj, y.proj, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(x.weight, y.weight, rtol=1e-4, atol=1e-6)
    for (name, p), q in zip(held.state_dict().items(), streamed.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


def test_every_rank_makes_as_many_batches(pool):
    """11 pairs in batches of 4 over two processes: rank 0's 6 pairs once made two batches and rank 1's
    5 one (a pair alone joins the batch before), and rank 0 then waited forever in the gradient
    all-reduce of its second step."""
    source, positions, _, tokens, counts = pool
    sizes = [
        [
            len(b[0])
            for b in StreamedPairs(
                source, source.labels, no_input, positions[:11], tokens[:11], counts[:11], 4, seed=3, rank=r, world=2
            ).epoch(0)
        ]
        for r in range(2)
    ]
    assert sizes == [[6], [5]]
