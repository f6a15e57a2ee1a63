"""The Explorer and the served page, server side (no browser): Python API, widgets, exports, saved
filters, bad input shown in the page, every view renders into a Bokeh document, and no torch."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import panel as pn
import pytest
from bokeh.document import Document

from mimic_explorer.filters.rules import FilterRule, apply_rule
from mimic_explorer.ui import Explorer, ExplorerPage
from mimic_explorer.ui.page import build_page
from mimic_explorer.ui.thumbnails import PLACEHOLDER
from tests.ui_helpers import copy_run, synthetic_run

pn.extension("tabulator")


@pytest.fixture
def run_copy(demo_run, tmp_path):
    return copy_run(demo_run, tmp_path / "run")


def _render(viewable) -> None:
    pn.panel(viewable).get_root(Document())


def test_threshold_from_python_drives_counts_text_table_and_mask(run_copy):
    explorer = Explorer(run_copy, column="mimic_score")
    _render(explorer)
    samples = explorer.samples
    explorer.threshold = 0.5
    expected = apply_rule(samples, FilterRule("threshold", 0.5))
    assert explorer.counts.kept == expected.kept
    assert f"Kept: {expected.kept} of {len(samples)}" in explorer.filter_controls.kept.object
    np.testing.assert_array_equal(explorer.keep_mask, expected.keep)
    table = explorer.distribution.table.value
    assert table["kept"].sum() == expected.kept and table["samples"].sum() == len(samples)
    assert explorer.filter_controls.slider.value == pytest.approx(0.5, abs=explorer.filter_controls.slider.step)
    assert "precision" in explorer.filter_controls.kept.object  # the demo has ground truth


def test_a_real_train_run_opens_on_its_combined_score(run_copy):
    explorer = Explorer(run_copy)
    assert "combined_score" in explorer.samples.columns  # the demo is a train run with a reference loss
    assert explorer.state.column == "combined_score"
    assert explorer.counts.kept == int(explorer.samples["combined_keep"].sum())  # opens at its own split


def test_rules_switch_and_by_value_starts_at_the_last_cut(run_copy):
    explorer = Explorer(run_copy, column="mimic_score")
    explorer.filter.param.update(rule="quantile", quantile=0.3)
    q = apply_rule(explorer.samples, FilterRule("quantile", 0.3))
    assert (
        explorer.counts.kept == q.kept
        and not explorer.filter_controls.slider.visible
        and explorer.filter_controls.quantile.visible
    )
    explorer.rule = "threshold"
    assert explorer.threshold == pytest.approx(q.thresholds["all"]) and explorer.counts.kept == q.kept
    explorer.filter.param.update(rule="keep_count", keep_count=500, per_class=True)
    assert explorer.counts.kept == 500
    explorer.rule = "ensemble"
    assert explorer.counts.kept == int(explorer.samples["keep"].sum())
    explorer.threshold = 0.2  # setting a threshold from Python means "by value"
    assert explorer.rule == "threshold"


def test_class_override_typed_in_the_table(run_copy):
    explorer = Explorer(run_copy, column="mimic_score")
    explorer.threshold = 0.5
    row = int(np.flatnonzero(explorer.distribution.table.value["label"] == 3)[0])
    explorer.distribution.on_table_edit(SimpleNamespace(column="override", row=row, value=0.99))
    assert explorer.class_overrides == {3: 0.99}
    expected = apply_rule(explorer.samples, FilterRule("threshold", 0.5, class_overrides={3: 0.99}))
    assert explorer.counts.kept_per_class == expected.kept_per_class
    assert explorer.distribution.table.value.set_index("label").loc[3, "threshold"] == 0.99
    explorer.distribution.on_table_edit(SimpleNamespace(column="override", row=row, value=None))
    assert explorer.class_overrides == {}


def test_typed_threshold_outside_the_range_is_clamped_with_a_message(run_copy):
    explorer = Explorer(run_copy)
    _lo, hi = explorer.state.score_range()
    explorer.filter_controls.typed.value = hi + 100
    assert explorer.threshold == pytest.approx(hi)
    assert explorer.notice.alert.visible and "outside the range" in explorer.notice.alert.object


def test_controls_are_views_of_the_filter_model(tmp_path):
    explorer = Explorer(synthetic_run(tmp_path / "run", n=600, classes=4, epochs=2))
    controls = explorer.filter_controls
    controls.slider.value = 0.61
    assert explorer.threshold == 0.61 and controls.typed.value == 0.61
    assert explorer.counts.kept == apply_rule(explorer.samples, FilterRule("threshold", 0.61)).kept
    controls.rule.value = "quantile"
    assert explorer.rule == "quantile" and controls.quantile.visible and controls.per_class.visible
    assert not (controls.slider.visible or controls.typed.visible or controls.keep_n.visible)
    controls.quantile.value, controls.per_class.value = 0.2, True
    assert explorer.current_rule == FilterRule("quantile", 0.2, per_class=True)
    explorer.set_rule(FilterRule("keep_count", 300))
    assert (controls.rule.value, controls.keep_n.value, controls.per_class.value) == ("keep_count", 300, False)
    explorer.distribution.on_table_edit(SimpleNamespace(column="override", row=0, value=0.9))
    assert controls.rule.value == "threshold" and controls.clear_overrides.visible
    controls.clear_overrides.clicks += 1
    assert explorer.class_overrides == {} and not controls.clear_overrides.visible
    explorer.threshold = 1e9  # from Python a threshold beyond every score is kept as given: it keeps nothing
    assert controls.slider.value == 1e9 and explorer.counts.kept == 0
    _lo, hi = explorer.state.score_range()
    for _ in range(2):  # typed twice: the second time the threshold already is the clamped value
        controls.typed.value = hi + 5
        assert (
            explorer.threshold == controls.typed.value == pytest.approx(hi) and "outside the range" in explorer.message
        )


def test_empty_selection_is_allowed_and_said(run_copy):
    explorer = Explorer(run_copy)
    explorer.threshold = 1e9
    assert explorer.counts.kept == 0 and "keeps no samples" in explorer.notice.alert.object
    data = explorer.exports.keep_list_file().getvalue().decode()
    assert data.strip().splitlines() == ["sample_id,source,label,score,keep"]
    explorer.threshold = 0.5
    assert not explorer.notice.alert.visible


def test_download_is_the_export_code_path(run_copy):
    explorer = Explorer(run_copy)
    explorer.filter.param.update(rule="quantile", quantile=0.4, per_class=True)
    frame = pd.read_csv(io.BytesIO(explorer.exports.keep_list_file().getvalue()))
    expected = apply_rule(explorer.samples, explorer.current_rule)
    assert len(frame) == expected.kept and set(frame["sample_id"]) == set(explorer.samples["sample_id"][expected.keep])
    spec = json.loads(explorer.exports.spec_file().getvalue())
    assert (
        spec["rule"]["kind"] == "quantile" and spec["kept"] == expected.kept and spec["run_id"] == explorer.run.run_id
    )
    explorer.exports.format.value = "npy"
    assert explorer.exports.download.filename.endswith(".npy")
    mask = np.load(io.BytesIO(explorer.exports.keep_list_file().getvalue()))
    np.testing.assert_array_equal(mask, expected.keep)


def test_save_to_run_is_restored_on_reload(run_copy):
    explorer = Explorer(run_copy)
    explorer.filter.param.update(rule="keep_count", keep_count=900, per_class=True)
    explorer.exports.save.clicks += 1  # the "Save to run" button
    assert explorer.notice.alert.alert_type == "success" and "Saved 900 of" in explorer.notice.alert.object
    saved = sorted((run_copy / "filters").iterdir())
    assert [p.suffix for p in saved] == [".csv", ".json"]
    again = Explorer(run_copy)
    assert (again.rule, again.keep_count, again.per_class) == ("keep_count", 900, True)
    assert again.counts.kept == 900 and "Restored the filter" in again.notice.alert.object
    assert Explorer(run_copy, restore=False).rule == "threshold"


def test_unreadable_saved_spec_is_reported_not_fatal(run_copy):
    (run_copy / "filters").mkdir()
    (run_copy / "filters" / "x.csv.spec.json").write_text(
        json.dumps({"rule": {"kind": "threshold", "value": 1}, "run_id": "someone-else"})
    )
    explorer = Explorer(run_copy)
    assert explorer.rule == "threshold" and "not restored" in explorer.message


def test_an_edited_saved_filter_is_refused_and_a_torn_pair_is_said(run_copy):
    explorer = Explorer(run_copy)
    explorer.filter.param.update(rule="keep_count", keep_count=700, per_class=False)
    _, spec, out, spec_path = explorer.save_to_run("csv")
    spec["rule"]["value"] = 100  # edited by hand, hash left alone
    spec_path.write_text(json.dumps(spec))
    edited = Explorer(run_copy)
    assert edited.rule != "keep_count" and edited.notice.alert.alert_type == "warning"
    assert (
        "Saved filter not restored: saved filter keep-list-" in edited.message
        and "the rule's keep-count is 100 but the hashed spec says 700" in edited.message
    )
    spec["rule"]["value"] = 700
    spec_path.write_text(json.dumps(spec))
    out.write_text(out.read_text() + "extra,row,0,0.0,True\n")  # no longer the keep-list its spec describes
    torn = Explorer(run_copy)
    assert (torn.rule, torn.keep_count, torn.counts.kept) == ("keep_count", 700, 700)
    assert torn.notice.alert.alert_type == "warning" and "Its keep-list does not match" in torn.message


def test_gallery_click_opens_detail_and_trajectory(run_copy):
    explorer = Explorer(run_copy)
    _render(explorer)
    lowest = explorer.galleries.shown["lowest"]
    assert (
        len(lowest) == explorer.galleries.gallery_size
        and explorer.galleries.galleries["lowest"].cards.count("me-card") >= 16
    )
    sample_id = explorer.samples["sample_id"].iloc[lowest[0]]
    explorer.galleries.galleries["lowest"]._handle_msg({"pos": int(lowest[0]), "id": sample_id})
    assert explorer.selected == [int(lowest[0])]
    assert sample_id in explorer.detail._info.object and "data:image/webp" in explorer.detail._info.object
    assert explorer.detail._plot.object is not None
    explorer.select(explorer.samples["sample_id"].iloc[lowest[1]])
    assert explorer.selected == [int(lowest[0]), int(lowest[1])]
    dropped = explorer.galleries.galleries["lowest"].dropped
    assert set(dropped) == {int(p) for p in lowest if not explorer.keep_mask[p]}


@pytest.mark.slow
def test_every_tab_and_column_renders(run_copy):
    explorer = Explorer(run_copy)
    root_doc = Document()
    pn.Row(explorer.controls, explorer.main).get_root(root_doc)
    for index in range(len(explorer.more_views.tabs)):
        explorer.more_views.tabs.active = index
        assert len(explorer.more_views.tabs[index]) == 1
    explorer.column = "reference_loss"
    assert explorer.state.column == "reference_loss" and explorer.counts.total == len(explorer.samples)
    explorer.distribution.log_counts = True
    explorer.galleries.param.update(third_gallery="In a score band", band=(0.0, 1.0))
    explorer.galleries.gallery_class = explorer.galleries.param.gallery_class.objects[2]
    explorer.threshold = float(np.median(explorer.state.scores))
    assert (
        explorer.counts.kept
        == apply_rule(explorer.samples, FilterRule("threshold", explorer.threshold, "reference_loss")).kept
    )


def test_missing_thumbnails_show_placeholders(run_copy):
    import shutil

    shutil.rmtree(run_copy / "thumbs")
    explorer = Explorer(run_copy)
    assert PLACEHOLDER in explorer.galleries.galleries["lowest"].cards and explorer.galleries.thumb_note.visible


def test_a_large_synthetic_run_is_rasterized_with_datashader(tmp_path):
    run_dir = synthetic_run(tmp_path / "big", n=60_000, epochs=2, thumbnails=False)
    explorer = Explorer(run_dir)
    explorer.more_views.tabs.active = explorer.more_views.tabs._names.index("Scatter")
    _render(explorer)
    scatter = explorer.more_views.tabs[explorer.more_views.tabs.active][0]
    view = scatter[1]._pane if hasattr(scatter[1], "_pane") else scatter[1]
    assert "60,000 points rasterized with Datashader" in view[0].object and "uniform sample" not in view[0].object
    assert isinstance(view[1], pn.pane.HoloViews)


def test_past_the_scatter_cap_a_sample_is_drawn_and_said(tmp_path, monkeypatch):
    monkeypatch.setattr("mimic_explorer.ui.more_views.SCATTER_MOST_POINTS", 1000)
    monkeypatch.setattr("mimic_explorer.ui.more_views.SCATTER_RUN", 100)
    monkeypatch.setattr("mimic_explorer.ui.plots.RASTERIZE_ABOVE", 100)
    explorer = Explorer(synthetic_run(tmp_path / "run", n=2500, epochs=2, thumbnails=False))
    explorer.more_views.tabs.active = explorer.more_views.tabs._names.index("Scatter")
    _render(explorer)
    scatter = explorer.more_views.tabs[explorer.more_views.tabs.active][0]
    view = scatter[1]._pane if hasattr(scatter[1], "_pane") else scatter[1]
    # runs of 100 consecutive samples, one run in every 300: 9 runs, the last cut at 2,500 (all finite here)
    assert "900 points rasterized" in view[0].object
    assert "A sample: one in 3 of the run's 2,500, in runs of 100 consecutive samples" in view[0].object


@pytest.mark.parametrize("case", ["missing", "file", "running", "newer", "corrupt", "empty-folder"])
def test_bad_run_directories_become_messages_in_the_page(tmp_path, demo_run, case):
    target = tmp_path / "target"
    if case == "file":
        target.write_text("x")
    elif case in ("running", "newer", "corrupt"):
        copy_run(demo_run, target)
        meta = json.loads((target / "meta.json").read_text())
        if case == "running":
            meta["status"] = "running"
        if case == "newer":
            meta["format_version"] = 999
        (target / "meta.json").write_text(json.dumps(meta))
        if case == "corrupt":
            (target / "samples.parquet").write_bytes(b"not parquet")
    elif case == "empty-folder":
        target.mkdir()
    page = build_page([str(target)])
    assert page.explorer is None
    alert = page.main[0]
    assert isinstance(alert, pn.pane.Alert) and alert.alert_type == "danger"
    expected = {
        "missing": "does not exist",
        "file": "is a file",
        "running": "not complete",
        "newer": "newer",
        "corrupt": "truncated or not a Parquet file",
        "empty-folder": "neither a run",
    }[case]
    assert expected in alert.object
    _render(page)


def test_runs_folder_gets_a_picker(tmp_path, demo_run):
    copy_run(demo_run, tmp_path / "runs" / "good")
    bad = copy_run(demo_run, tmp_path / "runs" / "bad")
    meta = json.loads((bad / "meta.json").read_text())
    meta.update(status="failed", error="killed", run_id="bad-run", created="2099-01-01T00:00:00+00:00")
    (bad / "meta.json").write_text(json.dumps(meta))
    page = build_page([str(tmp_path / "runs")])
    assert page.explorer is not None and page.explorer.run.path.name == "good"  # first complete run
    picker = page._picker
    picker._select.value = str(bad)
    assert page.explorer is None and "not complete" in page.main[0].object
    picker._select.value = str(tmp_path / "runs" / "good")
    assert page.explorer is not None
    _render(page)


def test_demo_mode_opens_a_cached_demo(monkeypatch, tmp_path, demo_run):
    from mimic_explorer.util.cache import demo_run_dir

    monkeypatch.setenv("MIMIC_EXPLORER_CACHE", str(tmp_path / "cache"))
    copy_run(demo_run, demo_run_dir())
    page = build_page([])
    assert isinstance(page, ExplorerPage) and page.explorer is not None


def test_ui_and_page_building_never_import_torch(demo_run):
    code = (
        "import sys\n"
        "import mimic_explorer.ui, mimic_explorer.ui.page as page\n"
        "import panel as pn\n"
        f"p = page.serve_page([{str(demo_run)!r}])\n"
        "ex = p.main[0][0]\n"
        "from bokeh.document import Document\n"
        "p.main[0].get_root(Document())\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok', type(ex).__name__)\n"
    )
    env = {**os.environ, "MIMIC_EXPLORER_CACHE": "/nonexistent-cache-for-test"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout


def test_remote_browsers_are_refused_unless_sharing_is_intended(monkeypatch, demo_run):
    from mimic_explorer.ui import page as page_module

    def session_from(ip, host=None):
        return SimpleNamespace(session_context=SimpleNamespace(request=SimpleNamespace(remote_ip=ip, host=host)))

    monkeypatch.delenv("MIMIC_EXPLORER_ALLOW_REMOTE", raising=False)
    cases = (
        ("127.0.0.1", "127.0.0.1:5006", True),
        ("::1", "[::1]:5006", True),
        ("127.0.0.1", "localhost:5006", True),
        ("::ffff:127.0.0.1", None, True),
        ("10.1.2.3", None, False),
        ("10.1.2.3", "localhost:5006", False),
        ("127.0.0.1", "rebound.example:5006", False),
        ("127.0.0.1", "10.1.2.3:5006", False),
    )
    for ip, host, local in cases:
        with monkeypatch.context() as m:
            m.setattr(
                type(page_module.pn.state), "curdoc", property(lambda self, ip=ip, host=host: session_from(ip, host))
            )
            assert page_module.client_is_local() is local, (ip, host)
    monkeypatch.setattr(page_module, "client_is_local", lambda: False)
    template = page_module.serve_page([str(demo_run)])
    assert "only browsers on its own machine" in template.main[0][0][0].object
    monkeypatch.undo()
    monkeypatch.setenv("MIMIC_EXPLORER_ALLOW_REMOTE", "1")
    with monkeypatch.context() as m:
        m.setattr(type(page_module.pn.state), "curdoc", property(lambda self: session_from("10.1.2.3", "example.org")))
        assert page_module.client_is_local()


def test_the_scatter_sample_is_runs_of_consecutive_samples_spread_over_the_pool(monkeypatch):
    from mimic_explorer.ui import more_views

    monkeypatch.setattr(more_views, "SCATTER_RUN", 4)
    assert more_views.scatter_sample(25, 1) == slice(None)
    np.testing.assert_array_equal(more_views.scatter_sample(25, 3), [0, 1, 2, 3, 12, 13, 14, 15, 24])
    positions = more_views.scatter_sample(10_000, 7)
    assert abs(len(positions) - 10_000 / 7) < 4 and positions.max() >= 10_000 - 7 * 4  # the whole pool
