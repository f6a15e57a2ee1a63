"""The filter model (no panel): a spec read into the model gives the same spec back, hash included;
edits imply the rule a person means; its live counts follow every change and equal filters.apply_rule."""

from __future__ import annotations

import datetime as real_datetime
import json
from types import SimpleNamespace

import numpy as np
import pytest

from mimic_explorer.filters import spec as filter_spec
from mimic_explorer.filters.rules import CompoundRule, FilterError, FilterRule, all_of, apply_rule
from mimic_explorer.filters.spec import build_spec
from mimic_explorer.store.filter_files import file_facts, save_to_run
from mimic_explorer.store.reader import open_run
from mimic_explorer.ui.filter_model import FilterModel
from mimic_explorer.ui.live import LiveCounts
from mimic_explorer.ui.state import ExplorerState
from tests.ui_helpers import synthetic_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return open_run(synthetic_run(tmp_path_factory.mktemp("filter-model") / "run", n=800, classes=4, epochs=2))


@pytest.fixture
def frozen_clock(monkeypatch):
    """Specs carry their creation time; freeze it so a spec written twice is equal to the letter."""
    fixed = real_datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=real_datetime.UTC)
    clock = SimpleNamespace(now=lambda tz=None: fixed)
    monkeypatch.setattr(filter_spec, "_dt", SimpleNamespace(datetime=clock, timezone=real_datetime.timezone))


RULES = [
    FilterRule("threshold", 0.42, class_overrides={1: 0.7, 3: 0.1}),
    FilterRule("threshold", 1.5, "reference_loss"),
    FilterRule("quantile", 0.3),
    FilterRule("quantile", 0.25, "proj_mean", per_class=True),
    FilterRule("keep_count", 123),
    FilterRule("keep_count", 500, per_class=True),
    FilterRule("ensemble"),
]


def _saved_and_read_back(run, tmp_path, rule) -> tuple[dict, FilterModel, list[str]]:
    """Save ``rule`` into a copy of the run, read the spec into a model, check it writes the same spec."""
    import shutil

    run_dir = shutil.copytree(run.path, tmp_path / "run")
    _, _, out, spec_path = save_to_run(run_dir, run.samples, run.meta, rule, "json")
    saved = json.loads(spec_path.read_text())
    assert saved.pop("keep_list") == file_facts(out)  # the file's attestation, outside the hash
    spec = saved
    columns = ExplorerState(run).score_columns
    model = FilterModel.from_spec(spec, columns)
    assert model.to_rule() == rule and len(model.more) == len(rule.clauses) - 1
    again = model.to_spec(run.meta, apply_rule(run.samples, model.to_rule()), spec["format"])
    assert again == spec and again["spec_hash"] == spec["spec_hash"]
    return spec, model, columns


@pytest.mark.parametrize("rule", RULES, ids=lambda r: f"{r.kind}-{r.column}-{r.per_class}")
def test_a_saved_spec_read_into_the_model_gives_the_same_spec_back(run, tmp_path, frozen_clock, rule):
    spec, _, columns = _saved_and_read_back(run, tmp_path, rule)
    other = FilterModel(columns=columns, rule="keep_count", keep_count=7, per_class=True, threshold=-3.0)
    other.set_from_spec(spec)
    assert other.to_spec(run.meta, apply_rule(run.samples, other.to_rule()), spec["format"]) == spec


def test_the_spec_is_what_build_spec_writes(run, frozen_clock):
    model = FilterModel(columns=["mimic_score", "reference_loss"], rule="quantile", quantile=0.4, per_class=True)
    result = apply_rule(run.samples, model.to_rule())
    assert model.to_spec(run.meta, result, "csv") == build_spec(
        run.meta, FilterRule("quantile", 0.4, per_class=True), result, "csv"
    )


