"""The app's per-run index: opened in O(1) when valid, rebuilt (once, atomically) when it is not.

Why: at DataComp scale (12.8 M rows) reading ``samples.parquet`` into pandas and sorting it costs tens
of seconds and gigabytes on every open. ``open_index(run_dir)`` instead memory-maps what
``store.index_build`` wrote once per run. An index is trusted only when its manifest names the exact
``samples.parquet`` it was built from (size, mtime, row count) and every file it lists has the size
recorded there: a missing, stale or truncated index is rebuilt, never read. A build runs under an
``flock`` on ``RunLayout.index_lock`` (two sessions opening one run build it once), writes into a
hidden build folder and renames it into place, so a build that fails — a full disk included — leaves
the run as it was and its half-written files removed. See docs/ARCHITECTURE.md (the run directory).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import mmap
import os
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mimic_explorer.store.atomic import load_npy, release_mapped_pages, write_json
from mimic_explorer.store.histogram import Histogram, histogram_from_record
from mimic_explorer.store.id_lookup import IdLookup, probe_hash
from mimic_explorer.store.index_build import PANDAS_DTYPES_KEY, build_index, run_groups
from mimic_explorer.store.layout import IndexFiles, RunLayout
from mimic_explorer.store.ordered_values import OrderedValues
from mimic_explorer.store.score_index import index_score_column
from mimic_explorer.store.trajectory_index import read_trajectories, row_counts

#: 3: pandas nullable dtypes restored from the text file; 4: trajectories epochs × samples, int32 orders;
#: 5: sorted sample-id hashes (rows by id without reading every id); 6: no sorted values (read through
#: the order), grouped positions instead of grouped values, columns other than the app's sorted on first use,
#: integer columns stored in the narrowest type that holds them; 7: text columns with few values dictionary-encoded;
#: 8: each (signal, epoch) histogram of the Per epoch tab stored; 9: thumbnail offsets as uint32 when they
#: fit, a missing thumbnail marked by length 0; 10: no trajectory row counts stored when every (epoch, sample)
#: cell holds one row, thumbnail lengths as uint16 when they fit
INDEX_VERSION = 10
log = logging.getLogger(__name__)


class IndexUnavailable(OSError):
    """The index cannot be opened or built here (read-only run, full disk...); the message says why."""


def _source_identity(layout: RunLayout) -> dict[str, Any]:
    """Size and mtime of samples.parquet and of every score part: any change makes the index stale."""

    def identity(path: Path) -> dict[str, int]:
        stat = path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    thumbs = identity(layout.thumbs_index) if layout.thumbs_index.exists() else None
    return {**identity(layout.samples), "parts": {p.name: identity(p) for p in layout.score_parts()}, "thumbs": thumbs}


def _read_manifest(layout: RunLayout) -> dict[str, Any] | None:
    """The manifest of a valid index for the current ``samples.parquet``, else None (and why, logged)."""
    files = IndexFiles(layout.index_dir)
    try:
        manifest = json.loads(files.manifest.read_text(encoding="utf-8"))
        source = _source_identity(layout)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("version") != INDEX_VERSION:
        return None
    if manifest.get("source") != source:
        log.info("index of %s is stale (samples.parquet or a score part changed since it was built)", layout.root)
        return None
    for name, size in (manifest.get("files") or {}).items():
        try:
            actual = (files.folder / name).stat().st_size
        except OSError:
            actual = None
        if actual != size:
            log.warning(
                "index file %s of %s is missing or truncated (%s bytes, %s expected)", name, layout.root, actual, size
            )
            return None
    return manifest


@contextmanager
def _locked(layout: RunLayout) -> Iterator[None]:
    try:
        handle = open(layout.index_lock, "a+")  # noqa: SIM115 - opened alone so that an OSError names the lock
    except OSError as exc:
        raise IndexUnavailable(f"cannot lock {layout.index_lock}: {exc.strerror or exc}") from None
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _rebuild(layout: RunLayout) -> dict[str, Any]:
    """Build into a hidden folder, then swap it in; on any failure remove what was written.

    The index being replaced is stale (or truncated, or of another version): nothing will read it
    again, so it is removed before the build, not after — at 128 M samples the two side by side would
    need 40 GB. A process that has its files mapped keeps reading them (an unlinked file lives on
    while it is mapped)."""
    for leftover in layout.index_leftovers():  # a killed build's folders (we hold the lock)
        _remove(leftover)
    token = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if layout.index_dir.exists():
        stale = layout.index_old_dir(token)
        os.replace(layout.index_dir, stale)
        _remove(stale)
    building = layout.index_build_dir(token)
    try:
        building.mkdir()
        source = _source_identity(layout)
        thumbs = layout.thumbs_index if layout.thumbs_index.exists() else None
        body = build_index(layout.samples, building, layout.score_parts(), thumbs)
        manifest = {"version": INDEX_VERSION, "source": source, **body}
        write_json(IndexFiles(building).manifest, manifest)
        old = layout.index_old_dir(token)
        if layout.index_dir.exists():
            os.replace(layout.index_dir, old)
        os.replace(building, layout.index_dir)
        _remove(old)
    except BaseException:
        _remove(building)
        raise
    return manifest


#: Indexes open in this process, by run folder: every session on a run maps its files once.
_OPEN: weakref.WeakValueDictionary[Path, AppIndex] = weakref.WeakValueDictionary()
_OPEN_LOCK = threading.Lock()


def open_index(run_dir: str | os.PathLike, *, build: bool = True) -> AppIndex:
    """The run's index, built first if missing, stale or truncated (``build=False``: raise instead).
    An index already open in this process for the same files is returned as it is (one set of
    memory maps and shared values per run, however many sessions show it).

    Raises ``IndexUnavailable`` when it cannot be built here (the run folder is read-only, the disk is
    full, samples.parquet is unreadable); the run itself is untouched and can still be read whole."""
    layout = RunLayout(Path(run_dir))
    manifest = _valid_manifest(layout, build)
    key = layout.root.resolve()
    with _OPEN_LOCK:
        index = _OPEN.get(key)
        if index is None or index.manifest != manifest:
            index = _OPEN[key] = _map_consistent(layout, manifest, build)
    return index


def _map_consistent(layout: RunLayout, manifest: dict[str, Any], build: bool, attempts: int = 3) -> AppIndex:
    """An ``AppIndex`` with every file mapped, all from the one index its manifest describes.

    Why: another process may replace the index (samples.parquet changed) at any moment. Files mapped
    before the swap keep their old contents (the mapping holds the file), so mapping everything at
    once and then finding the same manifest still in place proves the maps are one consistent index;
    a file mapped later could belong to the next one."""
    for _ in range(attempts):
        index = AppIndex(layout, manifest)
        try:
            index.map_all()
        except (OSError, ValueError):
            index = None
        again = _read_manifest(layout)
        if index is not None and again == manifest:
            return index
        manifest = again if again is not None else _valid_manifest(layout, build)
    raise IndexUnavailable(f"the app index of {layout.root} kept changing while it was opened")


def _clear_leftovers(layout: RunLayout) -> None:
    """Remove the folders a build killed after its swap left beside a valid index (the stale index it
    set aside), under the lock that a build in progress holds; on a read-only run they stay."""
    try:
        with _locked(layout):
            for leftover in layout.index_leftovers():
                _remove(leftover)
    except IndexUnavailable:
        pass


def _valid_manifest(layout: RunLayout, build: bool) -> dict[str, Any]:
    manifest = _read_manifest(layout)
    if manifest is not None and build and layout.index_leftovers():
        _clear_leftovers(layout)
    if manifest is None:
        if not build:
            raise IndexUnavailable(f"{layout.root} has no valid app index")
        with _locked(layout):
            manifest = _read_manifest(layout)  # another session may have built it while we waited
            if manifest is None:
                try:
                    manifest = _rebuild(layout)
                except (OSError, pa.ArrowException) as exc:
                    raise IndexUnavailable(f"cannot build the app index of {layout.root}: {exc}") from exc
    return manifest


def _close_all(descriptors: dict[Path, int]) -> None:
    for descriptor in descriptors.values():
        with contextlib.suppress(OSError):
            os.close(descriptor)
    descriptors.clear()


def _decoded(table: pa.Table) -> pa.Table:
    """``table`` with its dictionary-encoded columns as their plain values (what ``Run.samples`` reads)."""
    for number, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(number, field.name, table.column(number).cast(field.type.value_type))
    return table


class AppIndex:
    """Memory-mapped columns of one run and the per-score-column orders; nothing is read until asked."""

    def __init__(self, layout: RunLayout, manifest: dict[str, Any]):
        self.layout = layout
        self.manifest = manifest
        self.files = IndexFiles(layout.index_dir)
        self.n: int = int(manifest["rows"])
        self.columns: list[str] = list(manifest["columns"])
        self._numeric = {entry["name"]: entry for entry in manifest["numeric"]}
        self._scores: dict[str, dict[str, Any]] = manifest["scores"]
        self._maps: dict[Path, np.ndarray] = {}
        self._shared: dict[tuple, Any] = {}
        self._shared_lock = threading.RLock()  # a value may be built from another
        self._sorted_later: dict[str, dict[str, Any]] = {}  # records of columns sorted on first use
        self._order_files: dict[int, IndexFiles] = {}  # where such a column's order lies, when not in the index
        self._sort_lock = threading.Lock()
        self._map_lock = threading.RLock()
        self._descriptors: dict[Path, int] = {}
        weakref.finalize(self, _close_all, self._descriptors)

    def shared(self, key: tuple, build: Callable[[], Any]) -> Any:
        """A value derived from this index (a column's sorted counter...), built once by ``build()``
        and then handed to every reader of the index in this process."""
        with self._shared_lock:
            if key not in self._shared:
                self._shared[key] = build()
            return self._shared[key]

    # ------------------------------------------------------------------ columns

    @property
    def score_columns(self) -> list[str]:
        """Numeric non-category columns, in the table's order (each has an order and a histogram)."""
        return [name for name in self.columns if name in self._scores]

    def is_numeric(self, name: str) -> bool:
        """Whether ``name`` is a numeric column (memory-mapped) rather than a text one."""
        return name in self._numeric

    def dtype(self, name: str) -> np.dtype | None:
        """The numpy dtype of a numeric column (None for a text column)."""
        entry = self._numeric.get(name)
        return None if entry is None else np.dtype(entry["dtype"])

    def _map(self, path: Path) -> np.ndarray:
        """``path`` memory-mapped, through a descriptor kept open for ``read_at`` (mapped from
        ``/proc/self/fd`` where there is one, so map and descriptor are one file whatever happens to
        the name)."""
        with self._map_lock:
            if path not in self._maps:
                descriptor = os.open(path, os.O_RDONLY)
                try:
                    via = Path(f"/proc/self/fd/{descriptor}")
                    self._maps[path] = load_npy(via if via.exists() else path, mmap_mode="r")
                except BaseException:
                    os.close(descriptor)
                    raise
                self._descriptors[path] = descriptor
            return self._maps[path]

    def map_all(self) -> None:
        """Map every file of the index now (no page is read): later reads see these files even if
        the index is replaced meanwhile. Raises ``OSError`` when a file is missing or not the
        size the manifest records."""
        sizes = self.manifest.get("files") or {}
        for name, size in sizes.items():
            path = self.files.folder / name
            if path == self.files.text:
                mapped = len(self._text_map)
                self.text  # noqa: B018 - a cached property: the table over the map, read now
            elif path.suffix == ".npy":
                array = self._map(path)
                mapped = array._mmap.size() if getattr(array, "_mmap", None) is not None else size
            else:
                continue
            if mapped != size:
                raise OSError(f"{path} is {mapped} bytes, its manifest says {size}")

    def release(self) -> None:
        """Unmap every page of the index this process has touched (they stay in the page cache; the
        next read maps them again from there).

        Why: a mapped page counts in the process's resident memory, and a random read maps far more
        than it reads (the kernel maps whole folios and the pages around a fault: ~0.4 MB per row
        read from each column here). Readers call this after an operation, so the server's resident
        memory is what it holds, not every page it ever looked at."""
        for array in list(self._maps.values()):
            release_mapped_pages(array)
        if "_text_map" in self.__dict__:
            release_mapped_pages(self._text_map)

    def _column_path(self, name: str) -> Path:
        if name not in self._numeric:
            raise KeyError(f"{name!r} is not a numeric column of the index")
        return self.files.column(self._numeric[name]["number"])

    def column(self, name: str) -> np.ndarray:
        """A numeric column, memory-mapped (read-only), in the type its file holds: the table's own, or a
        narrower integer type that holds every value (``dtype(name)`` is the table's; ``rows`` casts back)."""
        return self._map(self._column_path(name))

    @cached_property
    def _text_map(self) -> mmap.mmap:
        with open(self.files.text, "rb") as handle:
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)

    @cached_property
    def text(self) -> pa.Table:
        """The text columns (memory-mapped Arrow, zero-copy; read rows with ``take_text``)."""
        return pa.ipc.open_file(pa.BufferReader(pa.py_buffer(self._text_map))).read_all()

    def take_text(self, positions: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """The text rows at ``positions`` (in that order): each record batch's own ``take``, which
        reads only those rows (a ``take`` on the whole table joins its batches first: every row).
        Dictionary-encoded columns (few distinct values, e.g. ``source``) come back as plain text."""
        return self.gather(positions, columns)[0]

    def gather(
        self,
        positions: np.ndarray,
        text_columns: list[str] | None = None,
        numeric: dict[str, np.ndarray] | None = None,
        release_every: int | None = None,
    ) -> tuple[pa.Table, dict[str, np.ndarray]]:
        """(the text rows at ``positions`` as ``take_text`` gives them; each array of ``numeric`` at
        ``positions``), in the order of ``positions``.

        Rows are read in file order, record batch by record batch (each batch's own ``take``), and put
        back in the asked order once at the end. ``release_every``: hand this process's mapped pages
        back after every that many rows read (a gather of millions of rows in score order: without it
        every page of the files it touched would stay resident until the end)."""
        table = self.text if text_columns is None else self.text.select(text_columns)
        numeric = numeric or {}
        positions = np.asarray(positions, dtype=np.int64)
        batches = table.to_batches()
        if len(positions) == 0:  # a take on the whole table joins its batches first: every row, for none
            return _decoded(table.slice(0, 0)), {name: np.asarray(array[:0]) for name, array in numeric.items()}
        if len(batches) <= 1:
            taken = _decoded(table.take(pa.array(positions)))
            return taken, {name: np.asarray(array[positions]) for name, array in numeric.items()}
        starts = np.cumsum([0] + [batch.num_rows for batch in batches])
        which = (np.searchsorted(starts, positions, side="right") - 1).astype(
            np.int16 if len(batches) < 2**15 else np.int64
        )
        by_batch = np.argsort(which, kind="stable")  # a radix sort of small ints
        grouped, bounds = positions[by_batch], np.searchsorted(which[by_batch], np.arange(len(batches) + 1))
        pieces, parts, read = [], {name: [] for name in numeric}, 0
        for b in range(len(batches)):
            if bounds[b + 1] == bounds[b]:
                continue
            rows = grouped[bounds[b] : bounds[b + 1]]
            pieces.append(batches[b].take(pa.array(rows - starts[b])))
            for name, array in numeric.items():
                parts[name].append(np.asarray(array[rows]))
            read += len(rows)
            if release_every is not None and read >= release_every:
                self.release()
                read = 0
        if release_every is not None:
            self.release()
        taken = pa.Table.from_batches(pieces, schema=table.schema)
        if bool((positions[1:] >= positions[:-1]).all()):  # asked in file order: already in their order
            return _decoded(taken), {name: np.concatenate(values) for name, values in parts.items()}
        back = np.empty(len(positions), dtype=np.int64)
        back[by_batch] = np.arange(len(positions))
        taken = _decoded(taken.take(pa.array(back)))
        return taken, {name: np.concatenate(values)[back] for name, values in parts.items()}

    #: the slices of a file ``read_in_file_order`` reads one after the other
    FILE_SLICES = 16
    #: files up to this size in all are read whole through their maps, their pages kept until the
    #: caller hands them back: a page is then faulted in once, not once per read
    MAPPED_BUDGET = 1 << 29

    def read_in_file_order(self, array: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """``array[positions]`` (an index column's map) read a ``1/FILE_SLICES`` of the file at a time,
        this process's mapped pages handed back after each. Why: millions of positions in score order
        touch nearly every page of the file, and each page read through a map stays resident until
        handed back — the whole file's worth (1 GB a float64 column at 128 M samples) at once. A file
        within ``MAPPED_BUDGET`` is read whole."""
        positions = np.asarray(positions, dtype=np.int64)
        if array.nbytes <= self.MAPPED_BUDGET:
            return np.asarray(array[positions])
        slice_of = (positions * self.FILE_SLICES // max(self.n, 1)).astype(np.int16)
        by_slice = np.argsort(slice_of, kind="stable")  # a radix sort of small ints
        bounds = np.searchsorted(slice_of[by_slice], np.arange(self.FILE_SLICES + 1))
        out = np.empty(len(positions), dtype=array.dtype)
        for number in range(self.FILE_SLICES):
            if bounds[number + 1] == bounds[number]:
                continue
            these = by_slice[bounds[number] : bounds[number + 1]]
            out[these] = array[positions[these]]
            self.release()
        return out

    @cached_property
    def _text_dtypes(self) -> dict[str, str]:
        """Pandas nullable dtypes (``Int64``...) the table was written with, restored on read."""
        return json.loads((self.text.schema.metadata or {}).get(PANDAS_DTYPES_KEY, b"{}"))

    def _as_written(self, frame: pd.DataFrame) -> pd.DataFrame:
        for name, dtype in self._text_dtypes.items():
            if name in frame.columns:
                frame[name] = frame[name].astype(dtype)
        return frame

    def text_column(self, name: str) -> pd.Series:
        """A whole text column (``sample_id`` as str, as ``Run.samples`` has it): O(n), read on demand."""
        series = self._as_written(_decoded(self.text.select([name])).to_pandas())[name].rename(name)
        return series.astype(str) if name == "sample_id" else series

    # ------------------------------------------------------------------ per score column

    def _score(self, name: str) -> dict[str, Any]:
        """``name``'s record (counts, group bounds, histogram), the column sorted first if it is not yet."""
        if name not in self._scores:
            raise KeyError(f"no score column {name!r}; available: {', '.join(self.score_columns)}")
        record = self._scores[name]
        if record.get("sorted", True):
            return record
        if name in self._sorted_later:
            return self._sorted_later[name]
        groups = self._class_groups  # made before the sort lock is taken (it takes the shared-value lock)
        with self._sort_lock:
            if name not in self._sorted_later:
                self._sorted_later[name] = self._sort_on_first_use(name, int(record["number"]), groups)
            return self._sorted_later[name]

    @cached_property
    def _class_groups(self):
        """(class groups, mislabeled flags, whether the truth has nulls): what sorting a column needs."""
        numeric = [(entry["name"], np.dtype(entry["dtype"])) for entry in self.manifest["numeric"]]
        return self.shared(("class-groups",), lambda: run_groups(self.files, numeric, self.manifest["text"], self.n))

    def is_sorted(self, name: str) -> bool:
        """Whether ``name``'s order is ready (else the first read of it sorts the column: seconds at 12.8 M)."""
        record = self._scores.get(name)
        if record is None or record.get("sorted", True) or name in self._sorted_later:
            return True
        return self._read_sorted_record(int(record["number"])) is not None

    def _read_sorted_record(self, number: int) -> dict[str, Any] | None:
        """The record a first-use sort left in the index folder, if it belongs to this index and its
        files are whole."""
        try:
            stored = json.loads(self.files.sorted_record(number).read_text(encoding="utf-8"))
            sizes = {name: (self.files.folder / name).stat().st_size for name in stored["files"]}
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if stored.get("source") != self.manifest.get("source") or sizes != stored["files"]:
            return None
        return stored["record"]

    def _sort_on_first_use(self, name: str, number: int, groups: tuple) -> dict[str, Any]:
        """Sort column ``number`` now, into the index folder (under the index lock, so every process
        sorts it once) or — when the run cannot be written or the index was replaced meanwhile — into a
        temporary folder whose files this process maps (and the system removes)."""
        log.info("sorting %s of %s for the first time (%d rows)", name, self.layout.root, self.n)
        try:
            with _locked(self.layout):
                if _read_manifest(self.layout) != self.manifest:
                    raise IndexUnavailable("the index was replaced since it was opened")
                record = self._read_sorted_record(number)
                if record is None:
                    record = self._sort_into(self.files.folder, number, groups)
                    names = [self.files.order(number).name]
                    if record.get("group_bounds") is not None:
                        names.append(self.files.grouped(number).name)
                    files = {n: (self.files.folder / n).stat().st_size for n in names}
                    write_json(
                        self.files.sorted_record(number),
                        {"source": self.manifest.get("source"), "record": record, "files": files},
                    )
                return record
        except (IndexUnavailable, OSError) as exc:
            log.warning(
                "cannot keep the order of %s in %s (%s): sorting it in a temporary folder", name, self.layout.root, exc
            )
        with tempfile.TemporaryDirectory(prefix="mimic-order-") as folder:
            record = self._sort_into(Path(folder), number, groups)
            where = self._order_files[number] = IndexFiles(Path(folder))
            self._map(where.order(number))  # mapped before the folder goes: the map keeps the file
            if record.get("group_bounds") is not None:
                self._map(where.grouped(number))
        return record

    def _sort_into(self, folder: Path, number: int, needs: tuple) -> dict[str, Any]:
        """Sort column ``number`` (read from this index) with its order written to ``folder``: first into a
        hidden sub-folder, then renamed into place, so no reader ever maps a half-written order.
        ``needs``: ``_class_groups``."""
        groups, noisy, truth_unreadable = needs
        scratch = folder / f".sorting-{number:03d}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir()
        try:
            out = IndexFiles(scratch)
            record = index_score_column(
                self.files,
                number,
                self.n,
                groups,
                noisy,
                scratch / "runs",
                with_histogram=not truth_unreadable,
                out=out,
            )
            os.replace(out.order(number), IndexFiles(folder).order(number))
            if record.get("group_bounds") is not None:
                os.replace(out.grouped(number), IndexFiles(folder).grouped(number))
        finally:
            _remove(scratch)
        return record

    def _where(self, number: int) -> IndexFiles:
        return self._order_files.get(number, self.files)

    def order(self, name: str) -> np.ndarray:
        """Row positions by ``name``, ascending (stable: ties by position; NaN last)."""
        number = self._score(name)["number"]
        return self._map(self._where(number).order(number))

    def sorted_values(self, name: str) -> OrderedValues:
        """``name``'s values (float64) in ``order``: read through the order, never stored twice."""
        return OrderedValues(self.column(name), self.order(name))

    def grouped(self, name: str) -> tuple[OrderedValues, OrderedValues, np.ndarray] | None:
        """(non-NaN values ascending, values by (class, mislabeled) group, group bounds) — what the live
        counter would sort (``score_groups.sort_by_group``); None when the labels are not integers."""
        record = self._score(name)
        if record.get("group_bounds") is None:
            return None
        column, number = self.column(name), record["number"]
        return (
            OrderedValues(column, self.order(name)[: record["valid"]]),
            OrderedValues(column, self._map(self._where(number).grouped(number))),
            np.asarray(record["group_bounds"], dtype=np.int64),
        )

    def valid_count(self, name: str) -> int:
        """How many values are not NaN (they come first in ``order``)."""
        return int(self._score(name)["valid"])

    def finite_count(self, name: str) -> int:
        """How many samples have a finite ``name`` score (NaN and ±inf left out)."""
        return int(self._score(name)["finite"])

    def count_split(self, name: str, threshold: float) -> tuple[int, int]:
        """(samples with score ≥ threshold, samples with score < threshold), NaN in neither: O(log n)."""
        valid = self.valid_count(name)
        below = int(self.sorted_values(name)[:valid].searchsorted(threshold, side="left"))
        return valid - below, below

    def lowest(self, name: str, k: int) -> np.ndarray:
        """Positions of the k lowest finite scores, lowest first."""
        return np.asarray(self.order(name)[: min(k, self.finite_count(name))])

    def highest(self, name: str, k: int) -> np.ndarray:
        """Positions of the k highest finite scores, highest first (ties: later position first)."""
        finite = self.finite_count(name)
        return np.asarray(self.order(name)[max(0, finite - k) : finite][::-1])

    def class_bin_counts(self, name: str) -> np.ndarray | None:
        """(classes × bins) counts of ``name`` in its stored histogram's bins, by class code (the Per class
        tab), when the index counted them; None otherwise."""
        counts = self._score(name).get("class_counts")
        return None if counts is None else np.asarray(counts, dtype=np.int64)

    def histogram(self, name: str) -> Histogram | None:
        """The stored histogram (with mislabeled counts when the run knows them), None when not stored."""
        record = self._score(name)["histogram"]
        return None if record is None else histogram_from_record(record)

    @property
    def class_counts(self) -> pd.Series | None:
        """Samples per label (None when the run has no integer label column)."""
        classes = self.manifest.get("classes")
        if not classes:
            return None
        return pd.Series(classes["counts"], index=classes["labels"], name="samples")

    # ------------------------------------------------------------------ per epoch

    @property
    def has_trajectories(self) -> bool:
        """Whether the index holds per-epoch trajectories (runs with score parts do)."""
        return bool(self.manifest.get("trajectories"))

    def trajectories(self, positions) -> pd.DataFrame:
        """``EpochScores.trajectories`` of the samples at ``positions``: O(epochs) reads per sample."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        ids = self.take_text(positions, ["sample_id"]).column("sample_id").to_pylist()
        record = self.manifest["trajectories"]
        sums = [self._map(self.files.trajectory(k)) for k in range(len(record["signals"]))]
        frame = read_trajectories(record, row_counts(record, self.files, self._map), sums, positions, ids)
        self.release()
        return frame

    # ------------------------------------------------------------------ thumbnails

    @property
    def has_thumbnails(self) -> bool:
        """Whether the index can find a sample's thumbnail (the run has thumbnails)."""
        return bool(self.manifest.get("thumbnails"))

    def thumbnail_location(self, position: int) -> tuple[int, int] | None:
        """(offset, length) of the thumbnail of the sample at ``position`` in thumbs.bin, None when
        it has none: two reads of the index, no thumbnail ids in memory."""
        if not self.has_thumbnails or not 0 <= position < self.n:
            return None
        offset, length = (
            self._read_int64(path, position) for path in (self.files.thumb_offsets, self.files.thumb_lengths)
        )
        return None if length == 0 else (offset, length)  # no thumbnail: length 0 (an image is never empty)

    def _read_int64(self, path: Path, position: int) -> int:
        """One value of an index ``.npy``, read with one ``pread`` (``read_at``)."""
        return int(self.read_at(path, np.array([position]))[0])

    #: below this many rows a read goes through ``pread`` per row instead of the memory map
    FEW_ROWS = 256

    def read_at(self, path: Path, positions: np.ndarray) -> np.ndarray:
        """``np.load(path)[positions]`` for a few positions: one ``pread`` of each value through the map's
        own file. Why not the map: a page fault reads ahead around it (hundreds of KB a row when the
        page cache does not hold the file: at 128 M samples the index is larger than this machine's
        memory, and a gallery of 16 cards took 0.4 s of faults per threshold change); a pread reads the
        block the value lies in."""
        array = self._map(path)
        if len(positions) > self.FEW_ROWS:
            values = np.asarray(array[positions])
            release_mapped_pages(array)
            return values
        size, offset = array.dtype.itemsize, array.offset
        descriptor = self._descriptor(path)
        raw = b"".join(os.pread(descriptor, size, offset + int(p) * size) for p in positions)
        return np.frombuffer(raw, dtype=array.dtype).copy()

    def _descriptor(self, path: Path) -> int:
        """The read-only descriptor ``_map`` opened ``path`` through: the map's own file, even after
        another process has replaced the index."""
        self._map(path)
        return self._descriptors[path]

    # ------------------------------------------------------------------ rows by id

    @cached_property
    def _id_lookup(self) -> IdLookup | None:
        entry = self.manifest.get("ids")
        if not entry or entry.get("probe") != probe_hash():
            if entry:
                log.warning("this pandas hashes sample ids unlike the index build: ids are found the slow way")
            return None

        def ids_at(positions: np.ndarray) -> list[str]:
            return self.take_text(positions, ["sample_id"]).column("sample_id").cast(pa.string()).to_pylist()

        return IdLookup(self._map(self.files.id_hashes), self._map(self.files.id_order), ids_at)

    def positions_of(self, sample_ids) -> np.ndarray:
        """Row position of each sample id (−1 where the run has none), in the order asked: a binary search
        over the stored id hashes, O(log n) an id (the whole id column is read only by an index without them)."""
        lookup = self._id_lookup
        if lookup is None:
            known = self.shared(("id-position",), lambda: pd.Index(self.text_column("sample_id")))
            return np.asarray(known.get_indexer([str(i) for i in sample_ids]), dtype=np.int64)
        found = lookup.positions(sample_ids)
        self.release()
        return found

    # ------------------------------------------------------------------ rows

    def rows(self, positions) -> pd.DataFrame:
        """Every column of the rows at ``positions`` (in that order, indexed by position), as
        ``Run.samples.iloc[positions]`` gives them: O(len(positions)) reads, whatever the run's size."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(positions) and (positions.min() < 0 or positions.max() >= self.n):
            raise IndexError(f"row positions must lie in [0, {self.n})")
        index = pd.Index(positions)
        text = self._as_written(self.take_text(positions).to_pandas()) if self.text.num_columns else None
        if text is not None:
            text.index = index
        data = {
            name: pd.Series(
                self.read_at(self._column_path(name), positions).astype(self.dtype(name), copy=False), index=index
            )
            if name in self._numeric
            else text[name]
            for name in self.columns
        }
        frame = pd.DataFrame(data, index=index)
        if "sample_id" in frame.columns:
            frame["sample_id"] = frame["sample_id"].astype(str)
        self.release()
        return frame
