"""One entry of the on-disk feature cache: a preallocated matrix filled chunk by chunk, resumable.

Why this shape: at millions of samples the feature matrix is gigabytes. Building it in memory and
saving it at the end (as earlier versions did) made resident memory grow with the pool and lost
everything to a kill. Here the matrix is a preallocated file written with plain positional writes
(``os.pwrite``: the data goes through the page cache, never the process's resident memory), one
chunk of rows at a time, each chunk sealed by a marker file once its rows are flushed; a killed
extraction continues at its first unsealed chunk, and the ranks of a distributed run fill disjoint
chunks of the same file. Readers memory-map the finished matrix (``values``) or read row ranges with
explicit reads (``read``), which keeps a streaming reader's memory flat. ``training.features`` decides
what goes in; this module only knows the files. See docs/ARCHITECTURE.md.

Entry folder ``<cache>/features/<key>/``:

    entry.json       {"format": FORMAT, "key", "rows", "dim", "dtype": "float32", "chunk_rows",
                      "state": "filling" | "compacting" | "complete", "good_rows" (once complete)}
    values.f32       float32, row-major. While filling: ``rows`` × ``dim``, row i = the i-th requested
                     sample (zeros for a bad one). Once complete: ``good_rows`` × ``dim``, the bad rows
                     removed, the requested order kept.
    positions.i64    int64 pool positions of the same rows
    chunks/NNNNNN.json   a sealed chunk: {"bad": [[row, sample_id, path, reason], …]}
    bad.json         once complete: [[position, sample_id, path, reason], …]
    fill.lock        ``flock``-ed by the process filling or finishing the entry

An entry that fails any check (another format, a header that does not match the request, a file of
the wrong size, an interrupted compaction) is removed and rebuilt, never trusted.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from mimic_explorer.data.errors import BadSample
from mimic_explorer.store.atomic import remove_stale_temporaries, write_json

FORMAT = "mimic-features-2"
HEADER = "entry.json"
VALUES = "values.f32"
POSITIONS = "positions.i64"
CHUNKS = "chunks"
BAD = "bad.json"
LOCK = "fill.lock"
_ROW_BYTES_POSITION = 8
_COMPACT_ROWS = 8192  # rows moved per step when bad rows are squeezed out


class FeatureEntry:
    """The files of one cache entry (``folder``), and the operations that keep them consistent."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.header: dict = {}

    # ------------------------------------------------------------------ files
    @property
    def values_path(self) -> Path:
        """The (rows × dim) feature matrix, memory-mapped; rows are filled chunk by chunk."""
        return self.folder / VALUES

    @property
    def positions_path(self) -> Path:
        """The pool position of each matrix row (int64), filled chunk by chunk with the rows."""
        return self.folder / POSITIONS

    def _marker(self, chunk: int) -> Path:
        return self.folder / CHUNKS / f"{chunk:06d}.json"

    @property
    def dim(self) -> int:
        """Columns of the matrix."""
        return int(self.header["dim"])

    @property
    def rows(self) -> int:
        """Rows of the matrix: the good ones once the entry is complete, every requested one while it is filled."""
        return int(self.header["good_rows"] if self.header.get("state") == "complete" else self.header["rows"])

    @property
    def row_bytes(self) -> int:
        """Bytes per matrix row (float32)."""
        return self.dim * 4

    # ------------------------------------------------------------------ opening
    @contextmanager
    def locked(self) -> Iterator[FeatureEntry]:
        """Hold the entry's lock: one process at a time fills (or finishes) it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_header(self) -> dict | None:
        try:
            header = json.loads((self.folder / HEADER).read_text())
        except (OSError, ValueError):
            return None
        return header if isinstance(header, dict) and header.get("format") == FORMAT else None

    def open_complete(self) -> bool:
        """Load a finished entry; False (and the entry removed if damaged) when there is none to trust."""
        header = self._read_header()
        if header is None or header.get("state") != "complete":
            return False
        self.header = header
        try:
            sizes_ok = (
                self.values_path.stat().st_size == self.rows * self.row_bytes
                and self.positions_path.stat().st_size == self.rows * _ROW_BYTES_POSITION
            )
            json.loads((self.folder / BAD).read_text())
        except (OSError, ValueError, KeyError):
            sizes_ok = False
        if not sizes_ok:
            self.discard()
        return sizes_ok

    def start(self, key: str, rows: int, dim: int, chunk_rows: int) -> None:
        """Open the entry for filling: resume a matching unfinished one, else (re)create it with both
        files preallocated (sparse). Call under ``locked``; a finished entry is left as it is."""
        wanted = {
            "format": FORMAT,
            "key": key,
            "rows": int(rows),
            "dim": int(dim),
            "dtype": "float32",
            "chunk_rows": int(chunk_rows),
        }
        for folder in (self.folder, self.folder / CHUNKS):  # a killed filler's temporary files
            remove_stale_temporaries(folder)
        header = self._read_header()
        if header is not None and header.get("state") == "complete" and self.open_complete():
            return
        if (
            header is not None
            and header.get("state") == "filling"
            and all(header.get(k) == v for k, v in wanted.items())
        ):
            self.header = header
            try:
                if (
                    self.values_path.stat().st_size == rows * dim * 4
                    and self.positions_path.stat().st_size == rows * _ROW_BYTES_POSITION
                ):
                    return
            except OSError:
                pass
        self.discard()
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / CHUNKS).mkdir()
        for path, size in ((self.values_path, rows * dim * 4), (self.positions_path, rows * _ROW_BYTES_POSITION)):
            with open(path, "wb") as handle:
                os.ftruncate(handle.fileno(), size)
        self.header = {**wanted, "state": "filling"}
        write_json(self.folder / HEADER, self.header)

    def discard(self) -> None:
        """Remove every file of the entry but its lock (held, perhaps, by the caller)."""
        if not self.folder.exists():
            return
        for item in self.folder.iterdir():
            if item.name == LOCK:
                continue
            shutil.rmtree(item) if item.is_dir() else item.unlink(missing_ok=True)

    # ------------------------------------------------------------------ filling
    @property
    def chunk_rows(self) -> int:
        """Rows per chunk: the unit that is filled, sealed and (after a kill) filled again."""
        return int(self.header["chunk_rows"])

    @property
    def chunk_count(self) -> int:
        """How many chunks the requested rows make."""
        return -(-int(self.header["rows"]) // self.chunk_rows)

    def sealed(self, chunk: int) -> bool:
        """Whether chunk ``chunk`` is finished (its marker exists, written only after its rows)."""
        return self._marker(chunk).exists()

    def write_rows(self, first_row: int, values: np.ndarray) -> None:
        """Rows ``first_row …`` of the matrix (float32, ``dim`` columns), by positional writes."""
        data = np.ascontiguousarray(values, dtype=np.float32)
        if data.ndim != 2 or data.shape[1] != self.dim:
            raise ValueError(f"features of shape {tuple(data.shape)} do not fit a cache entry of {self.dim} columns")
        _pwrite_all(self.values_path, memoryview(data).cast("B"), first_row * self.row_bytes)

    def write_positions(self, first_row: int, positions: np.ndarray) -> None:
        """The pool positions of rows ``first_row …``, by positional writes (as ``write_rows``)."""
        data = np.ascontiguousarray(positions, dtype=np.int64)
        _pwrite_all(self.positions_path, memoryview(data).cast("B"), first_row * _ROW_BYTES_POSITION)

    def seal(self, chunk: int, bad: list[tuple[int, BadSample]]) -> None:
        """Flush the chunk's rows to disk, then mark it finished (the marker never precedes its rows)."""
        for path in (self.values_path, self.positions_path):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        write_json(self._marker(chunk), {"bad": [[row, b.sample_id, b.path, b.reason] for row, b in bad]})

    def finish(self) -> None:
        """Every chunk sealed: squeeze out the bad rows (in place, a block at a time), record them, and
        mark the entry complete. Call under ``locked``."""
        bad: list[tuple[int, BadSample]] = []
        for chunk in range(self.chunk_count):
            for row, sample_id, path, reason in json.loads(self._marker(chunk).read_text())["bad"]:
                bad.append((int(row), BadSample(sample_id, path, reason)))
        bad.sort(key=lambda item: item[0])
        bad_rows = np.asarray([row for row, _ in bad], dtype=np.int64)
        positions = (
            {int(row): int(p) for row, p in zip(bad_rows, self.read_positions(bad_rows), strict=True)}
            if len(bad_rows)
            else {}
        )
        rows = int(self.header["rows"])
        good_rows = rows - len(bad_rows)
        if len(bad_rows):
            self.header["state"] = "compacting"  # a kill from here on leaves an entry that is rebuilt
            write_json(self.folder / HEADER, self.header)
            self._compact(bad_rows, rows)
        for path, size in (
            (self.values_path, good_rows * self.row_bytes),
            (self.positions_path, good_rows * _ROW_BYTES_POSITION),
        ):
            with open(path, "r+b") as handle:
                os.ftruncate(handle.fileno(), size)
                os.fsync(handle.fileno())
        write_json(self.folder / BAD, [[positions[row], b.sample_id, b.path, b.reason] for row, b in bad])
        self.header.update(state="complete", good_rows=good_rows)
        write_json(self.folder / HEADER, self.header)
        shutil.rmtree(self.folder / CHUNKS, ignore_errors=True)

    def _compact(self, bad_rows: np.ndarray, rows: int) -> None:
        """Move every good row down over the bad ones. Destinations never pass their sources, and a
        block is read whole before it is written, so the copy is safe in place."""
        keep_before = 0
        for start in range(0, rows, _COMPACT_ROWS):
            stop = min(start + _COMPACT_ROWS, rows)
            block_bad = bad_rows[(bad_rows >= start) & (bad_rows < stop)] - start
            keep = np.ones(stop - start, dtype=bool)
            keep[block_bad] = False
            if len(block_bad) or keep_before != start:
                values = self._read(self.values_path, start, stop, self.dim, np.float32)[keep]
                positions = self._read(self.positions_path, start, stop, 1, np.int64)[keep]
                self.write_rows(keep_before, values)
                self.write_positions(keep_before, positions.ravel())
            keep_before += int(keep.sum())

    # ------------------------------------------------------------------ reading
    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of the finished matrix by an explicit read (no memory map)."""
        return self._read(self.values_path, lo, hi, self.dim, np.float32)

    def read_positions(self, rows: np.ndarray) -> np.ndarray:
        """The pool positions of matrix rows ``rows``."""
        return np.asarray(
            [self._read(self.positions_path, int(r), int(r) + 1, 1, np.int64)[0, 0] for r in rows], dtype=np.int64
        )

    def _read(self, path: Path, lo: int, hi: int, width: int, dtype) -> np.ndarray:
        out = np.empty((max(hi - lo, 0), width), dtype=dtype)
        view = memoryview(out).cast("B")
        fd = os.open(path, os.O_RDONLY)
        try:
            offset, done = lo * width * out.itemsize, 0
            while done < len(view):
                got = os.preadv(fd, [view[done:]], offset + done)
                if got == 0:
                    raise OSError(f"{path} is shorter than its entry says; delete {self.folder} to rebuild it")
                done += got
        finally:
            os.close(fd)
        return out

    def values(self) -> np.ndarray:
        """The finished matrix, memory-mapped copy-on-write (pages come from disk as they are read)."""
        if self.rows == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.memmap(self.values_path, dtype=np.float32, mode="c", shape=(self.rows, self.dim))

    def positions(self) -> np.ndarray:
        """The pool position of every row, memory-mapped (read-only)."""
        if self.rows == 0:
            return np.zeros(0, dtype=np.int64)
        return np.memmap(self.positions_path, dtype=np.int64, mode="r", shape=(self.rows,))

    def bad(self) -> list[BadSample]:
        """The samples that could not be read when the entry was filled (a cached run reports them again)."""
        return [
            BadSample(sample_id, path, reason)
            for _, sample_id, path, reason in json.loads((self.folder / BAD).read_text())
        ]


def _pwrite_all(path: Path, data: memoryview, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)
    finally:
        os.close(fd)
