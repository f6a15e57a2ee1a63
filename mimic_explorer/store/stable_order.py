"""``np.argsort(values, kind="stable")`` of a float column, several times faster at millions of rows.

Why: building the app index sorts every score column of the run (a dozen columns of 12.8 M values);
numpy's stable argsort of float64 is a merge sort, while its plain ``np.sort`` of 64-bit integers is a
vectorised sort many times faster. Each value becomes an order-preserving 64-bit integer whose low bits
are replaced by the value's position; one ``np.sort`` of those orders the values by their high bits,
ties by position. Values whose high bits tie but whose full values differ are re-sorted exactly
(``lexsort`` on their full key and position; few in a continuous score). NaN go last by position and
-0.0 ties with 0.0, as in numpy's order, so the result is equal to ``np.argsort(..., kind="stable")``
element for element (tests compare them on ties, NaN, infinities and near-equal values).
"""

from __future__ import annotations

import numpy as np

#: below this many values numpy's own stable argsort is as fast
MIN_PACKED = 1 << 16


def stable_argsort(values: np.ndarray, min_packed: int = MIN_PACKED) -> np.ndarray:
    """Positions of ``values`` ascending, ties by position, NaN last (int64): numpy's stable argsort."""
    values = np.asarray(values)
    n = len(values)
    if values.dtype.kind != "f" or n < min_packed or n >= 1 << 40:
        return np.argsort(values, kind="stable")
    values = values.astype(np.float64, copy=False)
    nan = np.isnan(values)
    has_nan = bool(nan.any())
    valid = np.flatnonzero(~nan) if has_nan else None
    finite = (values[valid] if has_nan else values) + 0.0  # -0.0 + 0.0 is 0.0: the two tie, as in numpy
    del values
    order = _packed_order(finite)
    if has_nan:
        order = np.concatenate([valid[order], np.flatnonzero(nan)])
    return order


def _sortable_key(values: np.ndarray) -> np.ndarray:
    """Unsigned integers in the order of the (non-NaN) float64 values: negative values have every bit
    flipped, the others their sign bit set."""
    bits = values.view(np.uint64)
    key = bits | np.uint64(1 << 63)
    np.invert(bits, out=key, where=values < 0)
    return key


def _packed_order(values: np.ndarray) -> np.ndarray:
    """The stable order of non-NaN float64 ``values`` (see the module docstring)."""
    m = len(values)
    shift = np.uint64(max(1, (m - 1).bit_length()))
    packed = _sortable_key(values)
    packed >>= shift
    packed <<= shift
    packed |= np.arange(m, dtype=np.uint64)
    packed.sort()
    high_tie = np.bitwise_xor(packed[1:], packed[:-1]) < (np.uint64(1) << shift)
    packed &= (np.uint64(1) << shift) - np.uint64(1)
    order = packed.view(np.int64)  # the positions, in place
    tied = np.flatnonzero(high_tie)
    if len(tied) == 0:
        return order
    differ = np.zeros(m - 1, dtype=bool)
    differ[tied] = values[order[tied]] != values[order[tied + 1]]
    if not differ.any():  # every tie of the high bits is a tie of the values: position order is right
        return order
    run = np.concatenate(([0], np.cumsum(~high_tie)))
    bad = np.zeros(int(run[-1]) + 1, dtype=bool)
    bad[run[1:][differ]] = True
    fix = np.flatnonzero(bad[run])
    members = order[fix]
    order[fix] = members[np.lexsort((members, values[members], run[fix]))]
    return order


def descending_from_ascending(ascending: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """Positions highest first, equal values by position, from the stable ascending order of the same
    (non-NaN) values and those values in that order — in O(n), without sorting again: the order
    reversed, then each run of equal values turned back to ascending position (reversed, a run has
    its positions descending; slot i of a run [s, e) takes the entry at s + e - 1 - i)."""
    reverse = np.asarray(ascending)[::-1]
    values = np.asarray(sorted_values)[::-1]
    n = len(reverse)
    if n < 2:
        return reverse.copy()
    starts = np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))
    ends = np.append(starts[1:], n)
    lengths = ends - starts
    if not (lengths > 1).any():
        return reverse.copy()
    return reverse[np.repeat(starts + ends - 1, lengths) - np.arange(n)]
