"""``OrderedValues`` behaves as the sorted float64 array it stands for: reads, slices and searches."""

from __future__ import annotations

import numpy as np
import pytest

from mimic_explorer.store.ordered_values import OrderedValues
from mimic_explorer.store.stable_order import stable_argsort


def _column(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(size=n), 1)  # ties
    if n > 12:
        values[rng.choice(n, n // 8, replace=False)] = np.nan
        values[[1, 2, 9]] = [np.inf, -np.inf, np.inf]
        values[[3, 4]] = [-0.0, 0.0]
    return values


@pytest.mark.parametrize("n", [0, 1, 2, 13, 500])
def test_a_view_equals_the_sorted_array_and_searches_as_numpy_does(n):
    values = _column(n, n)
    order = stable_argsort(values).astype(np.int32)
    expected = values[order]
    view = OrderedValues(values, order)
    assert len(view) == n and view.shape == (n,) and view.dtype == np.float64
    np.testing.assert_array_equal(np.asarray(view), expected)
    probes = np.array(
        [np.nan, np.inf, -np.inf, 0.0, -0.0, 0.1, -3.0, 5.0, *np.unique(values[np.isfinite(values)])[:20]]
    )
    for side in ("left", "right"):
        np.testing.assert_array_equal(
            np.searchsorted(view, probes, side=side), np.searchsorted(expected, probes, side=side)
        )
        for probe in probes:
            assert np.searchsorted(view, probe, side=side) == np.searchsorted(expected, probe, side=side)
    valid = int((~np.isnan(values)).sum())
    part = view[1:valid]  # a slice is a view again, searched the same way
    np.testing.assert_array_equal(np.asarray(part), expected[1:valid])
    for probe in probes:
        assert part.searchsorted(probe) == np.searchsorted(expected[1:valid], probe)
    if n:
        assert view[0] == expected[0] and (np.isnan(view[-1]) if np.isnan(expected[-1]) else view[-1] == expected[-1])
        np.testing.assert_array_equal(view[np.array([0, n - 1])], expected[[0, n - 1]])
        np.testing.assert_array_equal(np.asarray(view[::-1]), expected[::-1])


def test_a_sorter_or_a_wrong_side_is_refused():
    view = OrderedValues(np.arange(3.0), np.arange(3))
    with pytest.raises(TypeError, match="sorter"):
        view.searchsorted(1.0, sorter=np.arange(3))
    with pytest.raises(ValueError, match="side"):
        view.searchsorted(1.0, side="middle")
