"""Write a keep-list to disk in chunks from the app index: the file ``filters.formats.render_export``
would give, without building the kept rows as one frame.

Why: at 12.8 M samples the in-memory export builds a frame of every sample, sorts it and renders it
in one piece (minutes, gigabytes). The index already holds each score column's order, so the kept
rows come out highest score first (ties by position, NaN last: ``keep_list``'s stable sort) a chunk
at a time. csv is byte-identical to ``render_export``; parquet holds the same rows (in several row
groups); npy is the mask; uids (DataComp's sorted 128-bit array) is the same array, decoded from the
index's text a batch at a time; json, which is rendered whole by design, goes through
``render_export`` itself.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mimic_explorer.filters.formats import UID_DTYPE, check_format, check_uids, render_export
from mimic_explorer.filters.rules import FilterResult
from mimic_explorer.store.arrow_pool import release_arrow_memory
from mimic_explorer.store.atomic import atomic_write
from mimic_explorer.store.sample_columns import SampleColumns
from mimic_explorer.store.stable_order import descending_from_ascending, stable_argsort

CHUNK_ROWS = 1 << 19


#: positions of the descending order made at a time (plus the rest of a run of equal scores it cuts)
DESCENDING_BLOCK = 1 << 22


def descending_blocks(index, column: str, block: int | None = None):
    """Positions by ``column`` highest first, equal scores by position, NaN last by position, as int64
    blocks of about ``block`` positions.

    Read from the order the index stores (ascending, ties by position, NaN last) instead of sorting
    again (seconds at 12.8 M), a block at a time from its top: ``descending_from_ascending`` of each
    block's scores, a block's start moved down to the start of a run of equal scores it would cut
    (the run is reversed whole), the NaN tail as it is. Memory: a block, whatever the run's size."""
    block = block or DESCENDING_BLOCK
    if column not in index.score_columns:
        yield stable_argsort(np.negative(np.asarray(index.column(column), dtype=np.float64)))
        return
    valid = index.valid_count(column)
    order, values = index.order(column), index.sorted_values(column)
    end = valid
    while end > 0:
        start = max(0, end - block)
        if start > 0 and values[start - 1] == values[start]:  # a run of equal scores crosses the cut: whole
            start = int(values[:valid].searchsorted(values[start], side="left"))
        ascending = np.asarray(order[start:end], dtype=np.int64)
        scores = index.read_in_file_order(index.column(column), ascending).astype(np.float64, copy=False)
        yield descending_from_ascending(ascending, scores)
        end = start
    if valid < index.n:
        yield np.asarray(order[valid:], dtype=np.int64)
    index.release()


def descending_positions(index, column: str) -> np.ndarray:
    """``descending_blocks`` joined: every position, highest score first."""
    return np.concatenate(list(descending_blocks(index, column)) or [np.zeros(0, dtype=np.int64)])


