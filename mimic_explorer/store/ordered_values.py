"""A column's values in a stored order, read through that order when asked — never stored twice.

Why: the app index keeps, per score column, its ascending order (positions) beside the column itself.
Storing the values in that order as well (what ``searchsorted`` and the quantiles read) doubled the
index for nothing: every sorted value is ``column[order[i]]``. ``OrderedValues`` is that sequence as a
read-only, array-like view: ``len``, ``view[i]``, slices (views again), ``np.searchsorted`` (a binary
search through the order: O(log n) reads, about 24 at 12.8 M) and, when a caller truly needs all of
them, ``np.asarray(view)`` (one gather). The same view over a column's class-grouped positions serves
the live counter's per-group searches.

NaN sorts last, as numpy's sort and ``searchsorted`` have it, so a view behaves like the sorted float64
array it replaces (``-0.0`` reads back as ``-0.0``, which compares equal to ``0.0`` as before).
"""

from __future__ import annotations

import math

import numpy as np


class OrderedValues:
    """``values[positions[i]]`` for i in range(len(positions)), as float64, ascending (NaN last)."""

    __array_priority__ = 0.0

    def __init__(self, values: np.ndarray, positions: np.ndarray):
        self._values = np.asarray(values)  # a plain ndarray over the map: scalar reads skip memmap's wrapper
        self._positions = np.asarray(positions)

    # ------------------------------------------------------------------ the array-like surface

    def __len__(self) -> int:
        return len(self._positions)

    @property
    def shape(self) -> tuple[int]:
        """``(len,)``, as the array this stands for."""
        return (len(self._positions),)

    @property
    def dtype(self) -> np.dtype:
        """Always float64: the values are read as the sorted float64 array had them."""
        return np.dtype(np.float64)

    @property
    def positions(self) -> np.ndarray:
        """The row positions this view reads, in its order."""
        return self._positions

    def __getitem__(self, key):
        if isinstance(key, slice):
            return OrderedValues(self._values, self._positions[key])
        if isinstance(key, (int, np.integer)):
            return np.float64(self._values[self._positions[key]])
        return np.asarray(self._values[np.asarray(self._positions[key])], dtype=np.float64)

    def __array__(self, dtype=None, copy=None):
        gathered = np.asarray(self._values[self._positions], dtype=np.float64)
        return gathered if dtype is None else gathered.astype(dtype, copy=False)

    def __iter__(self):
        return iter(np.asarray(self))

    def __repr__(self) -> str:
        return f"OrderedValues(len={len(self)})"

    # ------------------------------------------------------------------ searching

    def _at(self, i: int) -> float:
        return float(self._values[self._positions[i]])

    def _search_one(self, value: float, right: bool) -> int:
        """numpy's ``searchsorted`` of one value: NaN is greater than every number (and, on the right,
        equal to NaN)."""
        lo, hi = 0, len(self._positions)
        if math.isnan(value):
            if not right:  # the first NaN: NaN sit at the end, every number below them
                while lo < hi:
                    mid = (lo + hi) // 2
                    if math.isnan(self._at(mid)):
                        hi = mid
                    else:
                        lo = mid + 1
                return lo
            return hi
        while lo < hi:
            mid = (lo + hi) // 2
            x = self._at(mid)
            below = (x <= value) if right else (x < value)  # False for a NaN x: it sits above every value
            if below:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def searchsorted(self, v, side: str = "left", sorter=None):
        """What ``np.searchsorted(np.asarray(self), v, side)`` gives (``np.searchsorted(view, v)`` calls this)."""
        if sorter is not None:
            raise TypeError("OrderedValues is already sorted: no sorter")
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', not {side!r}")
        right = side == "right"
        if np.ndim(v) == 0:
            return np.intp(self._search_one(float(v), right))
        flat = np.asarray(v, dtype=np.float64)
        found = np.fromiter(
            (self._search_one(float(x), right) for x in flat.reshape(-1)), dtype=np.intp, count=flat.size
        )
        return found.reshape(flat.shape)
