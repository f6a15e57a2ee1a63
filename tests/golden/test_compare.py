"""The golden comparison itself: a comparator that let every difference through would make every golden
case pass, so its tolerance, its exact kinds and its diff lines are checked here on small tables."""

from __future__ import annotations

import math

import pandas as pd

from tests.golden.compare import (
    ATOL,
    RTOL,
    compare_tables,
    compare_values,
    floats_agree,
)
from tests.golden.tables import Table, read_table, table_from_frame, write_table


def _frame(**changes) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "sample_id": ["a", "b", "c"],
            "label": [0, 1, 2],
            "keep": [True, False, True],
            "proj": [0.5, -1.25, math.nan],
            "caption": ["x", None, "z"],
        }
    )
    for column, (row, value) in changes.items():
        frame.loc[row, column] = value
    return frame


def _diff(**changes) -> list[str]:
    return compare_tables("samples", table_from_frame(_frame()), table_from_frame(_frame(**changes)), ["sample_id"])


def test_floats_agree_within_the_tolerance_and_nan_equals_nan():
    assert floats_agree(1.0, 1.0 + 0.9 * (ATOL + RTOL))
    assert not floats_agree(1.0, 1.0 + 1.1 * (ATOL + RTOL))
    assert floats_agree(0.0, 0.9 * ATOL) and not floats_agree(0.0, 1.1 * ATOL)
    assert floats_agree(math.nan, math.nan) and not floats_agree(math.nan, 0.0) and not floats_agree(0.0, math.nan)
    assert floats_agree(math.inf, math.inf) and not floats_agree(math.inf, -math.inf)


def test_equal_tables_agree_and_a_float_within_tolerance_passes():
    assert _diff() == []
    assert _diff(proj=(0, 0.5 * (1 + 0.5 * RTOL))) == []


def test_a_float_past_the_tolerance_names_column_row_and_size():
    (line,) = _diff(proj=(1, -1.25 * (1 + 10 * RTOL)))
    assert (
        line.startswith("samples.proj: 1 of 3 rows differ")
        and "sample_id='b'" in line
        and "max rel diff 0.0001" in line
    )


def test_ints_bools_strings_and_nan_must_match_exactly():
    assert _diff(label=(0, 1))[0].startswith("samples.label: 1 of 3 rows differ")
    assert _diff(keep=(1, True))[0].startswith("samples.keep: 1 of 3 rows differ")
    assert _diff(caption=(1, "y"))[0].startswith("samples.caption: 1 of 3 rows differ")
    assert _diff(proj=(2, 0.0))[0].startswith("samples.proj: 1 of 3 rows differ")


def test_missing_columns_rows_and_changed_kinds_are_reported():
    expected = table_from_frame(_frame())
    fewer = table_from_frame(_frame().drop(columns="caption").iloc[:2])
    lines = compare_tables("samples", expected, fewer, ["sample_id"])
    assert "samples: columns missing from the new run: ['caption']" in lines
    assert "samples: 2 rows, expected 3" in lines and any("(sample_id='c')" in line for line in lines)
    as_float = table_from_frame(_frame().astype({"label": float}))
    assert compare_tables("samples", expected, as_float, ["sample_id"]) == ["samples.label: kind float, expected int"]


def test_a_table_survives_its_json_file(tmp_path):
    table = table_from_frame(_frame().astype({"label": "Int64"}))
    write_table(table, tmp_path / "t.json")
    back = read_table(tmp_path / "t.json")
    assert back == Table(table.columns, table.kinds, table.rows)
    assert back.column("proj")[2] is None and back.column("caption")[1] is None  # NaN and a missing string: null
    assert compare_tables("samples", back, table, ["sample_id"]) == []


def test_meta_values_compare_by_key_path():
    expected = {"summary": {"auroc": 0.75, "samples": 30, "flag": True}, "warnings": ["a"]}
    assert (
        compare_values(expected, {"summary": {"auroc": 0.75 + 1e-9, "samples": 30, "flag": True}, "warnings": ["a"]})
        == []
    )
    lines = compare_values(
        expected, {"summary": {"auroc": 0.8, "samples": 31, "flag": 1}, "warnings": ["a", "b"], "new": 1}
    )
    assert any(line.startswith("meta.summary.auroc: expected 0.75 got 0.8") for line in lines)
    assert "meta.summary.samples: expected 30 got 31 (abs diff 1, rel diff 0.0333)" in lines
    assert "meta.summary.flag: expected True got 1" in lines  # a bool is not a number
    assert "meta.warnings: 2 items, expected 1" in lines and "meta.new: not in the golden file (got 1)" in lines
