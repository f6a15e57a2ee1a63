"""The app's per-run index: equal to reading samples.parquet whole (on a synthetic and a real run),
rebuilt when missing, stale or truncated, cleaned up when a build fails (a full disk), built once when
two processes open a run together."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mimic_explorer.store import app_index, index_build
from mimic_explorer.store.app_index import IndexUnavailable, open_index
from mimic_explorer.store.layout import IndexFiles, RunLayout
from mimic_explorer.store.reader import open_run
from mimic_explorer.store.sample_columns import SampleColumns, indexed_samples
from mimic_explorer.ui.state import histogram
from tests.ui_helpers import copy_run, synthetic_run


@pytest.fixture
def run_dir(tmp_path):
    path = synthetic_run(tmp_path / "run", n=3000, thumbnails=False)
    frame = pd.read_parquet(path / "samples.parquet")
    frame.loc[[3, 17, 2000], "mimic_score"] = np.nan  # NaN and ties must sort as the explorer sorts them
    frame.loc[[5, 6, 7], "mimic_score"] = 0.5
    frame.loc[[8], "mimic_score"] = np.inf
    frame["times_seen"] = np.arange(len(frame)) % 7  # an integer score column: sorted and binned as floats
    frame.to_parquet(path / "samples.parquet", index=False, row_group_size=700)  # several row groups
    return path


def _check_equal_to_whole_table(path):
    samples = open_run(path).samples
    index = open_index(path)
    assert index.n == len(samples) and index.columns == list(samples.columns)
    for column in index.score_columns:
        values = samples[column].to_numpy(dtype=np.float64)
        np.testing.assert_array_equal(index.order(column), np.argsort(values, kind="stable"))
        np.testing.assert_array_equal(index.sorted_values(column), values[np.argsort(values, kind="stable")])
        for threshold in (np.nanmedian(values), 0.5, -np.inf, np.inf):
            assert index.count_split(column, threshold) == ((values >= threshold).sum(), (values < threshold).sum())
        finite = values[np.isfinite(values)]
        noisy = samples["is_noisy"].to_numpy(dtype=bool) if "is_noisy" in samples else None
        stored, computed = index.histogram(column), histogram(values, noisy=noisy)
        np.testing.assert_array_equal(stored.edges, computed.edges)
        np.testing.assert_array_equal(stored.counts, computed.counts)
        assert stored.clipped == computed.clipped
        if noisy is not None:
            np.testing.assert_array_equal(stored.noisy, computed.noisy)
        ordered = np.argsort(values, kind="stable")[: len(finite)]  # as the explorer's galleries pick them
        np.testing.assert_array_equal(index.lowest(column, 10), ordered[:10])
        np.testing.assert_array_equal(index.highest(column, 10), ordered[::-1][:10])
    positions = np.array([len(samples) - 1, 0, 5, 5, 1234 % len(samples)])
    pd.testing.assert_frame_equal(index.rows(positions), samples.iloc[positions])
    if "label" in samples:
        counts = samples["label"].value_counts().sort_index()
        np.testing.assert_array_equal(index.class_counts.to_numpy(), counts.to_numpy())
    return index, samples


def test_index_equals_the_whole_table_on_a_synthetic_run(run_dir):
    index, samples = _check_equal_to_whole_table(run_dir)
    assert {"mimic_score", "reference_loss", "grand"} <= set(index.score_columns)
    assert not {"label", "is_noisy", "keep", "sample_id"} & set(index.score_columns)
    view = SampleColumns(index)
    assert len(view) == len(samples) and list(view.columns) == list(samples.columns) and "label" in view
    pd.testing.assert_series_equal(view["mimic_score"], samples["mimic_score"])
    pd.testing.assert_series_equal(view["sample_id"], samples["sample_id"])
    pd.testing.assert_series_equal(view.iloc[7], samples.iloc[7])
    assert view.iloc[-1]["sample_id"] == samples["sample_id"].iloc[-1]
    assert view.describe().equals(samples.describe())  # anything else: the whole table


def test_index_sorted_in_many_runs_equals_the_whole_table(run_dir, monkeypatch):
    """The out-of-core sort with chunks and merge blocks far smaller than the run: the same index."""
    from mimic_explorer.store import external_sort

    monkeypatch.setattr(external_sort, "CHUNK_ROWS", 256)
    monkeypatch.setattr(external_sort, "BLOCK_ROWS", 31)
    _check_equal_to_whole_table(run_dir)


@pytest.mark.slow
def test_index_equals_the_whole_table_on_a_real_run(demo_run, tmp_path):
    _check_equal_to_whole_table(copy_run(demo_run, tmp_path / "demo"))


def _mtimes(path):
    files = IndexFiles(RunLayout(path).index_dir)
    return {p.name: p.stat().st_mtime_ns for p in files.folder.iterdir()}


def test_a_valid_index_is_reused_and_a_bad_one_rebuilt(run_dir):
    layout = RunLayout(run_dir)
    open_index(run_dir)
    first = _mtimes(run_dir)
    open_index(run_dir)
    assert _mtimes(run_dir) == first  # reused, not rebuilt

    files = IndexFiles(layout.index_dir)
    order = files.order(open_index(run_dir).manifest["scores"]["mimic_score"]["number"])
    with open(order, "r+b") as fh:  # truncated
        fh.truncate(order.stat().st_size - 8)
    index = open_index(run_dir)
    assert order.stat().st_size == index.manifest["files"][order.name]
    _check_equal_to_whole_table(run_dir)

    files.column(0).unlink()  # missing
    open_index(run_dir)
    assert files.column(0).exists()

    files.manifest.write_text("{not json")  # unreadable manifest
    assert open_index(run_dir).n == 3000


def test_a_changed_samples_file_makes_the_index_stale(run_dir):
    open_index(run_dir)
    frame = pd.read_parquet(run_dir / "samples.parquet").iloc[:1000]
    frame["mimic_score"] = -frame["mimic_score"]
    time.sleep(0.01)
    frame.to_parquet(run_dir / "samples.parquet", index=False)
    with pytest.raises(IndexUnavailable):
        open_index(run_dir, build=False)
    index, _ = _check_equal_to_whole_table(run_dir)
    assert index.n == 1000


def test_an_open_index_keeps_reading_its_own_files_when_another_rebuild_replaces_them(run_dir):
    old_samples = open_run(run_dir).samples
    old = open_index(run_dir)
    frame = old_samples.copy()
    frame["mimic_score"] = frame["mimic_score"] + 100.0
    frame["sample_id"] = "new-" + frame["sample_id"]
    time.sleep(0.01)
    frame.to_parquet(run_dir / "samples.parquet", index=False)
    new = open_index(run_dir)  # stale: rebuilt, and swapped into place under the open one
    assert new is not old
    positions = np.array([0, 2999, 1500])
    pd.testing.assert_frame_equal(old.rows(positions), old_samples.iloc[positions])  # not half the new index
    pd.testing.assert_frame_equal(new.rows(positions), open_run(run_dir).samples.iloc[positions])
    np.testing.assert_array_equal(old.sorted_values("mimic_score"), np.sort(old_samples["mimic_score"].to_numpy()))


def test_an_index_replaced_while_it_is_mapped_is_mapped_again(run_dir, monkeypatch):
    open_index(run_dir)
    app_index._OPEN.clear()
    calls = []
    original = app_index.AppIndex.map_all

    def map_then_rebuild(self):
        original(self)
        if not calls:  # the first time: another process replaces the index right after our maps
            calls.append(1)
            frame = pd.read_parquet(run_dir / "samples.parquet").iloc[:2000]
            time.sleep(0.01)
            frame.to_parquet(run_dir / "samples.parquet", index=False)
            with app_index._locked(RunLayout(run_dir)):
                app_index._rebuild(RunLayout(run_dir))

    monkeypatch.setattr(app_index.AppIndex, "map_all", map_then_rebuild)
    index = open_index(run_dir)
    assert calls and index.n == 2000 and len(index.column("mimic_score")) == 2000


def test_a_full_disk_during_the_build_leaves_the_run_readable_and_no_half_index(run_dir, monkeypatch):
    layout = RunLayout(run_dir)
    real_save = np.save
    calls = []

    def fill_the_disk(path, array, *args, **kwargs):
        calls.append(path)
        if len(calls) >= 3:
            real_save(path, array[: len(array) // 2])  # half a file written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(path, array, *args, **kwargs)

    monkeypatch.setattr(index_build.np, "save", fill_the_disk)
    with pytest.raises(IndexUnavailable, match="No space left"):
        open_index(run_dir)
    assert not layout.index_dir.exists() and layout.index_leftovers() == []
    run = open_run(run_dir)
    assert isinstance(indexed_samples(run), pd.DataFrame) and len(run.samples) == 3000  # read whole instead

    monkeypatch.setattr(index_build.np, "save", real_save)
    kept_open = open_index(run_dir)
    (run_dir / "samples.parquet").touch()  # a stale index is removed before its rebuild (disk for one index, not two)
    calls.clear()
    monkeypatch.setattr(index_build.np, "save", fill_the_disk)
    with pytest.raises(IndexUnavailable):
        open_index(run_dir)
    assert layout.index_leftovers() == [] and not layout.index_dir.exists()
    assert isinstance(indexed_samples(open_run(run_dir)), pd.DataFrame)  # the run is read whole instead
    assert len(kept_open.rows([0, 2999])) == 2  # a process that had the old index open still reads its files


def test_a_killed_build_leaves_folders_the_next_build_removes(run_dir):
    layout = RunLayout(run_dir)
    layout.index_build_dir("12345-dead").mkdir()
    (layout.index_build_dir("12345-dead") / "column-000.npy").write_bytes(b"partial")
    open_index(run_dir)
    assert layout.index_leftovers() == []


def test_a_read_only_run_opens_without_an_index(run_dir):
    os.chmod(run_dir, 0o555)
    try:
        if os.access(run_dir, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with pytest.raises(IndexUnavailable, match="cannot"):
            open_index(run_dir)
        assert len(indexed_samples(open_run(run_dir))) == 3000
    finally:
        os.chmod(run_dir, 0o755)


def _open_and_report(path, builds):
    real = app_index.build_index

    def counting(*args, **kwargs):
        builds.put(os.getpid())
        time.sleep(0.3)  # hold the lock long enough for the other process to queue behind it
        return real(*args, **kwargs)

    app_index.build_index = counting
    open_index(path)


def test_two_processes_opening_one_run_build_its_index_once(run_dir):
    context = multiprocessing.get_context("fork")
    builds = context.Queue()
    processes = [context.Process(target=_open_and_report, args=(run_dir, builds)) for _ in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    assert builds.qsize() == 1
    _check_equal_to_whole_table(run_dir)


def test_trajectories_equal_the_score_parts(run_dir):
    from mimic_explorer.store.scores import EpochScores

    index = open_index(run_dir)
    assert index.has_trajectories
    # one row per sample and epoch: the counts are not stored (all ones), the values still the parts'
    assert index.manifest["trajectories"]["rows_dtype"] == "ones" and not index.files.trajectory_rows.exists()
    ids = open_run(run_dir).samples["sample_id"]
    positions = [2999, 0, 1500]
    expected = EpochScores(run_dir).trajectories([ids.iloc[p] for p in positions]).reset_index(drop=True)
    pd.testing.assert_frame_equal(index.trajectories(positions), expected, check_dtype=False)


def test_trajectories_of_parts_in_another_order_and_a_changed_part(run_dir):
    from mimic_explorer.store.scores import EpochScores

    layout = RunLayout(run_dir)
    part = layout.epoch_parts()[1]
    shuffled = pd.read_parquet(part).sample(frac=1.0, random_state=0)  # rows in batch order, not samples order
    shuffled = pd.concat([shuffled, shuffled.iloc[:5].assign(proj=1.0)])  # and a sample twice in one epoch
    shuffled.to_parquet(part, index=False)
    index = open_index(run_dir)
    ids = open_run(run_dir).samples["sample_id"]
    positions = [int(np.flatnonzero(ids == shuffled["sample_id"].iloc[0])[0]), 10]
    expected = EpochScores(run_dir).trajectories([ids.iloc[p] for p in positions]).reset_index(drop=True)
    pd.testing.assert_frame_equal(index.trajectories(positions), expected, check_dtype=False)
    pd.read_parquet(part).assign(proj=7.0).to_parquet(part, index=False)  # a rewritten part: stale index
    assert (open_index(run_dir).trajectories([10]).query("epoch == 1")["proj"] == 7.0).all()


def test_trajectories_of_float32_signals_are_stored_compact_and_exact(run_dir, monkeypatch):
    """Signals recorded from float32 tensors are kept as float32 means with uint8 row counts (half the
    bytes), a signal whose mean is not a float32 number as float64 sums — the values exactly the parts'."""
    from mimic_explorer.store import trajectory_index
    from mimic_explorer.store.scores import EpochScores

    monkeypatch.setattr(trajectory_index, "COMPACT_SAMPLES", 700)  # several chunks
    layout = RunLayout(run_dir)
    for number, part in enumerate(layout.epoch_parts()):
        frame = pd.read_parquet(part)
        for signal in ("proj", "weight"):
            frame[signal] = frame[signal].astype(np.float32).astype(np.float64)  # as a run records them
        if number == 1:  # one sample twice in an epoch, its mean proj no float32 number (a float64 run's)
            frame = pd.concat([frame, frame.iloc[[4]].assign(proj=frame["proj"].iloc[4] + 1e-9)])
        frame.to_parquet(part, index=False)
    index = open_index(run_dir)
    record = index.manifest["trajectories"]
    stored = dict(zip(record["signals"], record["stored"], strict=True))
    assert stored["weight"] == "mean32" and stored["proj"] == "sum64" and record["rows_dtype"] == "uint8"
    assert index._map(index.files.trajectory(record["signals"].index("weight"))).dtype == np.float32
    ids = open_run(run_dir).samples["sample_id"]
    positions = [4, 2999, 0, 1500]
    expected = EpochScores(run_dir).trajectories([ids.iloc[p] for p in positions]).reset_index(drop=True)
    pd.testing.assert_frame_equal(index.trajectories(positions), expected, check_dtype=False, check_exact=True)


