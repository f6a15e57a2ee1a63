"""Scores sorted within (class, mislabeled) groups: what live counts ``searchsorted`` on.

Why here: the explorer's counter (``ui.counting.RuleCounter``) sorts them when a column is first
shown, and the app index (``store.index_build``) stores them so that at millions of samples the
counter is built from memory-mapped arrays instead; one function makes both, so they are the same.
"""

from __future__ import annotations

import numpy as np


def sort_by_group(
    values: np.ndarray,
    valid_order: np.ndarray,
    group: np.ndarray,
    n_groups: int,
    sorted_values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(values of ``valid_order`` re-sorted by group, then by value; the bounds of each group in it).
    ``valid_order``: positions of the non-NaN values, ascending by value; ``group``: small ints;
    ``sorted_values``: ``values[valid_order]`` if the caller has it (one random gather less)."""
    # a stable sort of the (small-int) group keys keeps each group's values ascending
    key_type = np.int16 if n_groups < 2**15 else np.int64  # int16: numpy's stable sort is a radix sort
    keys = group[valid_order]
    by_key = np.argsort(keys.astype(key_type), kind="stable")
    bounds = np.searchsorted(keys[by_key], np.arange(n_groups + 1))
    if sorted_values is not None:
        return sorted_values[by_key], bounds
    return values[valid_order[by_key]], bounds
