"""scikit-learn's digits (1,797 8×8 grey images shipped inside the package): the embedded demo data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASS_NAMES = [str(i) for i in range(10)]


@dataclass(frozen=True)
class ArrayDataset:
    """An in-memory pool: stable ids, images as uint8 arrays (N, H, W[, C]) and integer labels."""

    sample_ids: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    source: str

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> ArrayDataset:
        """The samples at ``index``, in that order (the demo's split into pool and held-out digits)."""
        return ArrayDataset(
            self.sample_ids[index], self.images[index], self.labels[index], self.class_names, self.source
        )


def load_digits_dataset() -> ArrayDataset:
    """All 1,797 digits as uint8 images (0..255) with ids ``digits-0000`` … in the package's order."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(np.round(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    ids = np.array([f"digits-{i:04d}" for i in range(len(images))], dtype=object)
    return ArrayDataset(ids, images, bunch.target.astype(np.int64), list(CLASS_NAMES), "digits")
