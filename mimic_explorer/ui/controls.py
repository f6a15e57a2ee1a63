"""The filter controls: views of a ``FilterModel`` and the "Kept: N of M" line of its live counts.

Every control is a ``from_param`` view of one model parameter (the widget and the parameter follow
each other), shown only for the rules that use it. The one exception is the typed threshold: it
shows the model's threshold, and what a person types goes back through a check of the column's range
(a value outside it is clamped, with a notice), so the check stays out of the model — from Python a
threshold beyond the scores is allowed (it keeps nothing).

Further clauses (``FilterModel.more``) get the same views in a box each, with a button that removes
the clause; "AND a rule on another column" adds one. Where a run has ``combined_score`` the app opens
on it, and a one-line note says why (image-text pairs have their own combined score and note), with a
button one click from ``mimic_score`` (and back).
"""

from __future__ import annotations

import functools
import html
import threading

import numpy as np
import panel as pn
from panel.viewable import Viewer

from mimic_explorer.filters.rules import describe
from mimic_explorer.ui.counting import Counts
from mimic_explorer.ui.filter_model import ClauseModel, FilterModel
from mimic_explorer.ui.live import LiveCounts
from mimic_explorer.ui.notice import Notice
from mimic_explorer.ui.state import ExplorerState

RULE_LABELS = {
    "Value": "threshold",
    "Quantile": "quantile",
    "Top %": "top_fraction",
    "Top N": "keep_count",
    "Ensemble": "ensemble",
}
#: Five rule buttons fit the sidebar with a little less padding.
RULE_BUTTONS_CSS = ".bk-btn { padding-left: 4px; padding-right: 4px; }"
KEEPS_NOTHING = "This filter keeps no samples: the keep-list would be empty."
COMBINED_NOTE = (
    "Opened on <b>combined_score</b> (mean cos, the reference's loss and the model's loss, averaged as "
    "z-scores): on CIFAR-10 with references that never saw the pool it beat mimic_score alone and came "
    "within 0.005 AUROC of the best single signal in all 20 settings measured (benchmarks/RESULTS.md)."
)
#: the note on an image-text pairs run, whose combined score joins other columns (``baselines.PAIR_COMBINED_INPUTS``)
PAIR_COMBINED_NOTE = (
    "Opened on <b>combined_score</b> (the CLIP score under the reference and under the model and the mean "
    "mimic projection, averaged as z-scores): on Flickr8k pairs with random swapped captions it ranked bad pairs "
    "above every single signal; with hard negatives (captions of similar photos) no signal ranked well "
    "(benchmarks/RESULTS.md, issue 25)."
)

KEPT_CSS = """
.me-kept { font: 600 20px system-ui, sans-serif; color: #1f2328; }
.me-sub { font: 12px system-ui, sans-serif; color: #57606a; margin-top: 2px; }
.me-pr { font: 13px system-ui, sans-serif; margin-top: 4px; }
.me-pr b { color: #1f2328; }
.me-note { font: 12px system-ui, sans-serif; color: #57606a; }
"""


def slider_step(lo: float, hi: float) -> float:
    """A thousandth of the range (what the threshold and band sliders move by)."""
    return float((hi - lo) / 1000) or 0.001


