"""Thumbnails as data URIs for galleries, with a placeholder for anything missing or unreadable.

The bytes come from the run's ``ThumbnailReader`` (``Run.thumbnails``: one positional read each);
here they only become ``data:`` URIs, so the server serves nothing from disk, and recent ones are
kept so re-drawing a gallery does not re-encode them.
"""

from __future__ import annotations

import base64
from collections import OrderedDict

from mimic_explorer.store.thumbs import ThumbnailReader, image_mime

PLACEHOLDER = (
    "data:image/svg+xml;base64,"
    + base64.b64encode(
        b'<svg xmlns="http://www.w3.org/2000/svg" width="96" height="96"><rect width="96" height="96" fill="#eceff1"/>'
        b'<path d="M28 64l14-18 10 12 8-9 12 15z" fill="#b0bec5"/><circle cx="38" cy="36" r="6" fill="#b0bec5"/>'
        b'<text x="48" y="86" font-size="10" font-family="sans-serif" text-anchor="middle" '
        b'fill="#78909c">no image</text></svg>'
    ).decode()
)


class ThumbnailURIs:
    """``uri(sample_id, position)`` → an image data URI, or ``PLACEHOLDER`` when the run has none for it."""

    def __init__(self, reader: ThumbnailReader, cache_size: int = 2048):
        self.reader = reader
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._cache_size = cache_size

    @property
    def complete(self) -> bool:
        """False when the run has no thumbnails or a lookup fell back to the placeholder."""
        return self.reader.available and self.reader.missing == 0

    def uri(self, sample_id: str, position: int | None = None) -> str:
        """A data URI of the sample's thumbnail (``position`` finds it without an id lookup), or ``PLACEHOLDER``; the
        latest ones are kept, as galleries ask again on every change."""
        sample_id = str(sample_id)
        cached = self._cache.get(sample_id)
        if cached is not None:
            self._cache.move_to_end(sample_id)
            return cached
        data = self.reader.get(sample_id, position)
        if data is None:
            return PLACEHOLDER
        uri = f"data:{image_mime(data) or 'image/webp'};base64," + base64.b64encode(data).decode()
        self._cache[sample_id] = uri
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return uri
