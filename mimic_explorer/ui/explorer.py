"""The Explorer: controls and views over ``ExplorerState`` for one run.

Parameters (``column``, ``rule``, ``threshold``, ``quantile``, ``keep_count``, ``per_class``,
``class_overrides``) are the filter; every change recounts in O(classes · log n) and updates the
"Kept: N of M" line, the per-class retention table, the threshold lines on the plots and the kept /
dropped marks on the galleries. Exports ("Download keep-list", "Save to run") go through
``filters.apply_rule`` / ``filters.export`` — the code path of ``mimic-explorer export``.

``Explorer(run).controls`` and ``.main`` are what a template puts in its sidebar and main area;
displayed on its own (Jupyter) it is the two side by side.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import os

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from mimic_explorer.filters import FORMATS, FilterError, FilterRule, build_spec, latest_saved_rule, render_export, save_to_run
from mimic_explorer.store.reader import Run, open_run
from mimic_explorer.ui import plots
from mimic_explorer.ui.counting import Counts
from mimic_explorer.ui.detail import DetailView
from mimic_explorer.ui.gallery import Gallery, gallery_html
from mimic_explorer.ui.state import ExplorerState, histogram, robust_range
from mimic_explorer.ui.summary import Summary
from mimic_explorer.ui.thumbnails import ThumbnailURIs

RULE_LABELS = {"By value": "threshold", "Quantile": "quantile", "Keep count": "keep_count", "Ensemble": "ensemble"}
ALL_CLASSES = "all classes"
AROUND, BAND = "Around the threshold", "In a score band"

KEPT_CSS = """
.me-kept { font: 600 20px system-ui, sans-serif; color: #1f2328; }
.me-sub { font: 12px system-ui, sans-serif; color: #57606a; margin-top: 2px; }
.me-pr { font: 13px system-ui, sans-serif; margin-top: 4px; }
.me-pr b { color: #1f2328; }
"""


class Explorer(Viewer):
    """Explore one run. ``Explorer(run_or_path)``; ``.threshold``, ``.rule`` … and ``.keep_mask`` work
    from Python, and the page follows."""

    column = param.Selector(default="mimic_score", objects=["mimic_score"], doc="Score column the filter and plots use.")
    rule = param.Selector(default="threshold", objects=list(RULE_LABELS.values()), doc="How the keep set is chosen.")
    threshold = param.Number(default=0.0, doc="Keep samples whose score is at least this value (rule 'threshold').")
    quantile = param.Number(default=0.3, bounds=(0.0, 1.0), doc="Drop about this fraction, lowest scores first.")
    keep_count = param.Integer(default=0, bounds=(0, None), doc="Keep the N highest-scoring samples.")
    per_class = param.Boolean(default=False, doc="Quantile / keep-count within each class.")
    class_overrides = param.Dict(default={}, doc="Per-class thresholds {label: value} (rule 'threshold').")
    log_counts = param.Boolean(default=False, doc="Log-scale counts on the histograms.")
    gallery_size = param.Integer(default=16, bounds=(1, 200), doc="Images per gallery (k).")
    gallery_class = param.Selector(default=ALL_CLASSES, objects=[ALL_CLASSES], doc="Restrict galleries to one class.")
    third_gallery = param.Selector(default=AROUND, objects=[AROUND, BAND])
    band = param.Range(default=(0.0, 1.0), doc="Score band for the third gallery.")
    selected = param.List(default=[], item_type=int, doc="Row positions whose trajectories are plotted.")
    counts = param.ClassSelector(class_=Counts, default=None, doc="Live counts of the current rule (read-only).")
    message = param.String(default="", doc="The last notice shown to the user (bad input, saves, restores).")

    def __init__(self, run: Run | str | os.PathLike, *, restore: bool = True, **params):
        self.run = run if isinstance(run, Run) else open_run(run)
        self.state = ExplorerState(self.run, params.pop("column", "mimic_score"))
        self.thumbs = ThumbnailURIs(self.run.thumbnails)
        self.epochs = self.run.epoch_scores
        self._syncing = False
        self._moving_slider = False
        super().__init__()
        self.param.column.objects = self.state.score_columns
        names = [ALL_CLASSES] + [f"{c}: {self.state.label_name(c)}" for c in self.state.counter.classes.tolist()]
        self.param.gallery_class.objects = names
        with param.parameterized.discard_events(self):
            self.column = self.state.column
            self.threshold = self.state.default_threshold()
            self.keep_count = int(round(0.7 * self.state.total))
            self.band = self._default_band()
        restored = self._restore() if restore and not ({"rule", "threshold", "quantile", "keep_count"} & set(params)) else ""
        with param.parameterized.discard_events(self):
            self.param.update(**params)
        self._spans = plots.Spans()
        self._shown: dict[str, np.ndarray] = {}
        self._build_widgets()
        self._build_views()
        self._recount()
        self._refresh_galleries()
        if restored:
            self._notify(restored, "info")

    # ------------------------------------------------------------------ Python API

    @property
    def samples(self) -> pd.DataFrame:
        return self.state.samples

    @property
    def current_rule(self) -> FilterRule:
        """The filter as a ``FilterRule`` (what exports and saved specs record)."""
        if self.rule == "ensemble":
            return FilterRule("ensemble", None, self.column)
        if self.rule == "threshold":
            return FilterRule("threshold", float(self.threshold), self.column, False,
                              {int(k): float(v) for k, v in self.class_overrides.items()})
        value = float(self.quantile) if self.rule == "quantile" else int(self.keep_count)
        return FilterRule(self.rule, value, self.column, bool(self.per_class))

    @property
    def keep_mask(self) -> np.ndarray:
        """Boolean mask in ``run.samples`` order for the current filter (the export code path)."""
        return self.state.apply(self.current_rule).keep

    def set_rule(self, rule: FilterRule) -> None:
        """Show a ``FilterRule`` (e.g. from a spec) in the controls."""
        rule.validate()
        updates = {"rule": rule.kind}
        if rule.kind != "ensemble" and rule.column in self.state.score_columns:
            updates["column"] = rule.column
        if rule.kind == "threshold":
            updates.update(threshold=float(rule.value), class_overrides=dict(rule.class_overrides))
        elif rule.kind == "quantile":
            updates.update(quantile=float(rule.value), per_class=rule.per_class)
        elif rule.kind == "keep_count":
            updates.update(keep_count=int(rule.value), per_class=rule.per_class)
        self._syncing = True
        try:
            self.param.update(**updates)
        finally:
            self._syncing = False

    def select(self, sample_id: str) -> None:
        """Open a sample in the detail view and add it to the trajectories (as a click on its card)."""
        position = self.state.position(sample_id)
        if position is None:
            self._notify(f"No sample {sample_id!r} in this run.", "warning")
            return
        self._on_card_click(position, sample_id)

    def save_to_run(self, export_format: str = "csv"):
        """Write keep-list + spec into ``RUN/filters/`` (restored when the run is opened again)."""
        return save_to_run(self.run.path, self.samples, self.run.meta, self.current_rule, export_format)

    # ------------------------------------------------------------------ restore

    def _restore(self) -> str:
        try:
            found = latest_saved_rule(self.run.path, self.run.meta)
        except FilterError as exc:
            self.message = f"Saved filter not restored: {exc}"
            return ""
        if found is None:
            return ""
        rule, spec, path = found
        if rule.kind != "ensemble" and rule.column not in self.state.score_columns:
            return f"Saved filter {path.name} is on column {rule.column!r}, which this run lacks; not restored."
        with param.parameterized.discard_events(self):
            if rule.kind != "ensemble":
                self.column = rule.column
                self.state.column = rule.column
            self.rule = rule.kind
            if rule.kind == "threshold":
                self.threshold, self.class_overrides = float(rule.value), dict(rule.class_overrides)
            elif rule.kind == "quantile":
                self.quantile, self.per_class = float(rule.value), rule.per_class
            elif rule.kind == "keep_count":
                self.keep_count, self.per_class = int(rule.value), rule.per_class
        return f"Restored the filter saved with this run ({path.name}, {spec.get('created', '?')}): kept {spec.get('kept')} of {spec.get('total')}."

    # ------------------------------------------------------------------ widgets

    def _build_widgets(self) -> None:
        lo, hi = self.state.score_range()
        self._column_select = pn.widgets.Select.from_param(self.param.column, label="Score", sizing_mode="stretch_width")
        self._rule_buttons = pn.widgets.RadioButtonGroup(
            options={k: v for k, v in RULE_LABELS.items() if v != "ensemble" or self.state.has_ensemble},
            value=self.rule, color="primary", variant="outline", sizing_mode="stretch_width")
        self._rule_buttons.param.watch(lambda e: setattr(self, "rule", e.new), "value")
        self._slider = pn.widgets.FloatSlider(label="Threshold", start=lo, end=hi, step=self._step(lo, hi),
                                              value=float(np.clip(self.threshold, lo, hi)), format="0.000",
                                              sizing_mode="stretch_width")
        self._slider.param.watch(self._on_slider, "value")
        self._typed = pn.widgets.FloatInput(label="Type a threshold", value=float(self.threshold), format="0.0000",
                                            sizing_mode="stretch_width")
        self._typed.param.watch(self._on_typed, "value")
        self._quantile = pn.widgets.FloatSlider.from_param(self.param.quantile, label="Drop the lowest fraction",
                                                           step=0.005, sizing_mode="stretch_width")
        self._keep_n = pn.widgets.IntInput.from_param(self.param.keep_count, label="Keep the top N", start=0,
                                                      end=self.state.total, sizing_mode="stretch_width")
        self._per_class = pn.widgets.Checkbox.from_param(self.param.per_class, label="Per class (same fraction in every class)")
        self._clear_overrides = pn.widgets.Button(label="Clear per-class overrides", color="light", visible=False)
        self._clear_overrides.on_click(lambda e: setattr(self, "class_overrides", {}))
        self._kept = pn.pane.HTML(stylesheets=[KEPT_CSS], sizing_mode="stretch_width", css_classes=["kept-count"])
        self._notice = pn.pane.Alert("", alert_type="warning", visible=False, sizing_mode="stretch_width")
        self._format = pn.widgets.Select(label="Keep-list format", options=list(FORMATS), value="csv", width=110)
        self._download = pn.widgets.FileDownload(
            callback=self._keep_list_file, filename=self._download_name("csv"), label="Download keep-list",
            color="primary", sizing_mode="stretch_width")
        self._download_spec = pn.widgets.FileDownload(
            callback=self._spec_file, filename=f"keep-list-{self.run.run_id}.spec.json", label="Download spec",
            color="light", sizing_mode="stretch_width")
        self._format.param.watch(lambda e: setattr(self._download, "filename", self._download_name(e.new)), "value")
        self._save = pn.widgets.Button(label="Save to run", color="success", sizing_mode="stretch_width",
                                       description="Write the keep-list and its spec into the run's filters/ folder")
        self._save.on_click(self._on_save)
        self._log = pn.widgets.Checkbox.from_param(self.param.log_counts, label="Log counts")
        self._k = pn.widgets.IntSlider.from_param(self.param.gallery_size, label="Images per gallery", start=4, end=64,
                                                  sizing_mode="stretch_width")
        self._gallery_class = pn.widgets.Select.from_param(self.param.gallery_class, label="Gallery class",
                                                           sizing_mode="stretch_width")
        self._third = pn.widgets.RadioButtonGroup.from_param(self.param.third_gallery, color="light")
        self._band = pn.widgets.RangeSlider(label="Score band", start=lo, end=hi, step=self._step(lo, hi),
                                            value=tuple(self.band), format="0.000", sizing_mode="stretch_width",
                                            visible=self.third_gallery == BAND)
        self._band.param.watch(lambda e: setattr(self, "band", tuple(e.new)), "value_throttled")
        self._sync_rule_widgets()

    @staticmethod
    def _step(lo: float, hi: float) -> float:
        return float((hi - lo) / 1000) or 0.001

    def _default_band(self) -> tuple[float, float]:
        lo, hi = robust_range(self.state.counter.sorted_finite, presorted=True)
        return (lo + 0.4 * (hi - lo), lo + 0.6 * (hi - lo))

    def _download_name(self, fmt: str) -> str:
        return f"keep-list-{self.run.run_id}.{fmt}"

    # ------------------------------------------------------------------ views

    def _build_views(self) -> None:
        self.summary = Summary(self.run.run_id, str(self.run.path), self.run.meta, self.samples)
        self._hist = pn.pane.HoloViews(self._histogram_plot(), sizing_mode="stretch_width", height=330)
        frame = self._table_frame()
        editors = {c: None for c in frame.columns}
        editors["override"] = {"type": "number", "step": 0.01}
        titles = {"samples": "n", "share before %": "before", "share after %": "after", "retained %": "kept %",
                  "mislabeled": "mislab.", "threshold": "cut", "override": "override"}
        self._table = pn.widgets.Tabulator(
            frame, show_index=False, sizing_mode="stretch_width", height=340, layout="fit_columns",
            editors=editors, titles=titles, hidden_columns=["label"], text_align={"class": "left"}, page_size=10,
            configuration={"columnDefaults": {"headerSort": False}}, widths={"samples": 55, "override": 82},
            pagination="local" if len(self.state.counter.classes) > 10 else None,
            stylesheets=[":host { font-size: 12px; }"],
        )
        self._table.on_edit(self._on_table_edit)
        self.detail = DetailView(self.state, self.thumbs, self.epochs)
        self._galleries = {name: Gallery(sizing_mode="stretch_width") for name in ("lowest", "highest", "third")}
        for gallery in self._galleries.values():
            gallery.on_click(self._on_card_click)
        self._gallery_titles = {name: pn.pane.Markdown("", margin=(10, 5, 0, 5)) for name in self._galleries}
        self._thumb_note = pn.pane.Alert(
            "This run has no thumbnails (or they moved): galleries show placeholders; everything else works.",
            alert_type="info", visible=False, sizing_mode="stretch_width")
        builders = {
            "Kept vs threshold": lambda: pn.param.ParamFunction(
                pn.bind(self._kept_curve_plot, self.param.column), sizing_mode="stretch_width"),
            "Per class": lambda: pn.param.ParamFunction(
                pn.bind(self._class_plot, self.param.column, self.param.log_counts), sizing_mode="stretch_width"),
            "Scatter": self._scatter_view,
            "Per epoch": self._epoch_view,
            "Trajectories": self._trajectory_view,
        }
        self._tab_builders = list(builders.values())
        self._tabs = pn.Tabs(*[(name, pn.Column(sizing_mode="stretch_width")) for name in builders],
                             dynamic=True, sizing_mode="stretch_width")
        self._tabs.param.watch(lambda e: self._open_tab(e.new), "active")
        self._open_tab(self._tabs.active)

    def _open_tab(self, index: int) -> None:
        """Build a tab's views the first time it is shown (scores per epoch are only read then)."""
        holder = self._tabs[index]
        if len(holder) == 0:
            holder[:] = [self._tab_builders[index]()]

    def _histogram_plot(self):
        hist = self.state.histogram()
        static = plots.histogram_element(hist, self.column, self.log_counts)
        return static * self._spans.line("hist", self._line_value("hist"), hist.edges[0])

    def _line_value(self, key: str) -> float | None:
        """Where the line ``key`` goes now: the resolved cut overall, per class, or the kept count."""
        counts = self.counts
        if counts is None:
            return None
        if key == "kept-h":
            return float(counts.kept)
        if key.startswith("class-"):
            return self.state.cut(counts, int(key[6:]))
        if self.rule == "threshold":
            return float(self.threshold)
        return self.state.cut(counts)

    def _move_lines(self) -> None:
        self._spans.move(self._line_value)
        pn.io.push_notebook(self.main)  # Spans are Bokeh models: a notebook needs the push, a server does not

    def _class_plot(self, column: str, log: bool):
        edges, per_class, shown = self.state.class_histograms(limit=20)
        names = {c: self.state.label_name(c) for c in shown}
        elements = plots.class_grid(edges, per_class, names, column, log)
        panels = []
        for label, element in elements.items():
            key = str(label)
            panels.append(element * self._spans.line(f"class-{key}", self._line_value(f"class-{key}"), edges[0]))
        note = "" if len(shown) == len(self.state.counter.classes) else f" (the {len(shown)} largest classes)"
        layout = hv.Layout(panels).cols(5).opts(shared_axes=False) if panels else hv.Curve([])
        return pn.Column(pn.pane.Markdown(f"Distribution of **{column}** per class with each class's threshold{note}."),
                         pn.pane.HoloViews(layout, sizing_mode="stretch_width"), sizing_mode="stretch_width")

    def _kept_curve_plot(self, column: str):
        curve = self.state.kept_curve()
        static = plots.kept_curve_element(curve, self.state.total)
        x0 = float(curve["threshold"].iloc[0])
        lines = (self._spans.line("kept-v", self._line_value("kept-v"), x0)
                 * self._spans.line("kept-h", self._line_value("kept-h"), 0.0, horizontal=True))
        return pn.pane.HoloViews(static * lines, sizing_mode="stretch_width")

    def _scatter_view(self):
        columns = self.state.score_columns
        default_y = next((c for c in ("reference_loss", "proj_mean", "model_loss") if c in columns and c != self.column),
                         columns[1] if len(columns) > 1 else columns[0])
        x = pn.widgets.Select(label="x", options=columns, value=self.column, width=180)
        y = pn.widgets.Select(label="y", options=columns, value=default_y, width=180)
        self.param.watch(lambda e: setattr(x, "value", e.new), "column")

        def view(xcol: str, ycol: str):
            if xcol == ycol:
                return pn.pane.Markdown("Pick two different scores for x and y.")
            frame = pd.DataFrame({xcol: self.samples[xcol].to_numpy(dtype=float),
                                  ycol: self.samples[ycol].to_numpy(dtype=float),
                                  "sample_id": self.samples["sample_id"].to_numpy()})
            if "label" in self.samples.columns:
                names = np.array([self.state.label_name(c) for c in self.state.counter.classes.tolist()], dtype=object)
                frame["class"] = names[self.state.counter.codes]
            truth = self.state.has_truth
            if truth:
                frame["truth"] = pd.Categorical(np.where(self.state.counter.noisy, "mislabeled", "clean"))
            frame = frame[np.isfinite(frame[xcol]) & np.isfinite(frame[ycol])]
            element = plots.scatter_element(frame, xcol, ycol, truth)
            if xcol == self.column:
                element = element * self._spans.line("scatter", self._line_value("scatter"),
                                                      float(frame[xcol].min()) if len(frame) else 0.0)
            big = len(frame) > plots.RASTERIZE_ABOVE
            note = (f"{len(frame):,} points rasterized with Datashader; hover marks the nearest sample and names it."
                    if big else f"{len(frame):,} points; hover names the sample.")
            return pn.Column(pn.pane.Markdown(note), pn.pane.HoloViews(element, sizing_mode="stretch_width"),
                             sizing_mode="stretch_width")

        return pn.Column(pn.Row(x, y), pn.param.ParamFunction(pn.bind(view, x, y), lazy=True, sizing_mode="stretch_width"),
                         sizing_mode="stretch_width")

    def _epoch_view(self):
        if not self.epochs.available or not self.epochs.signals:
            return pn.pane.Markdown("This run recorded no per-epoch scores.")
        signal = pn.widgets.Select(label="Signal", options=self.epochs.signals, value=self.epochs.signals[0], width=160)
        noisy_ids = None
        if self.state.has_truth:
            noisy_ids = self.epochs.id_set(self.samples["sample_id"].to_numpy()[self.state.counter.noisy])

        def bands(sig: str):
            return pn.pane.HoloViews(plots.epoch_bands_element(self.epochs.quantile_bands(sig, noisy_ids), sig),
                                     sizing_mode="stretch_width")

        epochs = self.epochs.epochs
        epoch = pn.widgets.DiscreteSlider(label="Epoch", options=epochs, value=epochs[-1], width=300) if len(epochs) > 1 else None

        def epoch_hist(sig: str, ep: int, log: bool):
            values, noisy = self.epochs.values(sig, ep, noisy_ids)
            return pn.pane.HoloViews(plots.histogram_element(histogram(values, noisy=noisy), f"{sig} (epoch {ep})", log),
                                     sizing_mode="stretch_width")

        items = [pn.Row(signal, epoch) if epoch else signal,
                 pn.param.ParamFunction(pn.bind(bands, signal), lazy=True, sizing_mode="stretch_width")]
        if epoch:
            items.append(pn.param.ParamFunction(pn.bind(epoch_hist, signal, epoch, self.param.log_counts), lazy=True,
                                                sizing_mode="stretch_width"))
        return pn.Column(*items, sizing_mode="stretch_width")

    def _trajectory_view(self):
        if not self.epochs.available or not self.epochs.signals:
            return pn.pane.Markdown("This run recorded no per-epoch scores.")
        signal = pn.widgets.Select(label="Signal", options=self.epochs.signals, value=self.epochs.signals[0], width=160)
        clear = pn.widgets.Button(label="Clear selection", color="light", width=140)
        clear.on_click(lambda e: setattr(self, "selected", []))

        def view(sig: str, selected: list[int]):
            ids = self.samples["sample_id"].iloc[selected].astype(str).tolist() if selected else []
            frame = self.epochs.trajectories(ids, [sig])
            labels = {}
            for pos, sid in zip(selected, ids):
                record = self.samples.iloc[pos]
                tag = " (mislabeled)" if bool(record.get("is_noisy", False)) else ""
                labels[sid] = f"{sid}{tag}"
            return pn.pane.HoloViews(plots.trajectories_element(frame, sig, labels), sizing_mode="stretch_width")

        return pn.Column(pn.Row(signal, clear), pn.pane.Markdown("Click images in the galleries to add samples."),
                         pn.param.ParamFunction(pn.bind(view, signal, self.param.selected), lazy=True,
                                                sizing_mode="stretch_width"),
                         sizing_mode="stretch_width")

    # ------------------------------------------------------------------ reactions

    @param.depends("column", watch=True)
    def _on_column(self) -> None:
        self.state.column = self.column
        lo, hi = self.state.score_range()
        self._syncing = True
        try:
            self.class_overrides = {}
            self.threshold = self.state.default_threshold()
            self.band = self._default_band()
        finally:
            self._syncing = False
        step = self._step(lo, hi)
        self._slider.param.update(start=lo, end=hi, step=step, value=float(np.clip(self.threshold, lo, hi)))
        self._band.param.update(start=lo, end=hi, step=step, value=tuple(self.band))
        self._hist.object = self._histogram_plot()
        self._recount()
        self._refresh_galleries()

    @param.depends("log_counts", watch=True)
    def _on_log(self) -> None:
        self._hist.object = self._histogram_plot()

    @param.depends("threshold", watch=True)
    def _on_threshold(self) -> None:
        if not self._syncing and self.rule != "threshold":
            self.rule = "threshold"
        lo, hi = self._slider.start, self._slider.end
        self._moving_slider = True  # a value beyond the slider's range is kept, only the handle is clamped
        try:
            self._slider.value = float(np.clip(self.threshold, lo, hi))
        finally:
            self._moving_slider = False
        if self._typed.value != self.threshold:
            self._typed.value = float(self.threshold)

    @param.depends("rule", watch=True)
    def _on_rule(self) -> None:
        # self.counts still belongs to the previous rule here (_recount does not watch "rule"), so
        # switching to "by value" can start where that rule cut
        previous = self.counts
        if self.rule == "threshold" and previous is not None and not self._syncing:
            cut = self.state.cut(previous)
            if cut is not None:
                self._syncing = True
                try:
                    self.threshold = cut
                finally:
                    self._syncing = False
        self._rule_buttons.value = self.rule
        self._sync_rule_widgets()
        self._recount()

    def _sync_rule_widgets(self) -> None:
        kind = self.rule
        self._slider.visible = self._typed.visible = kind == "threshold"
        self._quantile.visible = kind == "quantile"
        self._keep_n.visible = kind == "keep_count"
        self._per_class.visible = kind in ("quantile", "keep_count")
        self._clear_overrides.visible = kind == "threshold" and bool(self.class_overrides)

    @param.depends("class_overrides", watch=True)
    def _on_overrides(self) -> None:
        if self.class_overrides and self.rule != "threshold" and not self._syncing:
            self.rule = "threshold"
        self._sync_rule_widgets()

    def _on_slider(self, event) -> None:
        if self._syncing or self._moving_slider or np.isclose(event.new, self.threshold, rtol=0, atol=self._slider.step / 2):
            return
        self.threshold = float(event.new)

    def _on_typed(self, event) -> None:
        value = event.new
        if value is None or value == self.threshold:
            return
        lo, hi = self.state.score_range()
        if not np.isfinite(value):
            self._notify(f"{value} is not a threshold.", "warning")
            return
        if value < lo or value > hi:
            clamped = float(np.clip(value, lo, hi))
            self._notify(f"Threshold {value:g} is outside the range of {self.column} ([{lo:.4g}, {hi:.4g}]); "
                         f"using {clamped:.4g}.", "warning")
            value = clamped  # _on_threshold writes it back into the input
        else:
            self._notify("")
        self.threshold = float(value)

    def _on_table_edit(self, event) -> None:
        if event.column != "override":
            return
        label = int(self._table.value.iloc[event.row]["label"])
        overrides = dict(self.class_overrides)
        value = event.value
        if value is None or (isinstance(value, float) and not np.isfinite(value)) or value == "":
            overrides.pop(label, None)
        else:
            overrides[label] = float(value)
        self.class_overrides = overrides

    @param.depends("threshold", "quantile", "keep_count", "per_class", "class_overrides", watch=True)
    def _recount(self) -> None:
        try:
            counts = self.state.counts(self.current_rule)
        except (FilterError, ValueError) as exc:
            self._notify(str(exc), "danger")
            return
        self.counts = counts
        self._kept.object = self._kept_html(counts)
        self._table.value = self._table_frame()
        self._move_lines()
        if self.third_gallery == AROUND:
            self._refresh_gallery("third")
        self._refresh_dropped()
        if counts.kept == 0:
            self._notify("This filter keeps no samples: the keep-list would be empty.", "warning")
        elif self._notice.alert_type == "warning" and "keeps no samples" in self._notice.object:
            self._notify("")

    def _kept_html(self, counts: Counts) -> str:
        share = 100 * counts.kept / max(counts.total, 1)
        cut = self.state.cut(counts)
        detail = {"threshold": f"{self.column} ≥ {self.threshold:.4g}",
                  "quantile": f"drop the lowest {100 * self.quantile:.1f} %" + (" per class" if self.per_class else ""),
                  "keep_count": f"top {self.keep_count}" + (" per class (proportional)" if self.per_class else ""),
                  "ensemble": "the run's ensemble filter (Stage 2 vote)"}[self.rule]
        if self.rule != "threshold" and cut is not None:
            detail += f" → {self.column} ≥ {cut:.4g}"
        if self.rule == "threshold" and self.class_overrides:
            detail += f" · {len(self.class_overrides)} class override(s)"
        text = (f'<div class="me-kept">Kept: {counts.kept} of {counts.total}</div>'
                f'<div class="me-sub">{share:.1f} % kept · {counts.dropped} dropped · {detail}</div>')
        if counts.noisy_total:
            precision = "–" if counts.precision is None else f"{counts.precision:.3f}"
            recall = "–" if counts.recall is None else f"{counts.recall:.3f}"
            text += (f'<div class="me-pr">Dropped vs ground truth: precision <b>{precision}</b> · recall <b>{recall}</b>'
                     f' <span class="me-sub">({counts.noisy_dropped} of {counts.noisy_total} mislabeled dropped)</span></div>')
        return text

    def _table_frame(self) -> pd.DataFrame:
        if self.counts is None:
            self.counts = self.state.counts(self.current_rule)
        return self.state.retention_table(self.counts, self.class_overrides if self.rule == "threshold" else {})

    def _notify(self, text: str, kind: str = "warning") -> None:
        self.message = text
        if not hasattr(self, "_notice"):
            return
        self._notice.param.update(object=text, alert_type=kind if kind in ("info", "warning", "danger", "success") else "warning",
                                  visible=bool(text))

    # ------------------------------------------------------------------ galleries

    def _gallery_label(self) -> int | None:
        if self.gallery_class == ALL_CLASSES:
            return None
        return int(self.gallery_class.split(":", 1)[0])

    @param.depends("gallery_size", "gallery_class", watch=True)
    def _refresh_galleries(self) -> None:
        for name in self._galleries:
            self._refresh_gallery(name)
        self._refresh_dropped()
        self._thumb_note.visible = not self.thumbs.complete

    @param.depends("third_gallery", "band", watch=True)
    def _on_third(self) -> None:
        self._band.visible = self.third_gallery == BAND
        self._refresh_gallery("third")
        self._refresh_dropped()

    def _refresh_gallery(self, name: str) -> None:
        k, label = self.gallery_size, self._gallery_label()
        where = "" if label is None else f" in class {self.state.label_name(label)}"
        if name == "lowest":
            positions, title, empty = self.state.lowest(k, label), f"#### Lowest {k} by {self.column}{where}", "No samples."
        elif name == "highest":
            positions, title, empty = self.state.highest(k, label), f"#### Highest {k} by {self.column}{where}", "No samples."
        elif self.third_gallery == AROUND:
            cut = self.state.cut(self.counts) if self.counts is not None else None
            cut = self.threshold if cut is None else cut
            positions = self.state.around(cut, k, label)
            title, empty = f"#### {k} around the threshold ({cut:.4g}){where}", "No samples."
        else:
            lo, hi = self.band
            positions = self.state.band(lo, hi, k, label)
            title = f"#### {len(positions)} in the band {lo:.4g} – {hi:.4g}{where}"
            empty = f"No samples with {self.column} between {lo:.4g} and {hi:.4g}."
        self._shown[name] = positions
        self._gallery_titles[name].object = title
        self._galleries[name].cards = gallery_html(self.samples, positions, self.thumbs, self.state.label_name,
                                                   self.column, empty)

    def _refresh_dropped(self) -> None:
        if self.counts is None:
            return
        rule = self.current_rule
        for name, gallery in self._galleries.items():
            positions = self._shown.get(name)
            if positions is None or len(positions) == 0:
                gallery.dropped = []
                continue
            kept = self.state.keep_status(positions, rule, self.counts)
            gallery.dropped = [int(p) for p in positions[~kept]]

    def _on_card_click(self, position: int, sample_id: str = "") -> None:
        self.detail.show(position)
        selected = [p for p in self.selected if p != position] + [int(position)]
        self.selected = selected[-8:]

    # ------------------------------------------------------------------ exports

    def _keep_list_file(self) -> io.BytesIO:
        rule = self.current_rule
        result = self.state.apply(rule)
        return io.BytesIO(render_export(self.samples, result, self.column, self._format.value))

    def _spec_file(self) -> io.BytesIO:
        rule = self.current_rule
        spec = build_spec(self.run.meta, rule, self.state.apply(rule), self._format.value)
        return io.BytesIO(json.dumps(spec, indent=1, sort_keys=True).encode())

    def _on_save(self, event=None) -> None:
        try:
            result, spec, out, spec_path = self.save_to_run(self._format.value)
        except (FilterError, OSError) as exc:
            self._notify(f"Not saved: {exc}", "danger")
            return
        when = _dt.datetime.now().strftime("%H:%M:%S")
        self._notify(f"Saved {result.kept} of {result.total} to `{out}` and its spec (`{spec_path.name}`) at {when}; "
                     "this filter is restored when the run is opened again.", "success")

    # ------------------------------------------------------------------ layout

    @property
    def controls(self) -> pn.Column:
        """The filter and export controls (a template's sidebar)."""
        if not hasattr(self, "_controls"):
            self._controls = pn.Column(
                pn.pane.Markdown("### Filter", margin=(0, 5)),
                self._column_select, self._rule_buttons, self._slider, self._typed, self._quantile, self._keep_n,
                self._per_class, self._clear_overrides, self._kept, self._notice,
                pn.pane.Markdown("### Export", margin=(10, 5, 0, 5)),
                pn.Row(self._format, self._download_spec, sizing_mode="stretch_width"),
                self._download, self._save,
                pn.pane.Markdown("### Galleries", margin=(10, 5, 0, 5)),
                self._k, self._gallery_class, self._log,
                sizing_mode="stretch_width",
            )
        return self._controls

    @property
    def main(self) -> pn.Column:
        """Summary, distribution and retention, galleries with the detail view, then the other plots."""
        if not hasattr(self, "_main"):
            legend = ("<span style='font:12px system-ui;color:#57606a'>Red border: mislabeled (ground truth) · "
                      "pink card: dropped by the current filter · click an image for its detail.</span>")
            galleries = pn.Column(
                self._thumb_note, pn.pane.HTML(legend, margin=(0, 5)) if self.state.has_truth else pn.pane.HTML(
                    "<span style='font:12px system-ui;color:#57606a'>Pink card: dropped by the current filter · "
                    "click an image for its detail.</span>", margin=(0, 5)),
                self._gallery_titles["lowest"], self._galleries["lowest"],
                self._gallery_titles["highest"], self._galleries["highest"],
                pn.Row(self._gallery_titles["third"], self._third, align="center"), self._band,
                self._galleries["third"], sizing_mode="stretch_width",
            )
            table = pn.Column(
                pn.pane.Markdown("**Per class, before → after** (before / after: % of the dataset / of the kept set). "
                                 "Type an override to give a class its own threshold.",
                                 margin=(0, 5)), self._table, width=620)
            self._main = pn.Column(
                self.summary,
                pn.Row(pn.Column(self._hist, sizing_mode="stretch_width"), table, sizing_mode="stretch_width"),
                pn.Row(galleries, pn.Column(self.detail, width=340, styles={"position": "sticky", "top": "0"}),
                       sizing_mode="stretch_width"),
                pn.pane.Markdown("### More views", margin=(10, 5, 0, 5)),
                self._tabs,
                sizing_mode="stretch_width",
            )
        return self._main

    def __panel__(self):
        return pn.Row(pn.Column(self.controls, width=330), self.main, sizing_mode="stretch_width")