class ColumnPicker:
    """The score-column select of a clause. A column the run's index has not sorted yet (it sorts the
    columns the app opens on when it is built, the rest on first use: seconds at 12.8 M samples, a
    minute at 128 M) is prepared in a background thread while a note says so, and the clause switches
    to it when it is ready: the page stays responsive, for this session and every other one."""

    def __init__(self, model: ClauseModel, state: ExplorerState, *, label: str, notify, **widget_params):
        self.model, self.state, self.notify = model, state, notify
        self.widget = pn.widgets.Select(
            options=list(model.param.column.objects), value=model.column, label=label, **widget_params
        )
        self.pending: threading.Thread | None = None
        self.widget.param.watch(self._picked, "value")
        model.param.watch(lambda event: setattr(self.widget, "value", event.new), "column")
        model.param.watch(lambda event: setattr(self.widget, "options", list(event.new)), "column", what="objects")

    def _picked(self, event) -> None:
        column = event.new
        if column == self.model.column or self.pending is not None:
            return
        if self.state.column_ready(column):
            self.model.column = column
            return
        self.notify(f"Sorting {column} for the first time ({self.state.total:,} samples); it opens when ready.", "info")
        self.widget.disabled = True
        document = pn.state.curdoc if pn.state.curdoc is not None and pn.state.curdoc.session_context else None
        self.pending = threading.Thread(target=self._prepare, args=(column, document), daemon=True)
        self.pending.start()

    def _prepare(self, column: str, document) -> None:
        try:
            self.state.prepare_column(column)
            failure = None
        except Exception as exc:  # noqa: BLE001 - shown to the person who asked, the old column kept
            failure = exc
        finish = functools.partial(self._finish, column, failure)
        if document is not None:
            document.add_next_tick_callback(finish)  # back on the session's own loop, as Bokeh requires
        else:
            finish()

    def _finish(self, column: str, failure: Exception | None) -> None:
        self.pending = None
        self.widget.disabled = False
        if failure is not None:
            self.widget.value = self.model.column
            self.notify(f"Could not open {column}: {failure}", "danger")
            return
        self.notify("", "info")
        self.model.column = column


class _ClauseWidgets:
    """The views of one clause's parameters: column, rule and the value each rule uses (the threshold
    slider follows the clause's column range). ``rules``: the rule labels offered."""

    def __init__(
        self,
        model: ClauseModel,
        state: ExplorerState,
        rules: dict[str, str],
        column_label: str = "Score",
        notify=lambda text, kind: None,
    ):
        self.model, self.state = model, state
        rule = model.param.rule.rx()
        lo, hi = state.score_range(model.column)
        wide = dict(sizing_mode="stretch_width")
        self.column = ColumnPicker(model, state, label=column_label, notify=notify, **wide).widget
        self.rule = pn.widgets.RadioButtonGroup.from_param(
            model.param.rule, options=rules, color="primary", variant="outline", stylesheets=[RULE_BUTTONS_CSS], **wide
        )
        self.slider = pn.widgets.FloatSlider.from_param(
            model.param.threshold,
            label="Threshold",
            start=lo,
            end=hi,
            step=slider_step(lo, hi),
            format="0.000",
            visible=rule == "threshold",
            **wide,
        )
        self.quantile = pn.widgets.FloatSlider.from_param(
            model.param.quantile, label="Drop the lowest fraction", step=0.005, visible=rule == "quantile", **wide
        )
        self.top_fraction = pn.widgets.FloatSlider.from_param(
            model.param.top_fraction, label="Keep the top fraction", step=0.005, visible=rule == "top_fraction", **wide
        )
        self.keep_n = pn.widgets.IntInput.from_param(
            model.param.keep_count,
            label="Keep the top N",
            start=0,
            end=state.total,
            visible=rule == "keep_count",
            **wide,
        )
        self.per_class = pn.widgets.Checkbox.from_param(
            model.param.per_class,
            label="Per class (same fraction in every class)",
            visible=rule.rx.in_(("quantile", "top_fraction", "keep_count")) if state.has_classes else False,
        )
        model.param.watch(self._on_column, "column")

    def _on_column(self, event) -> None:
        lo, hi = self.state.score_range(event.new)
        self.slider.param.update(start=lo, end=hi, step=slider_step(lo, hi))

    @property
    def values(self) -> list:
        """The value widgets (one is visible at a time: the rule decides which), for laying them out together."""
        return [self.slider, self.quantile, self.top_fraction, self.keep_n, self.per_class]


