"""Reading a run by pool position: score rows of a range across rank parts, samples row ↔ position,
and samples.parquet in fixed row groups whatever the chunks it was written in."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from mimic_explorer.store import writer as writer_module
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.score_rows import ScoreRows
from mimic_explorer.store.writer import SamplesWriter, write_score_part

CHUNK = 100


def _chunk_rows(chunk: int, epochs: int = 2) -> pd.DataFrame:
    positions = np.arange(chunk * CHUNK, (chunk + 1) * CHUNK)
    frames = [
        pd.DataFrame(
            {
                "sample_id": [f"s{p}" for p in positions],
                "epoch": np.int32(e),
                "step": np.int64(chunk),
                "position": positions,
                "proj": positions + 0.5 * e,
            }
        )
        for e in range(epochs)
    ]
    return pd.concat(frames[::-1], ignore_index=True)  # unsorted on purpose: the writer sorts


@pytest.fixture()
def run(tmp_path, monkeypatch):
    """Six chunks of a pool of 600 scored by two ranks in turn (chunk c by rank c mod 2), row groups of 30 rows."""
    monkeypatch.setattr(writer_module, "SCORE_ROW_GROUP_ROWS", 30)
    layout = RunLayout(tmp_path)
    layout.scores_dir.mkdir()
    for chunk in range(6):
        write_score_part(layout.chunk_part(chunk, chunk % 2), _chunk_rows(chunk))
    return layout


def test_a_range_of_positions_reads_only_its_row_groups_across_rank_parts(run):
    rows = ScoreRows(run)
    assert rows.positioned and len(rows.parts) == 6
    got = rows.range(250, 420, ["epoch", "proj"])
    assert sorted(got["position"].unique()) == list(range(250, 420))
    assert (got.groupby("position").size() == 2).all()
    np.testing.assert_array_equal(got["proj"], got["position"] + 0.5 * got["epoch"])
    groups = rows.row_groups(250, 420)
    assert {part.name for part, _ in groups} == {
        "chunk-000002-rank000.parquet",
        "chunk-000003-rank001.parquet",
        "chunk-000004-rank000.parquet",
    }
    assert len(groups) < sum(pq.ParquetFile(p).num_row_groups for p in rows.parts) / 2
    one = rows.of_positions([5, 599])
    assert sorted(one["sample_id"]) == ["s5", "s5", "s599", "s599"]


def test_each_score_part_is_sorted_by_epoch_then_position_in_bounded_row_groups(run):
    part = pq.ParquetFile(run.chunk_part(1, 1))
    table = part.read().to_pandas()
    assert table[["epoch", "position"]].equals(
        table.sort_values(["epoch", "position"])[["epoch", "position"]].reset_index(drop=True)
    )
    assert max(part.metadata.row_group(g).num_rows for g in range(part.num_row_groups)) <= 30


def test_samples_parquet_has_the_same_row_groups_whatever_the_chunks(tmp_path):
    frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(1000)], "mimic_score": np.linspace(0, 1, 1000)})
    for name, cuts in (("a", [0, 1000]), ("b", [0, 7, 333, 334, 990, 1000])):
        with SamplesWriter(tmp_path / f"{name}.parquet", row_group_rows=256) as samples:
            for lo, hi in itertools.pairwise(cuts):
                samples.write(frame.iloc[lo:hi])
        meta = pq.read_metadata(tmp_path / f"{name}.parquet")
        assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [256, 256, 256, 232]
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{name}.parquet"), frame, check_exact=True)


def test_a_failed_samples_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError), SamplesWriter(tmp_path / "samples.parquet") as samples:
        samples.write(pd.DataFrame({"a": [1]}))
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
