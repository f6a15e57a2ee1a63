"""The streaming feature cache: filled chunk by chunk, resumed after a kill, reused memory-mapped."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mimic_explorer.data.errors import BadSample
from mimic_explorer.data.memory import DigitsSource
from mimic_explorer.data.transforms import default_transform
from mimic_explorer.models.registry import build_model
from mimic_explorer.training.feature_cache import FeatureEntry
from mimic_explorer.training.features import HeadInputs, extract_features

CHUNK = 128
POOL = np.arange(40, 640, dtype=np.int64)  # 600 requested samples: chunks of 128, 128, 128, 128, 88


class Interrupted(Exception):
    pass


class CountingExtractor(HeadInputs):
    """The default extractor, counting the samples it was asked for."""

    def __init__(self):
        super().__init__("head")
        self.samples = 0

    def __call__(self, model, batch, device):
        self.samples += len(batch.index)
        return super().__call__(model, batch, device)


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("MIMIC_EXPLORER_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    source = DigitsSource()
    return build_model("mlp", 10, input_shape=(3, 32, 32)), source, default_transform("mlp")


def _extract(setup, **kwargs):
    model, source, transform = setup
    return extract_features(
        model,
        source,
        source.labels,
        transform,
        head_name="head",
        batch_size=64,
        indices=POOL,
        chunk_rows=CHUNK,
        **kwargs,
    )


def test_an_interrupted_extraction_resumes_at_its_first_unsealed_chunk_with_identical_features(setup):
    fresh = _extract(setup, use_cache=False)
    assert fresh.values.shape == (600, 128) and np.array_equal(fresh.positions, POOL)

    def stop_in_chunk_two(done, total):
        if done > 2 * CHUNK:
            raise Interrupted

    with pytest.raises(Interrupted):
        _extract(setup, progress=stop_in_chunk_two)
    counting = CountingExtractor()
    resumed = _extract(setup, extractor=counting)
    assert counting.samples == 600 - 2 * CHUNK  # the two sealed chunks were not extracted again
    assert not resumed.cached
    assert np.array_equal(resumed.positions, fresh.positions)
    assert torch.equal(resumed.values, fresh.values)

    counting = CountingExtractor()
    reused = _extract(setup, extractor=counting)
    assert reused.cached and counting.samples == 0
    assert isinstance(reused.entry.values(), np.memmap)
    assert torch.equal(reused.values, fresh.values)
    assert np.array_equal(reused.rows(100, 300), fresh.values[100:300].numpy())
    assert reused.rows_between(int(POOL[10]), int(POOL[20])) == (10, 20)


def test_finishing_squeezes_out_bad_rows_and_records_their_positions(tmp_path):
    entry = FeatureEntry(tmp_path / "entry")
    with entry.locked():
        entry.start("key", rows=5, dim=2, chunk_rows=3)
    values = np.arange(10, dtype=np.float32).reshape(5, 2)
    positions = np.array([7, 8, 9, 10, 11])
    for _chunk, (lo, hi) in enumerate([(0, 3), (3, 5)]):
        entry.write_positions(lo, positions[lo:hi])
        entry.write_rows(lo, values[lo:hi])
    entry.seal(0, [(1, BadSample("s8", "p8", "unreadable"))])
    entry.seal(1, [(4, BadSample("s11", "p11", "truncated"))])
    with entry.locked():
        entry.finish()
    again = FeatureEntry(tmp_path / "entry")
    assert again.open_complete()
    assert np.array_equal(again.positions(), [7, 9, 10])
    assert np.array_equal(again.values(), values[[0, 2, 3]])
    assert [(b.sample_id, b.reason) for b in again.bad()] == [("s8", "unreadable"), ("s11", "truncated")]


def test_a_truncated_entry_is_rebuilt_not_trusted(tmp_path):
    entry = FeatureEntry(tmp_path / "entry")
    with entry.locked():
        entry.start("key", rows=2, dim=2, chunk_rows=2)
    entry.write_positions(0, np.array([0, 1]))
    entry.write_rows(0, np.ones((2, 2), dtype=np.float32))
    entry.seal(0, [])
    with entry.locked():
        entry.finish()
    with open(entry.values_path, "r+b") as handle:
        handle.truncate(4)
    assert not FeatureEntry(tmp_path / "entry").open_complete()
    assert not entry.values_path.exists()
