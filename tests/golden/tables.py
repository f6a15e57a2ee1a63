"""Tables as the golden files hold them: column names, each column's kind (int, float, bool, str) and
the rows as JSON values, one row a line, so a changed value shows up as a changed line in a diff.

Both sides of a comparison go through this form — the expected file is read into it, the new run's
frame is converted into it — so a value is compared the same way whichever side it came from. NaN is
written as ``null`` in a float column (standard JSON); infinities as the strings ``"inf"`` / ``"-inf"``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

KINDS = ("int", "float", "bool", "str")


@dataclass
class Table:
    """Rows of JSON values under named columns, each column of one kind."""

    columns: list[str]
    kinds: list[str]
    rows: list[list]

    def column(self, name: str) -> list:
        """The values of one column, in row order."""
        at = self.columns.index(name)
        return [row[at] for row in self.rows]

    def kind(self, name: str) -> str:
        return self.kinds[self.columns.index(name)]


def column_kind(series: pd.Series) -> str:
    """The kind a column is compared as: exact for int, bool and str, within a tolerance for float."""
    if pd.api.types.is_bool_dtype(series):
        return "bool"
    if pd.api.types.is_integer_dtype(series):
        return "int"
    if pd.api.types.is_float_dtype(series):
        return "float"
    return "str"


def _encode(value, kind: str):
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    if kind == "float":
        value = float(value)
        return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if kind == "int":
        return int(value)
    if kind == "bool":
        return bool(value)
    return str(value)


def table_from_frame(frame: pd.DataFrame) -> Table:
    """The frame's columns (in its order) with their kinds and its rows as JSON values."""
    columns = [str(c) for c in frame.columns]
    kinds = [column_kind(frame[c]) for c in frame.columns]
    values = [[_encode(v, kind) for v in frame[c].tolist()] for c, kind in zip(frame.columns, kinds)]
    return Table(columns, kinds, [list(row) for row in zip(*values)] if columns else [])


def float_value(value) -> float:
    """A float column's JSON value as a float (null -> NaN, "inf"/"-inf" -> infinities)."""
    if value is None:
        return math.nan
    return float(value)


def write_table(table: Table, path: Path) -> None:
    """Write ``table`` as JSON: the header on the first lines, then one row a line."""
    rows = ",\n".join("  " + json.dumps(row, ensure_ascii=False, allow_nan=False) for row in table.rows)
    text = (
        (
            "{\n"
            f' "columns": {json.dumps(table.columns)},\n'
            f' "kinds": {json.dumps(table.kinds)},\n'
            f' "rows": [\n{rows}\n ]\n'
            "}\n"
        )
        if table.rows
        else json.dumps({"columns": table.columns, "kinds": table.kinds, "rows": []}, indent=1) + "\n"
    )
    path.write_text(text, encoding="utf-8")


def read_table(path: Path) -> Table:
    """A table written by ``write_table``."""
    data = json.loads(path.read_text(encoding="utf-8"))
    unknown = sorted(set(data["kinds"]) - set(KINDS))
    if unknown:
        raise ValueError(f"{path}: unknown column kinds {unknown}")
    return Table(list(data["columns"]), list(data["kinds"]), [list(r) for r in data["rows"]])