def _kept_pieces(samples: SampleColumns, result: FilterResult, column: str):
    """The kept rows of ``result`` for a writer, highest ``column`` first (``mimic_score`` when the index
    has no such score column): ``_pieces`` made in a background thread (``_one_ahead``), with a gather's
    worth of them allowed to wait when gathers are large."""
    index = samples.app_index
    score_column = column if column in index.score_columns else "mimic_score"
    large = _large(index, score_column)
    waiting = max(1, GATHER_ROWS // CHUNK_ROWS) if large else 1
    return _one_ahead(_pieces(index, result.keep, score_column, large, result.label_reviewed), waiting)


def _pieces(index, keep: np.ndarray, score_column: str, large: bool, reviewed: np.ndarray | None = None):
    """Kept rows, highest score first, a chunk at a time: (ids and sources as Arrow, labels or None,
    scores as float64, labels after review or None) — ``filters.formats.keep_list``'s columns before they
    become a frame or csv text. Rows are gathered ``GATHER_ROWS`` at a time when ``large`` (``_large``:
    ``_gather``), else ``CHUNK_ROWS`` at a time, and handed out ``CHUNK_ROWS`` at a time."""
    labels = index.column("label") if index.is_numeric("label") else None
    label_type = index.dtype("label") if labels is not None else None
    names = [c for c in ("sample_id", "source") if c in index.text.column_names]
    numeric = {"score": index.column(score_column)}
    if labels is not None:
        numeric["label"] = labels
    for positions in _kept_chunks(descending_blocks(index, score_column), keep, GATHER_ROWS if large else CHUNK_ROWS):
        rows, label_values, score_values = _gather(index, positions, names, numeric, large)
        for start in range(0, len(positions), CHUNK_ROWS):
            stop = start + CHUNK_ROWS
            yield (
                rows.slice(start, CHUNK_ROWS),
                None if label_values is None else label_values[start:stop].astype(label_type, copy=False),
                score_values[start:stop],
                None if reviewed is None else reviewed[positions[start:stop]],
            )
        del rows, label_values, score_values
        release_arrow_memory()
    index.release()


def _large(index, score_column: str) -> bool:
    """Whether the files an export reads (the text, the score and label columns) are past the index's
    ``MAPPED_BUDGET``: then rows are gathered ``GATHER_ROWS`` at a time, in file order, pages handed back."""
    columns = [score_column, *(["label"] if index.is_numeric("label") else [])]
    return index.files.text.stat().st_size + sum(index.column(c).nbytes for c in columns) > index.MAPPED_BUDGET


#: kept rows gathered from the index files at a time (then handed out ``CHUNK_ROWS`` at a time)
GATHER_ROWS = 1 << 22
#: a gather hands back the pages it mapped after every this fraction of its rows (in file order)
GATHER_SLICES = 16


def _gather(index, positions: np.ndarray, names: list[str], numeric: dict[str, np.ndarray], large: bool):
    """(text rows, labels or None, float64 scores) at ``positions``, in that order (``AppIndex.gather``:
    read in file order). ``large``: the pages read are handed back after each ``1/GATHER_SLICES`` of
    the rows.

    Why: kept rows in score order sit all over the files (at 128 M samples, 4 M of them touch nearly
    every page of the 1 GB score column and of the 2.3 GB text file), and a page read through a map
    stays in the process's resident memory until handed back: a whole file's worth per gather.
    Handing pages back after each gather in score order only made the next one fault them in again;
    read in file order, a slice's pages are done with once read, so resident memory stays about a
    slice of each file, at the price of faulting each page once per gather (``GATHER_ROWS`` rows, so
    few gathers). Files within the index's ``MAPPED_BUDGET`` in all are read in ``CHUNK_ROWS`` gathers
    and their pages kept until the export ends (a page is then faulted in once in all)."""
    every = max(1, len(positions) // GATHER_SLICES) if large else None
    rows, values = index.gather(positions, names, numeric, release_every=every)
    return rows, values.get("label"), values["score"].astype(np.float64, copy=False)


def _one_ahead(pieces, waiting: int = 1):
    """``pieces``, made in a background thread while the caller formats and writes the ones before
    (the gathers and Arrow's formatting release the GIL: two cores, about twice the rows a second). An
    error in the thread is raised here; a caller that stops early stops the thread.

    Up to ``waiting`` pieces wait: one gather's (``_kept_pieces``: views of one gathered table) when a gather
    hands out several pieces at once, since with one slot the thread would wait for the caller to write all
    but the last before starting the next gather, and the caller would then wait for that gather."""
    slot: queue.Queue = queue.Queue(maxsize=waiting)
    stop = threading.Event()
    done = object()

    def offer(item) -> bool:
        """Hand ``item`` over (False when the consumer has stopped: nobody will take it)."""
        while not stop.is_set():
            try:
                slot.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for piece in pieces:
                if not offer((piece, None)):
                    return
            offer((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            offer((done, exc))

    worker = threading.Thread(target=produce, name="keep-list-rows", daemon=True)
    worker.start()
    try:
        while True:
            piece, error = slot.get()
            if piece is done:
                if error is not None:
                    raise error
                return
            yield piece
    finally:
        stop.set()
        worker.join()


def _kept_chunks(blocks, keep: np.ndarray, size: int):
    """The kept positions of ``blocks`` (in their order), cut into chunks of ``size`` (the last shorter)."""
    held, count = [], 0
    for block in blocks:
        kept = block[keep[block]]
        while len(kept):
            take = kept[: size - count]
            held.append(take)
            count += len(take)
            kept = kept[len(take) :]
            if count == size:
                yield np.concatenate(held)
                held, count = [], 0
    if held:
        yield np.concatenate(held)


def _frame(piece) -> pd.DataFrame:
    rows, labels, scores, reviewed = piece
    frame = pd.DataFrame(
        {
            "sample_id": rows.column("sample_id").to_pandas().astype(str),
            "source": rows.column("source").to_pandas() if "source" in rows.column_names else "",
            "label": labels if labels is not None else -1,
            "score": scores,
            "keep": True,
        }
    )
    if reviewed is not None:
        frame.insert(3, "label_reviewed", reviewed)
    return frame


#: bytes that make the csv writer quote a field (and anything it might treat specially)
_QUOTED = np.zeros(256, dtype=bool)
_QUOTED[[ord(","), ord('"'), ord("\r"), ord("\n"), 0]] = True


def _needs_pandas(values: pa.Array) -> bool:
    """Whether a text column has a byte the csv writer would quote (checked on its data buffer)."""
    data = values.buffers()[2]
    return data is not None and bool(_QUOTED[np.frombuffer(data, dtype=np.uint8)].any())


def _csv_text(piece) -> pa.Array | None:
    """The chunk's csv lines as one Arrow string array (line i = row i), formatted as pandas' ``to_csv``
    formats them — or None when a row needs what only pandas does here (quoting, a null or non-text
    id, a non-integer label), and the chunk goes through ``to_csv`` itself.

    Why: pandas formats floats at ~3 µs a row (25 s for 7.5 M kept rows); Arrow formats them in C as
    the same shortest round-trip digits wherever both use plain decimal notation, so only the few
    others (whole numbers, exponents, NaN) are formatted by Python's ``repr``, which pandas matches."""
    rows, labels, scores, reviewed = piece
    if reviewed is not None:  # relabelled samples: the column only pandas writes here
        return None
    texts = []
    for name in ("sample_id", "source"):
        if name not in rows.column_names:
            texts.append(pa.array([""] * rows.num_rows, pa.string()) if name == "source" else None)
            continue
        values = rows.column(name).combine_chunks()
        if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
            return None
        if name == "sample_id" and values.null_count:
            return None
        values = values.fill_null("").cast(pa.string())  # pandas writes a missing source as an empty field
        if _needs_pandas(values):
            return None
        texts.append(values)
    if labels is not None and labels.dtype.kind not in "iu":
        return None
    label_text = pa.array(labels if labels is not None else np.full(len(scores), -1, dtype=np.int64)).cast(pa.string())
    return pc.binary_join_element_wise(
        texts[0],
        texts[1],
        label_text,
        _float_text(scores),
        pa.scalar("True" + os.linesep, pa.string()),
        pa.scalar(",", pa.string()),
    )


def _float_text(values: np.ndarray) -> pa.Array:
    """``repr`` of every value (empty for NaN), as pandas writes a float column."""
    magnitude = np.abs(values)
    with np.errstate(invalid="ignore"):
        plain = (magnitude >= 1e-4) & (magnitude < 1e15) & (values != np.floor(values))  # NaN, ±inf: False
    text = pa.array(values).cast(pa.string())
    others = np.flatnonzero(~plain)
    if len(others):
        spelled = ["" if v != v else repr(v) for v in values[others].tolist()]
        mask = np.zeros(len(values), dtype=bool)
        mask[others] = True
        text = pc.replace_with_mask(text, pa.array(mask), pa.array(spelled, pa.string()))
    return text


def _first_rows(piece, k: int):
    rows, labels, scores, reviewed = piece
    return (
        rows.slice(0, k),
        None if labels is None else labels[:k],
        scores[:k],
        None if reviewed is None else reviewed[:k],
    )


def _write_csv_lines(fh, lines: pa.Array) -> None:
    """Write an Arrow string array's values back to back (its data buffer, no Python strings)."""
    lines = lines.combine_chunks() if isinstance(lines, pa.ChunkedArray) else lines
    if len(lines) == 0:
        return
    width = 8 if pa.types.is_large_string(lines.type) else 4
    offsets = np.frombuffer(lines.buffers()[1], dtype=f"i{width}", count=len(lines) + 1, offset=lines.offset * width)
    fh.write(memoryview(lines.buffers()[2])[offsets[0] : offsets[-1]])


def _has_text_ids(samples) -> bool:
    return isinstance(samples, SampleColumns) and "sample_id" in samples.app_index.text.column_names


def _streamable(samples, column: str) -> bool:
    if not isinstance(samples, SampleColumns):
        return False
    index = samples.app_index
    scored = column in index.score_columns or "mimic_score" in index.score_columns
    labels_ok = "label" not in index.columns or index.is_numeric("label")
    return scored and labels_ok and "sample_id" in index.columns


def write_keep_list(samples, result: FilterResult, column: str, export_format: str, out: str | os.PathLike) -> Path:
    """Write the keep-list of ``result`` in ``export_format`` to ``out`` atomically (a download's file;
    an export with its spec goes through ``store.filter_files.export``)."""
    check_format(export_format)
    return atomic_write(out, lambda tmp: write_keep_list_into(samples, result, column, export_format, tmp))


def write_keep_list_into(
    samples, result: FilterResult, column: str, export_format: str, path: str | os.PathLike
) -> None:
    """Write the keep-list of ``result`` in ``export_format`` into ``path`` (a temporary file the caller
    renames): streamed when ``samples`` is read through an index, else ``render_export`` of the whole
    table.

    Parameters
    ----------
    samples
        ``SampleColumns`` (the app index) or the samples DataFrame.
    result
        ``apply_rule(samples, rule)``.
    column
        The score column the rows are sorted by (the rule's first clause's).
    export_format
        One of ``filters.formats.FORMATS``.
    path
        The file to fill (created or truncated).
    """
    check_format(export_format)
    if export_format == "npy":
        with open(path, "wb") as fh:
            np.save(fh, result.keep)
        return
    if (
        export_format == "uids"
        and isinstance(samples, SampleColumns)
        and "sample_id" in samples.app_index.text.column_names
    ):
        with open(path, "wb") as fh:
            np.save(fh, _datacomp_uids(samples, result.keep))
        return
    if export_format in ("json", "uids") or not _streamable(samples, column):
        data = render_export(samples, result, column, export_format)
        with open(path, "wb") as fh:
            fh.write(data)
        return
    if export_format == "csv":
        with open(path, "wb") as fh:
            header = True
            for piece in _kept_pieces(samples, result, column):
                lines = _csv_text(piece)
                if lines is None:
                    fh.write(_frame(piece).to_csv(index=False, header=header).encode("utf-8"))
                else:
                    if header:
                        fh.write(_frame(_first_rows(piece, 0)).to_csv(index=False).encode("utf-8"))
                    _write_csv_lines(fh, lines)
                header = False
            if header:  # nothing kept: the header alone, as render_export writes it
                fh.write(render_export(_no_rows(samples), _empty(result), column, "csv"))
        return
    writer = None
    try:
        for piece in _kept_pieces(samples, result, column):
            table = pa.Table.from_pandas(_frame(piece), preserve_index=False)
            writer = writer or pq.ParquetWriter(str(path), table.schema)
            writer.write_table(table)
        if writer is None:
            Path(path).write_bytes(render_export(_no_rows(samples), _empty(result), column, "parquet"))
    finally:
        if writer is not None:
            writer.close()


#: each ASCII byte's value as a hex digit (0 for anything else: ``_uid_halves`` checks the text first)
_HEX_DIGIT = np.zeros(256, dtype=np.uint8)
for _value, _digits in enumerate(("0123456789", "abcdef", "ABCDEF")):
    for _offset, _char in enumerate(_digits):
        _HEX_DIGIT[ord(_char)] = _offset + (10 if _value else 0)


def _uid_halves(ids: pa.Array) -> tuple[np.ndarray, np.ndarray] | None:
    """The (high, low) 64-bit halves of 32-hex-digit uids, read from the Arrow text buffer without a
    Python string each; None when one of them is not such a uid."""
    ids = ids.cast(pa.string())
    if len(ids) == 0:
        return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint64)
    if ids.null_count or not pc.all(pc.match_substring_regex(ids, r"^[0-9a-fA-F]{32}$")).as_py():
        return None
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int32)[ids.offset : ids.offset + len(ids) + 1]
    text = np.frombuffer(ids.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]].reshape(-1, 32)
    digits = _HEX_DIGIT[text]
    raw = (digits[:, 0::2] << 4) | digits[:, 1::2]  # 16 bytes a uid, most significant first
    halves = np.ascontiguousarray(raw).view(">u8").astype(np.uint64)
    return halves[:, 0], halves[:, 1]


def _datacomp_uids(samples: SampleColumns, keep: np.ndarray) -> np.ndarray:
    """``filters.formats.datacomp_uids`` of the run, a record batch of ids at a time: the pool's uids as
    two 64-bit halves (16 bytes a sample, not a Python string), sorted once to find repeats and order the
    kept ones. Any problem (an id that is not a uid, a repeated uid) goes to ``check_uids`` itself, for
    its message."""
    index = samples.app_index
    high, low = np.empty(index.n, dtype=np.uint64), np.empty(index.n, dtype=np.uint64)
    start = 0
    for batch in index.text.select(["sample_id"]).to_batches():
        halves = _uid_halves(batch.column(0))
        if halves is None:
            check_uids(samples["sample_id"])  # raises, naming the ids
            raise AssertionError("an id failed the uid pattern but passed check_uids")
        high[start : start + batch.num_rows], low[start : start + batch.num_rows] = halves
        start += batch.num_rows
    index.release()
    order = np.argsort(high, kind="stable")
    sorted_high = high[order]
    if (sorted_high[1:] == sorted_high[:-1]).any():  # equal high halves (rare for real uids): both halves
        order = np.lexsort((low, high))
        sorted_high = high[order]
    del high
    sorted_low = low[order]
    del low
    if ((sorted_high[1:] == sorted_high[:-1]) & (sorted_low[1:] == sorted_low[:-1])).any():
        check_uids(samples["sample_id"])  # raises, naming the repeated uids
        raise AssertionError("a uid repeats but passed check_uids")
    kept = np.asarray(keep, dtype=bool)[order]
    pairs = np.empty(int(kept.sum()), dtype=UID_DTYPE)
    pairs["f0"], pairs["f1"] = sorted_high[kept], sorted_low[kept]
    return pairs


def _no_rows(samples: SampleColumns) -> pd.DataFrame:
    return samples.app_index.rows(np.zeros(0, dtype=np.int64))


def _empty(result: FilterResult) -> FilterResult:
    reviewed = None if result.label_reviewed is None else np.zeros(0, dtype=np.int64)
    return FilterResult(np.zeros(0, dtype=bool), result.thresholds, 0, 0, {}, {}, label_reviewed=reviewed)
