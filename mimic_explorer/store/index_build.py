"""Build the app's per-run index from ``samples.parquet``, one record batch at a time.

Why: opening a 12.8 M-sample run must not read the whole table into pandas and sort it. The build
does that work once per run and leaves files the app memory-maps: every numeric column as a ``.npy``
(its own dtype, so values and comparisons are exactly the table's), each score column's ascending
order and sorted values, its histogram, the per-class counts, and the text columns (``sample_id``,
``source``, ...) in one uncompressed Arrow file for reading rows by position, and the sorted hashes of
the sample ids for finding a row by id (``store.id_lookup``). Peak memory is a few
copies of one column, never the table. The folder layout is ``store.layout.IndexFiles``; validity,
locking and the atomic swap are ``store.app_index``'s.
"""

from __future__ import annotations

import json
import mmap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mimic_explorer.store.arrow_pool import release_arrow_memory
from mimic_explorer.store.atomic import load_npy, mapped_array_file, release_mapped_pages
from mimic_explorer.store.id_lookup import write_id_lookup
from mimic_explorer.store.indexed_epochs import stored_epoch_views
from mimic_explorer.store.layout import THUMBS_BLOB, IndexFiles
from mimic_explorer.store.score_index import ClassGroups, class_groups, columns_sorted_at_build, index_score_column
from mimic_explorer.store.trajectory_index import Positions, build_trajectories

#: Columns that hold identities or categories, never a score to threshold, sort or plot.
NON_SCORE_COLUMNS = frozenset(
    {"sample_id", "source", "label", "true_label", "pred", "ref_pred", "is_noisy", "keep", "combined_keep"}
)
#: Columns always kept as text (an integer id is still an id, read back as a string as ``Run.samples`` does).
TEXT_ALWAYS = frozenset({"sample_id"})
BATCH_ROWS = 1 << 20


def _may_have_nulls(metadata: pq.FileMetaData, column: int) -> bool:
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(column).statistics
        if stats is None or not stats.has_null_count or stats.null_count > 0:
            return True
    return False


def _nullable_in_pandas(schema: pa.Schema) -> set[str]:
    """Columns the writer stored from a pandas nullable dtype (``Int64``, ``boolean``): pandas reads
    them back as that extension dtype even without nulls, which a plain ``.npy`` would not equal."""
    columns = (schema.pandas_metadata or {}).get("columns", [])
    return {
        c["name"]
        for c in columns
        if str(c.get("numpy_type", ""))
        in ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "boolean")
    }


def _plan_columns(parquet: pq.ParquetFile) -> tuple[list[tuple[str, np.dtype]], list[str]]:
    """(numeric columns with their numpy dtype, text columns), in the table's order.

    Integer and boolean columns that may hold nulls, or were written from a pandas nullable dtype, go
    to the text file: pandas reads those as float/object/``Int64``, and a ``.npy`` of the raw type
    would not equal what ``Run.samples`` gives."""
    numeric, text = [], []
    nullable = _nullable_in_pandas(parquet.schema_arrow)
    for number, field in enumerate(parquet.schema_arrow):
        kind = field.type
        plain = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
        if (
            plain
            and field.name not in TEXT_ALWAYS
            and field.name not in nullable
            and (pa.types.is_floating(kind) or not _may_have_nulls(parquet.metadata, number))
        ):
            numeric.append((field.name, np.dtype(kind.to_pandas_dtype())))
        else:
            text.append(field.name)
    return numeric, text


#: the integer types a column may be stored as, narrowest first
_NARROW_INTEGERS = (np.int8, np.int16, np.int32)


def _narrow_types(parquet: pq.ParquetFile, numeric: list[tuple[str, np.dtype]]) -> dict[str, np.dtype]:
    """The narrowest integer type that holds each 64/32-bit integer column's values, from the row groups'
    statistics (min and max), where every row group has them: class labels fit one byte, and at 128 M
    samples that is 0.9 GB less index per column. Reads give the table's own dtype back (``AppIndex``)."""
    metadata, names = parquet.metadata, parquet.schema_arrow.names
    narrow = {}
    for name, dtype in numeric:
        if dtype.kind not in "iu" or dtype.itemsize == 1:
            continue
        number, lo, hi = names.index(name), None, None
        for group in range(metadata.num_row_groups):
            stats = metadata.row_group(group).column(number).statistics
            if stats is None or not stats.has_min_max:
                lo = None
                break
            lo = stats.min if lo is None else min(lo, stats.min)
            hi = stats.max if hi is None else max(hi, stats.max)
        if lo is None or metadata.num_row_groups == 0:
            continue
        for kind in _NARROW_INTEGERS:
            info = np.iinfo(kind)
            # one value of room at each end: code that adds or subtracts one (a label + 1) cannot wrap
            if info.min < lo and hi < info.max and np.dtype(kind).itemsize < dtype.itemsize:
                narrow[name] = np.dtype(kind)
                break
    return narrow


