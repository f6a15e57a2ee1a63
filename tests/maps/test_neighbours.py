""" "More like this": the exact chunked search equals brute force, the HNSW index (hnswlib) finds
nearly the same neighbours, and the search is chosen by pool size and what is installed."""

from __future__ import annotations

import numpy as np
import pytest

from mimic_explorer.maps import neighbours
from mimic_explorer.maps.neighbours import ExactNeighbours, neighbours_for


def _vectors(n: int = 3000, dim: int = 24) -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.standard_normal((40, dim))[rng.integers(0, 40, n)] + 0.5 * rng.standard_normal((n, dim))).astype(
        np.float16
    )


def _brute(vectors: np.ndarray, row: int, k: int) -> np.ndarray:
    data = vectors.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        sims = data @ data[row] / (np.linalg.norm(data, axis=1) * np.linalg.norm(data[row]))
    sims = np.where(np.isfinite(sims), sims, -np.inf)
    sims[row] = -np.inf
    return np.argsort(-sims, kind="stable")[:k]


def test_the_exact_search_equals_brute_force_across_chunks(monkeypatch):
    monkeypatch.setattr(neighbours, "CHUNK_ROWS", 700)
    vectors = _vectors()
    vectors[5] = np.nan
    search = ExactNeighbours(vectors)
    for row in (0, 1234, 2999):
        rows, sims = search.query_row(row, 10)
        assert row not in rows and 5 not in rows and np.all(np.diff(sims) <= 0)
        np.testing.assert_array_equal(rows, _brute(vectors, row, 10))
    assert len(search.query_row(5, 10)[0]) == 0  # a sample without a vector has no neighbours


def test_an_hnsw_index_finds_nearly_the_exact_neighbours(tmp_path, monkeypatch):
    pytest.importorskip("hnswlib")
    vectors = _vectors()
    path = neighbours.build_hnsw_index(vectors, tmp_path / "image.hnsw")
    monkeypatch.setattr(neighbours, "EXACT_MAX_ROWS", 1000)  # this pool counts as large
    search = neighbours_for(vectors, path)
    assert isinstance(search, neighbours.HnswNeighbours)
    recall = np.mean([len(set(search.query_row(r, 10)[0]) & set(_brute(vectors, r, 10))) / 10 for r in range(50)])
    assert recall > 0.9
    monkeypatch.setattr(neighbours, "hnswlib_available", lambda: False)
    assert isinstance(neighbours_for(vectors, path), ExactNeighbours)  # never wrong without it
