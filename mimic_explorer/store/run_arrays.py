"""Per-sample arrays of a run (class probabilities, embeddings, map coordinates): written atomically, read mapped.

Why ``.npy`` files beside ``samples.parquet`` rather than columns in it: a vector per sample (512
floats, 1000 class probabilities) is a matrix that a reader wants whole and memory-mapped — PCA,
nearest neighbours, cleanlab's ``pred_probs`` — not one Parquet list cell per row. Row r of every
such array is row r of ``samples.parquet`` (the good samples in pool order), so ``samples.iloc[r]``
and ``array[r]`` name one sample without a lookup. The names are ``store.layout``'s.

Writing: ``RowArrayWriter`` fills a temporary ``.npy`` beside its final name, in any order of rows
(the end-of-run signals arrive one range of the pool at a time), and renames it into place on
``commit``; rows never written are NaN. A failure leaves no file under the final name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mimic_explorer.store.atomic import AtomicFile, atomic_write, mapped_array_file


class RowArrayWriter:
    """A (rows, width) array written by rows into a temporary file and published by ``commit``.

    The width is taken from the first ``write`` (the caller need not know a model's feature width)."""

    def __init__(self, path: str | os.PathLike, rows: int, dtype: np.dtype | str):
        self.path, self.rows, self.dtype = Path(path), int(rows), np.dtype(dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = AtomicFile(self.path)
        self._array: np.memmap | None = None
        self._written = np.zeros(self.rows, dtype=bool)

    def write(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Store ``values[i]`` as row ``rows[i]`` (row numbers of samples.parquet)."""
        values = np.asarray(values)
        if values.ndim != 2:
            raise ValueError(f"{self.path.name}: rows of values are expected, got shape {values.shape}")
        if self._array is None:
            self._array = mapped_array_file(self._file.tmp, self.dtype, (self.rows, values.shape[1]))
        rows = np.asarray(rows, dtype=np.int64)
        self._array[rows] = values.astype(self.dtype, copy=False)
        self._written[rows] = True

    def commit(self) -> Path | None:
        """Publish the array (unwritten rows NaN); None, and no file, when no row was ever given."""
        if self._array is None:
            self._file.abort()
            return None
        missing = ~self._written
        if missing.any():
            self._array[missing] = np.nan
        self._array.flush()
        del self._array
        self._array = None
        return self._file.commit()

    def abort(self) -> None:
        """Remove the temporary file: nothing appears under the final name."""
        self._array = None
        self._file.abort()


def write_row_array(path: str | os.PathLike, values: np.ndarray, dtype: np.dtype | str | None = None) -> Path:
    """Write a whole (rows, width) array at once, atomically."""
    values = np.asarray(values if dtype is None else np.asarray(values).astype(dtype, copy=False))
    Path(path).parent.mkdir(parents=True, exist_ok=True)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, values, allow_pickle=False)

    return atomic_write(path, save)


def read_row_array(path: str | os.PathLike, rows: int | None = None) -> np.ndarray:
    """A run array, memory-mapped read-only; ``ValueError`` (one line) when it is not a 2-D array of
    ``rows`` rows (a file from another run, or truncated)."""
    path = Path(path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if array.ndim != 2:
        raise ValueError(f"{path} holds a {array.ndim}-D array; a (samples, width) array is expected")
    if rows is not None and len(array) != rows:
        raise ValueError(
            f"{path} has {len(array):,} rows but the run has {rows:,} samples: it belongs to another run "
            "(make it again: mimic-explorer map RUN)"
        )
    return array
