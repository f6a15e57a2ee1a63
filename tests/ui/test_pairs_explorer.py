"""The explorer on image-text pairs runs, and on runs with a combined score, server side (no browser):
captions on cards and in the detail, caption search, CLIP-score columns and the mimic-vs-CLIP scatter,
overall counts instead of per-class views, compound filters from the controls, and the honest default
score of a run with ``combined_score``."""

from __future__ import annotations

import io
import json

import numpy as np
import panel as pn
import pytest
from bokeh.document import Document

from mimic_explorer.filters.rules import FilterRule, all_of, apply_rule
from mimic_explorer.store.reader import open_run
from mimic_explorer.ui import Explorer
from mimic_explorer.ui.state import ExplorerState
from mimic_explorer.ui.summary import summary_facts
from tests.ui_helpers import copy_run, synthetic_pairs_run, synthetic_run

pn.extension("tabulator")


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    return synthetic_pairs_run(tmp_path_factory.mktemp("pairs") / "run", n=500, epochs=2)


@pytest.fixture
def pairs_copy(pairs_dir, tmp_path):
    return copy_run(pairs_dir, tmp_path / "run")


def _render(viewable) -> None:
    pn.panel(viewable).get_root(Document())


@pytest.mark.parametrize("label", ["none", "minus_one"])
def test_a_pairs_pool_has_no_classes_and_counts_overall(tmp_path, label):
    run = open_run(synthetic_pairs_run(tmp_path / "run", n=300, epochs=1, thumbnails=False, label=label))
    state = ExplorerState(run)
    assert not state.has_classes and state.has_captions and state.noisy_word == "swapped caption"
    assert state.column == "mimic_score" and state.score_columns[:3] == [
        "mimic_score",
        "clip_score_ref",
        "clip_score_model",
    ]
    rule = all_of([FilterRule("threshold", 0.5), FilterRule("top_fraction", 0.3, "clip_score_ref")])
    counts = state.counts(rule)
    table = state.retention_table(counts, {}, rule)
    assert list(table["class"]) == ["mimic_score ≥ 0.5", "clip_score_ref top 30.0%", "all clauses (AND)"]
    assert list(table["kept"]) == [counts.clauses[0].kept, 90, counts.kept] and (table["samples"] == 300).all()
    assert list(table["swapped caption dropped"]) == [c.noisy_dropped for c in counts.clauses] + [counts.noisy_dropped]
    single = state.retention_table(state.counts(FilterRule("threshold", 0.5)))
    assert (
        list(single["class"]) == ["all samples"]
        and single["kept"].iloc[0] == apply_rule(run.samples, FilterRule("threshold", 0.5)).kept
    )
    facts = dict(summary_facts(run.meta, run.samples))
    assert facts["pool"] == "image-text pairs" and "classes" not in facts


def test_caption_search_narrows_the_galleries_and_says_how_many_match(pairs_dir):
    state = ExplorerState(open_run(pairs_dir))
    captions = state.samples["caption"].str.lower()
    matched = state.narrow("  Red CIRCLE ")
    assert matched == int(captions.str.contains("red circle", regex=False).sum()) > 0
    lowest, highest = state.lowest(matched + 10), state.highest(5)
    assert len(lowest) == matched and captions.iloc[lowest].str.contains("red circle").all()
    assert captions.iloc[highest].str.contains("red circle").all()
    assert np.all(np.diff(state.scores[lowest]) >= 0)
    assert captions.iloc[state.around(0.5, 8)].str.contains("red circle").all()
    assert state.narrow("no such words") == 0 and len(state.lowest(5)) == 0
    assert state.narrow("") is None and len(state.lowest(500)) == 500


