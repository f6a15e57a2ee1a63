"""The explorer state answers the same through the run's app index as from the whole table in pandas."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mimic_explorer.filters.rules import FilterRule
from mimic_explorer.store.reader import open_run
from mimic_explorer.store.sample_columns import SampleColumns
from mimic_explorer.ui import state as state_module
from mimic_explorer.ui.state import ExplorerState
from tests.ui_helpers import synthetic_run

RULES = [
    FilterRule("threshold", 0.5),
    FilterRule("threshold", 0.4, class_overrides={2: 0.7}),
    FilterRule("quantile", 0.3, per_class=True),
    FilterRule("keep_count", 900),
    FilterRule("ensemble"),
]


def test_state_through_the_index_equals_the_state_on_the_whole_table(tmp_path, monkeypatch):
    path = synthetic_run(tmp_path / "run", n=2000, thumbnails=False)
    indexed = ExplorerState(open_run(path))
    assert isinstance(indexed.samples, SampleColumns)
    monkeypatch.setattr(state_module, "indexed_samples", lambda run: run.samples)
    whole = ExplorerState(open_run(path))
    assert isinstance(whole.samples, pd.DataFrame) and indexed.score_columns == whole.score_columns
    for column in ("mimic_score", "grand"):
        indexed.column = whole.column = column
        assert indexed.default_threshold() == whole.default_threshold()
        a, b = indexed.histogram(), whole.histogram()
        np.testing.assert_array_equal(a.edges, b.edges)
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.noisy, b.noisy)
        per_class, expected = indexed.class_histograms(), whole.class_histograms()  # counted at build / now
        assert indexed.app_index.class_bin_counts(column) is not None  # at build, or when first sorted
        np.testing.assert_array_equal(per_class[0], expected[0])
        assert per_class[2] == expected[2] and all((per_class[1][k] == expected[1][k]).all() for k in expected[2])
        for label in (None, 3):
            np.testing.assert_array_equal(indexed.lowest(16, label), whole.lowest(16, label))
            np.testing.assert_array_equal(indexed.highest(16, label), whole.highest(16, label))
            cut = whole.default_threshold()
            np.testing.assert_array_equal(indexed.around(cut, 16, label), whole.around(cut, 16, label))
            np.testing.assert_array_equal(
                indexed.band(cut - 0.1, cut + 0.1, 16, label), whole.band(cut - 0.1, cut + 0.1, 16, label)
            )
        for rule in RULES:
            rule = FilterRule(rule.kind, rule.value, column, rule.per_class, rule.class_overrides)
            counts = indexed.counts(rule)
            assert counts == whole.counts(rule)
            np.testing.assert_array_equal(indexed.apply(rule).keep, whole.apply(rule).keep)
            positions = indexed.highest(10)
            np.testing.assert_array_equal(
                indexed.keep_status(positions, rule, counts), whole.keep_status(positions, rule, counts)
            )
            pd.testing.assert_frame_equal(indexed.retention_table(counts), whole.retention_table(counts))
    positions = whole.lowest(8)
    pd.testing.assert_frame_equal(indexed.rows(positions), whole.rows(positions))
    assert indexed.record(int(positions[0])) == whole.record(int(positions[0]))
    assert indexed.position("syn-0001234") == whole.position("syn-0001234") == 1234


def test_narrow_labels_at_the_top_of_their_type_are_grouped_exactly():
    from mimic_explorer.ui.counting import _encode

    labels = np.array([127, -1, 0, 127, 5], dtype=np.int8)
    classes, codes = _encode(labels)
    assert classes.tolist() == [-1, 0, 5, 127] and codes.tolist() == [3, 0, 1, 3, 2]
