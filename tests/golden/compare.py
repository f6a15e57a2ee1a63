"""Tolerant comparison of a run's snapshot with its golden files, and a diff a person can read.

Floats agree when ``|actual - expected| <= ATOL + RTOL * |expected|`` (NaN equals NaN, an infinity only
itself): a refactor may reorder float32 arithmetic, which moves the last bits, but not more. Ints,
strings and bools must be equal. Every difference is one line naming where it is (a table's column and
the rows it differs in, or a meta.json key path) and by how much.
"""

from __future__ import annotations

import math

import numpy as np

from tests.golden.tables import Table, float_value

RTOL = 1e-5
ATOL = 1e-7
#: rows named in a difference line before "…"
SHOWN_ROWS = 5


def floats_agree(expected: float, actual: float) -> bool:
    """Whether two floats agree within the tolerance (NaN == NaN)."""
    if math.isnan(expected) or math.isnan(actual):
        return math.isnan(expected) and math.isnan(actual)
    if math.isinf(expected) or math.isinf(actual):
        return expected == actual
    return abs(actual - expected) <= ATOL + RTOL * abs(expected)


def compare_tables(name: str, expected: Table, actual: Table, keys: list[str]) -> list[str]:
    """Differences between two tables whose rows are matched by the ``keys`` columns.

    Parameters
    ----------
    name
        What the table is (``samples``, ``scores``), the first word of every line.
    expected, actual
        The golden table and the new run's.
    keys
        Columns that identify a row (e.g. ``sample_id``; ``epoch, sample_id`` for score rows); those
        present in both tables are used, the row's position when none is.

    Returns
    -------
    list of str
        One line per difference; empty when the tables agree.
    """
    lines = []
    missing = [c for c in expected.columns if c not in actual.columns]
    extra = [c for c in actual.columns if c not in expected.columns]
    if missing:
        lines.append(f"{name}: columns missing from the new run: {missing}")
    if extra:
        lines.append(f"{name}: columns the golden file lacks: {extra}")
    keys = [k for k in keys if k in expected.columns and k in actual.columns]
    expected_rows, actual_rows = _index_rows(expected, keys), _index_rows(actual, keys)
    gone = [k for k in expected_rows if k not in actual_rows]
    new = [k for k in actual_rows if k not in expected_rows]
    if len(expected.rows) != len(actual.rows):
        lines.append(f"{name}: {len(actual.rows)} rows, expected {len(expected.rows)}")
    if gone:
        lines.append(f"{name}: {len(gone)} expected rows missing ({_keys_text(keys, gone)})")
    if new:
        lines.append(f"{name}: {len(new)} rows not in the golden file ({_keys_text(keys, new)})")
    shared = [k for k in expected_rows if k in actual_rows]
    for column in expected.columns:
        if column not in actual.columns:
            continue
        kind, new_kind = expected.kind(column), actual.kind(column)
        if kind != new_kind:
            lines.append(f"{name}.{column}: kind {new_kind}, expected {kind}")
            continue
        e_at, a_at = expected.columns.index(column), actual.columns.index(column)
        pairs = [(k, expected_rows[k][e_at], actual_rows[k][a_at]) for k in shared]
        line = (_float_column if kind == "float" else _exact_column)(f"{name}.{column}", pairs, keys)
        if line:
            lines.append(line)
    return lines


def _index_rows(table: Table, keys: list[str]) -> dict[tuple, list]:
    if not keys:
        return {(i,): row for i, row in enumerate(table.rows)}
    at = [table.columns.index(k) for k in keys]
    indexed: dict[tuple, list] = {}
    for i, row in enumerate(table.rows):
        key = tuple(row[j] for j in at)
        indexed[key if key not in indexed else (*key, f"#{i}")] = row  # a repeated key stays visible
    return indexed


def _keys_text(keys: list[str], rows: list[tuple]) -> str:
    names = keys or ["row"]
    shown = ["(" + ", ".join(f"{n}={v!r}" for n, v in zip(names, key)) + ")" for key in rows[:SHOWN_ROWS]]
    return ", ".join(shown) + (", …" if len(rows) > SHOWN_ROWS else "")


def _float_column(where: str, pairs: list[tuple], keys: list[str]) -> str | None:
    bad = [(k, e, a) for k, e, a in pairs if not floats_agree(float_value(e), float_value(a))]
    if not bad:
        return None
    e = np.array([float_value(x) for _, x, _ in bad])
    a = np.array([float_value(x) for _, _, x in bad])
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.abs(a - e)
        rel = diff / np.abs(e)
    finite = np.isfinite(diff)
    worst = (
        f"max abs diff {np.max(diff[finite]):.3g}, max rel diff {np.nanmax(np.where(finite, rel, np.nan)):.3g}"
        if finite.any()
        else "NaN/inf where the other side is finite"
    )
    shown = "; ".join(f"{_keys_text(keys, [k])}: expected {x!r} got {y!r}" for k, x, y in bad[:SHOWN_ROWS])
    more = " …" if len(bad) > SHOWN_ROWS else ""
    return f"{where}: {len(bad)} of {len(pairs)} rows differ ({worst}); {shown}{more}"


def _exact_column(where: str, pairs: list[tuple], keys: list[str]) -> str | None:
    bad = [(k, e, a) for k, e, a in pairs if e != a or type(e) is not type(a)]
    if not bad:
        return None
    shown = "; ".join(f"{_keys_text(keys, [k])}: expected {x!r} got {y!r}" for k, x, y in bad[:SHOWN_ROWS])
    more = " …" if len(bad) > SHOWN_ROWS else ""
    return f"{where}: {len(bad)} of {len(pairs)} rows differ; {shown}{more}"


def compare_values(expected, actual, path: str = "meta") -> list[str]:
    """Differences between two JSON values (meta.json), one line per differing key path.

    Numbers compare within the tolerance when either is a float; a bool only equals a bool.
    """
    if isinstance(expected, dict) and isinstance(actual, dict):
        lines = [
            f"{path}.{k}: missing from the new run (expected {_short(expected[k])})"
            for k in expected
            if k not in actual
        ]
        lines += [f"{path}.{k}: not in the golden file (got {_short(actual[k])})" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                lines += compare_values(expected[k], actual[k], f"{path}.{k}")
        return lines
    if isinstance(expected, list) and isinstance(actual, list):
        lines = [] if len(expected) == len(actual) else [f"{path}: {len(actual)} items, expected {len(expected)}"]
        for i, (e, a) in enumerate(zip(expected, actual)):
            lines += compare_values(e, a, f"{path}[{i}]")
        return lines
    if _is_number(expected) and _is_number(actual):
        if isinstance(expected, float) or isinstance(actual, float):
            ok = floats_agree(float(expected), float(actual))
        else:
            ok = expected == actual
        if ok:
            return []
        rel = abs(actual - expected) / abs(expected) if expected else math.inf
        return [
            f"{path}: expected {expected!r} got {actual!r} (abs diff {abs(actual - expected):.3g}, rel diff {rel:.3g})"
        ]
    if type(expected) is type(actual) and expected == actual:
        return []
    return [f"{path}: expected {_short(expected)} got {_short(actual)}"]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _short(value, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
