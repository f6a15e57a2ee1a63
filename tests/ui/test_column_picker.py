"""Switching to a score column the run's index has not sorted yet: sorted in the background while a
note says so, then opened; a column already sorted opens at once; a failed sort keeps the old column."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mimic_explorer.filters.rules import FilterRule, apply_rule
from mimic_explorer.ui import Explorer
from tests.ui_helpers import synthetic_run
from tests.waiting import wait_for


def test_an_unsorted_column_is_sorted_in_the_background_and_then_opened(tmp_path):
    run = synthetic_run(tmp_path / "run", n=900, classes=3, epochs=2, thumbnails=False)
    explorer = Explorer(run)
    index, controls = explorer.state.app_index, explorer.filter_controls
    assert index is not None and not index.is_sorted("reference_loss")
    assert explorer.state.column_ready("mimic_score") and not explorer.state.column_ready("reference_loss")

    controls.column.value = "reference_loss"
    wait_for(lambda: explorer.filter.column == "reference_loss", 60, "the sorted column to open")
    assert index.is_sorted("reference_loss") and not controls.column.disabled
    assert "Sorting reference_loss" not in explorer.message
    samples = pd.read_parquet(run / "samples.parquet")
    rule = FilterRule("threshold", explorer.threshold, column="reference_loss")
    assert explorer.counts.kept == apply_rule(samples, rule).kept

    controls.column.value = "mimic_score"  # sorted when the index was built: opened at once
    assert explorer.filter.column == "mimic_score"


def test_the_note_shows_while_the_sort_runs_and_a_failure_keeps_the_old_column(tmp_path, monkeypatch):
    explorer = Explorer(synthetic_run(tmp_path / "run", n=600, classes=3, epochs=2, thumbnails=False))
    controls, state = explorer.filter_controls, explorer.state
    started, release = [], []

    def slow_then_fail(column):
        started.append(column)
        wait_for(lambda: release, 30, "the test to let the sort fail")
        raise OSError("No space left on device")

    monkeypatch.setattr(state, "prepare_column", slow_then_fail)
    controls.column.value = "grand"
    wait_for(lambda: started, 10, "the background sort to start")
    assert "Sorting grand for the first time (600 samples)" in explorer.message and controls.column.disabled
    assert explorer.filter.column != "grand"
    release.append(True)
    wait_for(lambda: not controls.column.disabled, 30, "the failure to reach the page")
    assert explorer.filter.column == controls.column.value != "grand"
    assert "Could not open grand: No space left on device" in explorer.message
    assert np.isfinite(explorer.threshold)
