"""A rule's values are checked by type and range, whether they come from Python, the command line or a
spec file: every bad value is one FilterError naming it, never a TypeError or a silent misreading."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.filters.rules import MAX_CLAUSES, CompoundRule, FilterError, FilterRule, all_of, apply_rule


@pytest.fixture
def samples():
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(60)],
            "source": "t",
            "label": np.arange(60) % 3,
            "mimic_score": rng.normal(size=60),
            "keep": rng.random(60) > 0.3,
            "caption": [f"a photo {i}" for i in range(60)],
        }
    )


@pytest.mark.parametrize(
    "data, message",
    [
        ({"kind": "threshold", "value": [1]}, r"threshold value must be a number, got \[1\]"),
        ({"kind": "threshold", "value": "abc"}, r"threshold value must be a number, got 'abc'"),
        ({"kind": "quantile", "value": "0.3"}, r"quantile value must be a number, got '0.3'"),
        ({"kind": "top_fraction", "value": True}, r"top fraction value must be a number, got True"),
        ({"kind": "threshold", "value": {"x": 1}}, r"must be a number"),
        ({"kind": "keep_count", "value": float("inf")}, r"keep-count must be a whole number ≥ 0, got inf"),
        ({"kind": "keep_count", "value": 2.5}, r"keep-count must be a whole number"),
        ({"kind": "quantile", "value": 0.3, "per_class": "false"}, r"per_class is true or false, got 'false'"),
        ({"kind": "quantile", "value": 0.3, "per_class": 1}, r"per_class is true or false, got 1"),
        ({"kind": "bogus", "value": 1}, r"unknown rule 'bogus'; choose one of ensemble, threshold"),
        ({"kind": ["threshold"], "value": 1}, r"unknown rule \['threshold'\]"),
        ({"kind": "threshold", "value": 1, "column": 7}, r"column is a column name .*got 7"),
        ({"kind": "threshold", "value": 1, "column": "x" * 1000}, r"column is a column name .*…"),
        (
            {"kind": "threshold", "value": 1, "class_overrides": {"two": 0.5}},
            r"class override's class is a class index, got 'two'",
        ),
        (
            {"kind": "threshold", "value": 1, "class_overrides": {"2": "high"}},
            r"override of class 2 must be a number, got 'high'",
        ),
        (
            {"kind": "threshold", "value": 1, "class_overrides": [1, 2]},
            r"class_overrides maps a class to its threshold",
        ),
        ({"kind": "threshold", "value": 1, "valeu": 2}, r"unknown field 'valeu' in a rule"),
        ({"value": 1}, r"a rule has no 'kind'"),
        ("threshold", r"a rule is an object"),
    ],
)
def test_a_rule_read_from_json_refuses_each_bad_value_by_name(data, message):
    with pytest.raises(FilterError, match=message):
        FilterRule.from_dict(data)


def test_a_rule_read_from_json_keeps_good_values_and_their_defaults():
    assert FilterRule.from_dict({"kind": "quantile", "value": 0.3}) == FilterRule("quantile", 0.3)
    assert FilterRule.from_dict({"kind": "quantile", "value": 0.3, "per_class": True}).per_class is True
    assert FilterRule.from_dict({"kind": "quantile", "value": 0.3, "per_class": False}).per_class is False
    rule = FilterRule.from_dict({"kind": "threshold", "value": 1, "class_overrides": {"2": 0.5, "-1": 3}})
    assert rule.class_overrides == {2: 0.5, -1: 3.0}
    assert FilterRule.from_dict({"kind": "ensemble", "value": None}) == FilterRule("ensemble")


def test_a_rule_built_in_python_is_checked_the_same_way(samples):
    for rule, message in [
        (FilterRule("threshold", "0.5"), "must be a number"),
        (FilterRule("quantile", 0.2, per_class="yes"), "per_class"),
        (FilterRule("threshold", 0.5, class_overrides={"1": 0.2}), "class index"),
    ]:
        with pytest.raises(FilterError, match=message):
            apply_rule(samples, rule)
    # NumPy numbers are numbers, and a spec records them as plain JSON numbers
    rule = FilterRule("keep_count", np.int64(10))
    assert apply_rule(samples, rule).kept == 10 and type(rule.to_dict()["value"]) is int


@pytest.mark.parametrize("column", ["sample_id", "caption", "source"])
def test_a_rule_on_a_text_column_names_the_numeric_ones(samples, column):
    with pytest.raises(
        FilterError,
        match=rf"column '{column}' holds text values, not scores; a rule cuts a numeric column: "
        r"label, mimic_score, keep",
    ):
        apply_rule(samples, FilterRule("threshold", 1.0, column))


def test_more_than_the_cap_of_rules_is_refused_with_the_reason(samples):
    clauses = [FilterRule("threshold", float(i) / 1000) for i in range(MAX_CLAUSES + 1)]
    with pytest.raises(FilterError, match=rf"{MAX_CLAUSES + 1} rules in one filter; at most {MAX_CLAUSES} .*own mask"):
        all_of(clauses)
    with pytest.raises(FilterError, match=rf"at most {MAX_CLAUSES}"):
        apply_rule(samples, CompoundRule(clauses))
    assert apply_rule(samples, all_of(clauses[:MAX_CLAUSES])).kept > 0


def test_a_bad_clause_of_an_and_is_named_by_its_place(samples):
    with pytest.raises(FilterError, match=r"rule 2: the quantile value must be a number, got 'x'"):
        apply_rule(samples, CompoundRule([FilterRule("threshold", 0.0), FilterRule("quantile", "x")]))
