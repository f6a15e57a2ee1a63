"""A selection ANDed into a filter: the ids clause keeps exactly its samples, is recorded in the spec by
its ids and their hash, verifies when read back, and an edited id list is refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from mimic_explorer.filters.rules import FilterError, FilterRule, all_of, apply_rule, describe, selection
from mimic_explorer.filters.spec import SpecError, build_spec, rule_from_spec
from mimic_explorer.store.reader import open_run
from tests.ui_helpers import synthetic_run


@pytest.fixture
def run(tmp_path):
    return open_run(synthetic_run(tmp_path / "run", n=80, classes=4, thumbnails=False))


def test_an_ids_clause_keeps_its_samples_and_ands_with_a_rule(run):
    samples = run.samples
    chosen = samples["sample_id"].iloc[[3, 10, 40, 41]].tolist()
    alone = apply_rule(samples, selection(chosen + chosen[:1]))
    assert alone.kept == 4 and set(samples["sample_id"][alone.keep]) == set(chosen)
    rule = all_of([FilterRule("ensemble", None), selection(chosen)])
    both = apply_rule(samples, rule)
    assert np.array_equal(both.keep, alone.keep & samples["keep"].to_numpy())
    assert "the 4 selected samples (ids " in describe(rule)
    with pytest.raises(FilterError, match="1 of the selection's 2 sample ids are not in this run"):
        apply_rule(samples, selection([chosen[0], "elsewhere"]))
    with pytest.raises(FilterError, match="at least one sample id"):
        selection([]).validate()


def test_the_spec_records_the_ids_and_their_hash_and_reads_them_back(run):
    samples = run.samples
    chosen = samples["sample_id"].iloc[:5].tolist()
    rule = all_of([FilterRule("quantile", 0.2), selection(chosen)])
    spec = build_spec(run.meta, rule, apply_rule(samples, rule), "csv")
    clause = spec["rules"][1]
    assert clause["kind"] == "ids" and clause["ids"] == sorted(chosen) and len(clause["ids_sha256"]) == 64
    back = rule_from_spec(copy.deepcopy(spec), run.meta)
    assert back.clauses[1].ids == tuple(sorted(chosen))
    assert np.array_equal(apply_rule(samples, back).keep, apply_rule(samples, rule).keep)
    edited = copy.deepcopy(spec)
    edited["rules"][1]["ids"] = sorted(chosen[:4])
    with pytest.raises(SpecError, match="do not hash to its ids_sha256"):
        rule_from_spec(edited, run.meta)
    ensemble = FilterRule("ensemble", None)
    single = build_spec(run.meta, ensemble, apply_rule(samples, ensemble), "csv")
    assert "ids" not in single["rule"]  # the other clauses are written as they always were