@pytest.mark.slow
def test_pairs_explorer_shows_captions_search_overall_counts_and_no_class_views(pairs_copy):
    explorer = Explorer(pairs_copy)
    _render(explorer)
    samples = explorer.samples
    cards = explorer.galleries.galleries["lowest"].cards
    first = int(explorer.galleries.shown["lowest"][0])
    assert 'class="me-grid pairs"' in cards and cards.count('class="me-caption"') == explorer.galleries.gallery_size
    caption = samples["caption"].iloc[first]
    assert (
        f'<div class="me-caption">{caption}</div>' in cards and f'title="{caption}' in cards
    )  # wrapped; full on hover
    assert "label <b>" not in cards and "caption swapped" in cards
    assert not explorer.galleries.class_select.visible and explorer.galleries.search_box.visible
    assert not explorer.filter_controls.per_class.visible
    assert "Per class" not in explorer.more_views.tabs._names
    assert list(explorer.distribution.table.value["class"]) == ["all samples"]
    assert "swapped caption (ground truth)" in [layer.label for layer in explorer.distribution.histogram.object]

    matched = explorer.search("blue square")
    assert matched == int(samples["caption"].str.contains("blue square", case=False).sum())
    assert f"{matched:,} of 500 captions contain" in explorer.galleries.match_note.object
    for name in ("lowest", "highest", "third"):
        shown = explorer.galleries.shown[name]
        assert len(shown) and samples["caption"].iloc[shown].str.contains("blue square").all()
    assert "among captions with “blue square”" in explorer.galleries.titles["lowest"].object
    assert explorer.search("") is None and explorer.galleries.match_note.object == ""

    explorer.select(samples["sample_id"].iloc[first])  # the detail: the caption whole, every text field
    detail = explorer.detail._info.object
    assert f'<div class="caption">{caption}</div>' in detail and 'class="photo"' in detail
    for field in ("caption", "source", "clip_score_ref", "clip_score_model", "reference_loss"):
        assert f"<td>{field}</td>" in detail


def test_the_scatter_of_a_pairs_run_is_mimic_against_the_clip_score(pairs_copy):
    explorer = Explorer(pairs_copy)
    tabs = explorer.more_views.tabs
    tabs.active = tabs._names.index("Scatter")
    _render(explorer)
    view = tabs[tabs.active][0]
    x, y = view[0][0], view[0][1]
    assert (x.value, y.value) == ("mimic_score", "clip_score_ref") and "clip_score_model" in y.options
    assert "combined_score" not in explorer.filter_controls.column.options  # only what the run has
    assert {"clip_score_ref", "clip_score_model"} <= set(explorer.filter_controls.column.options)


@pytest.mark.slow
def test_a_large_pairs_scatter_is_rasterized_with_datashader(tmp_path):
    explorer = Explorer(synthetic_pairs_run(tmp_path / "big", n=60_000, epochs=1, thumbnails=False))
    tabs = explorer.more_views.tabs
    tabs.active = tabs._names.index("Scatter")
    _render(explorer)
    scatter = tabs[tabs.active][0]
    view = scatter[1]._pane if hasattr(scatter[1], "_pane") else scatter[1]
    assert "60,000 points rasterized with Datashader" in view[0].object


def test_a_compound_filter_from_the_controls_changes_kept_and_exports(pairs_copy):
    explorer = Explorer(pairs_copy)
    _render(explorer)
    controls = explorer.filter_controls
    before = explorer.counts.kept
    controls.add_clause.clicks += 1  # "+ AND a rule on another column"
    assert len(explorer.filter.more) == 1 and len(controls.boxes) == 1 and explorer.counts.kept == before
    box = controls.boxes[0]
    assert box.clause.column == "clip_score_ref"  # the first column no clause uses
    box.widgets.rule.value = "top_fraction"
    box.widgets.top_fraction.value = 0.3
    rule = all_of([FilterRule("threshold", explorer.threshold), FilterRule("top_fraction", 0.3, "clip_score_ref")])
    expected = apply_rule(explorer.samples, rule)
    assert explorer.current_rule == rule and explorer.counts.kept == expected.kept < before
    assert (
        f"Kept: {expected.kept} of 500" in controls.kept.object
        and "AND clip_score_ref top 30.0%" in controls.kept.object
    )
    shown = explorer.galleries.shown["highest"]
    assert set(explorer.galleries.galleries["highest"].dropped) == {int(p) for p in shown if not expected.keep[p]}
    explorer.exports.format.value = "uids"
    pairs = np.load(io.BytesIO(explorer.exports.keep_list_file().getvalue()))
    assert len(pairs) == expected.kept and pairs.dtype == np.dtype([("f0", "<u8"), ("f1", "<u8")])
    spec = json.loads(explorer.exports.spec_file().getvalue())
    assert [r["kind"] for r in spec["rules"]] == ["threshold", "top_fraction"] and spec["kept"] == expected.kept
    explorer.save_to_run("uids")
    again = Explorer(pairs_copy)  # the saved AND is restored, clauses and all
    assert again.current_rule == rule and again.counts.kept == expected.kept
    assert len(again.filter_controls.boxes) == 1
    box.remove.clicks += 1
    assert explorer.filter.more == [] and controls.boxes == [] and explorer.counts.kept == before


