"""A run's 2-D layouts on disk: ``maps/NAME.npy`` (rows, 2) float32 by samples row, and ``maps/NAME.json``.

Why in the run and not in the app index: the index is rebuilt whenever samples.parquet changes and
holds only what is cheap to rebuild, while a UMAP of a large pool takes minutes and a user's own
coordinates cannot be rebuilt at all. The coordinates are written first and the description last,
each atomically, so a layout is listed (``RunLayout.map_names``) only once both are whole.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import numpy as np

from mimic_explorer.store.atomic import write_json
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.run_arrays import read_row_array, write_row_array


def save_map(layout: RunLayout, name: str, coords: np.ndarray, info: dict[str, Any]) -> None:
    """Keep a layout under ``name`` (coordinates, then its description with ``rows`` and ``created``)."""
    coords = np.asarray(coords, dtype=np.float32)
    if coords.ndim != 2 or coords.shape[1] != 2:
        raise ValueError(f"a map holds (rows, 2) coordinates, got shape {coords.shape}")
    layout.map_info(name).unlink(missing_ok=True)  # unlisted while its coordinates change
    write_row_array(layout.map_coords(name), coords)
    created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    write_json(layout.map_info(name), {**info, "name": name, "rows": len(coords), "created": created})


def read_map(layout: RunLayout, name: str, rows: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """(coordinates memory-mapped, description) of the layout ``name``; ``ValueError`` when it is missing or
    does not have ``rows`` rows."""
    if name not in layout.map_names():
        raise ValueError(f"the run has no map {name!r} (maps: {', '.join(layout.map_names()) or 'none'})")
    info = json.loads(layout.map_info(name).read_text(encoding="utf-8"))
    return read_row_array(layout.map_coords(name), rows), info
