"""The Map view server side (no browser): selections in a box and a lasso, what the galleries and the
"selected N · kept K" line make of them, the selection ANDed into the filter and exported, review marks
and what exports make of them, the given × suggested matrix, "more like this", every colouring renders,
and ``Explorer.selection`` / ``.review`` from Python."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import panel as pn
import pytest
from bokeh.document import Document

from mimic_explorer.filters.rules import all_of, apply_rule, selection
from mimic_explorer.store.reviews import ReviewError, read_reviews
from mimic_explorer.ui import Explorer
from mimic_explorer.ui.map_state import MapState, points_in_polygon
from tests.ui_helpers import synthetic_pairs_run, synthetic_run

pn.extension()


@pytest.fixture
def explorer(tmp_path):
    run = synthetic_run(tmp_path / "run", n=500, classes=4, embeddings=12)
    ex = Explorer(run)
    ex.more_views.open_tab(1)  # the Map tab
    return ex


def _render(viewable) -> None:
    pn.panel(viewable).get_root(Document())


def test_points_in_a_polygon_follow_the_even_odd_rule():
    x, y = np.array([0.5, 1.5, 0.5, 2.5, 1.0]), np.array([0.5, 0.5, 1.5, 2.5, 1.0])
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2]])
    assert points_in_polygon(x, y, square).tolist() == [True, True, True, False, True]
    notch = np.array([[0, 0], [2, 0], [2, 2], [1, 1.2], [0, 2]])  # a concave lasso
    assert points_in_polygon(np.array([1.0, 1.0]), np.array([1.5, 0.5]), notch).tolist() == [False, True]


def test_a_box_selection_drives_the_galleries_and_the_selected_line(explorer):
    view = explorer.map_view
    assert view._built and view.map.name == "image-pca"
    coords = view.map.coords
    x0, y0 = np.nanmedian(coords, axis=0)
    view._on_box((x0, y0, float(coords[:, 0].max()), float(coords[:, 1].max())))
    expected = np.flatnonzero((coords[:, 0] >= x0) & (coords[:, 1] >= y0))
    assert view.selected.tolist() == expected.tolist() and 0 < len(expected) < 500
    keep = explorer.keep_mask
    assert explorer.selection_counts == (len(expected), int(keep[expected].sum()))
    assert f"selected {len(expected):,} · kept {int(keep[expected].sum()):,}" in view.header.object
    assert set(explorer.galleries.shown["lowest"]) <= set(expected.tolist())
    assert "selected on the map" in explorer.galleries.titles["lowest"].object
    assert explorer.selection == explorer.samples["sample_id"].to_numpy()[expected].tolist()
    explorer.threshold = float(np.nanmedian(explorer.state.scores))  # the filter moves: "kept" follows
    assert explorer.selection_counts[1] == int(explorer.keep_mask[expected].sum())
    view.set_selection(None)
    assert explorer.selection is None and "Drag a box" in view.header.object
    assert "selected" not in explorer.galleries.titles["lowest"].object


def test_a_lasso_selects_what_it_encloses(explorer):
    view = explorer.map_view
    coords = view.map.coords
    lo, hi = np.nanpercentile(coords, 20, axis=0), np.nanpercentile(coords, 80, axis=0)
    triangle = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]]])
    view._on_lasso(triangle)
    assert view.selected.tolist() == np.flatnonzero(points_in_polygon(coords[:, 0], coords[:, 1], triangle)).tolist()


def test_the_selection_is_exported_and_anded_into_the_filter(explorer):
    ids = explorer.samples["sample_id"].iloc[[2, 7, 11, 30]].tolist()
    explorer.selection = ids
    exported = pd.read_csv(io.BytesIO(explorer.map_view.selection_file().getvalue()), dtype={"sample_id": str})
    assert sorted(exported["sample_id"]) == sorted(ids)
    before = explorer.current_rule
    explorer.map_view.and_into_filter()
    rule = explorer.current_rule
    assert rule.clauses[-1].kind == "ids" and sorted(rule.clauses[-1].ids) == sorted(ids)
    expected = apply_rule(explorer.samples, all_of([*before.clauses, selection(ids)]))
    assert explorer.counts.kept == expected.kept and np.array_equal(explorer.keep_mask, expected.keep)
    spec = explorer.filter.to_spec(explorer.run.meta, expected, "csv")
    assert spec["rules"][-1]["ids_sha256"] == rule.clauses[-1].ids_sha256
    with pytest.raises(ValueError, match="not in this run"):
        explorer.selection = ["nowhere"]


def test_review_marks_change_the_export_and_bad_marks_write_nothing(explorer):
    samples = explorer.samples
    kept_ids = samples["sample_id"][explorer.keep_mask].iloc[:3].tolist()
    before = explorer.exports._result()
    assert explorer.review(kept_ids, "drop", note="duplicates") == 3
    after = explorer.exports._result()
    assert after.kept == before.kept - 3
    assert not set(kept_ids) & set(samples["sample_id"][after.keep])
    explorer.review(kept_ids[:1], "relabel", label="class 2")
    assert read_reviews(explorer.run.layout)["decision"].tolist() == ["drop"] * 3 + ["relabel"]
    with pytest.raises(ReviewError, match="no class 'wolf'"):
        explorer.review(kept_ids, "relabel", label="wolf")
    with pytest.raises(ReviewError, match="not in this run"):
        explorer.review(["ghost"], "drop")
    assert len(read_reviews(explorer.run.layout)) == 4
    explorer.map_view.colouring = "review decision"
    assert list(explorer.map_view.map.values("review decision")).count("drop") == 2


def test_the_confusion_matrix_cells_select_their_samples(explorer):
    state = MapState(explorer.state)
    table = state.confusion()
    samples = explorer.samples
    assert table["count"].sum() == len(samples)
    row = table.sort_values("count").iloc[-1]
    explorer.map_view._on_cell(row["suggested name"], row["given name"])
    chosen = explorer.map_view.selected
    assert len(chosen) == row["count"]
    assert (samples["label"].to_numpy()[chosen] == row["given"]).all()
    assert (samples["ref_pred"].to_numpy()[chosen] == row["suggested"]).all()


def test_the_confusion_matrix_counts_every_pair_of_given_and_suggested_label(explorer):
    samples = explorer.samples
    frame = pd.DataFrame({"given": samples["label"].to_numpy(), "suggested": samples["ref_pred"].to_numpy()})
    expected = frame.value_counts().rename("count").reset_index().sort_values(["given", "suggested"])
    table = MapState(explorer.state).confusion()
    assert (
        table[["given", "suggested", "count"]].astype("int64").values.tolist()
        == expected.astype("int64").values.tolist()
    )
    assert table["given name"].tolist() == [explorer.state.label_name(v) for v in table["given"]]


def test_more_like_this_lists_nearest_neighbours_and_selects_them(explorer):
    first = explorer.samples["sample_id"].iloc[0]
    similar = explorer.more_like_this(first, 8)
    assert len(similar) == 8 and first not in similar
    truth = explorer.samples.set_index("sample_id")["true_label"]
    assert (truth.loc[similar] == truth.loc[first]).mean() >= 0.75  # neighbours share the true class
    explorer.detail.show(0)
    rows = explorer.detail.show_similar(8)
    assert explorer.samples["sample_id"].to_numpy()[rows].tolist() == similar
    explorer.detail.select_rows(rows)
    assert sorted(explorer.selection) == sorted(similar)


def test_every_colouring_renders(explorer):
    view = explorer.map_view
    for colouring in view.map.colourings():
        view.colouring = colouring
        _render(view)
    view._on_pointer(*view.map.coords[0].tolist())
    assert "me-hover" in view.hover.object and "<img" in view.hover.object


def test_a_pairs_map_highlights_a_caption_search(tmp_path):
    ex = Explorer(synthetic_pairs_run(tmp_path / "pairs", n=300, embeddings=8))
    ex.more_views.open_tab(1)
    view = ex.map_view
    assert "caption search" in view.map.colourings() and "class" not in view.map.colourings()
    word = ex.samples["caption"].iloc[0].split()[1]
    view.search.value = word
    assert view.colouring == "caption search"
    matches = view.map.values("caption search", query=word)
    assert (np.asarray(matches) == "match").sum() == ex.state.caption_matches(word).sum() > 0
    _render(view)


def test_a_run_without_embeddings_says_how_to_get_a_map(tmp_path):
    ex = Explorer(synthetic_run(tmp_path / "bare", n=50))
    ex.more_views.open_tab(1)
    assert not ex.map_view._built
    assert "no embeddings" in ex.map_view._body[0].object and "--coords" in ex.map_view._body[0].object
    assert ex.detail.similar is None


def test_a_filter_saved_with_review_decisions_restores_without_a_false_alarm(tmp_path):
    run = synthetic_run(tmp_path / "saved", n=200, classes=3, embeddings=4, thumbnails=False)
    ex = Explorer(run)
    kept = ex.samples["sample_id"][ex.keep_mask].iloc[:2].tolist()
    ex.review(kept, "drop")
    result, spec, _, _ = ex.save_to_run()
    assert spec["reviews"]["samples"] == 2 and result.kept == int(ex.keep_mask.sum()) - 2
    again = Explorer(run)
    assert "applied 2 review decisions" in again.message and "changed since" not in again.message
