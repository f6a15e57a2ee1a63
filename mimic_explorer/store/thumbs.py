"""Thumbnail store: one append-only blob file plus an index of (sample_id, offset, length).

Why: galleries must never decode full images, and a run may hold millions of samples; a single blob
with an offset index gives any thumbnail with one seek and one read, and stays one file on disk.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import pandas as pd

from mimic_explorer.store.atomic import write_parquet
from mimic_explorer.store.layout import THUMBS_BLOB as BLOB, THUMBS_DIR, THUMBS_INDEX as INDEX

THUMB_SIZE = 96


def encode_thumbnail(image, size: int = THUMB_SIZE) -> bytes:
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
    format browsers show (no re-encoding: a 32-px JPEG is its own thumbnail), else ``encode_thumbnail``."""
    if original is not None and max(image.size) <= size and image_mime(original) is not None and len(original) < 64_000:
        return original
    return encode_thumbnail(image, size)


class ThumbnailWriter:
    """Append thumbnails for a run; the index is written atomically on ``close``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.folder = Path(run_dir) / THUMBS_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self._blob = open(self.folder / BLOB, "wb")
        self._rows: list[tuple[str, int, int]] = []

    def add(self, sample_id: str, image) -> None:
        data = image if isinstance(image, bytes) else encode_thumbnail(image)
        offset = self._blob.tell()
        self._blob.write(data)
        self._rows.append((str(sample_id), offset, len(data)))

    def close(self) -> None:
        self._blob.flush()
        os.fsync(self._blob.fileno())
        self._blob.close()
        frame = pd.DataFrame(self._rows, columns=["sample_id", "offset", "length"])
        write_parquet(self.folder / INDEX, frame)

    def __enter__(self) -> "ThumbnailWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ThumbnailReader:
    """Random access to a run's thumbnails by sample id; missing ones return ``None``.

    The index stays as arrays (ids in a pandas Index, offsets and lengths as int64), so opening a
    run of a million samples costs one parquet read, not a million Python tuples."""

    def __init__(self, run_dir: str | os.PathLike):
        self.folder = Path(run_dir) / THUMBS_DIR
        self._ids = pd.Index([], dtype=object)
        self._offsets = self._lengths = None
        self._fd: int | None = None
        index = self.folder / INDEX
        if index.exists() and (self.folder / BLOB).exists():
            frame = pd.read_parquet(index)
            self._ids = pd.Index(frame["sample_id"].astype(str))
            self._offsets = frame["offset"].to_numpy(dtype="int64")
            self._lengths = frame["length"].to_numpy(dtype="int64")
            self._fd = os.open(self.folder / BLOB, os.O_RDONLY)

    def _position(self, sample_id: str) -> int | None:
        try:
            position = self._ids.get_loc(str(sample_id))
        except KeyError:
            return None
        return position if isinstance(position, int) else None  # a duplicated id is not trusted

    def __contains__(self, sample_id: str) -> bool:
        return self._position(sample_id) is not None

    def get(self, sample_id: str) -> bytes | None:
        position = self._position(sample_id)
        if position is None or self._fd is None:
            return None
        offset, length = int(self._offsets[position]), int(self._lengths[position])
        data = os.pread(self._fd, length, offset)  # positional read: safe across server threads
        return data if len(data) == length else None
