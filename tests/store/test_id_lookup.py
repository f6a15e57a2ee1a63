"""Rows by sample id from the app index's sorted id hashes: the row ``samples.parquet`` has, −1 for an
unknown id, right when hashes collide, and the slow exact path when pandas hashes differently."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.store import app_index, id_lookup
from mimic_explorer.store.app_index import open_index
from mimic_explorer.store.id_lookup import IdLookup
from mimic_explorer.store.reader import open_run
from mimic_explorer.ui.state import ExplorerState
from tests.ui_helpers import synthetic_run


@pytest.fixture
def run_dir(tmp_path):
    return synthetic_run(tmp_path / "run", n=2500, thumbnails=False)


def test_every_id_is_found_at_its_row_and_unknown_ids_are_minus_one(run_dir):
    ids = open_run(run_dir).samples["sample_id"].tolist()
    index = open_index(run_dir)
    asked = [ids[2499], "not-an-id", ids[0], ids[1234], ids[1234], ""]
    np.testing.assert_array_equal(index.positions_of(asked), [2499, -1, 0, 1234, 1234, -1])
    np.testing.assert_array_equal(index.positions_of(ids), np.arange(len(ids)))
    assert index.positions_of([]).tolist() == []
    assert index.manifest["ids"]["hash"] == id_lookup.HASH_NAME


def test_integer_ids_are_found_as_text(tmp_path):
    """An integer ``sample_id`` column is read back as str (``Run.samples``); so it is looked up."""
    run_dir = synthetic_run(tmp_path / "run", n=300, thumbnails=False)
    frame = pd.read_parquet(run_dir / "samples.parquet")
    frame["sample_id"] = np.arange(1000, 1300)
    frame.to_parquet(run_dir / "samples.parquet", index=False)
    index = open_index(run_dir)
    np.testing.assert_array_equal(index.positions_of(["1007", 1299, "7"]), [7, 299, -1])


def test_ids_that_share_a_hash_are_told_apart_by_their_text():
    """Every id hashed to one value: the lookup must compare the stored ids, not trust the hash."""
    stored = np.array(["a", "b", "c", "d"], dtype=object)
    hashes = np.zeros(4, dtype=np.uint64)
    order = np.array([2, 0, 3, 1])
    lookup = IdLookup(hashes, order, lambda rows: stored[rows].tolist())
    original = id_lookup.hash_ids
    try:
        id_lookup.hash_ids = lambda ids: np.zeros(len(list(ids)), dtype=np.uint64)
        np.testing.assert_array_equal(lookup.positions(["d", "a", "x", "c", "b"]), [3, 0, -1, 2, 1])
    finally:
        id_lookup.hash_ids = original


def test_an_index_whose_probe_hash_differs_finds_ids_the_slow_exact_way(run_dir, monkeypatch):
    ids = open_run(run_dir).samples["sample_id"].tolist()
    monkeypatch.setattr(app_index, "probe_hash", lambda: -1)  # "this pandas hashes differently"
    app_index._OPEN.clear()
    index = open_index(run_dir)
    assert index._id_lookup is None
    np.testing.assert_array_equal(index.positions_of([ids[9], "nope", ids[0]]), [9, -1, 0])


def test_the_explorer_state_finds_a_sample_through_the_index(run_dir):
    state = ExplorerState(open_run(run_dir))
    ids = state.samples["sample_id"]
    assert state.position(ids.iloc[42]) == 42 and state.position("missing") is None
    np.testing.assert_array_equal(state.positions_of([ids.iloc[3], "missing"]), [3, -1])
    assert "_position_of" not in state.__dict__  # no pandas Index over every id was built
