"""The streamed keep-list equals the in-memory export (filters.formats.render_export) for every rule and format."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.filters.formats import render_export
from mimic_explorer.filters.rules import FilterError, FilterRule, apply_rule
from mimic_explorer.store import index_build, keep_list_stream
from mimic_explorer.store.app_index import AppIndex
from mimic_explorer.store.keep_list_stream import write_keep_list
from mimic_explorer.store.reader import open_run
from mimic_explorer.store.sample_columns import indexed_samples
from tests.ui_helpers import synthetic_pairs_run, synthetic_run

RULES = [
    FilterRule("threshold", 0.5),
    FilterRule("quantile", 0.3, per_class=True),
    FilterRule("keep_count", 0),
    FilterRule("ensemble"),
    FilterRule("threshold", 0.2, column="reference_loss"),
    FilterRule("keep_count", 777, column="grand"),
]


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
    monkeypatch.setattr(keep_list_stream, "GATHER_ROWS", 700)  # several gathers, each handed out in chunks
    monkeypatch.setattr(AppIndex, "MAPPED_BUDGET", 0)  # read a slice of the files at a time, pages handed back
    monkeypatch.setattr(keep_list_stream, "DESCENDING_BLOCK", 211)  # blocks of the order cut inside runs of ties
    samples = indexed_samples(run)
    result = apply_rule(samples, rule)
    expected = render_export(run.samples, apply_rule(run.samples, rule), rule.column, export_format)
    out = write_keep_list(samples, result, rule.column, export_format, tmp_path / f"keep.{export_format}")
    if export_format == "parquet":
        pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(io.BytesIO(expected)))
    else:
        assert out.read_bytes() == expected


@pytest.mark.parametrize("block", [None, 7, 100])  # small blocks: runs of ties cross their cuts
@pytest.mark.parametrize("column", ["mimic_score", "reference_loss", "signed_zeros"])
def test_kept_rows_come_highest_first_ties_by_position_nan_last(run, column, block, tmp_path, monkeypatch):
    if block is not None:
        monkeypatch.setattr(keep_list_stream, "DESCENDING_BLOCK", block)
    samples = run.samples
    if column == "signed_zeros":  # -0.0 equals 0.0: one run of ties, by position
        path = tmp_path / "run"
        shutil.copytree(run.path, path, ignore=shutil.ignore_patterns("index"))
        frame = samples.copy()
        frame[column] = np.resize([0.0, -0.0, 1.0, np.nan, -0.0, 0.0, 2.0, 2.0], len(frame))
        frame.to_parquet(path / "samples.parquet", index=False)
        run, samples = open_run(path), frame
    index = indexed_samples(run).app_index
    values = samples[column].to_numpy()
    expected = pd.Series(values).sort_values(ascending=False, kind="stable").index.to_numpy()
    np.testing.assert_array_equal(keep_list_stream.descending_positions(index, column), expected)


EDGE_SCORES = [
    0.1,
    1.0,
    -0.0,
    0.0,
    1e-05,
    1.5e-4,
    1e16,
    1234500000000000.0,
    123456789.123,
    np.inf,
    -np.inf,
    1 / 3,
    2.5e-07,
    5e-324,
    1.7976931348623157e308,
    1e-4,
    -7.0,
    -2.5e-9,
    4503599627370495.5,
    np.nan,
]


@pytest.fixture(scope="module")
def edge_run(tmp_path_factory):
    """Scores pandas and Arrow spell differently (whole numbers, exponents, -0.0, NaN), sources with
    nulls, and — in the rows kept last — ids the csv writer must quote."""
    path = synthetic_run(tmp_path_factory.mktemp("edge") / "run", n=900, thumbnails=False)
    frame = pd.read_parquet(path / "samples.parquet")
    rng = np.random.default_rng(3)
    frame["mimic_score"] = np.where(
        rng.random(len(frame)) < 0.5,
        rng.choice(EDGE_SCORES[:14] + EDGE_SCORES[15:] + [1e300], len(frame)),
        rng.normal(size=len(frame)),
    )
    frame["source"] = frame["source"].astype(object)
    frame.loc[frame.index % 7 == 0, "source"] = None
    order = frame["mimic_score"].fillna(-np.inf).sort_values(kind="stable").index[:40]  # kept last
    frame.loc[order[:10], "sample_id"] = [f"id,{i}" for i in range(10)]
    frame.loc[order[10:20], "sample_id"] = [f'say "{i}"' for i in range(10)]
    frame.loc[order[20:25], "sample_id"] = [f"line\n{i}" for i in range(5)]
    frame.to_parquet(path / "samples.parquet", index=False)
    return open_run(path)


def test_csv_of_edge_values_and_quoted_ids_is_byte_identical(edge_run, tmp_path, monkeypatch):
    monkeypatch.setattr(keep_list_stream, "CHUNK_ROWS", 200)  # the quoted ids fall in the last chunk only
    fallbacks = []
    original = keep_list_stream._csv_text
    monkeypatch.setattr(keep_list_stream, "_csv_text", lambda piece: fallbacks.append(original(piece)) or fallbacks[-1])
    samples = indexed_samples(edge_run)
    rule = FilterRule("keep_count", len(samples))  # every row, NaN scores included
    out = write_keep_list(samples, apply_rule(samples, rule), rule.column, "csv", tmp_path / "keep.csv")
    expected = render_export(edge_run.samples, apply_rule(edge_run.samples, rule), rule.column, "csv")
    assert out.read_bytes() == expected
    assert [lines is None for lines in fallbacks] == [False] * (len(fallbacks) - 1) + [True]


def test_float_text_spells_every_value_as_pandas_does():
    values = np.array(EDGE_SCORES + list(np.random.default_rng(0).normal(scale=1e6, size=500)), dtype=np.float64)
    expected = pd.DataFrame({"a": 0, "s": values}).to_csv(index=False, header=False).splitlines()
    assert [f"0,{v}" for v in keep_list_stream._float_text(values).to_pylist()] == expected


@pytest.mark.parametrize("export_format", ["csv", "parquet", "json"])
def test_a_relabel_review_streams_label_reviewed_as_the_in_memory_export(run, export_format, tmp_path, monkeypatch):
    from mimic_explorer.filters.reviews import AppliedReviews, apply_reviews

    monkeypatch.setattr(keep_list_stream, "CHUNK_ROWS", 300)
    ids = run.samples["sample_id"].iloc[[3, 333, 1999]].astype(str).tolist()
    log = pd.DataFrame(
        {
            "sample_id": ids,
            "decision": ["relabel", "drop", "keep"],
            "label": pd.array([7, None, None], dtype="Int64"),
            "note": "",
            "time": pd.Timestamp("2026-01-01", tz="UTC"),
        }
    )
    reviews = AppliedReviews.of(log)
    rule = FilterRule("threshold", 0.5)
    samples = indexed_samples(run)
    result = apply_reviews(samples, apply_rule(samples, rule), reviews)
    in_memory = apply_reviews(run.samples, apply_rule(run.samples, rule), reviews)
    expected = render_export(run.samples, in_memory, rule.column, export_format)
    out = write_keep_list(samples, result, rule.column, export_format, tmp_path / f"keep.{export_format}")
    if export_format == "parquet":
        found = pd.read_parquet(out)
        pd.testing.assert_frame_equal(found, pd.read_parquet(io.BytesIO(expected)))
    else:
        assert out.read_bytes() == expected
        found = pd.read_csv(out, dtype={"sample_id": str}) if export_format == "csv" else pd.read_json(out)
    found = found.set_index(found["sample_id"].astype(str))
    assert found.loc[ids[0], "label_reviewed"] == 7 and ids[1] not in found.index and ids[2] in found.index


def _pairs_run(path, change=None):
    path = synthetic_pairs_run(path, n=3100, thumbnails=False)
    if change is not None:
        frame = pd.read_parquet(path / "samples.parquet")
        change(frame)
        frame.to_parquet(path / "samples.parquet", index=False, row_group_size=1000)
    return open_run(path)


def _upper(frame):
    frame.loc[::3, "sample_id"] = frame.loc[::3, "sample_id"].str.upper()  # DataComp uids are any case


@pytest.mark.parametrize("change", [None, _upper], ids=["lower", "mixed-case"])
def test_streamed_uids_equal_the_in_memory_datacomp_array(tmp_path, change, monkeypatch):
    """Decoded from the index's text in batches (several here), the sorted uid array is DataComp's."""
    monkeypatch.setattr(index_build, "BATCH_ROWS", 1000)
    run = _pairs_run(tmp_path / "run", change)
    rule = FilterRule("quantile", 0.3, column="clip_score_ref")
    samples = indexed_samples(run)
    assert len(samples.app_index.text.to_batches()) > 1
    expected = render_export(run.samples, apply_rule(run.samples, rule), rule.column, "uids")
    out = write_keep_list(samples, apply_rule(samples, rule), rule.column, "uids", tmp_path / "keep.npy")
    assert out.read_bytes() == expected
    assert len(np.load(out)) == apply_rule(run.samples, rule).kept > 0


def _not_a_uid(frame):
    frame.loc[7, "sample_id"] = "not-a-uid"


def _repeated(frame):
    frame.loc[9, "sample_id"] = frame.loc[2000, "sample_id"].upper()  # the same uid in another case


@pytest.mark.parametrize("change", [_not_a_uid, _repeated], ids=["not-a-uid", "repeated"])
def test_streamed_uids_refuse_what_the_in_memory_export_refuses_with_its_message(tmp_path, change):
    run = _pairs_run(tmp_path / "run", change)
    rule = FilterRule("threshold", 0.0, column="clip_score_ref")
    with pytest.raises(FilterError) as in_memory:
        render_export(run.samples, apply_rule(run.samples, rule), rule.column, "uids")
    samples = indexed_samples(run)
    with pytest.raises(FilterError) as streamed:
        write_keep_list(samples, apply_rule(samples, rule), rule.column, "uids", tmp_path / "keep.npy")
    assert str(streamed.value) == str(in_memory.value)
    assert not (tmp_path / "keep.npy").exists()


def test_pieces_made_one_ahead_come_in_order_and_errors_reach_the_writer():
    assert list(keep_list_stream._one_ahead(iter(range(7)))) == list(range(7))

    def failing():
        yield 1
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        list(keep_list_stream._one_ahead(failing()))
    made = []

    def counted():
        for i in range(1000):
            made.append(i)
            yield i

    for piece in keep_list_stream._one_ahead(counted()):  # the writer stops early: so does the maker
        if piece == 2:
            break
    assert len(made) <= 5