@pytest.mark.slow
def test_a_run_with_a_combined_score_opens_on_it_and_says_why(tmp_path):
    run_dir = synthetic_run(tmp_path / "run", n=600, classes=4, epochs=2, combined=True)
    explorer = Explorer(run_dir)
    _render(explorer)
    samples = explorer.samples
    assert explorer.column == "combined_score" and list(explorer.filter_controls.column.options)[:2] == [
        "combined_score",
        "mimic_score",
    ]
    note = explorer.filter_controls.score_note
    assert (
        note.visible
        and "beat mimic_score alone" in note[0].object
        and "within 0.005 AUROC of the best single signal" in note[0].object
        and note[0].visible
    )
    cut = samples.loc[samples["combined_keep"], "combined_score"].min()  # starts at the combined filter's own cut
    assert explorer.threshold == pytest.approx(cut) and explorer.counts.kept == int(samples["combined_keep"].sum())
    explorer.rule = "ensemble"  # on combined_score: its own split, combined_keep
    assert explorer.counts.kept == int(samples["combined_keep"].sum()) != int(samples["keep"].sum())
    assert np.array_equal(explorer.keep_mask, samples["combined_keep"].to_numpy())
    explorer.rule = "threshold"
    switch = note[1]
    assert switch.label == "Show mimic_score instead"
    switch.clicks += 1  # mimic_score, one click away
    assert explorer.column == "mimic_score" and not note[0].visible and switch.label == "Show combined_score"
    switch.clicks += 1
    assert explorer.column == "combined_score"
    facts = dict(summary_facts(explorer.run.meta, samples))
    assert (
        facts["quality, combined filter"] == f"{samples['combined_keep'].mean():.3f}" and "estimated quality" in facts
    )
    assert Explorer(run_dir, column="mimic_score").column == "mimic_score"
    plain = Explorer(synthetic_run(tmp_path / "plain", n=300, classes=3, epochs=1))
    assert plain.column == "mimic_score" and not plain.filter_controls.score_note.visible


def test_the_uids_format_on_a_run_without_uids_says_why_and_stays_on_the_old_format(tmp_path):
    explorer = Explorer(synthetic_run(tmp_path / "run", n=200, classes=3, epochs=1, thumbnails=False))
    explorer.exports.format.value = "json"
    explorer.exports.format.value = "uids"
    assert explorer.exports.format.value == "json"
    assert "not 32-hex-digit (128-bit) uids, e.g. 'syn-0000000'" in explorer.notice.message


def test_a_pairs_run_opens_on_its_combined_score_with_the_pairs_note(tmp_path):
    explorer = Explorer(synthetic_pairs_run(tmp_path / "run", n=300, epochs=1, combined=True, thumbnails=False))
    _render(explorer)
    assert explorer.column == "combined_score"
    note = explorer.filter_controls.score_note
    assert note.visible and note[0].visible
    assert "CLIP score" in note[0].object and "hard" in note[0].object  # the pairs note, not the labelled one
    assert "all 20 settings measured" not in note[0].object  # the labelled note's claim
    note[1].clicks += 1  # mimic_score one click away, as on labelled runs
    assert explorer.column == "mimic_score" and not note[0].visible
