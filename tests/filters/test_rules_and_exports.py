"""Filter rules, keep-list exports and specs: through the library and the real CLI."""

from __future__ import annotations

import errno
import io
import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from mimic_explorer import open_run
from mimic_explorer.filters.formats import render_export
from mimic_explorer.filters.hashing import content_hash
from mimic_explorer.filters.rules import CompoundRule, FilterError, FilterRule, all_of, apply_rule, describe
from mimic_explorer.filters.spec import build_spec, rule_from_spec
from tests.conftest import run_cli


@pytest.fixture
def samples():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(100)],
            "source": "t",
            "label": labels,
            "mimic_score": rng.normal(size=100),
            "keep": rng.random(100) > 0.3,
        }
    )


def test_threshold_quantile_keepcount_and_ensemble(samples):
    s = samples["mimic_score"].to_numpy()
    assert apply_rule(samples, FilterRule("threshold", 0.0)).kept == int((s >= 0).sum())
    q = apply_rule(samples, FilterRule("quantile", 0.25))
    assert q.kept == 75 and (s[q.keep] >= q.thresholds["all"]).all()
    top = apply_rule(samples, FilterRule("keep_count", 10))
    assert top.kept == 10 and set(np.argsort(-s)[:10]) == set(np.flatnonzero(top.keep))
    ens = apply_rule(samples, FilterRule("ensemble"))
    np.testing.assert_array_equal(ens.keep, samples["keep"])


def test_per_class_rules_keep_class_balance(samples):
    q = apply_rule(samples, FilterRule("quantile", 0.5, per_class=True))
    assert q.kept_per_class == {"0": 25, "1": 15, "2": 10}
    k = apply_rule(samples, FilterRule("keep_count", 10, per_class=True))
    assert k.kept == 10 and k.kept_per_class == {"0": 5, "1": 3, "2": 2}


def test_class_overrides(samples):
    result = apply_rule(samples, FilterRule("threshold", 10.0, class_overrides={2: -10.0}))
    assert result.kept_per_class == {"0": 0, "1": 0, "2": 20}


@pytest.mark.parametrize(
    "rule, message",
    [
        (FilterRule("quantile", 1.5), r"\[0, 1\]"),
        (FilterRule("threshold", float("nan")), "NaN"),
        (FilterRule("keep_count", -1), "keep-count"),
        (FilterRule("threshold", 0.0, column="nope"), "no column"),
        (FilterRule("ensemble", per_class=True), "per-class"),
    ],
)
def test_bad_rules_are_refused_with_the_cause(samples, rule, message):
    with pytest.raises(FilterError, match=message):
        apply_rule(samples, rule)


