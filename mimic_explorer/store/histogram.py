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
    return float(sorted_values[below] + (sorted_values[above] - sorted_values[below]) * (position - below))


#: a quarter of the largest float: a range within ±this has a finite width, and so do its bin edges
_LARGEST_EDGE = float(np.finfo(np.float64).max) / 4


def _representable(lo: float, hi: float) -> tuple[float, float]:
    """The range narrowed to ±a quarter of the largest float when its width would overflow to infinity
    (scores near ±1.8e308): the values beyond go to the edge bins and are counted as clipped."""
    if math.isfinite(hi - lo):
        return lo, hi
    return max(lo, -_LARGEST_EDGE), min(hi, _LARGEST_EDGE)


def robust_range(values: np.ndarray, tail: float = 0.001, presorted: bool = False) -> tuple[float, float]:
    """Score range without the most extreme 0.1 % at each end (never empty, and of a finite width, so
    that every ``hi - lo`` the app computes from it is a number)."""
    finite = values if presorted else np.sort(values[np.isfinite(values)])
    if len(finite) == 0:
        return 0.0, 1.0
    if len(finite) > 1000:
        lo, hi = _sorted_quantile(finite, tail), _sorted_quantile(finite, 1 - tail)
    else:
        lo, hi = float(finite[0]), float(finite[-1])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return _representable(float(lo), float(hi))


def bin_count(sorted_finite: np.ndarray, lo: float, hi: float) -> int:
    """Freedman–Diaconis bins over the robust range, kept between 20 and 120 so bars stay readable."""
    if len(sorted_finite) < 2:
        return 20
    iqr = _sorted_quantile(sorted_finite, 0.75) - _sorted_quantile(sorted_finite, 0.25)
    width = 2 * iqr / len(sorted_finite) ** (1 / 3)
    if width <= 0:
        return 60
    return max(20, math.ceil(min(120.0, (hi - lo) / width)))  # capped before ceil: the ratio may overflow to inf


def histogram(
    values: np.ndarray,
    bins: int | None = None,
    noisy: np.ndarray | None = None,
    value_range: tuple[float, float] | None = None,
    sorted_finite: np.ndarray | None = None,
) -> Histogram:
    """Counts over a robust range; outliers are clipped into the edge bins rather than stretching them.
    ``sorted_finite``: the finite values already sorted, if the caller has them (saves a sort)."""
    finite_mask = np.isfinite(values)
    finite = values[finite_mask]
    if sorted_finite is None:
        sorted_finite = np.sort(finite)
    lo, hi = _representable(*value_range) if value_range else robust_range(sorted_finite, presorted=True)
    bins = bins or bin_count(sorted_finite, lo, hi)
    clipped = int(((finite < lo) | (finite > hi)).sum())
    clipped_values = np.clip(finite, lo, hi, out=finite)  # finite is a copy: clipped in place
    counts, edges = np.histogram(clipped_values, bins=bins, range=(lo, hi))
    noisy_counts = None
    if noisy is not None:
        noisy_counts, _ = np.histogram(clipped_values[noisy[finite_mask]], bins=edges)
    return Histogram(edges, counts, noisy_counts, clipped)
