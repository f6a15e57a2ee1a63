"""Write a keep-list to disk in chunks from the app index: the file ``filters.render_export`` would
give, without building the kept rows as one frame.

Why: at 12.8 M samples the in-memory export builds a frame of every sample, sorts it and renders it
in one piece (minutes, gigabytes). The index already holds each score column's order, so the kept
rows come out highest score first (ties by position, NaN last: ``keep_list``'s stable sort) a chunk
at a time. csv is byte-identical to ``render_export``; parquet holds the same rows (in several row
groups); npy is the mask; json and uids, which are rendered whole by design, go through
``render_export`` itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mimic_explorer.filters import FORMATS, FilterError, FilterResult, render_export
from mimic_explorer.store.atomic import atomic_write
from mimic_explorer.store.sample_columns import SampleColumns

CHUNK_ROWS = 1 << 19


def descending_positions(index, column: str) -> np.ndarray:
    """Positions by ``column`` highest first, equal scores by position, NaN last by position (O(n))."""
    order, values = index.order(column), index.sorted_values(column)
    valid = index.valid_count(column)
    if valid == 0:
        return np.asarray(order)
    starts = np.flatnonzero(np.concatenate(([True], values[1:valid] != values[:valid - 1])))
    lengths = np.diff(np.append(starts, valid))
    group_start = np.repeat(starts[::-1], lengths[::-1])  # the ascending order's runs, last run first
    within = np.arange(valid) - np.repeat(np.cumsum(lengths[::-1]) - lengths[::-1], lengths[::-1])
    return np.concatenate([np.asarray(order[:valid])[group_start + within], np.asarray(order[valid:])])


def _chunks(samples: SampleColumns, keep: np.ndarray, column: str):
    """Kept rows, highest score first, as frames of ``filters.keep_list``'s columns."""
    index = samples.app_index
    score_column = column if column in index.score_columns else "mimic_score"
    kept = descending_positions(index, score_column)
    kept = kept[keep[kept]]
    scores = index.column(score_column)
    labels = index.column("label") if index.is_numeric("label") else None
    text = index.text.select([c for c in ("sample_id", "source") if c in index.text.column_names])
    for start in range(0, len(kept), CHUNK_ROWS):
        positions = kept[start:start + CHUNK_ROWS]
        rows = text.take(pa.array(positions)).to_pandas()
        yield pd.DataFrame({
            "sample_id": rows["sample_id"].astype(str),
            "source": rows["source"] if "source" in rows else "",
            "label": np.asarray(labels[positions]) if labels is not None else -1,
            "score": np.asarray(scores[positions], dtype=np.float64),
            "keep": True,
        })


def _streamable(samples, column: str) -> bool:
    if not isinstance(samples, SampleColumns):
        return False
    index = samples.app_index
    scored = column in index.score_columns or "mimic_score" in index.score_columns
    labels_ok = "label" not in index.columns or index.is_numeric("label")
    return scored and labels_ok and "sample_id" in index.columns


def write_keep_list(samples, result: FilterResult, column: str, export_format: str, out: str | os.PathLike) -> Path:
    """Write the keep-list of ``result`` in ``export_format`` to ``out`` (atomically); streamed when
    ``samples`` is read through an index, else ``filters.render_export`` of the whole table."""
    if export_format not in FORMATS:
        raise FilterError(f"unknown format {export_format!r}; choose one of {', '.join(FORMATS)}")
    if export_format == "npy":
        def save_mask(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                np.save(fh, result.keep)

        return atomic_write(out, save_mask)
    if export_format in ("json", "uids") or not _streamable(samples, column):
        data = render_export(samples, result, column, export_format)
        return atomic_write(out, lambda tmp: Path(tmp).write_bytes(data))

    def write(tmp: str) -> None:
        if export_format == "csv":
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                header = True
                for frame in _chunks(samples, result.keep, column):
                    frame.to_csv(fh, index=False, header=header)
                    header = False
                if header:  # nothing kept: the header alone, as render_export writes it
                    fh.write(render_export(_no_rows(samples), _empty(result), column, "csv").decode())
            return
        writer = None
        try:
            for frame in _chunks(samples, result.keep, column):
                table = pa.Table.from_pandas(frame, preserve_index=False)
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            if writer is None:
                Path(tmp).write_bytes(render_export(_no_rows(samples), _empty(result), column, "parquet"))
        finally:
            if writer is not None:
                writer.close()

    return atomic_write(out, write)


def _no_rows(samples: SampleColumns) -> pd.DataFrame:
    return samples.app_index.rows(np.zeros(0, dtype=np.int64))


def _empty(result: FilterResult) -> FilterResult:
    return FilterResult(np.zeros(0, dtype=bool), result.thresholds, 0, 0, {}, {})
