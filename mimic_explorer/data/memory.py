"""``digits`` and any in-memory ``ArrayDataset`` as a ``Source``.

Why: the embedded demo data and pools built in a notebook should go through the same code paths
(thumbnails, fingerprint, torch adapter) as files on disk.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mimic_explorer.data.digits import ArrayDataset, load_digits_dataset
from mimic_explorer.data.imageio import array_to_rgb
from mimic_explorer.data.source import Source


class ArraySource(Source):
    """An ``ArrayDataset`` (uint8 images in memory); ``load`` converts to RGB by the usual rules."""

    kind = "array"

    def __init__(self, data: ArrayDataset, spec: str | None = None, true_labels: np.ndarray | None = None):
        self.data = data
        super().__init__(spec or data.source, data.sample_ids, data.labels, data.class_names, true_labels=true_labels)

    def source_of(self, i: int) -> str:
        """The dataset's name (every sample of an in-memory pool comes from the same place)."""
        return str(self.data.source)

    def _load(self, i: int) -> Image.Image:
        return array_to_rgb(self.data.images[i])

    def _sizes_now(self) -> np.ndarray:
        per_image = int(np.prod(self.data.images.shape[1:])) * self.data.images.dtype.itemsize
        return np.full(len(self), per_image, dtype=np.int64)


class DigitsSource(ArraySource):
    """scikit-learn's 1,797 digits (8×8 grey, shipped with scikit-learn: no download)."""

    kind = "digits"

    def __init__(self, spec: str = "digits"):
        super().__init__(load_digits_dataset(), spec=spec)