def test_thumbnails_by_position_from_the_index_equal_the_thumbnail_store(tmp_path):
    path = synthetic_run(tmp_path / "thumbs-run", n=400)
    index = open_index(path)
    assert index.has_thumbnails
    whole, by_index = open_run(path).thumbnails, open_run(path).thumbnails
    by_index.locate_with(index.thumbnail_location)
    ids = open_run(path).samples["sample_id"]
    for position in (0, 17, 399):
        assert by_index.get(ids.iloc[position], position) == whole.get(ids.iloc[position], position) is not None
    assert by_index._ids is None  # the thumbnail ids were never read
    assert index.thumbnail_location(400) is None
    assert index._map(index.files.thumb_offsets).dtype == np.uint32  # a small thumbs.bin: 4-byte offsets
    assert index._map(index.files.thumb_lengths).dtype == np.uint16  # thumbnails of a few KB: 2-byte lengths

    listed = pd.read_parquet(path / "thumbs" / "index.parquet")
    listed[listed["sample_id"] != ids.iloc[17]].to_parquet(path / "thumbs" / "index.parquet", index=False)
    index = open_index(path)  # rebuilt (the thumbnail index changed): sample 17 has none now
    assert index.thumbnail_location(17) is None and index.thumbnail_location(16) is not None


