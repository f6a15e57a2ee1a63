"""``manifest:FILE.csv|.parquet`` — a table of ``path``, ``label`` [, ``sample_id``, ``true_label``].

Why a manifest: real pools live in many folders, or labels come from a database; a table says exactly
which file has which label. ``path`` is relative to the manifest's folder or absolute. ``label`` and
``true_label`` are class indices or class names. Class names come from, in order: the ``class_names``
argument, a ``classes.txt`` beside the manifest, the sorted set of names used, or ``0..max`` for
integer labels. A row without a path or a label is a bad sample (recorded, not part of the pool);
a label outside the classes, an unknown class name or a duplicated id is an error: it means the
manifest and the class list disagree, and no run should start on that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mimic_explorer.data.errors import BadSample, DataSourceError
from mimic_explorer.data.folder import CLASS_FILE, read_class_file
from mimic_explorer.data.files import FileSource
from mimic_explorer.data.source import _preview

REQUIRED = ("path", "label")


def _read_table(file: Path, spec: str) -> pd.DataFrame:
    suffix = file.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(file, dtype=str, keep_default_na=False)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(file)
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad manifest
        raise DataSourceError(f"{spec}: cannot read manifest {file}: {exc}") from exc
    raise DataSourceError(f"{spec}: a manifest must be a .csv or .parquet file, got {file.name}")


def _missing(series: pd.Series) -> np.ndarray:
    values = series.astype(object)
    return np.asarray(values.isna() | (values.astype(str).str.strip() == ""), dtype=bool)


def _as_ints(values: pd.Series) -> np.ndarray | None:
    """Integer labels when every value is an integer (``3``, ``"3"``, ``3.0``), else None (names)."""
    if pd.api.types.is_bool_dtype(values):
        return None
    numeric = pd.to_numeric(values, errors="coerce") if not pd.api.types.is_numeric_dtype(values) else values
    numeric = np.asarray(numeric, dtype=np.float64)
    if np.isnan(numeric).any() or not np.all(np.isfinite(numeric)):
        return None
    if not np.all(numeric == np.round(numeric)):
        return None
    return numeric.astype(np.int64)


def _to_indices(values: pd.Series, class_names: list[str], column: str, spec: str) -> np.ndarray:
    ints = _as_ints(values)
    if ints is not None:
        return ints  # range-checked by Source
    names = values.astype(str).str.strip()
    lookup = {name: k for k, name in enumerate(class_names)}
    unknown = sorted(set(names.tolist()) - set(lookup))
    if unknown:
        raise DataSourceError(
            f"{spec}: {column} class name(s) not in the class list: {_preview(unknown)}; "
            f"classes: {_preview(class_names, 12)}"
        )
    return names.map(lookup).to_numpy(dtype=np.int64)


class ManifestSource(FileSource):
    kind = "manifest"

    def __init__(self, file: str | os.PathLike, spec: str | None = None, class_names: Sequence[str] | None = None):
        file = Path(file).expanduser()
        spec = spec or f"manifest:{file}"
        if not file.exists():
            raise DataSourceError(f"{spec}: manifest {file} does not exist")
        if not file.is_file():
            raise DataSourceError(f"{spec}: manifest {file} is not a file")
        self.file = file.resolve()
        table = _read_table(self.file, spec)
        absent = [c for c in REQUIRED if c not in table.columns]
        if absent:
            raise DataSourceError(
                f"{spec}: manifest is missing column(s) {', '.join(absent)} "
                f"(needs path and label; has {', '.join(map(str, table.columns)) or 'no columns'})"
            )
        if len(table) == 0:
            raise DataSourceError(f"{spec}: manifest has no rows")
        table = table.reset_index(drop=True)
        bad_path, bad_label = _missing(table["path"]), _missing(table["label"])
        paths = [None if miss else str(v).strip() for v, miss in zip(table["path"].tolist(), bad_path)]
        given = table["sample_id"].tolist() if "sample_id" in table.columns else [None] * len(table)
        no_id = _missing(table["sample_id"]) if "sample_id" in table.columns else np.ones(len(table), bool)
        ids = [
            str(sid).strip() if not miss else (path.replace("\\", "/") if path else f"row {k + 1}")
            for k, (sid, miss, path) in enumerate(zip(given, no_id, paths))
        ]
        open_errors = [
            BadSample(ids[k], paths[k] or "", "manifest row has no " + ("path" if bad_path[k] else "label"))
            for k in np.flatnonzero(bad_path | bad_label)
        ]
        keep = ~(bad_path | bad_label)
        rows = np.flatnonzero(keep)
        table = table[keep].reset_index(drop=True)
        ids = [ids[k] for k in rows]
        paths = [paths[k] for k in rows]
        if len(table) == 0:
            raise DataSourceError(f"{spec}: no manifest row has both a path and a label")

        has_truth = "true_label" in table.columns
        if has_truth and _missing(table["true_label"]).any():
            raise DataSourceError(f"{spec}: true_label is empty in {int(_missing(table['true_label']).sum())} row(s); give it for every row or drop the column")
        label_columns = [table["label"]] + ([table["true_label"]] if has_truth else [])

        if class_names is None and (self.file.parent / CLASS_FILE).is_file():
            class_names = read_class_file(self.file.parent / CLASS_FILE)
        if class_names is None:
            named = [col for col in label_columns if _as_ints(col) is None]
            if named:
                class_names = sorted(set().union(*(set(col.astype(str).str.strip()) for col in named)))
            else:
                top = max(int(_as_ints(col).max()) for col in label_columns)
                class_names = [str(k) for k in range(max(top, 0) + 1)]
        class_names = list(class_names)
        labels = _to_indices(table["label"], class_names, "label", spec)
        truth = _to_indices(table["true_label"], class_names, "true_label", spec) if has_truth else None

        base = self.file.parent
        self.paths = np.asarray(
            [p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p)) for p in paths],
            dtype=object,
        )
        super().__init__(spec, ids, labels, class_names, true_labels=truth, open_errors=open_errors)
