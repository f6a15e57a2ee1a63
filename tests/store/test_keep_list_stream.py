"""The streamed keep-list equals the in-memory export (filters.render_export) for every rule and format."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.filters import FilterRule, apply_rule, render_export
from mimic_explorer.store import keep_list_stream
from mimic_explorer.store.keep_list_stream import write_keep_list
from mimic_explorer.store.reader import open_run
from mimic_explorer.store.sample_columns import indexed_samples
from tests.ui_helpers import synthetic_run

RULES = [FilterRule("threshold", 0.5), FilterRule("quantile", 0.3, per_class=True), FilterRule("keep_count", 0),
         FilterRule("ensemble"), FilterRule("threshold", 0.2, column="reference_loss"),
         FilterRule("keep_count", 777, column="grand")]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = synthetic_run(tmp_path_factory.mktemp("keep") / "run", n=2500, thumbnails=False)
    frame = pd.read_parquet(path / "samples.parquet")
    frame["mimic_score"] = frame["mimic_score"].round(2)  # many ties: their order must match
    frame.loc[[4, 40, 400], "mimic_score"] = np.nan
    frame.loc[[5, 50], "mimic_score"] = [np.inf, -np.inf]
    frame.to_parquet(path / "samples.parquet", index=False)
    return open_run(path)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.kind}-{r.column}")
@pytest.mark.parametrize("export_format", ["csv", "parquet", "npy", "json"])
def test_streamed_keep_list_equals_the_in_memory_export(run, rule, export_format, tmp_path, monkeypatch):
    monkeypatch.setattr(keep_list_stream, "CHUNK_ROWS", 300)  # several chunks
    samples = indexed_samples(run)
    result = apply_rule(samples, rule)
    expected = render_export(run.samples, apply_rule(run.samples, rule), rule.column, export_format)
    out = write_keep_list(samples, result, rule.column, export_format, tmp_path / f"keep.{export_format}")
    if export_format == "parquet":
        pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(io.BytesIO(expected)))
    else:
        assert out.read_bytes() == expected


def test_kept_rows_come_highest_first_ties_by_position_nan_last(run):
    index = indexed_samples(run).app_index
    values = run.samples["mimic_score"].to_numpy()
    expected = pd.Series(values).sort_values(ascending=False, kind="stable").index.to_numpy()
    np.testing.assert_array_equal(keep_list_stream.descending_positions(index, "mimic_score"), expected)
