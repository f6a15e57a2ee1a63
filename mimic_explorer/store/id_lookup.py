"""Find rows by sample id in O(log n) from two memory-mapped arrays, whatever the run's size.

Why: ``Explorer.select(sample_id)``, a map selection's ids and a review's ids need "which row is this
id". A pandas ``Index`` over every id answers that, but building it reads 12.8 M strings into Python
objects (10 s and gigabytes on first use). The index build instead writes each id's 64-bit hash in
ascending order (``id-hashes.npy``) and the row each came from (``id-order.npy``); a lookup hashes the
ids asked for, finds their hashes by binary search and reads the candidate rows' ids back to compare,
so a collision of hashes never gives a wrong row.

The hash is pandas' ``hash_array`` (SipHash-2-4 with pandas' fixed key), stable since pandas 0.20; a
probe hash recorded at build time is checked on open, and a pandas whose hash differs makes the caller
fall back to the slow exact path instead of finding nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mimic_explorer.store.external_sort import sort_key_chunks

HASH_NAME = "pandas.util.hash_array(categorize=False)"
#: the id whose hash, recorded at build time, tells whether this pandas hashes the same way
PROBE = "mimic_explorer sample id probe"


def hash_ids(ids: Iterable[str] | pa.Array | np.ndarray) -> np.ndarray:
    """Each id's 64-bit hash (uint64), as text: ``7`` and ``"7"`` hash alike, as ``Run.samples`` reads ids as str."""
    if isinstance(ids, (pa.Array, pa.ChunkedArray)):
        values = ids.cast(pa.string()).to_numpy(zero_copy_only=False)
    else:
        values = np.asarray([str(i) for i in ids], dtype=object)
    return pd.util.hash_array(np.asarray(values, dtype=object), categorize=False)


def probe_hash() -> int:
    """This pandas' hash of ``PROBE``."""
    return int(hash_ids([PROBE])[0])


def write_id_lookup(
    batches: Iterable[pa.Array], n: int, hashes_path: Path, order_path: Path, scratch: Path
) -> dict[str, Any]:
    """Hash the ids a batch at a time (never all of them as Python strings), sort the hashes out of core
    (``scratch``: an empty folder for the sorted runs, removed after) and save the sorted hashes and the
    row of each; returns the manifest entry. Memory: a few million hashes, whatever the pool size."""
    sort_key_chunks(
        (hash_ids(batch) for batch in batches),  # equal hashes by row: the same files on every build
        n,
        hashes_path,
        order_path,
        scratch,
        position_type=np.int32 if n < 2**31 else np.int64,
    )
    return {"hash": HASH_NAME, "probe": probe_hash()}


class IdLookup:
    """Rows by sample id over the two arrays ``write_id_lookup`` saved (memory-mapped by the caller)."""

    def __init__(self, sorted_hashes: np.ndarray, order: np.ndarray, ids_at: Callable[[np.ndarray], list[str]]):
        self._hashes = sorted_hashes
        self._order = order
        self._ids_at = ids_at  # the ids stored at some row positions, to confirm a hash match

    def positions(self, sample_ids: Iterable[str]) -> np.ndarray:
        """Row position of each id (−1 where the run has no such id), in the order asked."""
        wanted = [str(i) for i in sample_ids]
        if not wanted:
            return np.zeros(0, dtype=np.int64)
        hashes = hash_ids(wanted)
        lo = np.searchsorted(self._hashes, hashes, side="left")
        hi = np.searchsorted(self._hashes, hashes, side="right")
        found = np.full(len(wanted), -1, dtype=np.int64)
        first = np.flatnonzero(hi > lo)
        if len(first) == 0:
            return found
        candidates = np.asarray(self._order[lo[first]], dtype=np.int64)
        same = np.asarray(self._ids_at(candidates), dtype=object) == np.asarray(wanted, dtype=object)[first]
        found[first[same]] = candidates[same]
        for asked in first[~same]:  # another id shares the hash: look at every row with it
            rows = np.asarray(self._order[lo[asked] : hi[asked]], dtype=np.int64)
            match = np.flatnonzero(np.asarray(self._ids_at(rows), dtype=object) == wanted[asked])
            if len(match):
                found[asked] = rows[match[0]]
        return found
