"""The review log and what exports make of it: the latest decision per sample wins, bad input is one
line and writes nothing, export applies the decisions on top of the rule (or ignores them), relabels
appear as ``label_reviewed``, and a spec re-applied after later decisions gives the same keep-list."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.cli import main
from mimic_explorer.filters.reviews import AppliedReviews, apply_reviews
from mimic_explorer.filters.rules import FilterRule, apply_rule
from mimic_explorer.store.filter_files import export
from mimic_explorer.store.layout import RunLayout
from mimic_explorer.store.reader import open_run
from mimic_explorer.store.reviews import ReviewError, append_reviews, applied_now, read_reviews
from tests.ui_helpers import synthetic_run


@pytest.fixture
def run(tmp_path):
    return open_run(synthetic_run(tmp_path / "run", n=60, classes=3, thumbnails=False))


def _append(run, ids, decision, **kwargs):
    return append_reviews(
        run.layout, ids, decision, run_ids=run.samples["sample_id"].to_numpy(), class_names=run.class_names, **kwargs
    )


def test_the_latest_decision_per_sample_wins_and_every_row_is_kept(run):
    ids = run.samples["sample_id"].tolist()
    _append(run, ids[:3], "drop", note="blurry")
    _append(run, ids[1:2], "relabel", label="class 2")
    _append(run, ids[2:3], "keep")
    log = read_reviews(run.layout)
    assert log["decision"].tolist() == ["drop", "drop", "drop", "relabel", "keep"]
    assert log["note"].tolist()[:3] == ["blurry"] * 3 and log["time"].notna().all()
    latest = applied_now(run.layout).decisions.set_index("sample_id")
    assert latest.loc[ids[0], "decision"] == "drop" and latest.loc[ids[2], "decision"] == "keep"
    assert latest.loc[ids[1], "decision"] == "relabel" and latest.loc[ids[1], "label"] == 2


@pytest.mark.parametrize(
    ("ids", "decision", "label", "message"),
    [
        (["nope", "syn-0000001"], "drop", None, "1 of the 2 sample ids are not in this run: 'nope'"),
        (["syn-0000001"], "relabel", "dog", "no class 'dog' in this run"),
        (["syn-0000001"], "relabel", "7", "no class '7' in this run"),
        (["syn-0000001"], "relabel", None, "relabel needs the class"),
        (["syn-0000001"], "drop", "class 1", "a drop decision takes no label"),
        (["syn-0000001"], "delete", None, "unknown decision 'delete'"),
        ([], "drop", None, "no sample ids"),
    ],
)
def test_bad_reviews_are_one_line_and_write_nothing(run, ids, decision, label, message):
    _append(run, ["syn-0000000"], "keep")
    before = run.layout.reviews.read_bytes()
    with pytest.raises(ReviewError, match=message) as caught:
        _append(run, ids, decision, label=label)
    assert "\n" not in str(caught.value)
    assert run.layout.reviews.read_bytes() == before


def test_export_applies_reviews_on_top_of_the_rule_and_records_them(run, tmp_path):
    samples = run.samples
    rule = FilterRule("ensemble", None)
    kept = samples["sample_id"][samples["keep"]].tolist()
    dropped = samples["sample_id"][~samples["keep"]].tolist()
    _append(run, kept[:2], "drop")
    _append(run, dropped[:1], "relabel", label=0)
    result, spec, out, _ = export(samples, run.meta, rule, "csv", tmp_path / "k.csv", reviews=applied_now(run.layout))
    written = pd.read_csv(out, dtype={"sample_id": str})
    expected = set(kept[2:]) | {dropped[0]}
    assert set(written["sample_id"]) == expected and result.kept == len(expected)
    relabelled = written.set_index("sample_id")
    assert relabelled.loc[dropped[0], "label_reviewed"] == 0
    same = relabelled.drop(index=dropped[0])
    assert (same["label_reviewed"] == same["label"]).all()
    assert spec["reviews"]["rows"] == 3 and spec["reviews"]["samples"] == 3 and len(spec["reviews"]["sha256"]) == 64
    plain, plain_spec, _, _ = export(samples, run.meta, rule, "csv", tmp_path / "p.csv")
    assert plain.kept == len(kept) and "reviews" not in plain_spec
    assert "label_reviewed" not in pd.read_csv(tmp_path / "p.csv").columns


def test_a_spec_gives_the_same_keep_list_after_later_reviews(run, tmp_path, capsys):
    ids = run.samples["sample_id"].tolist()
    root = str(run.path)
    _append(run, ids[:5], "drop")
    assert main(["export", root, "--quantile", "0.2", "--out", str(tmp_path / "a.csv")]) == 0
    _append(run, ids[5:10], "drop")  # decided after the spec was written
    assert main(["export", root, "--spec", str(tmp_path / "a.csv.spec.json"), "--out", str(tmp_path / "b.csv")]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    assert main(["export", root, "--quantile", "0.2", "--out", str(tmp_path / "c.csv")]) == 0
    assert not set(ids[:10]) & set(pd.read_csv(tmp_path / "c.csv", dtype={"sample_id": str})["sample_id"])
    assert main(["export", root, "--quantile", "0.2", "--reviews", "ignore", "--out", str(tmp_path / "d.csv")]) == 0
    ignored = json.loads((tmp_path / "d.csv.spec.json").read_text())
    assert "reviews" not in ignored
    capsys.readouterr()
    # a log rewritten under the spec is refused, not silently re-applied
    log = read_reviews(run.layout).iloc[1:]
    log.to_parquet(run.layout.reviews, index=False)
    status = main(["export", root, "--spec", str(tmp_path / "a.csv.spec.json"), "--out", str(tmp_path / "e.csv")])
    assert status == 2 and "review log no longer starts with them" in capsys.readouterr().err
    assert not (tmp_path / "e.csv").exists()


def test_review_and_export_reviews_from_the_command_line(run, tmp_path, capsys):
    root = str(run.path)
    assert main(["review", root, "--ids", "syn-0000003", "syn-0000004", "--decision", "drop", "--note", "dup"]) == 0
    assert main(["review", root, "--ids", "syn-0000004", "--decision", "relabel", "--label", "class 1"]) == 0
    assert main(["review", root, "--ids", "syn-9", "--decision", "drop"]) == 2
    assert "not in this run: 'syn-9'" in capsys.readouterr().err
    assert main(["export", root, "--format", "reviews", "--out", str(tmp_path / "r.csv")]) == 0
    table = pd.read_csv(tmp_path / "r.csv", dtype={"sample_id": str}).set_index("sample_id")
    assert table.loc["syn-0000004", "decision"] == "relabel" and table.loc["syn-0000004", "label_name"] == "class 1"
    assert table.loc["syn-0000003", "note"] == "dup" and len(table) == 2
    assert main(["export", root, "--out", str(tmp_path / "x.csv")]) == 2
    assert "give a filter" in capsys.readouterr().err


def test_applying_no_reviews_changes_nothing(run):
    result = apply_rule(run.samples, FilterRule("ensemble", None))
    same = apply_reviews(run.samples, result, AppliedReviews.of(read_reviews(run.layout)))
    assert same is result and np.array_equal(same.keep, run.samples["keep"].to_numpy())
    assert RunLayout(run.path).reviews == run.layout.reviews


def test_a_run_reads_its_reviews_and_vectors_from_python(tmp_path):
    run = open_run(synthetic_run(tmp_path / "vectors", n=40, classes=3, thumbnails=False, embeddings=6))
    assert run.reviews.empty
    _append(run, ["syn-0000002"], "relabel", label="class 1")
    assert run.reviews[["sample_id", "decision", "label_name"]].values.tolist() == [
        ["syn-0000002", "relabel", "class 1"]
    ]
    assert run.reference_probs.shape == (40, 3) and run.embedding("image").shape == (40, 6)
    assert run.embedding("text") is None