def _is_score_column(name: str, dtype: np.dtype) -> bool:
    """A numeric, non-boolean column that is not an identity or a category."""
    return name not in NON_SCORE_COLUMNS and dtype.kind in "iuf"


#: text-file schema metadata key: the pandas nullable dtypes to restore on read ({column: dtype})
PANDAS_DTYPES_KEY = b"pandas_dtypes"


#: a text column with at most this many distinct values is stored dictionary-encoded (``source``: the
#: shard or data spec, a few values repeated on every row: one or two bytes a row instead of the text)
MOST_DISTINCT_ENCODED = 1 << 15


def _dictionaries(parquet: pq.ParquetFile, text: list[str]) -> dict[str, pa.Array]:
    """Each low-cardinality string column's distinct values (sorted), found a row group at a time and
    given up on as soon as a column has more than ``MOST_DISTINCT_ENCODED`` (a caption column stops
    after its first row group). Never ``sample_id`` or a column with nulls."""
    candidates = [
        name
        for name in text
        if name not in TEXT_ALWAYS
        and (
            pa.types.is_string(parquet.schema_arrow.field(name).type)
            or pa.types.is_large_string(parquet.schema_arrow.field(name).type)
        )
        and not _may_have_nulls(parquet.metadata, parquet.schema_arrow.names.index(name))
    ]
    found: dict[str, pa.Array] = {}
    for name in candidates:
        distinct: set[str] = set()
        for group in range(parquet.metadata.num_row_groups):
            values = parquet.read_row_group(group, columns=[name]).column(name)
            distinct.update(pc.unique(values).to_pylist())
            if len(distinct) > MOST_DISTINCT_ENCODED:
                break
        else:
            if distinct:
                found[name] = pa.array(sorted(distinct), parquet.schema_arrow.field(name).type)
    return found


def _text_schema(parquet: pq.ParquetFile, text: list[str], dictionaries: dict[str, pa.Array]) -> pa.Schema:
    fields = [parquet.schema_arrow.field(name) for name in text]
    fields = [
        f.with_type(pa.dictionary(_index_type(len(dictionaries[f.name])), f.type)) if f.name in dictionaries else f
        for f in fields
    ]
    columns = (parquet.schema_arrow.pandas_metadata or {}).get("columns", [])
    dtypes = {
        c["name"]: c["numpy_type"]
        for c in columns
        if c["name"] in _nullable_in_pandas(parquet.schema_arrow) and c["name"] in text
    }
    return pa.schema(
        [f.with_type(pa.string()) if f.name in TEXT_ALWAYS else f for f in fields],
        metadata={PANDAS_DTYPES_KEY: json.dumps(dtypes).encode()},
    )


def _index_type(size: int) -> pa.DataType:
    return pa.int8() if size <= 127 else pa.int16()


