"""The score distribution with the cut, and the per-class retention table beside it.

The table is where a class gets its own threshold: typing in its "override" cell sets that class in
the model's ``class_overrides`` (which means "by value"); everything else in it follows the counts.
A pool without classes (image-text pairs) gets overall counts instead: the filter's row, and for an
AND of clauses one row per clause counted alone.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from mimic_explorer.ui import plots
from mimic_explorer.ui.cut_lines import CutLines
from mimic_explorer.ui.filter_model import FilterModel
from mimic_explorer.ui.live import LiveCounts
from mimic_explorer.ui.state import ExplorerState

TITLES = {
    "samples": "n",
    "share before %": "before",
    "share after %": "after",
    "retained %": "kept %",
    "mislabeled": "mislab.",
    "threshold": "cut",
    "override": "override",
}


class Distribution(Viewer):
    """Histogram of the filter's column (with the cut line) and the retention table."""

    log_counts = param.Boolean(default=False, doc="Log-scale counts on the histograms.")

    def __init__(self, state: ExplorerState, model: FilterModel, live: LiveCounts, lines: CutLines, **params):
        super().__init__(**params)
        self.state, self.model, self.live, self.lines = state, model, live, lines
        self.log = pn.widgets.Checkbox.from_param(self.param.log_counts, label="Log counts")
        self.histogram = pn.pane.HoloViews(self._histogram_plot(), sizing_mode="stretch_width", height=330)
        frame = self._table_frame()
        editors = dict.fromkeys(frame.columns)
        if state.has_classes:
            editors["override"] = {"type": "number", "step": 0.01}
        widths = (
            {"samples": 55, "override": 82} if state.has_classes else {"samples": 55, "class": 210}
        )  # rules in words
        self.table = pn.widgets.Tabulator(
            frame,
            show_index=False,
            sizing_mode="stretch_width",
            height=340,
            layout="fit_columns",
            editors=editors,
            titles=TITLES,
            hidden_columns=["label"],
            text_align={"class": "left"},
            page_size=10,
            configuration={"columnDefaults": {"headerSort": False}},
            widths=widths,
            pagination="local" if len(state.counter.classes) > 10 else None,
            stylesheets=[":host { font-size: 12px; }"],
        )
        self.table.on_edit(self.on_table_edit)
        note = pn.pane.Markdown(
            "**Per class, before → after** (before / after: % of the dataset / of the kept set). "
            "Type an override to give a class its own threshold."
            if state.has_classes
            else "**Before → after** (this pool has no classes; with several rules, each is also counted alone).",
            margin=(0, 5),
        )
        self._layout = pn.Row(
            pn.Column(self.histogram, sizing_mode="stretch_width"),
            pn.Column(note, self.table, width=620),
            sizing_mode="stretch_width",
        )
        live.param.watch(self._redraw, "column")
        live.param.watch(lambda event: setattr(self.table, "value", self._table_frame()), "counts")

    @param.depends("log_counts", watch=True)
    def _redraw(self, *event) -> None:
        self.histogram.object = self._histogram_plot()

    def _histogram_plot(self):
        hist = self.state.histogram()
        static = plots.histogram_element(hist, self.state.column, self.log_counts, noisy_word=self.state.noisy_word)
        return static * self.lines.line("hist", hist.edges[0])

    def _table_frame(self) -> pd.DataFrame:
        overrides = self.model.class_overrides if self.model.rule == "threshold" else {}
        return self.state.retention_table(self.live.counts, overrides, self.model.to_rule())

    def on_table_edit(self, event) -> None:
        """A typed override sets that class's threshold; an emptied cell removes it."""
        if event.column != "override" or not self.state.has_classes:
            return
        label = int(self.table.value.iloc[event.row]["label"])
        overrides = dict(self.model.class_overrides)
        value = event.value
        if value is None or value == "" or (isinstance(value, float) and not np.isfinite(value)):
            overrides.pop(label, None)
        else:
            overrides[label] = float(value)
        self.model.class_overrides = overrides

    def __panel__(self):
        return self._layout
