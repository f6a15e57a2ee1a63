"""Filter rules, keep-list exports and specs: through the library and the real CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mimic_explorer import open_run
from mimic_explorer.filters import FilterError, FilterRule, apply_rule, build_spec, rule_from_spec
from tests.conftest import run_cli


@pytest.fixture
def samples():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [50, 30, 20])
    return pd.DataFrame({"sample_id": [f"s{i}" for i in range(100)], "source": "t", "label": labels,
                         "mimic_score": rng.normal(size=100), "keep": rng.random(100) > 0.3})


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


@pytest.mark.parametrize("rule, message", [
    (FilterRule("quantile", 1.5), r"\[0, 1\]"),
    (FilterRule("threshold", float("nan")), "NaN"),
    (FilterRule("keep_count", -1), "keep-count"),
    (FilterRule("threshold", 0.0, column="nope"), "no column"),
    (FilterRule("ensemble", per_class=True), "per-class"),
])
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
    from mimic_explorer.filters import FilterError, render_export

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
    line = next(l for l in proc.stdout.splitlines() if str(demo_run) in l)
    assert line.startswith("complete") and "1438" in line
