"""The explorer's UI-free logic: live counts equal filters.apply_rule, galleries pick the right rows,
tables and histograms say what they should, runs/epochs/thumbnails are read correctly. No panel views."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.filters.rules import CompoundRule, FilterError, FilterRule, all_of, apply_rule
from mimic_explorer.store.filter_files import latest_saved_rule, save_to_run, saved_specs
from mimic_explorer.store.listing import find_runs
from mimic_explorer.store.reader import open_run
from mimic_explorer.store.scores import EpochScores
from mimic_explorer.store.thumbs import ThumbnailReader
from mimic_explorer.ui.counting import RuleCounter, compound_counts
from mimic_explorer.ui.state import ExplorerState, histogram, robust_range
from mimic_explorer.ui.summary import BASIS_WARNING, run_warnings, summary_facts
from mimic_explorer.ui.thumbnails import PLACEHOLDER, ThumbnailURIs
from tests.ui_helpers import synthetic_run


def _frame(
    seed: int, n: int, decimals: int, nan: float = 0.05, posinf: bool = False, neginf: bool = False
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.normal(size=n), decimals)  # few decimals: many ties
    scores[rng.random(n) < nan] = np.nan
    if posinf:
        scores[rng.random(n) < 0.02] = np.inf
    if neginf:
        scores[rng.random(n) < 0.02] = -np.inf
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(n)],
            "label": rng.integers(0, 6, n) * 3,
            "is_noisy": rng.random(n) < 0.3,
            "keep": rng.random(n) < 0.7,
            "mimic_score": scores,
        }
    )


RULES = [
    FilterRule("threshold", 0.3),
    FilterRule("threshold", float("inf")),
    FilterRule("threshold", -5.0),
    FilterRule("threshold", 0.1, class_overrides={3: -1.0, 99: 0.0}),
    FilterRule("quantile", 0.0),
    FilterRule("quantile", 0.25),
    FilterRule("quantile", 1.0),
    FilterRule("quantile", 0.9, per_class=True),
    FilterRule("keep_count", 0),
    FilterRule("keep_count", 137),
    FilterRule("keep_count", 10_000),
    FilterRule("keep_count", 137, per_class=True),
    FilterRule("ensemble"),
]


def _clean(thresholds: dict) -> dict:
    return {k: None if v is None or np.isnan(v) else v for k, v in thresholds.items()}


@pytest.mark.parametrize(
    "case", [(0, 2000, 1, False, False), (1, 777, 2, True, False), (2, 300, 0, True, True), (3, 1, 1, False, False)]
)
def test_live_counts_equal_apply_rule_on_every_rule(case):
    seed, n, decimals, posinf, neginf = case
    samples = _frame(seed, n, decimals, posinf=posinf, neginf=neginf)
    counter = RuleCounter(samples, "mimic_score")
    noisy = samples["is_noisy"].to_numpy()
    for rule in RULES:
        expected, got = apply_rule(samples, rule), counter.counts(rule)
        assert got.kept == expected.kept, rule
        assert got.kept_per_class == expected.kept_per_class, rule
        assert got.total_per_class == expected.total_per_class, rule
        assert _clean(got.thresholds) == _clean(expected.thresholds), rule
        assert got.noisy_dropped == int((~expected.keep & noisy).sum()), rule


def test_descending_order_is_apply_rules_keep_count_order():
    for seed, neginf in ((0, False), (1, True)):
        samples = _frame(seed, 3000, 1, posinf=True, neginf=neginf)
        scores = samples["mimic_score"].to_numpy()
        expected = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
        np.testing.assert_array_equal(RuleCounter(samples, "mimic_score").descending, expected)


def test_precision_recall_at_threshold():
    samples = pd.DataFrame(
        {
            "sample_id": list("abcdef"),
            "label": [0, 0, 0, 1, 1, 1],
            "is_noisy": [True, True, False, False, True, False],
            "mimic_score": [0.1, 0.2, 0.9, 0.15, 0.8, 0.95],
        }
    )
    counts = RuleCounter(samples, "mimic_score").counts(FilterRule("threshold", 0.5))
    # dropped: a, b, d (scores < 0.5); mislabeled among them: a, b -> precision 2/3; recall 2/3 (e is kept)
    assert counts.dropped == 3 and counts.noisy_dropped == 2 and counts.noisy_total == 3
    assert counts.precision == pytest.approx(2 / 3) and counts.recall == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    return synthetic_run(tmp_path_factory.mktemp("ui-state") / "run", n=600, classes=4, epochs=3)


def test_galleries_pick_lowest_highest_around_and_band(small_run):
    state = ExplorerState(open_run(small_run))
    scores = state.scores
    k = 7
    lowest, highest = state.lowest(k), state.highest(k)
    assert np.allclose(np.sort(scores[lowest]), np.sort(scores)[:k])
    assert np.allclose(np.sort(scores[highest]), np.sort(scores)[-k:])
    threshold = float(np.median(scores))
    around = state.around(threshold, k)
    assert len(around) == k
    below, above = (scores[around] < threshold).sum(), (scores[around] >= threshold).sum()
    assert below == k // 2 and above == k - k // 2
    nearest = np.sort(np.abs(scores - threshold))[k]
    assert (np.abs(scores[around] - threshold) <= nearest + 1e-12).all()
    band = state.band(0.4, 0.6, k)
    assert len(band) == k and ((scores[band] >= 0.4) & (scores[band] <= 0.6)).all()
    assert len(state.band(5.0, 6.0, k)) == 0  # an empty band is an empty gallery, not an error
    labels = state.samples["label"].to_numpy()
    one_class = state.lowest(k, label=2)
    assert (labels[one_class] == 2).all()
    assert np.allclose(scores[one_class], np.sort(scores[labels == 2])[:k])


def test_keep_status_of_cards_matches_the_export_mask(small_run):
    state = ExplorerState(open_run(small_run))
    positions = np.concatenate([state.lowest(20), state.highest(20), state.around(0.5, 20)])
    rules = [
        FilterRule("threshold", 0.5),
        FilterRule("threshold", 0.5, class_overrides={1: 0.8}),
        FilterRule("quantile", 0.3, per_class=True),
        FilterRule("keep_count", 250),
        FilterRule("keep_count", 250, per_class=True),
        FilterRule("ensemble"),
    ]
    for rule in rules:
        mask = state.apply(rule).keep
        np.testing.assert_array_equal(
            state.keep_status(positions, rule, state.counts(rule)), mask[positions], str(rule)
        )


def test_retention_table_before_and_after(small_run):
    state = ExplorerState(open_run(small_run))
    counts = state.counts(FilterRule("threshold", 0.5, class_overrides={0: 0.9}))
    table = state.retention_table(counts, {0: 0.9})
    assert list(table["class"]) == ["class 0", "class 1", "class 2", "class 3"]
    assert table["samples"].sum() == 600 and table["kept"].sum() == counts.kept
    assert table["share before %"].sum() == pytest.approx(100, abs=0.3)
    assert table["share after %"].sum() == pytest.approx(100, abs=0.3)
    row0 = table.iloc[0]
    assert row0["threshold"] == 0.9 and row0["override"] == 0.9 and np.isnan(table.iloc[1]["override"])
    assert row0["retained %"] == pytest.approx(100 * row0["kept"] / row0["samples"], abs=0.05)
    assert "mislabeled" in table.columns


def test_histogram_uses_a_robust_range_and_counts_every_sample():
    values = np.concatenate([np.random.default_rng(0).normal(size=5000), [1e6, -1e6], [np.nan]])
    lo, hi = robust_range(values)
    assert -5 < lo < -2 and 2 < hi < 5  # the two outliers do not stretch the axis
    hist = histogram(values, noisy=np.arange(len(values)) % 2 == 0)
    assert hist.counts.sum() == 5002 and hist.clipped >= 2  # outliers land in the edge bins
    assert 20 <= len(hist.counts) <= 120 and hist.noisy.sum() == 2501


def test_kept_curve_is_monotone_and_matches_counts(small_run):
    state = ExplorerState(open_run(small_run))
    curve = state.kept_curve()
    assert (np.diff(curve["kept"]) <= 0).all()
    t = float(curve["threshold"].iloc[100])
    assert curve["kept"].iloc[100] == state.counts(FilterRule("threshold", t)).kept
    assert (curve["clean kept"] + curve["noisy kept"] == curve["kept"]).all()


def test_summary_facts_and_feature_basis_warning(small_run):
    run = open_run(small_run)
    facts = dict(summary_facts(run.meta, run.samples))
    assert facts["samples"] == "600" and facts["classes"] == "4" and facts["epochs"] == "3"
    assert "estimated quality" in facts and "true quality" in facts
    assert run_warnings({"same_init": True, "warnings": []}) == []
    assert run_warnings({"same_init": False, "warnings": []}) == [BASIS_WARNING]
    own = "reference init differs from the model's: scores may be meaningless"
    assert run_warnings({"same_init": False, "warnings": [own]}) == [own]  # not said twice
    assert "combined filter: not to be trusted" not in facts


def test_summary_facts_say_when_the_combined_split_is_not_to_be_trusted(small_run):
    run = open_run(small_run)
    meta = {**run.meta, "summary": {**run.meta.get("summary", {}), "combined_quality": 0.78}}
    meta["summary"]["combined_split"] = {"method": "noise model", "separation": 2.4, "warnings": []}
    assert "combined filter: not to be trusted" not in dict(summary_facts(meta, run.samples))
    overlap = "the clean and noisy groups overlap on the score (Ashman's D 1.61 < 2)"
    meta["summary"]["combined_split"] = {"method": "noise model", "separation": 1.61, "warnings": [overlap]}
    facts = dict(summary_facts(meta, run.samples))
    assert facts["quality, combined filter"] == "0.780"
    assert facts["combined filter: not to be trusted"] == overlap


def test_find_runs_lists_runs_with_their_status(tmp_path, small_run):
    import shutil

    shutil.copytree(small_run, tmp_path / "a")
    (tmp_path / "project" / "b").mkdir(parents=True)
    (tmp_path / "project" / "b" / "meta.json").write_text(json.dumps({"status": "running", "run_id": "b"}))
    (tmp_path / "notes").mkdir()
    entries = {e.run_id: e for e in find_runs(tmp_path)}
    assert set(entries) == {"synthetic-600", "b"}
    assert entries["b"].status == "running" and "[running]" in entries["b"].label


def test_epoch_scores_trajectories_and_bands(small_run):
    run = open_run(small_run)
    epochs = run.epoch_scores
    assert epochs.available and epochs.epochs == [0, 1, 2] and "proj" in epochs.signals
    ids = list(run.samples["sample_id"].iloc[[3, 10]])
    traj = epochs.trajectories(ids)
    assert len(traj) == 6 and set(traj["sample_id"]) == set(ids)
    expected = run.scores.set_index(["sample_id", "epoch"]).loc[(ids[0], 2), "proj"]
    assert traj.set_index(["sample_id", "epoch"]).loc[(ids[0], 2), "proj"] == pytest.approx(expected)
    noisy_ids = epochs.id_set(run.samples.loc[run.samples["is_noisy"], "sample_id"])
    bands = epochs.quantile_bands("proj", noisy_ids)
    assert set(bands["group"]) == {"clean", "mislabeled"} and len(bands) == 6
    last = bands[(bands["epoch"] == 2) & (bands["group"] == "mislabeled")].iloc[0]
    assert last["q5"] <= last["q50"] <= last["q95"]
    assert not EpochScores(small_run / "nowhere").available


def test_thumbnails_by_position_by_id_and_missing(tmp_path, small_run):
    import shutil

    run = open_run(small_run)
    ids = run.samples["sample_id"].tolist()
    reader = run.thumbnails
    thumbs = ThumbnailURIs(reader)
    assert thumbs.uri(ids[5], 5).startswith("data:image/webp;base64,") and thumbs.complete
    assert reader.get(ids[5], 99) == reader.get(ids[5], 5) == reader.get(ids[5])  # wrong or no position: found by id
    assert ids[5] in reader and "no-such-sample" not in reader
    assert thumbs.uri("no-such-sample") == PLACEHOLDER and reader.missing == 1 and not thumbs.complete
    moved = shutil.copytree(small_run, tmp_path / "moved")
    (moved / "thumbs" / "thumbs.bin").write_bytes(b"")  # images gone: placeholders, no error
    assert ThumbnailURIs(ThumbnailReader(moved)).uri(ids[5], 5) == PLACEHOLDER
    shutil.rmtree(moved / "thumbs")
    gone = ThumbnailURIs(ThumbnailReader(moved))
    assert not gone.reader.available and gone.uri(ids[0]) == PLACEHOLDER and not gone.complete


def test_save_to_run_and_restore_the_latest_spec(tmp_path, small_run):
    import shutil

    run_dir = shutil.copytree(small_run, tmp_path / "run")
    run = open_run(run_dir)
    assert latest_saved_rule(run_dir, run.meta) is None
    rule = FilterRule("quantile", 0.3, per_class=True)
    result, spec, out, spec_path = save_to_run(run_dir, run.samples, run.meta, rule, "csv")
    assert out.parent == run_dir / "filters" and out.exists() and spec_path.exists()
    assert len(pd.read_csv(out)) == result.kept == spec["kept"]
    save_to_run(run_dir, run.samples, run.meta, rule, "csv")  # same rule again: same files, not a second copy
    assert len(saved_specs(run_dir)) == 1
    saved = latest_saved_rule(run_dir, run.meta)
    assert saved.rule == rule and saved.spec["kept"] == result.kept and saved.keep_list_problem is None
    other = dict(run.meta, run_id="another-run")
    with pytest.raises(FilterError, match="another run|not on this run"):
        latest_saved_rule(run_dir, other)
    spec_path.write_text("{not json")
    with pytest.raises(FilterError, match=f"saved filter {spec_path.name}: not JSON"):
        latest_saved_rule(run_dir, run.meta)


# ---------------------------------------------------------------------------------------- AND of clauses


def _two_columns(seed: int, n: int, labels: str = "classes") -> pd.DataFrame:
    frame = _frame(seed, n, 1, posinf=True)
    rng = np.random.default_rng(seed + 100)
    frame["clip_score_ref"] = np.round(rng.normal(size=n), 1)
    frame.loc[rng.random(n) < 0.03, "clip_score_ref"] = np.nan
    if labels == "none":
        frame = frame.drop(columns=["label"])
    elif labels == "minus_one":
        frame["label"] = -1
    return frame


COMPOUNDS = [
    all_of([FilterRule("quantile", 0.15), FilterRule("top_fraction", 0.3, "clip_score_ref")]),
    all_of([FilterRule("threshold", 0.1, class_overrides={3: -1.0}), FilterRule("keep_count", 400, "clip_score_ref")]),
    all_of([FilterRule("ensemble"), FilterRule("threshold", 0.0, "clip_score_ref"), FilterRule("top_fraction", 0.9)]),
    all_of(
        [
            FilterRule("top_fraction", 0.5, per_class=True),
            FilterRule("keep_count", 300, "clip_score_ref", per_class=True),
        ]
    ),
    all_of([FilterRule("quantile", 1.0), FilterRule("quantile", 0.0, "clip_score_ref")]),
]


@pytest.mark.parametrize("labels", ["classes", "none", "minus_one"])
def test_live_counts_of_an_and_equal_apply_rule(labels):
    samples = _two_columns(4, 1500, labels)
    counters = {c: RuleCounter(samples, c) for c in ("mimic_score", "clip_score_ref")}
    noisy = samples["is_noisy"].to_numpy()
    for rule in [*COMPOUNDS, FilterRule("top_fraction", 0.37), FilterRule("top_fraction", 0.37, "clip_score_ref")]:
        if labels != "classes" and any(c.per_class or c.class_overrides for c in rule.clauses):
            continue
        expected = apply_rule(samples, rule)
        if isinstance(rule, CompoundRule):
            got = compound_counts(rule, lambda column: counters[column or "mimic_score"])
            np.testing.assert_array_equal(got.keep, expected.keep, str(rule))
            assert [p.kept for p in got.clauses] == [p.kept for p in expected.clauses], rule
        else:
            got = counters[rule.column].counts(rule)
        assert (got.kept, got.kept_per_class, got.total_per_class) == (
            expected.kept,
            expected.kept_per_class,
            expected.total_per_class,
        ), rule
        assert got.noisy_dropped == int((~expected.keep & noisy).sum()), rule


def test_each_clause_mask_from_its_counts_is_apply_rules_mask():
    samples = _frame(5, 1200, 1, posinf=True, neginf=True)
    counter = RuleCounter(samples, "mimic_score")
    for rule in [*RULES, FilterRule("top_fraction", 0.4), FilterRule("top_fraction", 0.4, per_class=True)]:
        np.testing.assert_array_equal(
            counter.mask(rule, counter.counts(rule)), apply_rule(samples, rule).keep, str(rule)
        )


def test_an_and_in_the_explorer_state_marks_cards_and_counts_per_clause(small_run):
    state = ExplorerState(open_run(small_run))
    state.column = "mimic_score"
    rule = all_of([FilterRule("quantile", 0.2), FilterRule("top_fraction", 0.5, "reference_loss")])
    counts = state.counts(rule)
    expected = apply_rule(state.samples, rule)
    assert counts.kept == expected.kept and counts.thresholds == expected.clauses[0].thresholds
    positions = np.concatenate([state.lowest(30), state.highest(30)])
    np.testing.assert_array_equal(state.keep_status(positions, rule, counts), expected.keep[positions])
    np.testing.assert_array_equal(state.apply(rule).keep, expected.keep)
    with pytest.raises(ValueError, match="rule is on 'reference_loss'"):
        state.counts(all_of(rule.clauses[::-1]))


def test_keep_count_cards_follow_a_new_column():
    samples = _two_columns(6, 400)
    run = SimpleNamespace(samples=samples, class_names=[])
    state = ExplorerState(run, "mimic_score")
    rule = FilterRule("keep_count", 100)
    state.keep_status(np.arange(10), rule, state.counts(rule))  # ranks of mimic_score, cached
    state.column = "clip_score_ref"
    rule = FilterRule("keep_count", 100, "clip_score_ref")
    positions = np.arange(400)
    np.testing.assert_array_equal(
        state.keep_status(positions, rule, state.counts(rule)), apply_rule(samples, rule).keep
    )
