"""A run's map, as the app, ``mimic-explorer map`` and notebooks ask for it.

- ``embedding(layout, source, rows)``: the run's vectors, memory-mapped, or ``NoEmbeddings`` saying
  which runs have them and how to get one;
- ``ensure_map``: the layout kept in the run (``maps/SOURCE-METHOD``), made once on first use —
  ``make_map`` makes it again on request;
- ``import_coords``: a user's own ``sample_id, x, y`` kept as the map ``coords``;
- ``current_map``: the map to show (the user's coordinates when given, else the newest made one).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mimic_explorer.maps.coords import coords_by_row, read_coords_file
from mimic_explorer.maps.layout2d import MapError, layout
from mimic_explorer.maps.neighbours import EXACT_MAX_ROWS, build_hnsw_index, hnswlib_available, neighbours_for
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.maps import read_map, save_map
from mimic_explorer.store.run_arrays import read_row_array

#: the map name of a user's own coordinates
USER_COORDS = "coords"
HOW_TO_GET = (
    "embeddings are kept by runs with a reference: Grad-Mimic train runs (train --reference …) and score "
    "runs (score --model … --reference …, from this version on), not by plain runs"
)

Progress = Callable[[str, int, int], None]


def _quiet(stage: str, done: int, total: int) -> None:
    return None


class NoEmbeddings(MapError):
    """The run has no embeddings (of the asked source); the message says which runs have them."""


def _runs_with_embeddings(root: Path, limit: int = 3) -> list[str]:
    """Sibling run directories that hold embeddings (what a person may have meant), at most ``limit``."""
    parent = root.resolve().parent
    found = []
    try:
        for child in sorted(parent.iterdir()):
            if child.resolve() != root.resolve() and RunLayout(child).embedding_sources():
                found.append(str(child))
                if len(found) == limit:
                    break
    except OSError:
        return []
    return found


def embedding(run_layout: RunLayout, source: str | None = None, rows: int | None = None) -> tuple[str, np.ndarray]:
    """(source, (rows, width) float16 vectors memory-mapped) of the run; ``source`` None: ``image`` when the run has
    it, else its only one. ``NoEmbeddings`` names which runs have them and how to get one."""
    sources = run_layout.embedding_sources()
    if not sources:
        siblings = _runs_with_embeddings(run_layout.root)
        beside = f"; beside it, these have: {', '.join(siblings)}" if siblings else ""
        raise NoEmbeddings(f"run {run_layout.root} has no embeddings to map: {HOW_TO_GET}{beside}")
    if source is None:
        source = "image" if "image" in sources else sources[0]
    if source not in sources:
        raise NoEmbeddings(f"run {run_layout.root} has no {source} embeddings (it has: {', '.join(sources)})")
    return source, read_row_array(run_layout.embedding(source), rows)


def map_name(source: str, method: str) -> str:
    """The name a made layout is kept under (``image-pca``)."""
    return f"{source}-{method}"


def make_map(
    run_layout: RunLayout,
    rows: int,
    source: str | None = None,
    method: str = "pca",
    progress: Progress = _quiet,
    *,
    neighbours: bool | None = None,
) -> tuple[str, np.ndarray]:
    """Lay out the run's embeddings (again) and keep the layout; returns (name, coordinates).

    ``neighbours``: also build the ANN index for "more like this" (None: when the pool is larger than
    ``EXACT_MAX_ROWS`` and hnswlib is installed)."""
    source, vectors = embedding(run_layout, source, rows)
    coords = layout(vectors, method, progress)
    name = map_name(source, method)
    save_map(run_layout, name, coords, {"method": method, "source": source})
    if neighbours is None:
        neighbours = len(vectors) > EXACT_MAX_ROWS and hnswlib_available()
    if neighbours:
        build_hnsw_index(vectors, run_layout.neighbour_index(source), progress)
    return name, coords


def ensure_map(
    run_layout: RunLayout, rows: int, source: str | None = None, method: str = "pca", progress: Progress = _quiet
) -> tuple[str, np.ndarray]:
    """The kept layout of ``source`` by ``method``, made (and kept) on first use."""
    source, _ = embedding(run_layout, source, rows)
    name = map_name(source, method)
    if name in run_layout.map_names():
        coords, _ = read_map(run_layout, name, rows)
        return name, coords
    return make_map(run_layout, rows, source, method, progress, neighbours=False)


def import_coords(run_layout: RunLayout, sample_ids: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    """Check a ``sample_id, x, y`` file against the run's samples and keep it as the map ``coords``."""
    frame = read_coords_file(path)
    coords = coords_by_row(frame, sample_ids, Path(path).name)
    save_map(run_layout, USER_COORDS, coords, {"method": "user", "source": str(Path(path).expanduser().resolve())})
    return coords


def current_map(run_layout: RunLayout, rows: int, progress: Progress = _quiet) -> tuple[str, np.ndarray]:
    """The map to show: the user's coordinates when the run has them, else the newest kept layout, else the PCA of
    the run's default embedding (made now)."""
    names = run_layout.map_names()
    if USER_COORDS in names:
        return USER_COORDS, read_map(run_layout, USER_COORDS, rows)[0]
    if names:
        newest = max(names, key=lambda n: run_layout.map_info(n).stat().st_mtime)
        return newest, read_map(run_layout, newest, rows)[0]
    return ensure_map(run_layout, rows, progress=progress)


def neighbour_search(run_layout: RunLayout, source: str | None = None, rows: int | None = None):
    """The "more like this" search over the run's ``source`` embeddings (``maps.neighbours.neighbours_for``)."""
    source, vectors = embedding(run_layout, source, rows)
    return neighbours_for(vectors, run_layout.neighbour_index(source))
