"""Thumbnails as data URIs for galleries, with a placeholder for anything missing or unreadable.

Why not ``store.thumbs.ThumbnailReader`` directly: it builds a Python dict of every id on open (about
1.5 s at a million samples), and the app opens in under 3 s. Here the index is read as Arrow columns
(~0.1 s at a million) and each card is one positional read of the same blob file. Data URIs need no file route, so the server serves nothing from disk.
"""

from __future__ import annotations

import base64
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd

from mimic_explorer.store.layout import THUMBS_BLOB as BLOB, THUMBS_DIR, THUMBS_INDEX as INDEX
from mimic_explorer.store.thumbs import image_mime

PLACEHOLDER = (
    "data:image/svg+xml;base64,"
    + base64.b64encode(
        b'<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" fill="#eceff1"/>'
        b'<path d="M28 64l14-18 10 12 8-9 12 15z" fill="#b0bec5"/><circle cx="38" cy="36" r="6" fill="#b0bec5"/>'
        b'<text x="48" y="86" font-size="10" font-family="sans-serif" text-anchor="middle" fill="#78909c">no image</text></svg>'
    ).decode()
)


class ThumbnailSource:
    """``uri(sample_id, position)`` → an image data URI, or ``PLACEHOLDER`` when the run has none for it.

    The thumbnail index is normally written in ``samples.parquet`` order, so ``position`` (the row in
    samples) is tried first and checked against the id; only when that fails is a hash index of all
    ids built (once). Either way nothing per-sample happens when the run is opened.
    """

    def __init__(self, run_dir: str | os.PathLike, cache_size: int = 2048):
        self.folder = Path(run_dir) / THUMBS_DIR
        self._ids = None  # pyarrow array of ids, in index order
        self._hash: pd.Index | None = None
        self._offsets = self._lengths = None
        self._fd: int | None = None
        self._loaded = False
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size
        self.missing = 0  # how many lookups fell back to the placeholder (the page says so)

    def _load(self) -> None:
        self._loaded = True
        index_path, blob_path = self.folder / INDEX, self.folder / BLOB
        if not (index_path.exists() and blob_path.exists()):
            return
        try:
            import pyarrow.parquet as pq

            table = pq.read_table(index_path, columns=["sample_id", "offset", "length"])
            self._fd = os.open(blob_path, os.O_RDONLY)
        except (OSError, ValueError, KeyError) as exc:  # unreadable index: placeholders, the rest works
            self.error = str(exc)
            return
        self._ids = table.column("sample_id").combine_chunks()
        self._offsets = table.column("offset").to_numpy().astype(np.int64)
        self._lengths = table.column("length").to_numpy().astype(np.int64)

    @property
    def available(self) -> bool:
        if not self._loaded:
            self._load()
        return self._fd is not None

    def _row(self, sample_id: str, position: int | None) -> int:
        if position is not None and 0 <= position < len(self._ids) and self._ids[position].as_py() == sample_id:
            return position
        if self._hash is None:
            self._hash = pd.Index(self._ids.to_numpy(zero_copy_only=False).astype(object))
        found = self._hash.get_indexer([sample_id])[0]
        return int(found)

    def get(self, sample_id: str, position: int | None = None) -> bytes | None:
        """The thumbnail bytes, or None (no index, unknown id, truncated blob)."""
        if not self.available:
            return None
        row = self._row(str(sample_id), position)
        if row < 0:
            return None
        length = int(self._lengths[row])
        try:
            data = os.pread(self._fd, length, int(self._offsets[row]))
        except OSError:
            return None
        return data if len(data) == length else None

    def uri(self, sample_id: str, position: int | None = None) -> str:
        sample_id = str(sample_id)
        cached = self._cache.get(sample_id)
        if cached is not None:
            self._cache.move_to_end(sample_id)
            return cached
        data = self.get(sample_id, position)
        if data is None:
            self.missing += 1
            return PLACEHOLDER
        uri = f"data:{image_mime(data) or 'image/webp'};base64," + base64.b64encode(data).decode()
        self._cache[sample_id] = uri
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return uri

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # one descriptor per open run; give it back when the explorer goes
        try:
            self.close()
        except Exception:
            pass