def _encoded(values: pa.Array, dictionary: pa.Array, kind: pa.DataType) -> pa.DictionaryArray:
    """``values`` as indices into the column's one dictionary (every batch the same: an Arrow file
    cannot replace a dictionary between batches)."""
    indices = pc.index_in(values, value_set=dictionary).cast(kind.index_type)
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def _copy_columns(
    parquet: pq.ParquetFile,
    files: IndexFiles,
    numeric: list[tuple[str, np.dtype]],
    text: list[str],
    narrow: dict[str, np.dtype],
) -> None:
    """Stream the table into the column files and the text file, through file writes (not memory
    maps: pages written stay out of the process's resident memory). No file is synced on its own:
    the manifest, written last and synced, makes the index valid, and the journal writes the data
    it names before it (a rebuildable cache need not pay a synchronous write per file)."""
    n = parquet.metadata.num_rows
    sinks = {}
    try:
        for number, (name, dtype) in enumerate(numeric):
            stored = narrow.get(name, dtype)
            header = np.lib.format.open_memmap(files.column(number), mode="w+", dtype=stored, shape=(n,)).offset
            sinks[name] = open(files.column(number), "r+b")  # noqa: SIM115 - one per column, closed in the finally
            sinks[name].seek(header)
        dictionaries = _dictionaries(parquet, text)
        schema = _text_schema(parquet, text, dictionaries)
        offset = 0
        with pa.OSFile(str(files.text), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
                for name, dtype in numeric:
                    values = batch.column(name).to_numpy(zero_copy_only=False)
                    stored = narrow.get(name, dtype)
                    written = np.ascontiguousarray(values, dtype=stored)
                    if stored != dtype and not np.array_equal(written, values):  # statistics that lied
                        raise OSError(f"samples.parquet's statistics for {name!r} do not cover its values")
                    sinks[name].write(memoryview(written).cast("B"))
                if text:
                    columns = [
                        _encoded(batch.column(name), dictionaries[name], field.type)
                        if name in dictionaries
                        else batch.column(name).cast(field.type)
                        for name, field in zip(text, schema, strict=True)
                    ]
                    writer.write_batch(pa.record_batch(columns, schema=schema))
                offset += batch.num_rows
        if offset != n:
            raise OSError(f"samples.parquet gave {offset} rows, its footer says {n}")
    finally:
        for handle in sinks.values():
            handle.close()


def run_groups(
    files: IndexFiles, numeric: list[tuple[str, np.dtype]], text: list[str], n_rows: int
) -> tuple[ClassGroups | None, np.ndarray | None, bool]:
    """(the class groups, the mislabeled flags, whether the ground truth has nulls) from the index's
    column files: what sorting a score column needs, at build and on first use alike. No groups when
    the labels are not integers (the live counter then groups them itself)."""
    number_of = {name: number for number, (name, _) in enumerate(numeric)}

    def mapped(name: str) -> np.ndarray | None:
        return load_npy(files.column(number_of[name]), mmap_mode="r") if name in number_of else None

    noisy = mapped("is_noisy")
    noisy = None if noisy is None else np.asarray(noisy, dtype=bool)  # one byte a sample, read once
    truth_unreadable = "is_noisy" in text  # nulls in the ground truth: the explorer computes its own histogram
    labels = mapped("label")
    if "label" in text or (labels is not None and labels.dtype.kind not in "iu"):
        return None, noisy, truth_unreadable
    return class_groups(labels, n_rows, noisy), noisy, truth_unreadable


def _text_reader(files: IndexFiles) -> tuple[pa.ipc.RecordBatchFileReader, mmap.mmap]:
    """A reader of the index's text file over a map of it, and that map: what reads through it is
    zero-copy, and ``release_mapped_pages(map)`` hands back the pages a pass has read."""
    with open(files.text, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mapped))), mapped


def _sample_ids(files: IndexFiles) -> tuple[pa.ChunkedArray, mmap.mmap] | None:
    """The samples' ids, zero-copy over a map of the text file, and that map (whose pages the passes
    over the ids hand back batch by batch: a pass over 128 M ids holds one batch of them)."""
    reader, mapped = _text_reader(files)
    table = reader.read_all()
    if "sample_id" not in table.column_names:
        return None
    return table.column("sample_id"), mapped


def _build_id_lookup(files: IndexFiles, n: int) -> dict[str, Any]:
    """The sorted id hashes and their rows (``store.id_lookup``), from the text file a batch at a time."""
    reader, mapped = _text_reader(files)

    def batches():
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i).column("sample_id")
            release_mapped_pages(mapped)  # the batch's pages, once hashed: the pass holds one batch of ids

    return write_id_lookup(batches(), n, files.id_hashes, files.id_order, files.folder / ".sort-ids")


def _largest(path: Path, column: str) -> float:
    """The largest value of ``column`` in the parquet file at ``path`` by its row-group statistics
    (infinity where a row group has none: the caller then keeps its widest type)."""
    metadata = pq.ParquetFile(path).metadata
    number = metadata.schema.to_arrow_schema().get_field_index(column)
    largest = 0
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(number).statistics
        if metadata.row_group(group).num_rows == 0:
            continue
        if stats is None or not stats.has_min_max:
            return float("inf")
        largest = max(largest, stats.max)
    return largest


def _build_thumb_locations(thumbs_index: Path, ids: Positions, files: IndexFiles) -> bool:
    """Write each sample's thumbnail (offset, length) by sample position, from the run's thumbnail
    index (matched by id: by position where it lists the samples in order, else by a hash of the
    ids). Why: the app then opens without reading millions of thumbnail ids (seconds at 12.8 M)."""
    n = len(ids.ids)
    blob = thumbs_index.parent / THUMBS_BLOB
    small = blob.exists() and blob.stat().st_size < 2**32  # offsets as uint32: 4 bytes a sample less
    # through maps whose pages are handed back batch by batch; a sample without a thumbnail keeps
    # length 0 (the files start zeroed)
    offsets = mapped_array_file(files.thumb_offsets, np.uint32 if small else np.int64, (n,))
    length_type = np.uint16 if _largest(thumbs_index, "length") < 2**16 else np.uint32  # thumbnails: a few KB
    lengths = mapped_array_file(files.thumb_lengths, length_type, (n,))
    positions, start = ids, 0
    for batch in pq.ParquetFile(thumbs_index, pre_buffer=False).iter_batches(
        batch_size=BATCH_ROWS, columns=["sample_id", "offset", "length"]
    ):
        where, _ = positions.of(batch.column("sample_id").cast(pa.string()), start)
        start += batch.num_rows
        known = where >= 0
        offsets[where[known]] = batch.column("offset").to_numpy(zero_copy_only=False)[known]
        found = batch.column("length").to_numpy(zero_copy_only=False)[known]
        if len(found) and found.max() > np.iinfo(length_type).max:  # statistics that lied
            raise OSError(f"{thumbs_index}'s statistics for 'length' do not cover its values")
        lengths[where[known]] = found
        release_mapped_pages(offsets), release_mapped_pages(lengths)
    offsets.flush(), lengths.flush()
    return True