def test_spec_hash_is_stable_and_refuses_other_runs(samples):
    meta = {"run_id": "r1", "fingerprints": {"data": "abc"}}
    rule = FilterRule("quantile", 0.3)
    result = apply_rule(samples, rule)
    a, b = build_spec(meta, rule, result, "csv"), build_spec(meta, rule, result, "csv")
    assert a["spec_hash"] == b["spec_hash"]
    assert rule_from_spec(a, meta) == rule
    with pytest.raises(FilterError, match="run"):
        rule_from_spec(a, {"run_id": "r2", "fingerprints": {"data": "abc"}})
    with pytest.raises(FilterError, match="fingerprint"):
        rule_from_spec(a, {"run_id": "r1", "fingerprints": {"data": "xyz"}})


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet", "npy"])
def test_cli_export_writes_keep_list_and_spec(demo_run, tmp_path, fmt):
    out = tmp_path / f"keep.{fmt}"
    proc = run_cli("export", str(demo_run), "--ensemble", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    samples = open_run(demo_run).samples
    kept_ids = set(samples.loc[samples["keep"], "sample_id"])
    if fmt == "npy":
        mask = np.load(out)
        np.testing.assert_array_equal(mask, samples["keep"].to_numpy())
    else:
        frame = {"csv": pd.read_csv, "json": pd.read_json, "parquet": pd.read_parquet}[fmt](out)
        assert set(frame["sample_id"].astype(str)) == kept_ids
        assert list(frame.columns) == ["sample_id", "source", "label", "score", "keep"]
    spec = json.loads((tmp_path / f"keep.{fmt}.spec.json").read_text())
    assert spec["kept"] == len(kept_ids) and spec["rule"]["kind"] == "ensemble"
    assert spec["data_fingerprint"] == open_run(demo_run).meta["fingerprints"]["data"]


def test_cli_reapplies_a_spec_identically(demo_run, tmp_path):
    first = tmp_path / "a.csv"
    assert run_cli("export", str(demo_run), "--quantile", "0.3", "--per-class", "--out", str(first)).returncode == 0
    second = tmp_path / "b.csv"
    proc = run_cli("export", str(demo_run), "--spec", str(first) + ".spec.json", "--out", str(second))
    assert proc.returncode == 0, proc.stderr
    assert first.read_bytes() == second.read_bytes()


def test_cli_export_bad_input(demo_run, tmp_path):
    proc = run_cli("export", str(demo_run), "--quantile", "2", "--out", str(tmp_path / "k.csv"))
    assert proc.returncode == 2 and "quantile" in proc.stderr
    proc = run_cli("export", str(demo_run), "--ensemble", "--out", str(tmp_path / "missing" / "k.csv"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_cli("export", str(tmp_path / "norun"), "--ensemble", "--out", str(tmp_path / "k.csv"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = run_cli("export", str(demo_run), "--threshold", "99", "--out", str(tmp_path / "none.csv"))
    assert proc.returncode == 0 and "keeps no samples" in proc.stderr


def test_datacomp_uid_export_is_sorted_pairs(samples):
    uids = [f"{i:032x}" for i in (5, 3, 2**100 + 7, 1)] * 25
    frame = samples.assign(sample_id=[u[:-2] + f"{i:02x}" for i, u in enumerate(uids)])
    result = apply_rule(frame, FilterRule("keep_count", 10))
    import io

    pairs = np.load(io.BytesIO(render_export(frame, result, "mimic_score", "uids")))
    assert pairs.dtype == np.dtype("u8,u8") and len(pairs) == 10
    assert (np.sort(pairs) == pairs).all()
    kept = sorted(frame.loc[result.keep, "sample_id"])
    assert sorted(f"{a:016x}{b:016x}" for a, b in pairs.tolist()) == kept
    with pytest.raises(FilterError, match="128-bit"):
        render_export(samples, result, "mimic_score", "uids")


def test_cli_runs_lists_runs_with_status(demo_run):
    proc = run_cli("runs", str(demo_run.parent))
    assert proc.returncode == 0
    line = next(text for text in proc.stdout.splitlines() if str(demo_run) in text)
    assert line.startswith("complete") and "1438" in line


# ---------------------------------------------------------------------------------------- top fraction, AND, specs


def test_top_fraction_keeps_the_highest_fraction_of_finite_scores(samples):
    s = samples["mimic_score"].to_numpy()
    top = apply_rule(samples, FilterRule("top_fraction", 0.29))
    assert top.kept == 29 and set(np.flatnonzero(top.keep)) == set(np.argsort(-s)[:29])  # 0.29·100 is 29, not 28
    with_nan = samples.assign(mimic_score=np.where(np.arange(100) < 20, np.nan, s))
    assert apply_rule(with_nan, FilterRule("top_fraction", 0.5)).kept == 40  # half of the 80 finite scores
    per_class = apply_rule(samples, FilterRule("top_fraction", 0.5, per_class=True))
    assert per_class.kept_per_class == {"0": 25, "1": 15, "2": 10}
    assert apply_rule(samples, FilterRule("top_fraction", 0.0)).kept == 0
    with pytest.raises(FilterError, match=r"top fraction must be in \[0, 1\]"):
        apply_rule(samples, FilterRule("top_fraction", 1.2))


@pytest.fixture
def scored(samples):
    rng = np.random.default_rng(1)
    return samples.assign(clip_score_ref=rng.normal(size=100))


def test_an_and_resolves_each_clause_on_the_whole_pool_then_intersects(scored):
    first, second = FilterRule("top_fraction", 0.3, "clip_score_ref"), FilterRule("quantile", 0.15)
    rule = all_of([first, second])
    assert isinstance(rule, CompoundRule) and all_of([first]) is first
    result = apply_rule(scored, rule)
    alone = [apply_rule(scored, first), apply_rule(scored, second)]
    np.testing.assert_array_equal(result.keep, alone[0].keep & alone[1].keep)
    assert [part.kept for part in result.clauses] == [30, 85]  # each on all 100 samples, not on what the other left
    assert result.kept == int((alone[0].keep & alone[1].keep).sum()) < 30
    labels = scored["label"].to_numpy()
    assert result.kept_per_class == {str(c): int(result.keep[labels == c].sum()) for c in (0, 1, 2)}
    ensemble_too = apply_rule(
        scored, all_of([FilterRule("ensemble"), first, FilterRule("keep_count", 50, per_class=True)])
    )
    expected = (
        scored["keep"].to_numpy()
        & alone[0].keep
        & apply_rule(scored, FilterRule("keep_count", 50, per_class=True)).keep
    )
    np.testing.assert_array_equal(ensemble_too.keep, expected)
    assert describe(rule) == "clip_score_ref top 30.0% AND mimic_score drop the lowest 15.0%"


def test_bad_compounds_are_refused_with_the_cause(scored):
    with pytest.raises(FilterError, match="at least two clauses"):
        apply_rule(scored, CompoundRule([FilterRule("quantile", 0.1)]))
    with pytest.raises(FilterError, match="at least one rule"):
        all_of([])
    with pytest.raises(FilterError, match="no column 'clip'"):
        apply_rule(scored, all_of([FilterRule("quantile", 0.1), FilterRule("top_fraction", 0.3, "clip")]))
    with pytest.raises(FilterError, match="quantile must be in"):
        apply_rule(scored, all_of([FilterRule("quantile", 0.1), FilterRule("quantile", 3.0, "clip_score_ref")]))


META = {"run_id": "r1", "fingerprints": {"data": "abc"}, "versions": {"mimic_explorer": "0.1.0"}}


def test_a_compound_spec_records_every_clause_and_round_trips(scored):
    rule = all_of([FilterRule("top_fraction", 0.3, "clip_score_ref"), FilterRule("quantile", 0.15, per_class=True)])
    result = apply_rule(scored, rule)
    spec = build_spec(META, rule, result, "uids")
    assert spec["spec_version"] == 2 and spec["combine"] == "and" and "rule" not in spec
    assert [r["kind"] for r in spec["rules"]] == ["top_fraction", "quantile"] and spec["rules"][1]["per_class"]
    assert spec["kept_by_clause"] == [part.kept for part in result.clauses]
    assert spec["resolved_thresholds"][0]["all"] == result.clauses[0].thresholds["all"]
    assert set(spec["resolved_thresholds"][1]) == {"0", "1", "2"}
    assert rule_from_spec(json.loads(json.dumps(spec)), META) == rule
    again = build_spec(META, rule_from_spec(spec, META), result, "uids")
    assert again["spec_hash"] == spec["spec_hash"]
    swapped = build_spec(META, all_of(rule.clauses[::-1]), apply_rule(scored, all_of(rule.clauses[::-1])), "uids")
    assert swapped["spec_hash"] != spec["spec_hash"]  # the spec records the clauses in order


@pytest.mark.parametrize(
    "rule, spec_hash",
    [
        (FilterRule("quantile", 0.3, per_class=True), "add62645231055a2"),
        (FilterRule("threshold", 0.1, class_overrides={1: 0.5}), "de96af2d91f7d0b9"),
        (FilterRule("keep_count", 10), "4ba37b954dabb6d4"),
        (FilterRule("ensemble"), "3d796786ba68078e"),
    ],
)
def test_a_single_rule_spec_is_written_and_hashed_as_before_compounds_existed(samples, rule, spec_hash):
    spec = build_spec(META, rule, apply_rule(samples, rule), "csv")
    assert spec["spec_version"] == 1 and "rules" not in spec and spec["spec_hash"] == spec_hash
    old = {
        "spec_version": 1,
        "rule": {"kind": rule.kind, "value": rule.value, "column": "mimic_score"},
        "run_id": "r1",
        "data_fingerprint": "abc",
    }  # a rule without per_class and overrides: read with their defaults
    old["spec_hash"] = content_hash(old)
    assert rule_from_spec(old, META) == FilterRule(rule.kind, rule.value)


def test_specs_this_version_cannot_read_are_refused_with_the_cause():
    base = {"run_id": "r1", "data_fingerprint": "abc"}
    rules = [{"kind": "quantile", "value": 0.1}, {"kind": "top_fraction", "value": 0.3, "column": "clip_score_ref"}]
    with pytest.raises(FilterError, match="newer mimic_explorer"):
        rule_from_spec({**base, "spec_version": 3, "rules": rules}, META)
    with pytest.raises(FilterError, match="only 'and'"):
        rule_from_spec({**base, "spec_version": 2, "combine": "or", "rules": rules}, META)
    with pytest.raises(FilterError, match="rule 1: a rule has no 'kind'"):
        rule_from_spec({**base, "spec_version": 2, "rules": [{"value": 0.1}, rules[1]]}, META)
    with pytest.raises(FilterError, match="not on this run"):
        rule_from_spec({"run_id": "r2", "data_fingerprint": "abc", "rules": rules}, META)


def test_per_class_on_a_pool_without_classes_is_refused(scored):
    pairs = scored.drop(columns=["label"])
    for pool in (pairs, scored.assign(label=-1)):
        with pytest.raises(FilterError, match="needs class labels"):
            apply_rule(pool, FilterRule("quantile", 0.2, per_class=True))
        result = apply_rule(
            pool, all_of([FilterRule("quantile", 0.2), FilterRule("top_fraction", 0.5, "clip_score_ref")])
        )
        assert result.kept_per_class == {"-1": result.kept} and result.total_per_class == {"-1": 100}


# ---------------------------------------------------------------------------------------- DataComp uids


def _uid_pool(samples, uids):
    return samples.assign(sample_id=uids)


def test_uids_export_is_exactly_datacomps_subset_format(samples):
    rng = np.random.default_rng(3)
    uids = [rng.bytes(16).hex() for _ in range(100)]
    uids[7] = "ffffffffffffffff0000000000000001"  # the high half decides the order before the low half
    uids[8] = "0000000000000001ffffffffffffffff"
    uids[9] = uids[9].upper()  # hex digits in either case
    pool = _uid_pool(samples, uids)
    result = apply_rule(pool, FilterRule("top_fraction", 0.6))
    pairs = np.load(io.BytesIO(render_export(pool, result, "mimic_score", "uids")))
    assert pairs.dtype == np.dtype([("f0", "<u8"), ("f1", "<u8")]) and len(pairs) == result.kept == 60
    assert (np.sort(pairs, order=["f0", "f1"]) == pairs).all()
    assert pairs.tolist() == sorted(pairs.tolist())
    kept = sorted(u.lower() for u, k in zip(uids, result.keep) if k)
    assert sorted(f"{a:016x}{b:016x}" for a, b in pairs.tolist()) == kept
    everything = np.load(
        io.BytesIO(render_export(pool, apply_rule(pool, FilterRule("threshold", -1e9)), "mimic_score", "uids"))
    )
    assert everything[-1].tolist() == (2**64 - 1, 1) and (2**0, 2**64 - 1) in everything.tolist()
    nothing = np.load(
        io.BytesIO(render_export(pool, apply_rule(pool, FilterRule("threshold", 1e9)), "mimic_score", "uids"))
    )
    assert nothing.dtype == pairs.dtype and len(nothing) == 0


@pytest.mark.parametrize(
    "bad, message",
    [
        ({3: "not-a-uid"}, r"1 of 100 sample ids are not 32-hex-digit .*'not-a-uid'"),
        ({3: "0" * 31, 5: "g" * 32}, r"2 of 100 .*'0000000000000000000000000000000', 'gggg"),
        ({3: "ab" * 16, 40: "AB" * 16}, r"1 uid\(s\) occur more than once in the pool, e\.g\. 'abab"),
    ],
)
def test_uids_that_are_not_128_bit_hex_or_repeat_are_named(samples, bad, message):
    uids = [f"{i:032x}" for i in range(100)]
    for i, uid in bad.items():
        uids[i] = uid
    pool = _uid_pool(samples, uids)
    with pytest.raises(FilterError, match=message):
        render_export(pool, apply_rule(pool, FilterRule("quantile", 0.5)), "mimic_score", "uids")


# ---------------------------------------------------------------------------------------- the CLI on a pairs run


@pytest.fixture(scope="module")
def pairs_run(tmp_path_factory):
    from tests.ui_helpers import synthetic_pairs_run

    return synthetic_pairs_run(tmp_path_factory.mktemp("pairs") / "run", n=500, epochs=2, thumbnails=False)


def test_cli_compound_rules_write_a_datacomp_subset_and_a_reapplicable_spec(pairs_run, tmp_path):
    out = tmp_path / "subset.npy"
    proc = run_cli(
        "export",
        str(pairs_run),
        "--rule",
        "clip_score_ref:top=30%",
        "--rule",
        "mimic_score:drop=0.15",
        "--format",
        "uids",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    samples = open_run(pairs_run).samples
    rule = all_of([FilterRule("top_fraction", 0.3, "clip_score_ref"), FilterRule("quantile", 0.15)])
    expected = apply_rule(samples, rule)
    pairs = np.load(out)
    assert pairs.dtype == np.dtype([("f0", "<u8"), ("f1", "<u8")]) and len(pairs) == expected.kept
    assert sorted(f"{a:016x}{b:016x}" for a, b in pairs.tolist()) == sorted(samples["sample_id"][expected.keep])
    assert f"kept {expected.kept} of 500" in proc.stdout and "keeps 150 alone" in proc.stderr
    spec = json.loads((tmp_path / "subset.npy.spec.json").read_text())
    assert rule_from_spec(spec, open_run(pairs_run).meta) == rule and spec["kept_by_clause"] == [150, 425]
    again = tmp_path / "again.npy"
    proc = run_cli("export", str(pairs_run), "--spec", str(out) + ".spec.json", "--format", "uids", "--out", str(again))
    assert proc.returncode == 0, proc.stderr
    assert again.read_bytes() == out.read_bytes()
    assert json.loads((tmp_path / "again.npy.spec.json").read_text())["spec_hash"] == spec["spec_hash"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rule", "clip_score_ref:tip=30%"], "unknown kind 'tip'"),
        (["--rule", "clip_score_ref:top=3x"], "'3x' is not a number"),
        (["--rule", "clip_score_ref"], "is not COLUMN:KIND=VALUE"),
        (["--rule", "mimic_score:min=50%"], "a percentage is a fraction"),
        (["--rule", "clip_score_ref:top=30%", "--per-class"], "not --column / --per-class"),
        (["--rule", "mimic_score:drop=0.1:per-class"], "needs class labels"),
        (["--rule", "clip:top=0.3", "--rule", "mimic_score:min=0"], "no column 'clip'"),
        (["--rule", "clip_score_ref:top=130%"], r"top fraction must be in \[0, 1\]"),
    ],
)
def test_cli_bad_rules_say_what_is_wrong(pairs_run, tmp_path, args, message):
    proc = run_cli("export", str(pairs_run), *args, "--out", str(tmp_path / "k.csv"))
    assert proc.returncode == 2 and re.search(message, proc.stderr), proc.stderr
    assert not (tmp_path / "k.csv").exists()


def test_cli_uids_of_a_run_without_uids_is_a_clear_error(demo_run, tmp_path):
    proc = run_cli("export", str(demo_run), "--ensemble", "--format", "uids", "--out", str(tmp_path / "k.npy"))
    first = open_run(demo_run).samples["sample_id"].iloc[0]  # the first bad id is named
    assert proc.returncode == 2 and "are not 32-hex-digit (128-bit) uids" in proc.stderr and repr(first) in proc.stderr
    help_text = run_cli("export", "--help").stdout
    assert "--rule COLUMN:KIND=VALUE" in help_text and "clip_score_ref:top=30%" in help_text


def test_exports_use_the_combined_score_and_its_own_split(tmp_path):
    from tests.ui_helpers import synthetic_pairs_run

    run = synthetic_pairs_run(tmp_path / "run", n=400, epochs=1, thumbnails=False, combined=True)
    samples = open_run(run).samples
    own = apply_rule(samples, FilterRule("ensemble", None, "combined_score"))
    assert np.array_equal(own.keep, samples["combined_keep"].to_numpy())  # not the run's keep
    assert not np.array_equal(own.keep, samples["keep"].to_numpy())
    assert describe(FilterRule("ensemble", None, "combined_score")) == "the run's ensemble filter (combined_keep)"
    proc = run_cli("export", str(run), "--ensemble", "--column", "combined_score", "--out", str(tmp_path / "k.npy"))
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "k.npy"), samples["combined_keep"].to_numpy())
    proc = run_cli(
        "export",
        str(run),
        "--rule",
        "combined_score:top=70%",
        "--rule",
        "clip_score_ref:drop=10%",
        "--format",
        "uids",
        "--out",
        str(tmp_path / "subset.npy"),
    )
    expected = apply_rule(
        samples,
        all_of([FilterRule("top_fraction", 0.7, "combined_score"), FilterRule("quantile", 0.1, "clip_score_ref")]),
    )
    assert (
        proc.returncode == 0
        and len(np.load(tmp_path / "subset.npy"))
        == expected.kept
        == 280 - (expected.clauses[0].keep & ~expected.clauses[1].keep).sum()
    )
    del samples["combined_keep"]
    with pytest.raises(FilterError, match="no ensemble filter for combined_score .column 'combined_keep'"):
        apply_rule(samples, FilterRule("ensemble", None, "combined_score"))


# ------------------------------------------------------------------------------------ one-line errors, verified specs


def _main(capsys, *args: str) -> tuple[int, str]:
    """The real CLI in this process: its exit status and what it printed on stderr."""
    from mimic_explorer.cli import main

    code = main(["export", *map(str, args)])
    return code, capsys.readouterr().err


def _one_line_error(code: int, err: str) -> str:
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _saved_spec(capsys, demo_run, folder, *rule):
    out = folder / "first.csv"
    assert _main(capsys, demo_run, *rule, "--out", out)[0] == 0
    return out, json.loads((folder / "first.csv.spec.json").read_text())


def test_cli_refuses_an_edited_spec_naming_the_edit(demo_run, tmp_path, capsys):
    _, spec = _saved_spec(capsys, demo_run, tmp_path, "--threshold", "0.5")
    spec["rule"]["value"] = 2.5  # the hash left alone: before, this was re-applied without a word
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(spec))
    err = _one_line_error(*_main(capsys, demo_run, "--spec", edited, "--out", tmp_path / "again.csv"))
    assert (
        f"spec {edited}: the spec was edited after it was written "
        "(the rule's threshold is 2.5 but the hashed spec says 0.5)" in err
    )
    assert not (tmp_path / "again.csv").exists() and not (tmp_path / "again.csv.spec.json").exists()
    spec["rule"]["value"], spec["kept"] = 0.5, spec["kept"] - 1
    edited.write_text(json.dumps(spec))
    assert "kept is" in _one_line_error(*_main(capsys, demo_run, "--spec", edited, "--out", tmp_path / "again.csv"))


def test_cli_refuses_a_spec_whose_run_now_keeps_other_samples(demo_run, tmp_path, capsys):
    import shutil

    run = shutil.copytree(demo_run, tmp_path / "run")
    first, _ = _saved_spec(capsys, run, tmp_path, "--keep-count", "500")
    samples = pd.read_parquet(run / "samples.parquet")
    samples["mimic_score"] = samples["mimic_score"].to_numpy()[::-1]  # the same run id and data, other scores
    samples.to_parquet(run / "samples.parquet", index=False)
    err = _one_line_error(*_main(capsys, run, "--spec", f"{first}.spec.json", "--out", tmp_path / "again.csv"))
    assert "keeps the same number (500) but other samples (keep_mask_sha256 differs)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.csv", "first.csv.spec.json", "run"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s["rule"].update(value=[1]), r"the spec's rule: the quantile value must be a number, got \[1\]"),
        (lambda s: s["rule"].update(value="abc"), r"the quantile value must be a number, got 'abc'"),
        (lambda s: s["rule"].update(per_class="false"), r"per_class is true or false, got 'false'"),
        (lambda s: s["rule"].update(kind="median"), r"unknown rule 'median'"),
        (lambda s: s.update(rules=[s.pop("rule")] * 10_000, spec_version=2), r"10000 rules in one filter; at most 64"),
        (
            lambda s: s.update(rules=[s.pop("rule")] * 200_000, spec_version=2),
            r"20,\d{3},\d{3} bytes is too large for a filter spec",
        ),
        (lambda s: s.update(spec_hash=None), r"no valid spec_hash"),
    ],
)
def test_cli_spec_values_of_the_wrong_type_are_one_line(demo_run, tmp_path, capsys, edit, message):
    _, spec = _saved_spec(capsys, demo_run, tmp_path, "--quantile", "0.3", "--per-class")
    edit(spec)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(spec))
    assert re.search(message, _one_line_error(*_main(capsys, demo_run, "--spec", bad, "--out", tmp_path / "k.csv")))
    assert not (tmp_path / "k.csv").exists()


