"""The per-epoch tab's numbers from the app index equal those read from the score parts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.store.app_index import open_index
from mimic_explorer.store.histogram import histogram
from mimic_explorer.store.indexed_epochs import IndexedEpochScores, epoch_scores_for
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.reader import open_run
from mimic_explorer.store.scores import EpochScores
from tests.ui_helpers import synthetic_run


@pytest.fixture
def run_dir(tmp_path):
    return synthetic_run(tmp_path / "run", n=1800, thumbnails=False, epochs=4)


def _both(run_dir):
    run = open_run(run_dir)
    parts = EpochScores(run_dir)
    return run, parts, epoch_scores_for(open_index(run_dir), parts)


@pytest.mark.parametrize("float64_parts", [False, True], ids=["float32 signals", "float64 signals"])
def test_bands_values_and_trajectories_equal_the_score_parts(run_dir, float64_parts):
    if float64_parts:  # the index keeps float64 sums: still one row a cell, still exact
        for part in RunLayout(run_dir).epoch_parts():
            frame = pd.read_parquet(part)
            frame["proj"] += 1e-9
            frame.to_parquet(part, index=False)
    run, parts, indexed = _both(run_dir)
    assert isinstance(indexed, IndexedEpochScores)
    assert indexed.signals == parts.signals and indexed.epochs == parts.epochs
    noisy = run.samples["is_noisy"].to_numpy(dtype=bool)
    by_ids, by_mask = parts.noisy_marker(noisy, run.samples), indexed.noisy_marker(noisy, run.samples)
    for signal in parts.signals:
        pd.testing.assert_frame_equal(indexed.quantile_bands(signal), parts.quantile_bands(signal))
        pd.testing.assert_frame_equal(indexed.quantile_bands(signal, by_mask), parts.quantile_bands(signal, by_ids))
        for epoch in (None, parts.epochs[-1]):
            values, marks = indexed.values(signal, epoch, by_mask)
            expected, expected_marks = parts.values(signal, epoch, by_ids)
            order, expected_order = np.lexsort((values, marks)), np.lexsort((expected, expected_marks))
            np.testing.assert_array_equal(values[order], expected[expected_order])  # same values, any order
            np.testing.assert_array_equal(marks[order], expected_marks[expected_order])
    assert indexed._record["bands"]  # those came from the build; another split is computed
    other = np.arange(len(noisy)) % 3 == 0
    pd.testing.assert_frame_equal(
        indexed.quantile_bands("proj", other), parts.quantile_bands("proj", parts.noisy_marker(other, run.samples))
    )
    ids = [*run.samples["sample_id"].iloc[[5, 1799, 0]].tolist(), "not-in-the-run"]
    pd.testing.assert_frame_equal(
        indexed.trajectories(ids, ["proj"]),
        parts.trajectories(ids, ["proj"]).reset_index(drop=True),
        check_dtype=False,
        check_exact=True,
    )


def test_a_sample_scored_twice_in_an_epoch_keeps_the_score_parts(run_dir):
    """A cell's mean is not the rows' distribution then: the parts answer."""
    part = RunLayout(run_dir).epoch_parts()[0]
    frame = pd.read_parquet(part)
    pd.concat([frame, frame.iloc[[3]]]).to_parquet(part, index=False)
    _, parts, chosen = _both(run_dir)
    assert chosen is parts
    assert epoch_scores_for(None, parts) is parts


def _assert_same_histogram(found, expected):
    np.testing.assert_array_equal(found.edges, expected.edges)
    np.testing.assert_array_equal(found.counts, expected.counts)
    assert found.clipped == expected.clipped
    if expected.noisy is None:
        assert found.noisy is None
    else:
        np.testing.assert_array_equal(found.noisy, expected.noisy)


@pytest.mark.parametrize("float64_parts", [False, True], ids=["float32 signals", "float64 signals"])
def test_each_epochs_histogram_is_stored_at_build_and_equals_the_score_parts(run_dir, float64_parts, monkeypatch):
    if float64_parts:
        for part in RunLayout(run_dir).epoch_parts():
            frame = pd.read_parquet(part)
            frame["loss"] += 1e-9
            frame.to_parquet(part, index=False)
    run, parts, indexed = _both(run_dir)
    noisy = run.samples["is_noisy"].to_numpy(dtype=bool)
    by_ids, by_mask = parts.noisy_marker(noisy, run.samples), indexed.noisy_marker(noisy, run.samples)
    assert set(indexed._record["histograms"]) == set(parts.signals)
    computed = []
    monkeypatch.setattr(
        "mimic_explorer.store.indexed_epochs.histogram", lambda *a, **k: computed.append(1) or histogram(*a, **k)
    )
    for signal in parts.signals:
        for epoch in parts.epochs:
            _assert_same_histogram(indexed.histogram(signal, epoch), parts.histogram(signal, epoch))
            _assert_same_histogram(indexed.histogram(signal, epoch, by_mask), parts.histogram(signal, epoch, by_ids))
    assert computed == []  # every one read from the build's record
    other = np.arange(len(noisy)) % 4 == 0  # another split: computed from the index's rows
    _assert_same_histogram(
        indexed.histogram("proj", parts.epochs[0], other),
        parts.histogram("proj", parts.epochs[0], parts.noisy_marker(other, run.samples)),
    )
    assert computed == [1]
