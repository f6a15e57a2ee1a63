"""Thumbnails as data URIs for galleries, with a placeholder for anything missing or unreadable.

Why not ``store.thumbs.ThumbnailReader`` directly: it builds a Python dict of every id on open (about
1.5 s at a million samples), and the app opens in under 3 s. Here the index is a pandas ``Index``
(vectorised, ~0.3 s at a million) built on the first gallery, and each card is one positional read of
the same blob file. Data URIs need no file route, so the server serves nothing from disk.
"""

from __future__ import annotations

import base64
import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd

from mimic_explorer.store.paths import THUMBS_DIR
from mimic_explorer.store.thumbs import BLOB, INDEX

PLACEHOLDER = (
    "data:image/svg+xml;base64,"
    + base64.b64encode(
        b'<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" fill="#eceff1"/>'
        b'<path d="M28 64l14-18 10 12 8-9 12 15z" fill="#b0bec5"/><circle cx="38" cy="36" r="6" fill="#b0bec5"/>'
        b'<text x="48" y="86" font-size="10" font-family="sans-serif" text-anchor="middle" fill="#78909c">no image</text></svg>'
    ).decode()
)


class ThumbnailSource:
    """``uri(sample_id)`` → a WebP data URI, or ``PLACEHOLDER`` when the run has no thumbnail for it."""

    def __init__(self, run_dir: str | os.PathLike, cache_size: int = 2048):
        self.folder = Path(run_dir) / THUMBS_DIR
        self._index: pd.Index | None = None
        self._offsets = self._lengths = None
        self._fd: int | None = None
        self._loaded = False
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size
        self.missing = 0  # how many lookups fell back to the placeholder (shown in the page)

    def _load(self) -> None:
        self._loaded = True
        index_path, blob_path = self.folder / INDEX, self.folder / BLOB
        if not (index_path.exists() and blob_path.exists()):
            return
        try:
            frame = pd.read_parquet(index_path, columns=["sample_id", "offset", "length"])
            self._fd = os.open(blob_path, os.O_RDONLY)
        except (OSError, ValueError, KeyError):
            return
        self._index = pd.Index(frame["sample_id"].astype(str))
        self._offsets = frame["offset"].to_numpy(dtype=np.int64)
        self._lengths = frame["length"].to_numpy(dtype=np.int64)

    @property
    def available(self) -> bool:
        if not self._loaded:
            self._load()
        return self._fd is not None

    def get(self, sample_id: str) -> bytes | None:
        """The thumbnail bytes, or None (no index, unknown id, truncated blob)."""
        if not self.available:
            return None
        where = self._index.get_indexer([str(sample_id)])[0]
        if where < 0:
            return None
        length = int(self._lengths[where])
        try:
            data = os.pread(self._fd, length, int(self._offsets[where]))
        except OSError:
            return None
        return data if len(data) == length else None

    def uri(self, sample_id: str) -> str:
        sample_id = str(sample_id)
        cached = self._cache.get(sample_id)
        if cached is not None:
            self._cache.move_to_end(sample_id)
            return cached
        data = self.get(sample_id)
        if data is None:
            self.missing += 1
            return PLACEHOLDER
        uri = "data:image/webp;base64," + base64.b64encode(data).decode()
        self._cache[sample_id] = uri
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return uri

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # file descriptors are per run; close them when the explorer goes
        try:
            self.close()
        except Exception:
            pass