def build_index(
    samples: Path, folder: Path, score_parts: list[Path] = (), thumbs_index: Path | None = None
) -> dict[str, Any]:
    """Write the index of ``samples`` (and the trajectories of its ``score_parts``) into ``folder``
    (which exists and is empty); returns the manifest body (without the sources' identity, which the
    caller adds) — every file written is listed with its size, so a truncated file is detected on
    the next open."""
    # pre_buffer=False: a pre-buffering reader keeps every row group it has read (1.4 GB at 12.8 M rows)
    parquet = pq.ParquetFile(samples, pre_buffer=False)
    files = IndexFiles(folder)
    numeric, text = _plan_columns(parquet)
    narrow = _narrow_types(parquet, numeric)
    _copy_columns(parquet, files, numeric, text, narrow)
    n_rows, column_names = parquet.metadata.num_rows, [field.name for field in parquet.schema_arrow]
    del parquet  # the reader keeps what it decoded (the size of the table) until it goes
    release_arrow_memory()
    groups, noisy, truth_unreadable = run_groups(files, numeric, text, n_rows)
    scores = [(number, name) for number, (name, dtype) in enumerate(numeric) if _is_score_column(name, dtype)]
    at_build = columns_sorted_at_build([name for _, name in scores])
    columns = [(number, name) for number, name in scores if name in at_build]

    def index_column(number: int, name: str) -> tuple[str, dict[str, Any]]:
        # sorted out of core (runs on disk, merged a block at a time): memory stays a few chunks
        record = index_score_column(
            files, number, n_rows, groups, noisy, folder / f".sort-{number:03d}", with_histogram=not truth_unreadable
        )
        return name, record

    found = _sample_ids(files) if score_parts or thumbs_index is not None else None
    ids, text_map = found if found is not None else (None, None)

    def positions() -> Positions:
        return Positions(ids, release=lambda: release_mapped_pages(text_map))

    with ThreadPoolExecutor(max_workers=2) as pool:  # sorts and file writes release the GIL: two at a time
        truth = None if truth_unreadable else noisy

        def trajectories_and_bands() -> dict[str, Any] | None:
            record = build_trajectories(list(score_parts), positions(), files)
            if record is not None:  # the Per epoch tab's bands and histograms, read at its first render
                record["bands"], record["histograms"] = stored_epoch_views(files, record, truth)
            return record

        trajectories = pool.submit(trajectories_and_bands) if ids is not None else None
        thumbnails = (
            pool.submit(_build_thumb_locations, thumbs_index, positions(), files)
            if thumbs_index is not None and ids is not None
            else None
        )
        id_lookup = pool.submit(_build_id_lookup, files, n_rows) if "sample_id" in text else None
        sorted_columns = dict(pool.map(lambda item: index_column(*item), columns))
        id_lookup = id_lookup.result() if id_lookup is not None else None
        trajectories = trajectories.result() if trajectories is not None else None
        thumbnails = thumbnails.result() if thumbnails is not None else False
    classes = groups.classes if groups is not None else None
    noisy = truth = groups = None  # released before the manifest is built (the closures above hold them)
    return {
        "rows": n_rows,
        "columns": column_names,
        "numeric": [  # "stored": the narrower integer type the file holds, where it differs from the table's
            {
                "name": name,
                "number": number,
                "dtype": dtype.str,
                **({"stored": narrow[name].str} if name in narrow else {}),
            }
            for number, (name, dtype) in enumerate(numeric)
        ],
        "text": text,
        # every score column; those not sorted yet get their order on first use (``AppIndex._score``)
        "scores": {name: sorted_columns.get(name, {"number": number, "sorted": False}) for number, name in scores},
        "classes": classes,
        "trajectories": trajectories,
        "thumbnails": thumbnails,
        "ids": id_lookup,
        "files": {path.name: path.stat().st_size for path in sorted(folder.iterdir())},
    }
