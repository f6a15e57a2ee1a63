"""Thumbnail store: one append-only blob file plus an index of (sample_id, offset, length).

Why: galleries must never decode full images, and a run may hold millions of samples; a single blob
with an offset index gives any thumbnail with one seek and one read, and stays one file on disk.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
import weakref
from pathlib import Path

import numpy as np
import pandas as pd

from mimic_explorer.store.atomic import write_parquet
from mimic_explorer.store.layout import RunLayout

THUMB_SIZE = 96


def _encode_thumbnail(image, size: int = THUMB_SIZE) -> bytes:
    """PIL image → WebP bytes at most ``size`` px on its long side.

    Images already smaller are kept at their own size (the galleries scale them up with CSS): an
    upscaled 32-px image is nine times the pixels to encode and store and shows nothing more."""
    from PIL import Image

    image = image.convert("RGB")
    if max(image.size) > size:
        scale = size / max(image.size)
        new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(new_size, Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=85)
    return buffer.getvalue()


_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF8", "image/gif"))


def image_mime(data: bytes) -> str | None:
    """The MIME type of encoded image bytes a browser can show, from their magic number."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((mime for magic, mime in _MAGIC if data.startswith(magic)), None)


def thumbnail_bytes(image, original: bytes | None, size: int = THUMB_SIZE) -> bytes:
    """The thumbnail for a decoded image: its original file when that is already small and in a
    format browsers show (no re-encoding: a 32-px JPEG is its own thumbnail), else ``_encode_thumbnail``."""
    if original is not None and max(image.size) <= size and image_mime(original) is not None and len(original) < 64_000:
        return original
    return _encode_thumbnail(image, size)


class ThumbnailWriter:
    """Append thumbnails for a run; the index is written atomically on ``close``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.layout = RunLayout(Path(run_dir))
        self.layout.thumbs_dir.mkdir(parents=True, exist_ok=True)
        self._blob = open(self.layout.thumbs_blob, "wb")  # noqa: SIM115 - open while thumbnails are added; close() shuts it
        self._rows: list[tuple[str, int, int]] = []

    def add(self, sample_id: str, image) -> None:
        """Append one sample's thumbnail: encoded bytes as they are, or an image encoded here."""
        data = image if isinstance(image, bytes) else _encode_thumbnail(image)
        offset = self._blob.tell()
        self._blob.write(data)
        self._rows.append((str(sample_id), offset, len(data)))

    def close(self) -> None:
        """Write the blob to disk, then the index (atomically): a thumbnail is findable only once its bytes
        are synced."""
        self._blob.flush()
        os.fsync(self._blob.fileno())
        self._blob.close()
        frame = pd.DataFrame(self._rows, columns=["sample_id", "offset", "length"])
        write_parquet(self.layout.thumbs_index, frame)

    def __enter__(self) -> ThumbnailWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Offsets:
    """The columns of one thumbnail index file as read: ids (Arrow), offsets and lengths (int64)."""

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=["sample_id", "offset", "length"])
        self.ids = table.column("sample_id").combine_chunks()
        self.offsets = _int64(table.column("offset"))
        self.lengths = _int64(table.column("length"))
        self.hash: pd.Index | None = None


def _int64(column) -> np.ndarray:
    values = column.to_numpy()  # zero-copy for one chunk without nulls
    return values if values.dtype == np.int64 else values.astype(np.int64)


#: Thumbnail indexes read in this process, by (path, size, mtime): sessions on one run share them.
_READ: weakref.WeakValueDictionary[tuple, _Offsets] = weakref.WeakValueDictionary()
_READ_LOCK = threading.Lock()


def _read_offsets(path: Path) -> _Offsets:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _READ_LOCK:
        found = _READ.get(key)
        if found is None:
            found = _READ[key] = _Offsets(path)
        return found


class ThumbnailReader:
    """Random access to a run's thumbnails: ``get(sample_id, position=None)`` → bytes, or ``None``.

    Nothing per sample happens on open: the index is read on first use as Arrow columns (~0.1 s at a
    million samples, where a dict or pandas Index of every id costs over a second), once per process
    for every reader of the same file (each session on a run has its reader). The index is
    normally written in ``samples.parquet`` order, so ``position`` (the sample's row there) is tried
    first and checked against the id; only when that misses is a hash index of the ids built (once).
    Each thumbnail is then one positional read of the blob (safe across server threads). ``missing``
    counts the lookups that found nothing (the app says when galleries show placeholders)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.layout = RunLayout(Path(run_dir))
        self.missing = 0
        self.error = ""
        self._ids = None  # pyarrow array of ids, in index order
        self._columns: _Offsets | None = None
        self._offsets = self._lengths = None
        self._fd: int | None = None
        self._loaded = False
        self._locate = None

    def locate_with(self, locate) -> None:
        """Find thumbnails by sample position with ``locate(position) -> (offset, length) | None``
        (the run's app index) instead of reading this run's thumbnail index into memory."""
        self._locate = locate

    def _load(self) -> None:
        self._loaded = True
        index, blob = self.layout.thumbs_index, self.layout.thumbs_blob
        if not (index.exists() and blob.exists()):
            return
        if self._locate is not None:  # positions come from the app index: only the blob is opened
            try:
                self._fd = os.open(blob, os.O_RDONLY)
            except OSError as exc:
                self.error = str(exc)
            return
        try:
            columns = _read_offsets(index)
            self._fd = os.open(blob, os.O_RDONLY)
        except (OSError, ValueError, KeyError) as exc:  # unreadable index: no thumbnails, the rest works
            self.error = str(exc)
            return
        self._columns = columns
        self._ids, self._offsets, self._lengths = columns.ids, columns.offsets, columns.lengths

    @property
    def available(self) -> bool:
        """Whether the run has a readable thumbnail store at all."""
        if not self._loaded:
            self._load()
        return self._fd is not None

    def _row(self, sample_id: str, position: int | None) -> int | None:
        if position is not None and 0 <= position < len(self._ids) and self._ids[position].as_py() == sample_id:
            return position
        if self._columns.hash is None:
            self._columns.hash = pd.Index(self._ids.to_numpy(zero_copy_only=False).astype(object))
        try:
            row = self._columns.hash.get_loc(sample_id)
        except KeyError:
            return None
        return int(row) if isinstance(row, (int, np.integer)) else None  # a duplicated id is not trusted

    def _location(self, sample_id: str, position: int | None) -> tuple[int, int] | None:
        if self._locate is not None and position is not None:
            return self._locate(int(position))
        if self._locate is not None:  # an id alone: the thumbnail index is read after all
            self._locate, self._loaded = None, False
            os.close(self._fd) if self._fd is not None else None
            self._fd = None
            if not self.available:
                return None
        row = self._row(sample_id, position)
        return None if row is None else (int(self._offsets[row]), int(self._lengths[row]))

    def get(self, sample_id: str, position: int | None = None) -> bytes | None:
        """The thumbnail bytes, or None (no store, unknown id, truncated blob)."""
        location = self._location(str(sample_id), position) if self.available else None
        data = None
        if location is not None:
            offset, length = location
            try:
                data = os.pread(self._fd, length, offset)
            except OSError:
                data = None
            data = data if data is not None and len(data) == length else None
        if data is None:
            self.missing += 1
        return data

    def __contains__(self, sample_id: str) -> bool:
        return self.available and self._location(str(sample_id), None) is not None

    def close(self) -> None:
        """Give the file descriptor back (a later read opens it again)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # one descriptor per open run; give it back when the reader goes
        with contextlib.suppress(Exception):  # at interpreter exit anything may already be gone
            self.close()