def test_bad_specs_and_unknown_columns_are_refused_with_the_cause():
    with pytest.raises(FilterError, match="no 'rule'"):
        FilterModel.from_spec({"kept": 3})
    with pytest.raises(FilterError, match="quantile must be in"):
        FilterModel.from_spec({"rule": {"kind": "quantile", "value": 3}})
    with pytest.raises(FilterError, match="has no 'kind'"):
        FilterModel.from_spec({"rule": {"value": 3}})
    model = FilterModel(columns=["mimic_score"])
    with pytest.raises(FilterError, match="no score column 'grand'"):
        model.set_rule(FilterRule("threshold", 0.5, "grand"))
    model.set_rule(FilterRule("ensemble", None, "grand"))  # the ensemble filter ignores the column
    assert (model.rule, model.column) == ("ensemble", "mimic_score")


def test_a_spec_read_into_the_model_is_verified(run, frozen_clock):
    rule = FilterRule("quantile", 0.25, "proj_mean", per_class=True)
    spec = json.loads(json.dumps(build_spec(run.meta, rule, apply_rule(run.samples, rule), "csv")))
    model = FilterModel.from_spec(spec, ExplorerState(run).score_columns)
    assert model.to_rule() == rule
    for edit, message in [
        ({"per_class": False}, "per_class is false but the hashed spec says true"),
        ({"value": 0.5}, "content hashes to"),
        ({"per_class": "false"}, "per_class is true or false, got 'false'"),
        ({"column": "grand"}, "content hashes to"),
    ]:
        edited = {**spec, "rule": {**spec["rule"], **edit}}
        with pytest.raises(FilterError, match=message):
            FilterModel.from_spec(edited)
        with pytest.raises(FilterError, match=message):
            model.set_from_spec(edited)
        assert model.to_rule() == rule  # a refused spec changes nothing


def test_edits_imply_the_rule_a_person_means():
    model = FilterModel(rule="quantile", threshold=0.1, resolved_cut=0.33)
    model.threshold = 0.6  # giving a threshold means "by value", at that threshold
    assert (model.rule, model.threshold) == ("threshold", 0.6)
    model.param.update(rule="keep_count", resolved_cut=0.25)
    model.rule = "threshold"  # switching to "by value" starts where the previous rule cut
    assert model.threshold == 0.25
    model.param.update(rule="quantile", resolved_cut=0.5)
    model.param.update(rule="threshold", threshold=0.8)  # unless a threshold is given with it
    assert model.threshold == 0.8
    model.rule = "ensemble"
    model.class_overrides = {2: 0.9}  # a per-class threshold is a threshold rule too
    assert model.rule == "threshold" and model.to_rule() == FilterRule("threshold", 0.8, class_overrides={2: 0.9})
    model.rule = "quantile"
    model.class_overrides = {}  # clearing overrides implies nothing
    assert model.rule == "quantile"


def test_live_counts_follow_the_model_and_equal_apply_rule(run):
    state = ExplorerState(run)
    notes = []
    model = FilterModel(columns=state.score_columns, threshold=0.5)
    live = LiveCounts(state, model, lambda text, kind: notes.append((text, kind)))
    changes = [
        dict(threshold=0.3),
        dict(rule="quantile", quantile=0.2, per_class=True),
        dict(keep_count=77, rule="keep_count"),
        dict(rule="ensemble"),
        dict(rule="threshold", class_overrides={0: 0.9}),
        dict(column="proj_mean"),
    ]
    for change in changes:
        model.param.update(**change)
        expected = apply_rule(run.samples, model.to_rule())
        assert live.counts.kept == expected.kept and live.counts.kept_per_class == expected.kept_per_class, change
    assert live.column == state.column == "proj_mean" and notes == []
    # a new column: the old threshold and overrides mean nothing there, so "by value" restarts at its default
    assert model.class_overrides == {} and model.threshold == pytest.approx(state.default_threshold())


def test_a_rule_on_another_column_is_taken_as_given(run):
    state = ExplorerState(run)
    model = FilterModel(columns=state.score_columns)
    live = LiveCounts(state, model, lambda text, kind: None)
    rule = FilterRule("threshold", 2.0, "reference_loss", class_overrides={1: 3.0})
    model.set_rule(rule)  # column, threshold and overrides change in one update: no reset in between
    assert model.to_rule() == rule and state.column == "reference_loss"
    assert live.counts.kept == apply_rule(run.samples, rule).kept


