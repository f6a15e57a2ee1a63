"""The index's out-of-core sort equals numpy's stable argsort and the in-memory group sort, element for element."""

from __future__ import annotations

import numpy as np
import pytest

from mimic_explorer.store.external_sort import group_bounds, sort_column, sort_key_chunks
from mimic_explorer.store.score_groups import sort_by_group
from mimic_explorer.store.stable_order import stable_argsort


def _column(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(size=n), 1)  # many ties, across chunks too
    if n > 20:
        values[rng.choice(n, n // 10, replace=False)] = np.nan
        values[[3, 7]] = [np.inf, -np.inf]
        values[[4, 5, 6]] = [-0.0, 0.0, -0.0]  # signed zeros tie, by position
    return values


@pytest.mark.parametrize(
    "n,chunk,block", [(0, 4, 2), (1, 4, 2), (37, 5, 2), (1000, 64, 7), (1000, 1000, 1000), (5000, 333, 50)]
)
def test_the_merged_runs_equal_the_in_memory_sorts(tmp_path, n, chunk, block):
    values = _column(n, n)
    group = (np.arange(n) * 7 % 5).astype(np.int32)
    found = sort_column(
        values,
        tmp_path / "order.npy",
        tmp_path / "scratch",
        grouped_path=tmp_path / "grouped.npy",
        group=group,
        n_groups=5,
        chunk_rows=chunk,
        block=block,
    )
    expected = stable_argsort(values)
    np.testing.assert_array_equal(np.load(tmp_path / "order.npy"), expected)
    valid = int((~np.isnan(values)).sum())
    assert found.valid == valid
    assert found.finite == int(np.isfinite(values).sum())
    grouped, bounds = sort_by_group(values, expected[:valid], group, 5)
    grouped_positions = np.load(tmp_path / "grouped.npy")
    np.testing.assert_array_equal(values[grouped_positions], grouped)
    # the positions themselves: ascending by value within a group, ties by position
    keys = group[expected[:valid]]
    np.testing.assert_array_equal(grouped_positions, expected[:valid][np.argsort(keys, kind="stable")])
    np.testing.assert_array_equal(group_bounds(found), bounds)
    assert not (tmp_path / "scratch").exists()  # the runs are gone


@pytest.mark.parametrize("n,chunk,block", [(0, 4, 2), (1, 4, 2), (50, 7, 3), (3000, 256, 40), (3000, 5000, 5000)])
def test_keys_arriving_in_batches_sort_as_numpy_does(tmp_path, n, chunk, block):
    rng = np.random.default_rng(n)
    keys = rng.integers(0, 40, size=n).astype(np.uint64) * np.uint64(2**58)  # ties, and the top bit in use
    pieces = np.split(keys, np.sort(rng.choice(max(n, 1), size=min(n, 9), replace=False))) if n else [keys]
    sort_key_chunks(
        pieces, n, tmp_path / "keys.npy", tmp_path / "order.npy", tmp_path / "scratch", chunk_rows=chunk, block=block
    )
    expected = np.argsort(keys, kind="stable")
    np.testing.assert_array_equal(np.load(tmp_path / "order.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "keys.npy"), keys[expected])
    assert not (tmp_path / "scratch").exists()


def test_keys_fewer_than_promised_are_an_error(tmp_path):
    with pytest.raises(OSError, match="gave 3 rows, 4 expected"):
        sort_key_chunks([np.arange(3, dtype=np.uint64)], 4, tmp_path / "k.npy", tmp_path / "o.npy", tmp_path / "s")
