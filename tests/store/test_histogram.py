"""Histograms of score columns whose values reach the largest floats (a diverged run's losses)."""

import numpy as np
import pytest

from mimic_explorer.store.histogram import bin_count, histogram, robust_range


def test_values_near_the_largest_float_are_binned_not_an_overflow():
    values = np.array([-1.7e308, 0.0, 1.0, 2.0, 1.7e308] * 10)
    result = histogram(values)
    assert result.counts.sum() == len(values)  # nothing lost
    assert result.clipped == 20  # the two extremes, ten each, sit in the edge bins
    assert np.isfinite(result.edges).all()
    assert result.counts[0] == 10 and result.counts[-1] == 10


def test_an_ordinary_range_is_unchanged_by_the_guard():
    values = np.linspace(0.0, 1.0, 1000)  # up to 1,000 values the range is the full one
    result = histogram(values, bins=10)
    assert result.edges[0] == 0.0 and result.edges[-1] == 1.0
    assert result.clipped == 0


def test_the_robust_range_the_app_computes_widths_from_is_finite():
    lo, hi = robust_range(np.array([-1.7e308, 0.0, 1.7e308]))
    assert np.isfinite(hi - lo) and lo < 0 < hi


def test_bin_count_caps_a_ratio_that_overflows():
    # a tiny interquartile range beside a huge span: (hi - lo) / width is inf
    values = np.sort(np.r_[np.zeros(10), np.full(10, 1e-300), [1e308]])
    assert bin_count(values, 0.0, 1e308) == 120


@pytest.mark.parametrize("n", [0, 1, 2, 7, 999, 1001, 20_000])
def test_quantiles_by_partition_give_the_histogram_of_a_sorted_array(n):
    """Without sorted values the histogram finds its four quantiles by ``np.partition``: the same
    order statistics, so the same range, bins and counts as from the sorted array."""
    rng = np.random.default_rng(n)
    values = np.round(rng.normal(size=n), 2)  # ties
    if n > 10:
        values[[1, 5]] = [np.nan, np.inf]
    noisy = rng.random(n) < 0.3
    finite = np.sort(values[np.isfinite(values)])
    fast, sorted_ = histogram(values, noisy=noisy), histogram(values, noisy=noisy, sorted_finite=finite)
    np.testing.assert_array_equal(fast.edges, sorted_.edges)
    np.testing.assert_array_equal(fast.counts, sorted_.counts)
    np.testing.assert_array_equal(fast.noisy, sorted_.noisy)
    assert fast.clipped == sorted_.clipped
    assert robust_range(values) == robust_range(finite, presorted=True)


def test_float32_values_give_the_histogram_of_the_same_numbers_in_float64(monkeypatch):
    rng = np.random.default_rng(3)
    values = rng.gamma(2.0, 0.7, 50_001).astype(np.float32)
    values[[3, 9]] = [np.inf, np.nan]
    noisy = rng.random(len(values)) < 0.3
    monkeypatch.setattr("mimic_explorer.store.histogram.CHUNK_ROWS", 4096)  # counted in several chunks
    narrow, wide = histogram(values, noisy=noisy), histogram(values.astype(np.float64), noisy=noisy)
    np.testing.assert_array_equal(narrow.edges, wide.edges)
    np.testing.assert_array_equal(narrow.counts, wide.counts)
    np.testing.assert_array_equal(narrow.noisy, wide.noisy)
    assert narrow.clipped == wide.clipped and narrow.counts.sum() == len(values) - 2
