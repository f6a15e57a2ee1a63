"""``stable_argsort`` equals numpy's stable argsort on every kind of float column."""

from __future__ import annotations

import numpy as np
import pytest

from mimic_explorer.store.stable_order import stable_argsort


def _columns():
    rng = np.random.default_rng(7)
    n = 5000
    yield "normal", rng.normal(size=n)
    yield "rounded (many ties)", rng.normal(size=n).round(1)
    specials = rng.normal(size=n)
    specials[rng.choice(n, 300, replace=False)] = rng.choice([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0], 300)
    yield "nan, infinities, signed zeros", specials
    near = 1.0 + rng.integers(0, 64, n) * np.finfo(np.float64).eps  # equal high bits, different values
    yield "near-equal values", np.where(rng.random(n) < 0.5, near, -near)
    yield "all nan", np.full(n, np.nan)
    yield "constant", np.full(n, 2.5)
    yield "float32", rng.normal(size=n).astype(np.float32)
    yield "subnormal and huge", rng.choice([5e-324, -5e-324, 1e-310, 1.7976931348623157e308, -1e308, 1e-5], n)


@pytest.mark.parametrize("name, values", list(_columns()), ids=[name for name, _ in _columns()])
def test_equals_numpy_stable_argsort(name, values):
    expected = np.argsort(values, kind="stable")
    np.testing.assert_array_equal(stable_argsort(values, min_packed=1), expected)


def test_large_column_and_integer_fallback():
    values = np.random.default_rng(1).normal(size=300_000).round(4)
    np.testing.assert_array_equal(stable_argsort(values), np.argsort(values, kind="stable"))
    labels = np.arange(10)[::-1]
    np.testing.assert_array_equal(stable_argsort(labels), np.argsort(labels, kind="stable"))