def test_a_sample_missing_from_an_epoch_keeps_its_row_counts(run_dir):
    """Counts of 0 and 1: stored (uint8), so the Per epoch views leave the missing sample out of that epoch."""
    from mimic_explorer.store.scores import EpochScores

    part = RunLayout(run_dir).epoch_parts()[0]
    frame = pd.read_parquet(part)
    missing = frame["sample_id"].iloc[3]
    frame[frame["sample_id"] != missing].to_parquet(part, index=False)
    index = open_index(run_dir)
    record = index.manifest["trajectories"]
    assert record["rows_dtype"] == "uint8" and index.files.trajectory_rows.exists()
    position = int(np.flatnonzero(open_run(run_dir).samples["sample_id"] == missing)[0])
    expected = EpochScores(run_dir).trajectories([missing]).reset_index(drop=True)
    got = index.trajectories([position])
    assert len(got) == len(record["epochs"]) - 1
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_row_counts_past_255_keep_int32_and_exact_trajectories(run_dir, monkeypatch):
    """A sample scored 300 times in one epoch does not fit a uint8 count: the counts stay int32."""
    from mimic_explorer.store import trajectory_index
    from mimic_explorer.store.scores import EpochScores

    monkeypatch.setattr(trajectory_index, "COMPACT_SAMPLES", 700)  # the large count sits in a later chunk
    part = RunLayout(run_dir).epoch_parts()[0]
    frame = pd.read_parquet(part)
    pd.concat([frame, *[frame.iloc[[2100]]] * 299]).to_parquet(part, index=False)
    index = open_index(run_dir)
    record = index.manifest["trajectories"]
    assert record["rows_dtype"] == "int32" and record["most_rows"] == 300
    ids = open_run(run_dir).samples["sample_id"]
    expected = EpochScores(run_dir).trajectories([ids.iloc[2100], ids.iloc[5]]).reset_index(drop=True)
    pd.testing.assert_frame_equal(index.trajectories([2100, 5]), expected, check_dtype=False)


