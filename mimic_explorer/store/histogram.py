"""Score histograms over a robust range: what the distribution plot draws, computed once per column.

Why in store/: the app's per-run index (``store.app_index``) stores each score column's histogram when
it is built, and the explorer draws the same histogram from a run without an index; one function
serves both, so the stored bars are the ones the explorer would compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class Histogram:
    """Bin edges and counts; ``noisy``: counts of the mislabeled samples alone (ground truth only)."""

    edges: np.ndarray
    counts: np.ndarray
    noisy: np.ndarray | None = None
    clipped: int = 0  # samples outside the robust range, counted in the edge bins


def _sorted_quantile(sorted_values: np.ndarray, q: float) -> float:
    """``np.quantile`` (linear) of an already sorted array, in O(1)."""
    position = q * (len(sorted_values) - 1)
    below = int(np.floor(position))
    above = min(below + 1, len(sorted_values) - 1)
    low, high = np.float64(sorted_values[below]), np.float64(sorted_values[above])  # float64 arithmetic always
    return float(low + (high - low) * (position - below))


#: a quarter of the largest float: a range within ±this has a finite width, and so do its bin edges
_LARGEST_EDGE = float(np.finfo(np.float64).max) / 4


def _representable(lo: float, hi: float) -> tuple[float, float]:
    """The range narrowed to ±a quarter of the largest float when its width would overflow to infinity
    (scores near ±1.8e308): the values beyond go to the edge bins and are counted as clipped."""
    if math.isfinite(hi - lo):
        return lo, hi
    return max(lo, -_LARGEST_EDGE), min(hi, _LARGEST_EDGE)


TAIL = 0.001


def _quantiles(finite: np.ndarray, qs: list[float], presorted: bool) -> list[float]:
    """``_sorted_quantile`` of each q, from sorted values, or — unsorted — from one ``np.partition`` at the
    order statistics the qs need (O(n), not a sort: the same values, so the same results)."""
    if presorted:
        return [_sorted_quantile(finite, q) for q in qs]
    last = len(finite) - 1
    below = [int(np.floor(q * last)) for q in qs]
    above = [min(b + 1, last) for b in below]
    finite.partition(sorted(set(below + above)))  # in place: the caller's own copy of the finite values
    picked = {i: np.float64(finite[i]) for i in set(below + above)}  # float64 arithmetic, whatever the input
    return [
        float(picked[b] + (picked[a] - picked[b]) * (q * last - b)) for q, b, a in zip(qs, below, above, strict=True)
    ]


def _range_from(finite: np.ndarray, presorted: bool, ends: list[float] | None, tail: float) -> tuple[float, float]:
    """The robust range of the finite values (``ends``: their ``tail`` and ``1 - tail`` quantiles, if known)."""
    if len(finite) == 0:
        return 0.0, 1.0
    if len(finite) > 1000:
        lo, hi = ends if ends is not None else _quantiles(finite, [tail, 1 - tail], presorted)
    elif presorted:
        lo, hi = float(finite[0]), float(finite[-1])
    else:
        lo, hi = float(finite.min()), float(finite.max())
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return _representable(float(lo), float(hi))


def robust_range(values: np.ndarray, tail: float = TAIL, presorted: bool = False) -> tuple[float, float]:
    """Score range without the most extreme 0.1 % at each end (never empty, and of a finite width, so
    that every ``hi - lo`` the app computes from it is a number)."""
    finite = values if presorted else values[np.isfinite(values)]
    return _range_from(finite, presorted, None, tail)


def _bins_from(n: int, quartiles: tuple[float, float], lo: float, hi: float) -> int:
    if n < 2:
        return 20
    width = 2 * (quartiles[1] - quartiles[0]) / n ** (1 / 3)
    if width <= 0:
        return 60
    return max(20, math.ceil(min(120.0, (hi - lo) / width)))  # capped before ceil: the ratio may overflow to inf


def bin_count(sorted_finite: np.ndarray, lo: float, hi: float) -> int:
    """Freedman–Diaconis bins over the robust range, kept between 20 and 120 so bars stay readable."""
    if len(sorted_finite) < 2:
        return 20
    return _bins_from(len(sorted_finite), tuple(_quantiles(sorted_finite, [0.25, 0.75], True)), lo, hi)


#: values counted at a time (once the bins are known, counting needs nothing else whole)
CHUNK_ROWS = 1 << 22


def histogram(
    values: np.ndarray,
    bins: int | None = None,
    noisy: np.ndarray | None = None,
    value_range: tuple[float, float] | None = None,
    sorted_finite: np.ndarray | None = None,
) -> Histogram:
    """Counts over a robust range; outliers are clipped into the edge bins rather than stretching them.
    ``sorted_finite``: the finite values already sorted (an array or ``OrderedValues``), if the caller
    has them: saves a copy and a partition. Values are counted a chunk at a time; float32 values give
    the float64 result (every quantile is computed in float64 from the same order statistics)."""
    presorted = sorted_finite is not None
    source = sorted_finite if presorted else np.asarray(values)[np.isfinite(values)]  # a copy: partitioned in place
    known = _quantiles(source, [TAIL, 1 - TAIL, 0.25, 0.75], presorted) if len(source) >= 2 else None
    if value_range:
        lo, hi = _representable(*value_range)
    else:
        lo, hi = _range_from(source, presorted, known[:2] if known else None, TAIL)
    bins = bins or _bins_from(len(source), tuple(known[2:]) if known else (0.0, 0.0), lo, hi)
    edges = np.histogram_bin_edges(np.zeros(0), bins=bins, range=(lo, hi))
    counts = np.zeros(bins, dtype=np.int64)
    noisy_counts = None if noisy is None else np.zeros(bins, dtype=np.int64)
    clipped = 0
    for start in range(0, len(values), CHUNK_ROWS):
        chunk = np.asarray(values[start : start + CHUNK_ROWS], dtype=np.float64)
        finite_mask = np.isfinite(chunk)
        finite = chunk[finite_mask]  # a copy: clipped in place
        clipped += int(((finite < lo) | (finite > hi)).sum())
        clipped_values = np.clip(finite, lo, hi, out=finite)
        counts += np.histogram(clipped_values, bins=bins, range=(lo, hi))[0]
        if noisy_counts is not None:
            noisy_counts += np.histogram(clipped_values[noisy[start : start + CHUNK_ROWS][finite_mask]], bins=edges)[0]
    return Histogram(edges, counts, noisy_counts, clipped)


def histogram_record(hist: Histogram) -> dict:
    """A histogram as JSON-ready lists (what the app index's manifest stores)."""
    return {
        "edges": hist.edges.tolist(),
        "counts": hist.counts.tolist(),
        "clipped": hist.clipped,
        "noisy": None if hist.noisy is None else hist.noisy.tolist(),
    }


def histogram_from_record(record: dict) -> Histogram:
    """The ``Histogram`` a ``histogram_record`` describes."""
    noisy = None if record["noisy"] is None else np.asarray(record["noisy"], dtype=np.int64)
    return Histogram(
        np.asarray(record["edges"], dtype=np.float64),
        np.asarray(record["counts"], dtype=np.int64),
        noisy,
        int(record["clipped"]),
    )


def class_bin_counts(scores: np.ndarray, codes: np.ndarray, n_classes: int, edges: np.ndarray) -> np.ndarray:
    """(classes × bins) counts of the finite ``scores`` in the bins of ``edges`` (values beyond them
    counted in the edge bins), by class code: the Per class tab's small multiples. A chunk at a time,
    so the memory is a chunk's whatever the pool size; the app index stores them for its sorted columns."""
    lo, hi, bins = edges[0], edges[-1], len(edges) - 1
    table = np.zeros(n_classes * bins, dtype=np.int64)
    for start in range(0, len(scores), CHUNK_ROWS):
        values = np.asarray(scores[start : start + CHUNK_ROWS], dtype=np.float64)
        finite = np.isfinite(values)
        index = np.clip(((np.clip(values[finite], lo, hi) - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
        chunk_codes = np.asarray(codes[start : start + CHUNK_ROWS])[finite].astype(np.int64)
        table += np.bincount(chunk_codes * bins + index, minlength=n_classes * bins)
    return table.reshape(n_classes, bins)