class _ClauseControls(Viewer):
    """One further clause in a box: "AND", its column, a remove button, its rule and value."""

    def __init__(self, clause: ClauseModel, model: FilterModel, state: ExplorerState, notify=None, **params):
        super().__init__(**params)
        self.clause = clause
        self.widgets = _ClauseWidgets(
            clause,
            state,
            {k: v for k, v in RULE_LABELS.items() if v != "ensemble"},
            column_label="AND on",
            notify=notify or (lambda text, kind: None),
        )
        self.remove = pn.widgets.Button(
            label="✕", description="Remove this clause", color="light", width=40, align="end"
        )
        self.remove.on_click(lambda event: model.remove_clause(clause))
        self._layout = pn.Column(
            pn.Row(self.widgets.column, self.remove, sizing_mode="stretch_width"),
            self.widgets.rule,
            *self.widgets.values,
            css_classes=["me-clause"],
            styles={"border": "1px solid #d0d7de", "border-radius": "8px"},
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return self._layout


class FilterControls(Viewer):
    """Column, rule, its value, per class, clear overrides; further clauses; "Kept: N of M" and the notice."""

    def __init__(self, model: FilterModel, live: LiveCounts, state: ExplorerState, notice: Notice, **params):
        super().__init__(**params)
        self.model, self.live, self.state, self.notice = model, live, state, notice
        wide = dict(sizing_mode="stretch_width")
        rules = {k: v for k, v in RULE_LABELS.items() if v != "ensemble" or state.has_ensemble}
        self.first = _ClauseWidgets(model, state, rules, notify=notice.show)
        self.column, self.rule, self.slider = self.first.column, self.first.rule, self.first.slider
        self.quantile, self.top_fraction, self.keep_n = self.first.quantile, self.first.top_fraction, self.first.keep_n
        self.per_class = self.first.per_class
        self.typed = pn.widgets.FloatInput(
            label="Type a threshold",
            value=model.param.threshold,
            format="0.0000",
            visible=model.param.rule.rx() == "threshold",
            **wide,
        )
        self.typed.param.watch(self._on_typed, "value")
        self.clear_overrides = pn.widgets.Button(
            label="Clear per-class overrides",
            color="light",
            visible=pn.bind(
                lambda kind, overrides: kind == "threshold" and bool(overrides),
                model.param.rule,
                model.param.class_overrides,
            ),
        )
        self.clear_overrides.on_click(lambda event: setattr(model, "class_overrides", {}))
        self.score_note = self._score_note()
        self.clauses = pn.Column(**wide)
        self.boxes: list[_ClauseControls] = []  # the further clauses' boxes, in the order of model.more
        self.add_clause = pn.widgets.Button(
            label="+ AND a rule on another column",
            color="light",
            **wide,
            disabled=len(state.score_columns) < 2,
            description="Keep only samples that every rule keeps, e.g. CLIP score top 30 % "
            "AND mimic_score not in its lowest 15 %",
        )
        self.add_clause.on_click(lambda event: model.add_clause())
        self.kept = pn.pane.HTML(
            self._kept_html(live.counts), stylesheets=[KEPT_CSS], css_classes=["kept-count"], **wide
        )
        self._layout = pn.Column(
            self.score_note,
            self.column,
            self.rule,
            self.slider,
            self.typed,
            self.quantile,
            self.top_fraction,
            self.keep_n,
            self.per_class,
            self.clear_overrides,
            self.clauses,
            self.add_clause,
            self.kept,
            notice,
            **wide,
        )
        model.param.watch(self._on_more, "more")
        live.param.watch(self._on_counts, "counts")
        self._on_more()
        self._say_if_empty()

    def _score_note(self) -> pn.Column:
        """Where the run has ``combined_score``: why the app opens on it, and ``mimic_score`` one click away."""
        if "combined_score" not in self.state.score_columns or "mimic_score" not in self.state.score_columns:
            return pn.Column(visible=False)
        column = self.model.param.column.rx()
        switch = pn.widgets.Button(
            label=(column == "combined_score").rx.where("Show mimic_score instead", "Show combined_score"),
            color="light",
            sizing_mode="stretch_width",
        )
        switch.on_click(
            lambda event: setattr(
                self.model, "column", "mimic_score" if self.model.column == "combined_score" else "combined_score"
            )
        )
        note = pn.pane.HTML(
            PAIR_COMBINED_NOTE if self.state.has_captions else COMBINED_NOTE,
            stylesheets=[KEPT_CSS],
            css_classes=["me-note"],
            sizing_mode="stretch_width",
            visible=column == "combined_score",
        )
        return pn.Column(note, switch, sizing_mode="stretch_width", css_classes=["score-note"])

    def _on_more(self, event=None) -> None:
        """Rebuild the boxes of the further clauses when one is added or removed (not on their edits)."""
        if [id(box.clause) for box in self.boxes] != [id(c) for c in self.model.more]:
            boxes = {id(box.clause): box for box in self.boxes}
            self.boxes = [
                boxes.get(id(c)) or _ClauseControls(c, self.model, self.state, self.notice.show)
                for c in self.model.more
            ]
            self.clauses[:] = self.boxes

    def _on_typed(self, event) -> None:
        value = event.new
        if value is None or value == self.model.threshold:  # the model's own value, shown back
            return
        if not np.isfinite(value):
            self.notice.show(f"{value} is not a threshold.", "warning")
            return
        lo, hi = self.state.score_range()
        if lo <= value <= hi:
            self.notice.show("")
        else:
            clamped = float(np.clip(value, lo, hi))
            self.notice.show(
                f"Threshold {value:g} is outside the range of {self.model.column} ([{lo:.4g}, {hi:.4g}]); "
                f"using {clamped:.4g}.",
                "warning",
            )
            value = clamped
        self.model.threshold = float(value)
        if self.typed.value != value:  # the threshold already was the clamped value: show it anyway
            self.typed.value = value

    def _on_counts(self, event) -> None:
        self.kept.object = self._kept_html(event.new)  # a watcher, not a bound function: half the cost per change
        self._say_if_empty()

    def _say_if_empty(self) -> None:
        if self.live.counts is not None and self.live.counts.kept == 0:
            self.notice.show(KEEPS_NOTHING, "warning")
        elif self.notice.message == KEEPS_NOTHING:
            self.notice.show("")

    def _kept_html(self, counts: Counts | None) -> str:
        if counts is None:
            return ""
        model, column = self.model, self.model.column
        share = 100 * counts.kept / max(counts.total, 1)
        first = counts.clauses[0] if counts.clauses else counts
        cut = self.state.cut(first)
        detail = {
            "threshold": f"{column} ≥ {model.threshold:.4g}",
            "quantile": f"drop the lowest {100 * model.quantile:.1f} %" + (" per class" if model.per_class else ""),
            "top_fraction": f"top {100 * model.top_fraction:.1f} %" + (" per class" if model.per_class else ""),
            "keep_count": f"top {model.keep_count}" + (" per class (proportional)" if model.per_class else ""),
            "ensemble": "the run's ensemble filter (Stage 2 vote)",
        }[model.rule]
        if model.rule != "threshold" and cut is not None:
            detail += f" → {column} ≥ {cut:.4g}"
        if model.rule == "threshold" and model.class_overrides:
            detail += f" · {len(model.class_overrides)} class override(s)"
        text = (
            f'<div class="me-kept">Kept: {counts.kept} of {counts.total}</div>'
            f'<div class="me-sub">{share:.1f} % kept · {counts.dropped} dropped · {html.escape(detail)}'
            + (f" (alone {first.kept})" if counts.clauses else "")
            + "</div>"
        )
        for clause, part in zip(model.more, (counts.clauses or [])[1:], strict=False):
            rule = clause.clause()
            part_cut = self.state.cut(part)
            resolved = f" → ≥ {part_cut:.4g}" if rule.kind != "threshold" and part_cut is not None else ""
            text += f'<div class="me-sub">AND {html.escape(describe(rule))}{resolved} (alone {part.kept})</div>'
        if counts.noisy_total:
            precision = "–" if counts.precision is None else f"{counts.precision:.3f}"
            recall = "–" if counts.recall is None else f"{counts.recall:.3f}"
            text += (
                f'<div class="me-pr">Dropped vs ground truth: precision <b>{precision}</b> · recall <b>{recall}</b>'
                f' <span class="me-sub">({counts.noisy_dropped} of {counts.noisy_total} {self.state.noisy_word} '
                "dropped)</span></div>"
            )
        return text

    def __panel__(self):
        return self._layout