def test_only_the_columns_the_app_opens_on_are_sorted_at_build_the_rest_on_first_use(run_dir, monkeypatch):
    index = open_index(run_dir)
    files, scores = IndexFiles(RunLayout(run_dir).index_dir), index.manifest["scores"]
    assert scores["mimic_score"].get("sorted", True) and files.order(scores["mimic_score"]["number"]).exists()
    later = scores["reference_loss"]
    assert later == {"number": later["number"], "sorted": False}
    assert not files.order(later["number"]).exists() and not index.is_sorted("reference_loss")
    assert not list(files.folder.glob("sorted-*.npy"))  # sorted values are read through the order, not stored

    values = open_run(run_dir).samples["reference_loss"].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(index.order("reference_loss"), np.argsort(values, kind="stable"))
    assert files.order(later["number"]).exists() and files.sorted_record(later["number"]).exists()
    assert index.is_sorted("reference_loss")

    sorts = []
    real = app_index.index_score_column
    monkeypatch.setattr(app_index, "index_score_column", lambda *a, **k: sorts.append(a[1]) or real(*a, **k))
    app_index._OPEN.clear()
    again = open_index(run_dir)  # another session's index: reads the record the first sort left
    assert again is not index
    np.testing.assert_array_equal(again.order("reference_loss"), index.order("reference_loss"))
    assert again.histogram("reference_loss").counts.tolist() == index.histogram("reference_loss").counts.tolist()
    assert sorts == []


