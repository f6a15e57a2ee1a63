"""A user's own coordinates (``sample_id, x, y``) as a run's map: checked whole before anything is kept.

Why strict: a coordinates file made for another pool, or with a sample twice, would put points where
they do not belong without any sign of it. Every sample of the run must appear exactly once, every
id must be one of the run's, and x, y must be finite numbers; the first problem found is said in one
line, naming a few of the ids.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mimic_explorer.maps.layout2d import MapError

#: columns a coordinates file must hold
COLUMNS = ("sample_id", "x", "y")


def _some(ids, limit: int = 3) -> str:
    ids = [str(i) for i in ids]
    more = f" (+{len(ids) - limit} more)" if len(ids) > limit else ""
    return ", ".join(repr(i) for i in ids[:limit]) + more


def read_coords_file(path: str | os.PathLike) -> pd.DataFrame:
    """The ``sample_id, x, y`` columns of a Parquet (or CSV) file; ``MapError`` naming what is wrong."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MapError(f"coordinates file {path} does not exist (a parquet of sample_id, x, y)")
    try:
        frame = pd.read_csv(path, dtype={"sample_id": str}) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's: said in one line
        raise MapError(f"cannot read {path} as {path.suffix.lstrip('.') or 'parquet'}: {exc}") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise MapError(f"{path.name} has no column {missing[0]!r}; a coordinates file holds sample_id, x, y")
    return frame[list(COLUMNS)]


def coords_by_row(frame: pd.DataFrame, sample_ids: np.ndarray, name: str = "the coordinates") -> np.ndarray:
    """(rows, 2) float32 in the run's row order from a ``sample_id, x, y`` frame; ``MapError`` for a duplicate,
    missing or unknown id, or a coordinate that is not a finite number."""
    ids = frame["sample_id"].astype(str)
    duplicated = ids[ids.duplicated()].unique()
    if len(duplicated):
        raise MapError(f"{name}: sample id {_some(duplicated)} appears more than once; give each sample one x, y")
    run_ids = pd.Index(np.asarray(sample_ids).astype(str))
    where = run_ids.get_indexer(ids)
    if (where < 0).any():
        raise MapError(f"{name}: {int((where < 0).sum())} sample id(s) are not in this run: {_some(ids[where < 0])}")
    if len(ids) < len(run_ids):
        absent = np.setdiff1d(run_ids.to_numpy(), ids.to_numpy())
        raise MapError(
            f"{name}: {len(run_ids) - len(ids)} of the run's {len(run_ids)} samples have no coordinates: "
            f"{_some(absent)}; every sample needs an x, y"
        )
    try:
        values = frame[["x", "y"]].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise MapError(f"{name}: x and y must be numbers") from None
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise MapError(f"{name}: x, y of {_some(ids[bad])} are not finite numbers")
    coords = np.empty((len(run_ids), 2), dtype=np.float32)
    coords[where] = values
    return coords
