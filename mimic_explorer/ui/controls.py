"""The filter controls: views of a ``FilterModel`` and the "Kept: N of M" line of its live counts.

Every control is a ``from_param`` view of one model parameter (the widget and the parameter follow
each other), shown only for the rules that use it. The one exception is the typed threshold: it
shows the model's threshold, and what a person types goes back through a check of the column's range
(a value outside it is clamped, with a notice), so the check stays out of the model — from Python a
threshold beyond the scores is allowed (it keeps nothing).
"""

from __future__ import annotations

import numpy as np
import panel as pn
from panel.viewable import Viewer

from mimic_explorer.ui.counting import Counts
from mimic_explorer.ui.filter_model import FilterModel
from mimic_explorer.ui.live import LiveCounts
from mimic_explorer.ui.notice import Notice
from mimic_explorer.ui.state import ExplorerState

RULE_LABELS = {"By value": "threshold", "Quantile": "quantile", "Keep count": "keep_count", "Ensemble": "ensemble"}
KEEPS_NOTHING = "This filter keeps no samples: the keep-list would be empty."

KEPT_CSS = """
.me-kept { font: 600 20px system-ui, sans-serif; color: #1f2328; }
.me-sub { font: 12px system-ui, sans-serif; color: #57606a; margin-top: 2px; }
.me-pr { font: 13px system-ui, sans-serif; margin-top: 4px; }
.me-pr b { color: #1f2328; }
"""


def slider_step(lo: float, hi: float) -> float:
    """A thousandth of the range (what the threshold and band sliders move by)."""
    return float((hi - lo) / 1000) or 0.001


class FilterControls(Viewer):
    """Column, rule, its value, per class, clear overrides; then "Kept: N of M" and the notice."""

    def __init__(self, model: FilterModel, live: LiveCounts, state: ExplorerState, notice: Notice, **params):
        super().__init__(**params)
        self.model, self.live, self.state, self.notice = model, live, state, notice
        rule = model.param.rule.rx()
        lo, hi = state.score_range()
        wide = dict(sizing_mode="stretch_width")
        self.column = pn.widgets.Select.from_param(model.param.column, label="Score", **wide)
        self.rule = pn.widgets.RadioButtonGroup.from_param(
            model.param.rule, options={k: v for k, v in RULE_LABELS.items() if v != "ensemble" or state.has_ensemble},
            color="primary", variant="outline", **wide)
        self.slider = pn.widgets.FloatSlider.from_param(
            model.param.threshold, label="Threshold", start=lo, end=hi, step=slider_step(lo, hi), format="0.000",
            visible=rule == "threshold", **wide)
        self.typed = pn.widgets.FloatInput(label="Type a threshold", value=model.param.threshold, format="0.0000",
                                           visible=rule == "threshold", **wide)
        self.typed.param.watch(self._on_typed, "value")
        self.quantile = pn.widgets.FloatSlider.from_param(model.param.quantile, label="Drop the lowest fraction",
                                                          step=0.005, visible=rule == "quantile", **wide)
        self.keep_n = pn.widgets.IntInput.from_param(model.param.keep_count, label="Keep the top N", start=0,
                                                     end=state.total, visible=rule == "keep_count", **wide)
        self.per_class = pn.widgets.Checkbox.from_param(model.param.per_class, label="Per class (same fraction in every class)",
                                                        visible=rule.rx.in_(("quantile", "keep_count")))
        self.clear_overrides = pn.widgets.Button(
            label="Clear per-class overrides", color="light",
            visible=pn.bind(lambda kind, overrides: kind == "threshold" and bool(overrides), model.param.rule,
                            model.param.class_overrides))
        self.clear_overrides.on_click(lambda event: setattr(model, "class_overrides", {}))
        self.kept = pn.pane.HTML(self._kept_html(live.counts), stylesheets=[KEPT_CSS], css_classes=["kept-count"], **wide)
        self._layout = pn.Column(self.column, self.rule, self.slider, self.typed, self.quantile, self.keep_n, self.per_class,
                                 self.clear_overrides, self.kept, notice, **wide)
        live.param.watch(self._on_column, "column")
        live.param.watch(self._on_counts, "counts")
        self._say_if_empty()

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
            self.notice.show(f"Threshold {value:g} is outside the range of {self.model.column} ([{lo:.4g}, {hi:.4g}]); "
                             f"using {clamped:.4g}.", "warning")
            value = clamped
        self.model.threshold = float(value)
        if self.typed.value != value:  # the threshold already was the clamped value: show it anyway
            self.typed.value = value

    def _on_column(self, event) -> None:
        lo, hi = self.state.score_range()
        self.slider.param.update(start=lo, end=hi, step=slider_step(lo, hi))

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
        cut = self.state.cut(counts)
        detail = {"threshold": f"{column} ≥ {model.threshold:.4g}",
                  "quantile": f"drop the lowest {100 * model.quantile:.1f} %" + (" per class" if model.per_class else ""),
                  "keep_count": f"top {model.keep_count}" + (" per class (proportional)" if model.per_class else ""),
                  "ensemble": "the run's ensemble filter (Stage 2 vote)"}[model.rule]
        if model.rule != "threshold" and cut is not None:
            detail += f" → {column} ≥ {cut:.4g}"
        if model.rule == "threshold" and model.class_overrides:
            detail += f" · {len(model.class_overrides)} class override(s)"
        text = (f'<div class="me-kept">Kept: {counts.kept} of {counts.total}</div>'
                f'<div class="me-sub">{share:.1f} % kept · {counts.dropped} dropped · {detail}</div>')
        if counts.noisy_total:
            precision = "–" if counts.precision is None else f"{counts.precision:.3f}"
            recall = "–" if counts.recall is None else f"{counts.recall:.3f}"
            text += (f'<div class="me-pr">Dropped vs ground truth: precision <b>{precision}</b> · recall <b>{recall}</b>'
                     f' <span class="me-sub">({counts.noisy_dropped} of {counts.noisy_total} mislabeled dropped)</span></div>')
        return text

    def __panel__(self):
        return self._layout
