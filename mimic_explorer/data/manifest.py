"""``manifest:FILE.csv|.parquet`` — a table of ``path``, ``label`` [, ``sample_id``, ``true_label``], or
of ``path``, ``caption`` [, ``sample_id``] for image-text pairs.

Why a manifest: real pools live in many folders, or labels come from a database; a table says exactly
which file has which label. ``path`` is relative to the manifest's folder or absolute. ``label`` and
``true_label`` are class indices or class names, parsed strictly (``data.labels``): a column with any
integer holds integers, and one of its cells that is not an integer (``nan``, ``inf``, ``3.5``) is a
bad sample naming the row and the value, so no other label changes its number. Class names come
from, in order: the ``class_names`` argument, a ``classes.txt`` beside the manifest, the sorted set
of names used, or ``0..max`` for integer labels, where a range far beyond the pool's size is an
error (``data.labels.implied_class_limit``). A row without a path or a label is a bad sample
(recorded, not part of the pool); a label outside the classes, an unknown class name, a
``true_label`` that is empty or not an integer, or a duplicated id is an error naming the row: it
means the manifest and the class list disagree, and no run should start on that.

A manifest with a ``caption`` column and no ``label`` column (or only empty labels) is a pairs pool.
A row without a path or a usable caption (missing, blank, not UTF-8) is a bad sample; rows with a
label only beside rows with a caption only are an error (``data.captions.pool_kind``). A CSV that is
not UTF-8 is read byte-preserving so one bad caption costs one row; undecodable bytes in any other
column are an error naming the row.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mimic_explorer.data.captions import EMPTY_CAPTION, NO_CAPTION, PAIRS, decode_caption, pool_kind
from mimic_explorer.data.errors import BadSample, DataSourceError
from mimic_explorer.data.files import FileSource, existing_path
from mimic_explorer.data.folder import CLASS_FILE, read_class_file
from mimic_explorer.data.labels import (
    cell_text,
    implied_classes_message,
    mixed_beyond_repair,
    parse_column,
    too_many_implied,
)
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
    except Exception as exc:  # any parser failure is a bad manifest
        raise DataSourceError(f"{spec}: cannot read manifest {file}: {exc}") from exc
    raise DataSourceError(f"{spec}: a manifest must be a .csv or .parquet file, got {file.name}")


def _missing(series: pd.Series) -> np.ndarray:
    values = series.astype(object)
    return np.asarray(values.isna() | (values.astype(str).str.strip() == ""), dtype=bool)


def _blank_captions(series: pd.Series) -> np.ndarray:
    """``_missing`` for a caption column, which may hold bytes or undecodable (surrogate) text."""
    return np.asarray(
        [decode_caption(None if _is_na(v) else v)[1] in (NO_CAPTION, EMPTY_CAPTION) for v in series.tolist()],
        dtype=bool,
    )


def _is_na(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _numeric(series: pd.Series) -> bool:
    """A numeric (not boolean) column type: its cells are numbers, never class names."""
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def _quoted(value: object) -> str:
    return repr(cell_text(value))


@dataclass
class _LabelColumn:
    """One label column over the kept rows: its cells, their integers (``data.labels``), where each
    row sits in the table and its sample id (for messages that name the row)."""

    name: str
    integer: bool
    cells: list
    parsed: list[int | None]
    rows: np.ndarray  # 0-based table rows of the kept samples
    ids: list[str]

    def indices(self, spec: str, class_names: list[str], declared_from: str) -> np.ndarray:
        """Class indices of the cells; a label outside the classes or an unknown name is an error
        naming the first such row (the manifest and the class list disagree: no run should start)."""
        count = len(class_names)
        if self.integer:
            outside = [j for j, value in enumerate(self.parsed) if not 0 <= value < count]
            if outside:
                j = outside[0]
                raise DataSourceError(
                    f"{spec}: {self.name} outside the class range 0..{count - 1} in row {self.rows[j] + 1} "
                    f"(sample {self.ids[j]!r}: {self.name}={cell_text(self.cells[j])}; {len(outside)} row(s) in all); "
                    f"classes: {_preview(class_names, 12)} ({declared_from})"
                )
            return np.asarray(self.parsed, dtype=np.int64)
        names = [cell_text(c, limit=10**6) for c in self.cells]
        lookup = {name: k for k, name in enumerate(class_names)}
        unknown = sorted(set(names) - set(lookup))
        if unknown:
            first = next(j for j, name in enumerate(names) if name not in lookup)
            raise DataSourceError(
                f"{spec}: {self.name} class name(s) not in the class list: {_preview(unknown)} (first in row "
                f"{self.rows[first] + 1}); classes: {_preview(class_names, 12)} ({declared_from})"
            )
        return np.asarray([lookup[name] for name in names], dtype=np.int64)


class ManifestSource(FileSource):
    """``manifest:FILE.csv|.parquet``: a table naming each sample's file and label (or caption), read strictly (see the
    module). Raises ``DataSourceError`` naming the row and the value for a table no run should start on."""

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
        paths = [None if miss else str(v).strip() for v, miss in zip(table["path"].tolist(), bad_path, strict=True)]
        given = table["sample_id"].tolist() if "sample_id" in table.columns else [None] * len(table)
        no_id = _missing(table["sample_id"]) if "sample_id" in table.columns else np.ones(len(table), bool)
        ids = [
            str(sid).strip() if not miss else (path.replace("\\", "/") if path else f"row {k + 1}")
            for k, (sid, miss, path) in enumerate(zip(given, no_id, paths, strict=True))
        ]
        labelled = ~_missing(table["label"]) if "label" in table.columns else np.zeros(len(table), bool)
        captioned = ~_blank_captions(table[CAPTION]) if CAPTION in table.columns else np.zeros(len(table), bool)
        if pool_kind(labelled, captioned, ids, spec, "label", "caption without label") == PAIRS:
            self._open_pairs(spec, table[CAPTION].tolist(), ids, paths, bad_path)
            return
        bad_label = ~labelled
        label_cells = table["label"].tolist() if "label" in table.columns else [None] * len(table)
        integer, parsed = self._parse_labels(spec, table, label_cells, labelled)
        not_integer = labelled & np.asarray([integer and p is None for p in parsed], dtype=bool)
        open_errors = [
            BadSample(ids[k], paths[k] or "", self._bad_row_reason(k, bad_path, bad_label, label_cells))
            for k in np.flatnonzero(bad_path | bad_label | not_integer)
        ]
        keep = ~(bad_path | bad_label | not_integer)
        rows = np.flatnonzero(keep)
        ids = [ids[k] for k in rows]
        paths = [paths[k] for k in rows]
        if len(rows) == 0:
            raise DataSourceError(
                f"{spec}: no manifest row has both a path and a usable label "
                f"({_preview(b.reason for b in open_errors)})"
            )

        columns = [_LabelColumn("label", integer, [label_cells[k] for k in rows], [parsed[k] for k in rows], rows, ids)]
        if "true_label" in table.columns:
            columns.append(self._parse_truth(spec, table["true_label"], rows, ids))
        declared_from = "the class list given"
        if class_names is None and (self.file.parent / CLASS_FILE).is_file():
            class_names = read_class_file(self.file.parent / CLASS_FILE)
            declared_from = str(self.file.parent / CLASS_FILE)
        if class_names is None:
            class_names, declared_from = self._undeclared_classes(spec, columns), "classes made from the labels"
        class_names = list(class_names)
        labels, *truth = [column.indices(spec, class_names, declared_from) for column in columns]

        self._set_paths(paths)
        super().__init__(
            spec, ids, labels, class_names, true_labels=truth[0] if truth else None, open_errors=open_errors
        )

    @staticmethod
    def _parse_labels(
        spec: str, table: pd.DataFrame, cells: list, labelled: np.ndarray
    ) -> tuple[bool, list[int | None]]:
        """(the label column holds integers, each row's integer or None) over the rows with a label
        (``data.labels``); a column mixed beyond repair is an error naming a row of each kind."""
        rows = np.flatnonzero(labelled)
        integer, found = parse_column([cells[k] for k in rows], "label" in table.columns and _numeric(table["label"]))
        parsed: list[int | None] = [None] * len(cells)
        for k, value in zip(rows, found, strict=True):
            parsed[k] = value
        if integer and mixed_beyond_repair(found):
            odd = [k for k, value in zip(rows, found, strict=True) if value is None]
            good = [k for k, value in zip(rows, found, strict=True) if value is not None]
            example = f"row {good[0] + 1}: {_quoted(cells[good[0]])}" if good else "none"
            raise DataSourceError(
                f"{spec}: the label column mixes integer class indices ({example}) with {len(odd)} of {len(rows)} "
                f"value(s) that are not (row {odd[0] + 1}: {_quoted(cells[odd[0]])}); give class indices or class "
                "names, not both"
            )
        return integer, parsed

    @staticmethod
    def _bad_row_reason(k: int, bad_path: np.ndarray, bad_label: np.ndarray, cells: list) -> str:
        if bad_path[k]:
            return "manifest row has no path"
        if bad_label[k]:
            return "manifest row has no label"
        return (
            f"label {_quoted(cells[k])} in row {k + 1} is not an integer class index (the label column holds integers)"
        )

    @staticmethod
    def _parse_truth(spec: str, series: pd.Series, rows: np.ndarray, ids: list[str]) -> _LabelColumn:
        """The ``true_label`` cells of the kept rows: ground truth must be whole, so an empty cell or a
        non-integer in an integer column is an error naming the row, not a bad sample."""
        missing = _missing(series)[rows]
        if missing.any():
            raise DataSourceError(
                f"{spec}: true_label is empty in {int(missing.sum())} row(s) (first: row {rows[missing][0] + 1}); give "
                "it for every row or drop the column"
            )
        cells = series.tolist()
        cells = [cells[k] for k in rows]
        integer, parsed = parse_column(cells, _numeric(series))
        odd = [j for j, value in enumerate(parsed) if value is None]
        if integer and odd:
            raise DataSourceError(
                f"{spec}: true_label {_quoted(cells[odd[0]])} in row {rows[odd[0]] + 1} is not an integer class index "
                f"(the true_label column holds integers; {len(odd)} such row(s))"
            )
        return _LabelColumn("true_label", integer, cells, parsed, rows, ids)

    @staticmethod
    def _undeclared_classes(spec: str, columns: list[_LabelColumn]) -> list[str]:
        """Class names when none are declared: the sorted names a names column uses, else ``0..max``
        of the integer labels, refused when that range is far beyond the pool (``data.labels``)."""
        named = [column for column in columns if not column.integer]
        if named:
            return sorted(set().union(*({cell_text(c, limit=10**6) for c in column.cells} for column in named)))
        column, j = max(
            ((column, j) for column in columns for j in range(len(column.cells))), key=lambda cj: cj[0].parsed[cj[1]]
        )
        top, samples = column.parsed[j], len(column.cells)
        if too_many_implied(top, samples):
            where = f"in row {column.rows[j] + 1} (sample {column.ids[j]!r})" + (
                "" if column.name == "label" else " of true_label"
            )
            raise DataSourceError(
                f"{spec}: "
                + implied_classes_message(
                    _quoted(column.cells[j]), where, top, samples, "in classes.txt beside the manifest"
                )
            )
        return [str(k) for k in range(max(top, 0) + 1)]

    def _set_paths(self, paths: list[str]) -> None:
        base = self.file.parent
        self.paths = np.asarray(
            [p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p)) for p in paths],
            dtype=object,
        )

    def _open_pairs(
        self, spec: str, cells: list, ids: list[str], paths: list[str | None], bad_path: np.ndarray
    ) -> None:
        """Open an image-text manifest: a row needs a path and a usable caption, else it is a bad sample."""
        captions, open_errors, good = [], [], []
        for k, cell in enumerate(cells):
            text, reason = decode_caption(None if _is_na(cell) else cell)
            if bad_path[k] or text is None:
                why = (
                    "manifest row has no path"
                    if bad_path[k]
                    else ("manifest row has no caption" if reason in (NO_CAPTION, EMPTY_CAPTION) else reason)
                )
                open_errors.append(BadSample(ids[k], paths[k] or "", why))
                continue
            captions.append(text)
            good.append(k)
        if not good:
            raise DataSourceError(f"{spec}: no manifest row has both a path and a usable caption")
        self._set_paths([paths[k] for k in good])
        super().__init__(spec, [ids[k] for k in good], None, [], open_errors=open_errors, captions=captions)