def test_a_first_use_record_of_another_index_or_with_a_short_file_is_not_trusted(run_dir):
    index = open_index(run_dir)
    index.order("grand")
    files, number = IndexFiles(RunLayout(run_dir).index_dir), index.manifest["scores"]["grand"]["number"]
    record = json.loads(files.sorted_record(number).read_text())
    app_index._OPEN.clear()
    with open(files.order(number), "r+b") as handle:  # a truncated order: sorted again, whole
        handle.truncate(files.order(number).stat().st_size - 4)
    values = open_run(run_dir).samples["grand"].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(open_index(run_dir).order("grand"), np.argsort(values, kind="stable"))
    record["source"] = {"size": 1}
    files.sorted_record(number).write_text(json.dumps(record))
    app_index._OPEN.clear()
    fresh = open_index(run_dir)
    assert not fresh.is_sorted("grand")
    np.testing.assert_array_equal(fresh.order("grand"), np.argsort(values, kind="stable"))


def test_a_column_that_cannot_be_sorted_into_the_run_is_sorted_in_a_temporary_folder(run_dir, monkeypatch):
    index = open_index(run_dir)

    def refused(layout):
        raise IndexUnavailable(f"cannot lock {layout.index_lock}: read-only")

    monkeypatch.setattr(app_index, "_locked", refused)
    samples = open_run(run_dir).samples
    values = samples["reference_loss"].to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(index.order("reference_loss"), np.argsort(values, kind="stable"))
    grouped = index.grouped("reference_loss")
    assert grouped is not None and np.asarray(grouped[1]).shape == (int((~np.isnan(values)).sum()),)
    assert (
        not IndexFiles(RunLayout(run_dir).index_dir)
        .order(index.manifest["scores"]["reference_loss"]["number"])
        .exists()
    )
    assert index.count_split("reference_loss", float(np.nanmedian(values))) == (
        int((values >= np.nanmedian(values)).sum()),
        int((values < np.nanmedian(values)).sum()),
    )