def test_a_rule_that_cannot_be_counted_is_said(run):
    state = ExplorerState(run)
    notes = []
    model = FilterModel(columns=state.score_columns)
    live = LiveCounts(state, model, lambda text, kind: notes.append(kind))
    before = live.counts
    state.counter.ensemble = None  # a run without an ensemble filter
    model.rule = "ensemble"
    assert notes == ["danger"] and live.counts is before
    assert np.isfinite(model.resolved_cut)


# ---------------------------------------------------------------------------------------- clauses (AND)

COMPOUNDS = [
    all_of([FilterRule("threshold", 0.42), FilterRule("top_fraction", 0.3, "reference_loss")]),
    all_of(
        [
            FilterRule("quantile", 0.15, per_class=True),
            FilterRule("keep_count", 500, "proj_mean"),
            FilterRule("threshold", 1.5, "reference_loss", class_overrides={2: 2.0}),
        ]
    ),
    all_of([FilterRule("ensemble"), FilterRule("top_fraction", 0.5, "grand", per_class=True)]),
]


@pytest.mark.parametrize("rule", COMPOUNDS, ids=lambda r: "+".join(c.kind for c in r.clauses))
def test_a_compound_spec_read_into_the_model_gives_the_same_spec_back(run, tmp_path, frozen_clock, rule):
    spec, _, columns = _saved_and_read_back(run, tmp_path, rule)
    other = FilterModel(columns=columns, rule="keep_count", keep_count=7)
    other.add_clause("votes", rule="threshold", threshold=0.2)  # replaced, not kept beside the spec's clauses
    other.set_from_spec(spec)
    assert other.to_spec(run.meta, apply_rule(run.samples, other.to_rule()), spec["format"]) == spec
    other.set_rule(FilterRule("quantile", 0.2))  # back to one clause: a single-rule spec again
    assert other.more == [] and other.to_rule() == FilterRule("quantile", 0.2)


def test_clauses_are_added_edited_and_removed_and_the_counts_follow(run):
    state = ExplorerState(run)
    model = FilterModel(columns=state.score_columns, column="mimic_score", threshold=0.5)
    live = LiveCounts(state, model, lambda text, kind: None)
    single = live.counts.kept
    clause = model.add_clause()  # the first column no clause uses, keeping everything until moved
    assert clause.column != "mimic_score" and (clause.rule, clause.quantile) == ("quantile", 0.0)
    assert live.counts.kept == single and isinstance(model.to_rule(), CompoundRule)
    clause.param.update(column="reference_loss", rule="top_fraction", top_fraction=0.4)
    expected = apply_rule(run.samples, model.to_rule())
    assert live.counts.kept == expected.kept < single and live.counts.clauses[1].kept == 320
    second = model.add_clause("proj_mean", rule="keep_count", keep_count=300)
    assert live.counts.kept == apply_rule(run.samples, model.to_rule()).kept
    model.threshold = 0.6  # the first clause still drives as before
    assert live.counts.kept == apply_rule(run.samples, model.to_rule()).kept
    clause.rule = "threshold"  # "by value" on a further clause starts where it cut
    assert clause.threshold == pytest.approx(live.counts.clauses[1].thresholds["all"])
    second.column = "grand"
    assert second.clause() == FilterRule("keep_count", 300, "grand")
    clause.column = "votes"  # a new column: by value restarts at that column's default
    assert clause.threshold == pytest.approx(state.default_threshold("votes"))
    assert live.counts.kept == apply_rule(run.samples, model.to_rule()).kept
    model.remove_clause(clause)
    model.remove_clause(0)
    assert model.more == [] and live.counts.kept == apply_rule(run.samples, FilterRule("threshold", 0.6)).kept
    assert live.counts.clauses is None and live.counts.keep is None
    clause.threshold = 99.0  # a removed clause no longer moves anything
    assert live.counts.kept == apply_rule(run.samples, FilterRule("threshold", 0.6)).kept
    with pytest.raises(FilterError, match="no score column 'nope'"):
        model.add_clause("nope")
