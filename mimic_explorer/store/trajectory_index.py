"""Per-epoch trajectories in the app index: one (epochs × samples) array per signal.

Why: a click on a gallery card shows the sample's trajectory over training. Reading it from the score
parts means scanning the ``sample_id`` column of every part (samples × epochs strings: 64 M at
12.8 M samples over 5 epochs, seconds per click). Built once with the rest of the index, a
trajectory is one column of a memory-mapped array per signal. Values are the mean of the rows of each
(sample, epoch), as ``EpochScores.trajectories`` gives them. Parts written in ``samples.parquet``
order (the usual case) map rows to samples by position; any other order goes through one hash
lookup of the ids.

Built as float64 sums and int32 row counts, then compacted where nothing is lost: a signal whose
every mean is a float32 number (a run's signals come from float32 tensors) is stored as float32 means,
row counts that fit as uint8 — 6 bytes a cell instead of 12 for one signal, exact either way; the
manifest says which (``stored``, ``rows_dtype``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mimic_explorer.store.arrow_pool import release_arrow_memory
from mimic_explorer.store.atomic import load_npy, mapped_array_file, release_mapped_pages
from mimic_explorer.store.layout import IndexFiles
from mimic_explorer.store.scores import SIGNALS

BATCH_ROWS = 1 << 20


class Positions:
    """Sample positions of score rows: by position when a batch repeats the samples' ids in order,
    else by a hash of the ids (built once, only when needed: every id as a Python string).

    ``ids`` may be a chunked array over a memory map (the index's text file); ``release`` then hands
    back the pages a comparison read, so a pass over 128 M ids holds one batch of them, not all."""

    def __init__(self, ids: pa.Array | pa.ChunkedArray, release: Callable[[], None] | None = None):
        self.ids = ids
        self._release = release or (lambda: None)
        self._lookup: pd.Index | None = None

    def of(self, batch_ids: pa.Array, offset: int) -> tuple[np.ndarray, bool]:
        """(positions, whether they are distinct); -1 for an id the samples do not have."""
        rows = len(batch_ids)
        if offset + rows <= len(self.ids):
            same = pa.chunked_array([batch_ids], type=batch_ids.type).equals(
                _chunked(self.ids.slice(offset, rows), batch_ids.type)
            )
            self._release()
            if same:
                return np.arange(offset, offset + rows), True
        if self._lookup is None:
            self._lookup = pd.Index(self.ids.to_numpy(zero_copy_only=False))
            self._release()
        return self._lookup.get_indexer(batch_ids.to_numpy(zero_copy_only=False)), False


def _chunked(ids: pa.Array | pa.ChunkedArray, kind: pa.DataType) -> pa.ChunkedArray:
    chunked = ids if isinstance(ids, pa.ChunkedArray) else pa.chunked_array([ids], type=ids.type)
    return chunked if chunked.type == kind else chunked.cast(kind)


def build_trajectories(parts: list[Path], ids: Positions, files: IndexFiles) -> dict[str, Any] | None:
    """Write the trajectory arrays for the run's score ``parts``; None when it has none.
    ``ids``: the samples' ids (samples.parquet order) as ``Positions``.

    Arrays are (epochs × samples): a part holds one epoch (or a few) in sample order, so its rows land
    in one contiguous stretch of each array; the arrays are mapped for one part at a time, so the
    pages a build has written are released as it goes (resident memory: one part's worth)."""
    if not parts:
        return None
    names = set(pq.ParquetFile(parts[0]).schema_arrow.names)  # as EpochScores: the first part's schema
    signals = [s for s in SIGNALS if s in names]
    if not signals or "epoch" not in names:
        return None
    epochs = np.unique(  # a part's distinct epochs at a time: never every row's epoch at once
        np.concatenate([np.unique(pq.read_table(p, columns=["epoch"]).column("epoch").to_numpy()) for p in parts])
    )
    shape = (len(epochs), len(ids.ids))
    paths = [files.trajectory(k) for k in range(len(signals))]
    for path in paths:
        mapped_array_file(path, np.float64, shape)  # zeros, every block reserved (a full disk: OSError, not SIGBUS)
    mapped_array_file(files.trajectory_rows, np.int32, shape)
    positions = ids
    for part in parts:
        sums = [load_npy(path, mmap_mode="r+") for path in paths]
        rows = load_npy(files.trajectory_rows, mmap_mode="r+")
        offset = 0
        reader = pq.ParquetFile(part, pre_buffer=False)  # a pre-buffering reader keeps what it has read
        for batch in reader.iter_batches(batch_size=BATCH_ROWS, columns=["sample_id", "epoch", *signals]):
            where, distinct = positions.of(batch.column("sample_id").cast(pa.string()), offset)
            offset += batch.num_rows
            known = where >= 0
            keep = slice(None) if known.all() else known
            epoch = np.searchsorted(epochs, batch.column("epoch").to_numpy()[keep])
            columns = [
                batch.column(signal).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)[keep]
                for signal in signals
            ]
            _accumulate(rows, sums, epoch, where[keep], columns, distinct)
            for array in (rows, *sums):  # the batch's written pages: the page cache's, not this process's
                release_mapped_pages(array)
        del sums, rows  # unmapped: written pages go to the page cache, out of this process
        release_arrow_memory()  # the part's decoded batches
    stored = [_compact_signal(path, files.trajectory_rows) for path in paths]
    rows_dtype, most_rows = _compact_rows(files.trajectory_rows)
    return {
        "most_rows": most_rows,  # 1: each (sample, epoch) one score row, so a cell's mean is that row's value
        "signals": signals,
        "epochs": epochs.tolist(),
        "layout": "epochs-by-samples",
        "stored": stored,
        "rows_dtype": rows_dtype,
    }


#: samples compacted at a time (of every epoch): the build's memory stays a few of these
COMPACT_SAMPLES = 1 << 20


def _compact_signal(path: Path, rows_path: Path) -> str:
    """Replace a signal's float64 sums with its float32 means when every mean is a float32 number (what
    a run records: its signals come from float32 tensors), half the bytes and still exact; else keep
    the sums. Returns how the signal is stored: ``"mean32"`` or ``"sum64"``."""
    sums, rows = load_npy(path, mmap_mode="r"), load_npy(rows_path, mmap_mode="r")
    compact = path.with_name(path.stem + ".mean32.npy")
    means = mapped_array_file(compact, np.float32, sums.shape)
    exact = True
    for start in range(0, sums.shape[1], COMPACT_SAMPLES):
        span = slice(start, start + COMPACT_SAMPLES)
        count = np.asarray(rows[:, span])
        mean = np.divide(sums[:, span], count, out=np.zeros(count.shape), where=count > 0)
        narrow = mean.astype(np.float32)
        if not np.array_equal(narrow.astype(np.float64), mean, equal_nan=True):
            exact = False
            break
        means[:, span] = narrow
        for array in (sums, rows, means):
            release_mapped_pages(array)
    means.flush()
    del means, sums, rows
    if not exact:
        compact.unlink()
        return "sum64"
    os.replace(compact, path)
    return "mean32"


def _compact_rows(rows_path: Path) -> tuple[str, int]:
    """Store the per-cell row counts as uint8 when none exceeds 255, and not at all when every cell holds
    exactly one row (one row per sample and epoch, the usual case: ``row_counts`` gives them back as a
    view of ones); returns how they are stored (``"ones"``, ``"uint8"`` or ``"int32"``) and the largest count."""
    rows = load_npy(rows_path, mmap_mode="r")
    compact = rows_path.with_name(rows_path.stem + ".uint8.npy")
    small = mapped_array_file(compact, np.uint8, rows.shape)
    largest, smallest = 0, None
    for start in range(0, rows.shape[1], COMPACT_SAMPLES):  # one pass: copied while the counts fit
        block = np.asarray(rows[:, start : start + COMPACT_SAMPLES])
        largest = max(largest, int(block.max(initial=0)))
        low = int(block.min(initial=largest))
        smallest = low if smallest is None else min(smallest, low)
        if largest <= np.iinfo(np.uint8).max:
            small[:, start : start + COMPACT_SAMPLES] = block
        release_mapped_pages(small), release_mapped_pages(rows)
    small.flush()
    del small, rows
    if largest == 1 and smallest == 1:
        compact.unlink()
        rows_path.unlink()
        return "ones", 1
    if largest > np.iinfo(np.uint8).max:
        compact.unlink()
        return "int32", largest
    os.replace(compact, rows_path)
    return "uint8", largest


def row_counts(record: dict[str, Any], files: IndexFiles, load: Callable[[Path], np.ndarray]) -> np.ndarray:
    """The (epochs × samples) row counts of the index's trajectories, read with ``load`` (a memory map):
    a read-only view of ones, taking no memory, when the build found one row in every cell."""
    if record.get("rows_dtype") == "ones":
        shape = load(files.trajectory(0)).shape
        return np.broadcast_to(np.ones(1, dtype=np.uint8), shape)
    return load(files.trajectory_rows)


def _accumulate(
    rows: np.ndarray,
    sums: list[np.ndarray],
    epoch: np.ndarray,
    where: np.ndarray,
    columns: list[np.ndarray],
    distinct: bool,
) -> None:
    """Add one batch's rows: a contiguous slice when the batch is one epoch of consecutive samples
    (the usual case), else an exact unbuffered add per cell."""
    if distinct and len(where) and epoch[0] == epoch[-1] and (epoch == epoch[0]).all():
        span = slice(int(where[0]), int(where[0]) + len(where))  # distinct batches are consecutive positions
        e = int(epoch[0])
        rows[e, span] += 1
        for target, values in zip(sums, columns, strict=True):
            target[e, span] += values
        return
    cells = epoch * rows.shape[1] + where
    add = _add_distinct if distinct else np.add.at
    add(rows.reshape(-1), cells, 1)
    for target, values in zip(sums, columns, strict=True):
        add(target.reshape(-1), cells, values)


def _add_distinct(target: np.ndarray, cells: np.ndarray, values) -> None:
    target[cells] += values  # cells are distinct: plain fancy-index addition is exact (and fast)


def read_trajectories(
    record: dict[str, Any], rows: np.ndarray, sums: list[np.ndarray], positions: np.ndarray, ids: list[str]
) -> pd.DataFrame:
    """Rows ``sample_id, epoch, <signals>`` of the samples at ``positions`` (ids ``ids``), sorted by
    sample id then epoch — ``EpochScores.trajectories``'s frame. ``rows``, ``sums``: the index's
    arrays (``IndexFiles.trajectory_rows``, ``IndexFiles.trajectory(k)``), memory-mapped."""
    signals, epochs = record["signals"], np.asarray(record["epochs"])
    stored = record.get("stored") or ["sum64"] * len(signals)  # an index built before compaction: sums
    rows = np.asarray(rows[:, positions].T, dtype=np.int64)
    sample, epoch = np.nonzero(rows)
    frame = pd.DataFrame({"sample_id": np.asarray(ids, dtype=object)[sample], "epoch": epochs[epoch]})
    for signal, values, how in zip(signals, sums, stored, strict=True):
        values = np.asarray(values[:, positions].T, dtype=np.float64)
        frame[signal] = values[sample, epoch] if how == "mean32" else values[sample, epoch] / rows[sample, epoch]
    frame["sample_id"] = frame["sample_id"].astype(str)
    return frame.sort_values(["sample_id", "epoch"], kind="stable").reset_index(drop=True)
