"""Index one score column: its ascending order, its positions grouped by (class, mislabeled), its
counts and its histogram — at build time for the columns the app opens on, on first use for the rest.

Why one module: the index build (``store.index_build``) sorts the columns people open first, and the
open index (``store.app_index``) sorts any other column the first time something asks for it; both
must write the same files and the same record, so both call ``index_score_column``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mimic_explorer.store.atomic import load_npy, mapped_array_file
from mimic_explorer.store.external_sort import group_bounds, sort_column
from mimic_explorer.store.histogram import class_bin_counts, histogram, histogram_record
from mimic_explorer.store.layout import IndexFiles
from mimic_explorer.store.ordered_values import OrderedValues

#: Sorted when the index is built: the columns the app opens on and the ones a DataComp filter names.
#: Every other score column is sorted the first time it is shown or filtered on (seconds at 12.8 M),
#: so a run with many recorded signals does not pay for orders nobody reads, in build time or disk.
SORTED_AT_BUILD = ("combined_score", "mimic_score", "clip_score_ref", "clip_score", "clip_l14_similarity_score")
#: stored orders hold positions as int32 below 2**31 rows (half the bytes to write and to map)
POSITION_TYPE = np.int32


def columns_sorted_at_build(score_columns: list[str]) -> list[str]:
    """The score columns the build sorts: ``SORTED_AT_BUILD`` where present, else the first column."""
    chosen = [name for name in score_columns if name in SORTED_AT_BUILD]
    return chosen or score_columns[:1]


@dataclass
class ClassGroups:
    """Each sample's group (class code · 2 + mislabeled) as the live counter forms them, and the
    labels with their counts."""

    group: np.ndarray
    n_groups: int
    classes: dict[str, list] | None


def class_groups(labels: np.ndarray | None, n: int, noisy: np.ndarray | None) -> ClassGroups:
    """The groups from an integer label column (None: one class) and the mislabeled flags (None: none).

    Memory: the labels' codes are found a chunk at a time against the sorted distinct labels, and the
    groups kept as int16 (int32 past 16,383 classes): 2–4 bytes a sample, not numpy.unique's ~24."""
    step = 1 << 22
    if labels is None:
        classes = np.zeros(1 if n else 0, dtype=np.int64)
    else:
        distinct = [np.unique(np.asarray(labels[s : s + step])) for s in range(0, n, step)]
        classes = np.unique(np.concatenate(distinct)) if distinct else np.zeros(0, dtype=np.int64)
    group_type = np.int16 if 2 * len(classes) < 2**15 else np.int32
    group = np.empty(n, dtype=group_type)
    counts = np.zeros(len(classes), dtype=np.int64)
    for start in range(0, n, step):
        codes = (
            np.zeros(min(step, n - start), dtype=np.int64)
            if labels is None
            else np.searchsorted(classes, np.asarray(labels[start : start + step]))
        )
        counts += np.bincount(codes, minlength=len(classes))
        chunk = codes * 2
        if noisy is not None:
            chunk += np.asarray(noisy[start : start + step], dtype=bool)
        group[start : start + len(chunk)] = chunk
    record = {"labels": classes.tolist(), "counts": counts.tolist()} if labels is not None else None
    return ClassGroups(group, 2 * len(classes), record)


def _histogram_record(column: np.ndarray, ordered: OrderedValues, noisy: np.ndarray | None) -> dict[str, Any]:
    lo, hi = ordered.searchsorted(-np.inf, side="right"), ordered.searchsorted(np.inf)
    return histogram_record(histogram(column, noisy=noisy, sorted_finite=ordered[int(lo) : int(hi)]))


def index_score_column(
    files: IndexFiles,
    number: int,
    n_rows: int,
    groups: ClassGroups | None,
    noisy: np.ndarray | None,
    scratch: Path,
    *,
    with_histogram: bool = True,
    out: IndexFiles | None = None,
    mapped: Callable = mapped_array_file,
) -> dict[str, Any]:
    """Sort column ``number`` out of core into ``files.order(number)`` (and ``files.grouped(number)``
    given groups), and return its record: valid (non-NaN) and finite counts, group bounds, histogram
    (``noisy``: the mislabeled flags to split its bars by; ``with_histogram=False`` when the ground
    truth has nulls: the explorer then computes its own). ``out``: where the order files go (default
    ``files``, the index the column is read from)."""
    out = out or files
    column = load_npy(files.column(number), mmap_mode="r")
    found = sort_column(
        column,
        out.order(number),
        scratch,
        position_type=POSITION_TYPE if n_rows < 2**31 else np.int64,
        grouped_path=out.grouped(number) if groups is not None else None,
        group=groups.group if groups is not None else None,
        n_groups=groups.n_groups if groups is not None else 0,
        mapped=mapped,
    )
    order = load_npy(out.order(number), mmap_mode="r")
    ordered = OrderedValues(column, order[: found.valid])
    record = _histogram_record(column, ordered, noisy) if with_histogram else None
    class_counts = None
    if record is not None and groups is not None:  # the Per class tab's counts, in the same bins
        codes = _GroupCodes(groups.group)
        class_counts = class_bin_counts(column, codes, groups.n_groups // 2, np.asarray(record["edges"])).tolist()
    return {
        "number": number,
        "valid": found.valid,
        "finite": found.finite,
        "group_bounds": None if groups is None else group_bounds(found).tolist(),
        "histogram": record,
        "class_counts": class_counts,
    }


class _GroupCodes:
    """Class codes read from the (class · 2 + mislabeled) groups a slice at a time."""

    def __init__(self, group: np.ndarray):
        self._group = group

    def __len__(self) -> int:
        return len(self._group)

    def __getitem__(self, key: slice) -> np.ndarray:
        return self._group[key] // 2