def test_cli_files_that_cannot_be_read_or_written_are_one_line(demo_run, tmp_path, capsys, monkeypatch):
    import shutil

    truncated = shutil.copytree(demo_run, tmp_path / "truncated")
    data = (truncated / "samples.parquet").read_bytes()
    (truncated / "samples.parquet").write_bytes(data[: len(data) // 2])
    err = _one_line_error(*_main(capsys, truncated, "--ensemble", "--out", tmp_path / "k.csv"))
    assert f"cannot read {truncated / 'samples.parquet'}" in err and "truncated or not a Parquet file" in err
    (tmp_path / "folder.csv").mkdir()
    assert "folder.csv is a directory; name a file" in _one_line_error(
        *_main(capsys, demo_run, "--ensemble", "--out", tmp_path / "folder.csv")
    )
    assert "sample_id' holds text values, not scores" in _one_line_error(
        *_main(capsys, demo_run, "--rule", "sample_id:min=1", "--out", tmp_path / "k.csv")
    )
    os.mkfifo(tmp_path / "fifo.json")
    assert "not a regular file" in _one_line_error(
        *_main(capsys, demo_run, "--spec", tmp_path / "fifo.json", "--out", tmp_path / "k.csv")
    )
    from mimic_explorer.store import atomic

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(
        atomic.tempfile, "mkstemp", read_only
    )  # as a read-only folder refuses (the tests may run as root)
    err = _one_line_error(*_main(capsys, demo_run, "--ensemble", "--out", tmp_path / "k.csv"))
    assert f"cannot write {tmp_path / 'k.csv'}: Permission denied" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.json", "folder.csv", "truncated"]
