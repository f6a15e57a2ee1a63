"""``manifest:FILE.csv|.parquet`` — a table of ``path``, ``label`` [, ``sample_id``, ``true_label``], or
of ``path``, ``caption`` [, ``sample_id``] for image-text pairs.

Why a manifest: real pools live in many folders, or labels come from a database; a table says exactly
which file has which label. ``path`` is relative to the manifest's folder or absolute. ``label`` and
``true_label`` are class indices or class names. Class names come from, in order: the ``class_names``
argument, a ``classes.txt`` beside the manifest, the sorted set of names used, or ``0..max`` for
integer labels. A row without a path or a label is a bad sample (recorded, not part of the pool);
a label outside the classes, an unknown class name or a duplicated id is an error: it means the
manifest and the class list disagree, and no run should start on that.

A manifest with a ``caption`` column and no ``label`` column (or only empty labels) is a pairs pool.
A row without a path or a usable caption (missing, blank, not UTF-8) is a bad sample; rows with a
label only beside rows with a caption only are an error (``data.captions.pool_kind``). A CSV that is
not UTF-8 is read byte-preserving so one bad caption costs one row; undecodable bytes in any other
column are an error naming the row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mimic_explorer.data.captions import EMPTY_CAPTION, NO_CAPTION, PAIRS, decode_caption, pool_kind
from mimic_explorer.data.errors import BadSample, DataSourceError
from mimic_explorer.data.folder import CLASS_FILE, read_class_file
from mimic_explorer.data.files import FileSource, existing_path
from mimic_explorer.data.source import _preview

REQUIRED = ("path", "label")
CAPTION = "caption"


def _has_surrogates(value: object) -> bool:
    return isinstance(value, str) and any(0xD800 <= ord(ch) <= 0xDFFF for ch in value)


def _read_csv(file: Path, spec: str) -> pd.DataFrame:
    """A CSV as strings; a non-UTF-8 file is re-read keeping its bytes as surrogates, which only the
    caption column may hold (``decode_caption`` turns them into one bad sample per row)."""
    try:
        return pd.read_csv(file, dtype=str, keep_default_na=False)
    except UnicodeDecodeError as exc:
        table = pd.read_csv(file, dtype=object, keep_default_na=False, encoding_errors="surrogateescape")
        for column in table.columns:
            if column == CAPTION:  # only pairs read it; there a bad cell is one bad row
                continue
            rows = np.flatnonzero(table[column].map(_has_surrogates).to_numpy(dtype=bool))
            if len(rows):
                raise DataSourceError(
                    f"{spec}: cannot read manifest {file}: column {column!r} is not UTF-8 text in row {rows[0] + 1} "
                    f"({len(rows)} row(s); {exc.reason})"
                ) from None
        return table


def _read_table(file: Path, spec: str) -> pd.DataFrame:
    suffix = file.suffix.lower()
    try:
        if suffix == ".csv":
            return _read_csv(file, spec)
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(file)
    except DataSourceError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is a bad manifest
        raise DataSourceError(f"{spec}: cannot read manifest {file}: {exc}") from exc
    raise DataSourceError(f"{spec}: a manifest must be a .csv or .parquet file, got {file.name}")


def _missing(series: pd.Series) -> np.ndarray:
    values = series.astype(object)
    return np.asarray(values.isna() | (values.astype(str).str.strip() == ""), dtype=bool)


def _blank_captions(series: pd.Series) -> np.ndarray:
    """``_missing`` for a caption column, which may hold bytes or undecodable (surrogate) text."""
    return np.asarray([decode_caption(None if _is_na(v) else v)[1] in (NO_CAPTION, EMPTY_CAPTION) for v in series.tolist()], dtype=bool)


def _is_na(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


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
        spec = spec or f"manifest:{Path(file).expanduser()}"
        self.file = existing_path(file, spec, "manifest", folder=False)
        table = _read_table(self.file, spec)
        absent = [c for c in REQUIRED if c not in table.columns and not (c == "label" and CAPTION in table.columns)]
        if absent:
            raise DataSourceError(
                f"{spec}: manifest is missing column(s) {', '.join(absent)} (needs path and label, or path "
                f"and caption for image-text pairs; has {', '.join(map(str, table.columns)) or 'no columns'})"
            )
        if len(table) == 0:
            raise DataSourceError(f"{spec}: manifest has no rows")
        table = table.reset_index(drop=True)
        bad_path = _missing(table["path"])
        paths = [None if miss else str(v).strip() for v, miss in zip(table["path"].tolist(), bad_path)]
        given = table["sample_id"].tolist() if "sample_id" in table.columns else [None] * len(table)
        no_id = _missing(table["sample_id"]) if "sample_id" in table.columns else np.ones(len(table), bool)
        ids = [
            str(sid).strip() if not miss else (path.replace("\\", "/") if path else f"row {k + 1}")
            for k, (sid, miss, path) in enumerate(zip(given, no_id, paths))
        ]
        labelled = ~_missing(table["label"]) if "label" in table.columns else np.zeros(len(table), bool)
        captioned = ~_blank_captions(table[CAPTION]) if CAPTION in table.columns else np.zeros(len(table), bool)
        if pool_kind(labelled, captioned, ids, spec, "label", "caption without label") == PAIRS:
            self._open_pairs(spec, table[CAPTION].tolist(), ids, paths, bad_path)
            return
        bad_label = ~labelled
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

        self._set_paths(paths)
        super().__init__(spec, ids, labels, class_names, true_labels=truth, open_errors=open_errors)

    def _set_paths(self, paths: list[str]) -> None:
        base = self.file.parent
        self.paths = np.asarray(
            [p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p)) for p in paths],
            dtype=object,
        )

    def _open_pairs(self, spec: str, cells: list, ids: list[str], paths: list[str | None], bad_path: np.ndarray) -> None:
        """Open an image-text manifest: a row needs a path and a usable caption, else it is a bad sample."""
        captions, open_errors, good = [], [], []
        for k, cell in enumerate(cells):
            text, reason = decode_caption(None if _is_na(cell) else cell)
            if bad_path[k] or text is None:
                why = "manifest row has no path" if bad_path[k] else ("manifest row has no caption" if reason in (NO_CAPTION, EMPTY_CAPTION) else reason)
                open_errors.append(BadSample(ids[k], paths[k] or "", why))
                continue
            captions.append(text)
            good.append(k)
        if not good:
            raise DataSourceError(f"{spec}: no manifest row has both a path and a usable caption")
        self._set_paths([paths[k] for k in good])
        super().__init__(spec, [ids[k] for k in good], None, [], open_errors=open_errors, captions=captions)
