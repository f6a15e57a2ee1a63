"""Nearest neighbours of a sample in embedding space ("more like this"), by cosine similarity.

Exact on small pools: the memory-mapped float16 vectors are read in chunks, widened to float32 and
multiplied by the query, with every row's norm computed once and kept — no index to build, and
exact answers. Past ``EXACT_MAX_ROWS`` a query of the exact search reads the whole matrix (about a
second per million 512-d rows here), so large pools use an HNSW index from hnswlib (the ``ann``
extra) when one has been built (``build_hnsw_index``, by ``mimic-explorer map``): measured against
faiss-cpu in benchmarks/RESULTS.md ("Nearest neighbours"), hnswlib gave the same recall at a
similar query time, is one small wheel without BLAS or OpenMP to pin, and saves its index as one
file. Without it, large pools fall back to the exact search (slower, never wrong).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

#: rows above which a built ANN index is preferred to the exact search
EXACT_MAX_ROWS = 200_000
#: rows read at a time by the exact search
CHUNK_ROWS = 131_072
#: HNSW parameters (hnswlib): links per node, candidate lists while building and searching
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 100, 64

Progress = Callable[[str, int, int], None]


def _quiet(stage: str, done: int, total: int) -> None:
    return None


class ExactNeighbours:
    """Exact cosine neighbours over (rows, width) vectors (memory-mapped is fine), chunk by chunk."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors
        self._norms: np.ndarray | None = None

    @property
    def norms(self) -> np.ndarray:
        """Every row's Euclidean norm (computed once; 0 for non-finite rows, which are never returned)."""
        if self._norms is None:
            norms = np.zeros(len(self.vectors), dtype=np.float32)
            for start in range(0, len(self.vectors), CHUNK_ROWS):
                block = np.asarray(self.vectors[start : start + CHUNK_ROWS], dtype=np.float32)
                found = np.linalg.norm(block, axis=1)
                norms[start : start + len(block)] = np.where(np.isfinite(found), found, 0.0)
            self._norms = norms
        return self._norms

    def query(self, vector: np.ndarray, k: int, exclude: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosine similarities) of the ``k`` rows most like ``vector``, best first (``exclude`` left out)."""
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        scale = float(np.linalg.norm(query))
        if not np.isfinite(scale) or scale == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        query = query / scale
        norms = self.norms
        keep = k + (exclude is not None)
        best_rows, best_sims = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        for start in range(0, len(self.vectors), CHUNK_ROWS):
            block = np.asarray(self.vectors[start : start + CHUNK_ROWS], dtype=np.float32)
            with np.errstate(invalid="ignore", divide="ignore"):
                sims = (block @ query) / norms[start : start + len(block)]
            sims = np.where(np.isfinite(sims), sims, -np.inf)
            top = np.argpartition(-sims, min(keep, len(sims) - 1))[:keep] if len(sims) > keep else np.arange(len(sims))
            best_rows = np.concatenate([best_rows, start + top])
            best_sims = np.concatenate([best_sims, sims[top].astype(np.float32)])
        if exclude is not None:
            mask = best_rows != exclude
            best_rows, best_sims = best_rows[mask], best_sims[mask]
        order = np.lexsort((best_rows, -best_sims))[:k]
        order = order[np.isfinite(best_sims[order])]
        return best_rows[order].astype(np.int64), best_sims[order]

    def query_row(self, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows most like row ``row`` (itself left out)."""
        return self.query(np.asarray(self.vectors[int(row)], dtype=np.float32), k, exclude=int(row))


def hnswlib_available() -> bool:
    """Whether hnswlib is installed (the ``ann`` extra)."""
    try:
        import hnswlib  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


def build_hnsw_index(vectors: np.ndarray, path: str | Path, progress: Progress = _quiet, threads: int = 0) -> Path:
    """Build an HNSW index (cosine) of every finite row and save it to ``path`` (atomically, by rename)."""
    import os

    import hnswlib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
    index.init_index(max_elements=len(vectors), ef_construction=HNSW_EF_CONSTRUCTION, M=HNSW_M, random_seed=0)
    index.set_num_threads(threads or os.cpu_count() or 1)
    for start in range(0, len(vectors), CHUNK_ROWS):
        block = np.asarray(vectors[start : start + CHUNK_ROWS], dtype=np.float32)
        rows = np.arange(start, start + len(block))
        finite = np.isfinite(block).all(axis=1) & (np.abs(block).sum(axis=1) > 0)
        if finite.any():
            index.add_items(block[finite], rows[finite])
        progress("neighbour index", start + len(block), len(vectors))
    tmp = path.with_name(f".{path.name}.tmp")
    index.save_index(str(tmp))
    os.replace(tmp, path)
    return path


class HnswNeighbours:
    """Approximate cosine neighbours from a saved hnswlib index of the same vectors."""

    def __init__(self, vectors: np.ndarray, path: str | Path):
        import hnswlib

        self.vectors = vectors
        self.index = hnswlib.Index(space="cosine", dim=vectors.shape[1])
        self.index.load_index(str(path), max_elements=len(vectors))
        self.index.set_ef(HNSW_EF_SEARCH)

    def query_row(self, row: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows most like row ``row`` (itself left out), best first."""
        vector = np.asarray(self.vectors[int(row)], dtype=np.float32).reshape(1, -1)
        if not np.isfinite(vector).all():
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        count = min(k + 1, self.index.get_current_count())
        labels, distances = self.index.knn_query(vector, k=count)
        rows, sims = labels[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32)
        keep = rows != int(row)
        return rows[keep][:k], sims[keep][:k]


def neighbours_for(vectors: np.ndarray, index_path: str | Path | None = None):
    """The search to use: the saved HNSW index when the pool is large and one exists (and hnswlib imports),
    else the exact search."""
    if len(vectors) > EXACT_MAX_ROWS and index_path is not None and Path(index_path).is_file() and hnswlib_available():
        return HnswNeighbours(vectors, index_path)
    return ExactNeighbours(vectors)
