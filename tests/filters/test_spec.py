"""Filter specs verify: a spec written before still re-applies to the same keep mask; an edited spec is
refused with what was edited; a spec that is not one (too large, too deep, not an object, no hash,
a newer version, thousands of rules) is refused in one line before anything else is done."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.filters.hashing import content_hash, mask_sha256
from mimic_explorer.filters.rules import FilterRule, all_of, apply_rule
from mimic_explorer.filters.spec import (
    MAX_SPEC_BYTES,
    SpecError,
    build_spec,
    check_reapplied,
    parse_spec_json,
    rule_from_spec,
    rule_in_spec,
)
from mimic_explorer.store.reader import open_run
from tests.ui_helpers import synthetic_run

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "specs"
META = {"run_id": "r1", "fingerprints": {"data": "abc"}, "versions": {"mimic_explorer": "0.1.0"}}


@pytest.fixture(scope="module")
def fixture_run(tmp_path_factory):
    """The run the fixture specs were written on (see tests/fixtures/README.md)."""
    return open_run(synthetic_run(tmp_path_factory.mktemp("specs") / "run", n=300, thumbnails=False))


@pytest.fixture
def samples():
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(100)],
            "label": np.repeat([0, 1, 2], [50, 30, 20]),
            "mimic_score": rng.normal(size=100),
            "clip_score_ref": rng.normal(size=100),
            "keep": rng.random(100) > 0.3,
        }
    )


@pytest.mark.parametrize("name", ["threshold.csv.spec.json", "compound.parquet.spec.json"])
def test_a_spec_written_before_verification_still_verifies_and_reapplies_to_its_mask(fixture_run, name):
    spec = json.loads((FIXTURES / name).read_text())
    assert "keep_list" not in spec  # written before keep-list attestations
    rule = rule_from_spec(spec, fixture_run.meta)
    result = apply_rule(fixture_run.samples, rule)
    check_reapplied(spec, result)
    assert result.kept == spec["kept"] and mask_sha256(result.keep) == spec["keep_mask_sha256"]
    assert build_spec(fixture_run.meta, rule, result, spec["format"])["spec_hash"] == spec["spec_hash"]


def _spec(samples, rule=None):
    rule = rule or FilterRule("threshold", 0.3, class_overrides={1: 0.5})
    return json.loads(json.dumps(build_spec(META, rule, apply_rule(samples, rule), "csv")))


def _edited(spec, edit):
    edited = copy.deepcopy(spec)
    edit(edited)
    return edited


COMPOUND = all_of([FilterRule("keep_count", 40, "clip_score_ref"), FilterRule("quantile", 0.2, per_class=True)])
EDITS = [
    (None, lambda s: s["rule"].update(value=0.8), r"the rule's threshold is 0.8 but the hashed spec says 0.3"),
    (
        None,
        lambda s: s["rule"]["class_overrides"].update({"1": 0.9}),
        r"the rule's threshold for class 1 is 0.9 but the hashed spec says 0.5",
    ),
    (None, lambda s: s["rule"]["class_overrides"].pop("1"), r"the rule's threshold for class 1 was removed"),
    (
        None,
        lambda s: s["rule"].update(column="clip_score_ref"),
        r"the rule's column is 'clip_score_ref' but the hashed spec says 'mimic_score'",
    ),
    (None, lambda s: s.update(kept=s["kept"] + 1), r"kept is \d+ but the hashed spec says \d+"),
    (None, lambda s: s.update(format="npy"), r"format is 'npy' but the hashed spec says 'csv'"),
    (None, lambda s: s.update(note="mine"), r"field 'note' was added"),
    (COMPOUND, lambda s: s["rules"][0].update(value=10), r"rule 1's keep-count is 10 but the hashed spec says 40"),
    (
        COMPOUND,
        lambda s: s["rules"][1].update(per_class=False),
        r"rule 2's per_class is false but the hashed spec says true",
    ),
    (
        COMPOUND,
        lambda s: s["rules"][1].update(kind="top_fraction"),
        r"rule 2's kind is 'top_fraction' but the hashed spec says 'quantile'",
    ),
]


@pytest.mark.parametrize("rule, edit, message", EDITS, ids=[m.split(" but")[0][:40] for _, _, m in EDITS])
def test_an_edited_spec_is_refused_naming_the_edit(samples, rule, edit, message):
    spec = _spec(samples, rule)
    rule_in_spec(spec)  # as written: verifies
    with pytest.raises(SpecError, match=r"the spec was edited after it was written \(" + message):
        rule_in_spec(_edited(spec, edit))


def test_an_edit_no_single_change_explains_names_what_the_rule_keeps_here(samples):
    spec = _spec(samples, FilterRule("quantile", 0.3))
    edited = _edited(spec, lambda s: s["rule"].update(value=0.9))  # a quantile's value is recorded nowhere else
    with pytest.raises(SpecError, match=r"its content hashes to [0-9a-f]{16}, not to its spec_hash"):
        rule_in_spec(edited)
    with pytest.raises(SpecError, match=rf"its rule keeps 10 samples of this run but it records kept {spec['kept']}"):
        rule_from_spec(edited, META, samples)


def test_unhashed_fields_may_change_and_a_missing_hash_is_refused(samples):
    spec = _spec(samples)
    rule_in_spec({**spec, "created": "yesterday", "keep_list": {"bytes": 1, "sha256": "0" * 64}})
    for bad in (None, "abc", 12):
        with pytest.raises(SpecError, match="no valid spec_hash, so it cannot be verified"):
            rule_in_spec({**spec, "spec_hash": bad})


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("kept", -1, r"kept is a whole number ≥ 0, got -1"),
        ("kept", "168", r"kept is a whole number ≥ 0, got '168'"),
        ("kept", 10**6, r"kept \(1000000\) is more than total \(100\)"),
        ("format", "xlsx", r"format is one of csv"),
        ("run_id", 5, r"run_id is text, got 5"),
        ("keep_mask_sha256", "zz", r"keep_mask_sha256 is 64 hex digits"),
        ("kept_per_class", {"0": -3}, r"kept_per_class maps each class to a count ≥ 0"),
        ("spec_version", "1", r"spec_version is a whole number"),
        ("spec_version", 3, r"written by a newer mimic_explorer"),
    ],
)
def test_each_recorded_fact_is_checked_by_type_and_range(samples, field, value, message):
    with pytest.raises(SpecError, match=message):
        rule_in_spec({**_spec(samples), field: value})


def test_a_spec_of_many_rules_is_refused_before_they_are_read(samples, monkeypatch):
    spec = _spec(samples, COMPOUND)
    spec["rules"] = spec["rules"] * 100_000  # 200,000 rules, as a hostile file would
    read = []
    monkeypatch.setattr(FilterRule, "from_dict", classmethod(lambda cls, data: read.append(data)))
    with pytest.raises(SpecError, match=r"200000 rules in one filter; at most 64 are accepted"):
        rule_in_spec(spec)
    assert read == []
    with pytest.raises(SpecError, match=r"'rules' is a list of one to 64 rules"):
        rule_in_spec({**spec, "rules": []})


@pytest.mark.parametrize(
    "text, message",
    [
        (b"{not json", r"not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, r"not JSON: it nests too deep"),
        (b"[1, 2]", r"a JSON object is expected, got list"),
        (b'"spec"', r"got str"),
        (b" " * (MAX_SPEC_BYTES + 1), r"too large for a filter spec \(at most 16 MiB"),
    ],
)
def test_text_that_is_no_spec_is_refused_in_one_line(text, message):
    with pytest.raises(SpecError, match=message):
        parse_spec_json(text)


def test_a_reapplied_spec_whose_mask_differs_is_refused(samples):
    rule = FilterRule("keep_count", 30)
    spec = _spec(samples, rule)
    check_reapplied(spec, apply_rule(samples, rule))
    changed = samples.assign(mimic_score=samples["mimic_score"][::-1].to_numpy())  # same run id, other scores
    with pytest.raises(SpecError, match=r"keeps the same number \(30\) but other samples \(keep_mask_sha256 differs\)"):
        check_reapplied(spec, apply_rule(changed, rule))
    spec = _spec(samples, FilterRule("threshold", 0.0))
    with pytest.raises(SpecError, match=rf"keeps 0 samples, not the {spec['kept']} it records"):
        check_reapplied(spec, apply_rule(samples.assign(mimic_score=-1.0), FilterRule("threshold", 0.0)))


def test_the_hash_covers_every_field_but_the_unhashed_ones(samples):
    spec = _spec(samples)
    assert content_hash(spec) == spec["spec_hash"]
    assert content_hash({**spec, "created": "x", "keep_list": {}, "spec_hash": "y"}) == spec["spec_hash"]
    assert content_hash({**spec, "versions": {"mimic_explorer": "9"}}) != spec["spec_hash"]