def test_many_threads_asking_for_an_unsorted_column_sort_it_once(run_dir, monkeypatch):
    index = open_index(run_dir)
    sorts = []
    real = app_index.index_score_column
    monkeypatch.setattr(app_index, "index_score_column", lambda *a, **k: sorts.append(a[1]) or real(*a, **k))
    with ThreadPoolExecutor(4) as pool:
        orders = list(pool.map(lambda _: np.asarray(index.order("model_loss")), range(8)))
    assert len(sorts) == 1
    for order in orders[1:]:
        np.testing.assert_array_equal(order, orders[0])


def test_integer_columns_are_stored_in_the_narrowest_type_and_read_back_in_their_own(run_dir):
    frame = pd.read_parquet(run_dir / "samples.parquet")
    frame["wide_label"] = np.arange(len(frame)) % 300 - 150  # needs two bytes
    frame["edge_label"] = np.arange(len(frame)) % 128  # 127 fits a byte, but leaves no room for a label + 1
    frame.to_parquet(run_dir / "samples.parquet", index=False, row_group_size=700)
    index = open_index(run_dir)
    assert index.column("label").dtype == np.int8 and index.dtype("label") == np.int64
    assert index.column("wide_label").dtype == np.int16 and index.dtype("wide_label") == np.int64
    assert index.column("edge_label").dtype == np.int16
    assert index.column("mimic_score").dtype == np.float64
    rows = index.rows(np.array([5, 0, 2999]))
    pd.testing.assert_frame_equal(rows, open_run(run_dir).samples.iloc[[5, 0, 2999]])


def test_text_columns_with_few_values_are_dictionary_encoded_and_read_back_as_text(run_dir, monkeypatch):
    frame = pd.read_parquet(run_dir / "samples.parquet")
    frame["source"] = np.where(np.arange(len(frame)) % 3 == 0, "shard-a.tar", "shard-b.tar")
    frame["shard_note"] = [f"note {i % 5}" for i in range(len(frame))]  # five values: more than allowed below
    frame.to_parquet(run_dir / "samples.parquet", index=False, row_group_size=700)
    monkeypatch.setattr(index_build, "MOST_DISTINCT_ENCODED", 3)
    index = open_index(run_dir)
    assert pa.types.is_dictionary(index.text.schema.field("source").type)
    assert not pa.types.is_dictionary(index.text.schema.field("shard_note").type)
    assert not pa.types.is_dictionary(index.text.schema.field("sample_id").type)
    samples = open_run(run_dir).samples
    positions = np.array([2999, 0, 1, 2, 1500])
    pd.testing.assert_frame_equal(index.rows(positions), samples.iloc[positions])
    pd.testing.assert_series_equal(index.text_column("source"), samples["source"])
    assert not pa.types.is_dictionary(index.take_text(positions, ["source"]).column("source").type)
