"""A 2-D layout of a run's embeddings: PCA by default, UMAP on request.

Why fit on a sample and project the rest: a layout is for looking, and its shape is settled long
before every row has been seen. PCA's two axes from a seeded sample of ``FIT_ROWS`` rows (randomized
SVD) are those of the whole pool to within the sampling error, and projecting 12.8 M float16 rows in
chunks costs one pass over the memory-mapped file, never the whole matrix in memory. UMAP (the
``umap`` extra, ``umap-learn``) is fitted on a sample of at most ``UMAP_FIT_ROWS`` rows after PCA to
``UMAP_PCA_DIMS`` dimensions (its usual preprocessing), and places the other rows with its
``transform``. Rows that are not finite (a sample the end-of-run pass did not reach) are laid at NaN.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: rows the PCA is fitted on (a seeded sample beyond it)
FIT_ROWS = 200_000
#: rows UMAP is fitted on; the others are placed with ``transform``
UMAP_FIT_ROWS = 50_000
#: dimensions the vectors are reduced to by PCA before UMAP
UMAP_PCA_DIMS = 50
#: rows projected at a time
CHUNK_ROWS = 262_144

Progress = Callable[[str, int, int], None]


class MapError(ValueError):
    """A layout that cannot be made (no vectors, UMAP not installed); the message says what to do."""


def _quiet(stage: str, done: int, total: int) -> None:
    return None


def _sample_rows(n: int, cap: int, seed: int) -> np.ndarray:
    if n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _finite_rows(vectors: np.ndarray, rows: np.ndarray) -> np.ndarray:
    block = np.asarray(vectors[rows], dtype=np.float32)
    return rows[np.isfinite(block).all(axis=1)]


def pca_projection(vectors: np.ndarray, dims: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components (dims, width)) of a PCA fitted on a seeded sample of the finite rows."""
    from sklearn.decomposition import PCA

    rows = _finite_rows(vectors, _sample_rows(len(vectors), FIT_ROWS, seed))
    if len(rows) < 2:
        raise MapError("fewer than two samples have a finite embedding: there is nothing to lay out")
    sample = np.asarray(vectors[rows], dtype=np.float32)
    dims = min(dims, sample.shape[1], len(sample))
    pca = PCA(n_components=dims, svd_solver="randomized" if len(sample) > 1000 else "full", random_state=seed)
    pca.fit(sample)
    return pca.mean_.astype(np.float32), pca.components_.astype(np.float32)


def _project(vectors: np.ndarray, mean: np.ndarray, components: np.ndarray, progress: Progress, stage: str):
    n = len(vectors)
    out = np.full((n, components.shape[0]), np.nan, dtype=np.float32)
    for start in range(0, n, CHUNK_ROWS):
        block = np.asarray(vectors[start : start + CHUNK_ROWS], dtype=np.float32)
        out[start : start + len(block)] = (block - mean) @ components.T
        progress(stage, min(start + CHUNK_ROWS, n), n)
    return out


def pca_layout(vectors: np.ndarray, progress: Progress = _quiet, seed: int = 0) -> np.ndarray:
    """(rows, 2) float32: every row on the first two principal axes (fitted on a sample; NaN for non-finite rows)."""
    mean, components = pca_projection(vectors, 2, seed)
    coords = _project(vectors, mean, components, progress, "map (pca)")
    if coords.shape[1] < 2:  # one-dimensional vectors: lay them out on a line
        coords = np.concatenate([coords, np.zeros_like(coords)], axis=1)
    return coords


def umap_available() -> bool:
    """Whether ``umap-learn`` is installed (the ``umap`` extra)."""
    try:
        import umap  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


def umap_layout(vectors: np.ndarray, progress: Progress = _quiet, seed: int = 0) -> np.ndarray:
    """(rows, 2) float32: UMAP of the vectors reduced by PCA, fitted on a sample, the rest placed by ``transform``."""
    if not umap_available():
        raise MapError("--method umap needs umap-learn: pip install 'mimic-explorer[umap]' (or use --method pca)")
    import umap

    mean, components = pca_projection(vectors, UMAP_PCA_DIMS, seed)
    reduced = _project(vectors, mean, components, progress, "map (pca before umap)")
    finite = np.flatnonzero(np.isfinite(reduced).all(axis=1))
    fit = finite[_sample_rows(len(finite), UMAP_FIT_ROWS, seed)]
    reducer = umap.UMAP(n_components=2, random_state=seed, n_jobs=1)
    coords = np.full((len(vectors), 2), np.nan, dtype=np.float32)
    progress("map (umap)", 0, len(finite))
    coords[fit] = reducer.fit_transform(reduced[fit]).astype(np.float32)
    rest = np.setdiff1d(finite, fit, assume_unique=True)
    progress("map (umap)", len(fit), len(finite))
    for start in range(0, len(rest), CHUNK_ROWS):
        rows = rest[start : start + CHUNK_ROWS]
        coords[rows] = reducer.transform(reduced[rows]).astype(np.float32)
        progress("map (umap)", len(fit) + start + len(rows), len(finite))
    progress("map (umap)", len(finite), len(finite))
    return coords


def layout(vectors: np.ndarray, method: str = "pca", progress: Progress = _quiet, seed: int = 0) -> np.ndarray:
    """The 2-D layout of ``vectors`` by ``method`` (``util.choices.MAP_METHODS``).

    Parameters
    ----------
    vectors
        (rows, width) embeddings, e.g. memory-mapped float16 from the run.
    method
        ``pca`` or ``umap``.
    progress
        Called as ``progress(stage, done, total)``.
    seed
        Seeds the fitting sample (and UMAP): the same run gives the same map.

    Returns
    -------
    numpy.ndarray
        (rows, 2) float32, NaN for rows without a finite embedding.
    """
    if method == "pca":
        return pca_layout(vectors, progress, seed)
    if method == "umap":
        return umap_layout(vectors, progress, seed)
    raise MapError(f"unknown map method {method!r}; choose pca or umap")
