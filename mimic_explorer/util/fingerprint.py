"""Short content hashes that identify data, initial weights and references in a run's meta.json.

Why: scores only mean something relative to the exact data, init and reference that made them; the
hashes let a filter spec refuse to be applied to a different run, and let the feature-basis check
tell whether model and reference started from the same weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

import numpy as np


def _hash_arrays(*arrays: Iterable) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array)
        if array.dtype == object:
            for item in array.tolist():
                digest.update(str(item).encode("utf-8"))
                digest.update(b"\0")
        else:
            digest.update(str(array.dtype).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(b"\1")
    return digest.hexdigest()[:16]


def dataset_fingerprint(sample_ids: np.ndarray, labels: np.ndarray) -> str:
    """A hash of the ids and labels of an in-memory pool (the demo's): the run id changes when either does."""
    return _hash_arrays(np.asarray(sample_ids, dtype=object), np.asarray(labels, dtype=np.int64))


def state_fingerprint(state_dict: Mapping) -> str:
    """Hash of a torch state dict's names, shapes and values (float64-stable bytes)."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]
