"""The Map view: every sample on the run's 2-D layout, datashaded, with box and lasso selection.

What it does (the logic is ``ui/map_state.py``'s; this is the page):

- colours the points by a chosen column (the current score, class, kept by the filter, ground truth,
  suggested label and whether it differs, review decision, a caption search);
- hovering shows the sample under the cursor (thumbnail, caption, labels) beside the map; a click opens
  it in the detail view, where "More like this" lists its nearest neighbours;
- a box or lasso selection narrows the galleries to the selected samples and says "selected N · kept K";
  the selection can be downloaded as a keep-list, ANDed into the filter (an ids clause, recorded in the
  spec), or marked keep / drop / relabel (the run's review log);
- on labelled runs with a suggested label, a given × suggested matrix whose cells select their samples.

Datashader renders the points into an image on the server at the view's resolution (and again on
zoom), so the browser receives pixels, not millions of glyphs.
"""

from __future__ import annotations

import html
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from panel.viewable import Viewer

from mimic_explorer.filters.rules import FilterError, apply_rule, selection
from mimic_explorer.maps.layout2d import MapError
from mimic_explorer.store.keep_list_stream import write_keep_list
from mimic_explorer.store.reviews import ReviewError, append_reviews
from mimic_explorer.ui.filter_model import FilterModel
from mimic_explorer.ui.live import LiveCounts
from mimic_explorer.ui.map_state import KEPT, REVIEW, SCORE, SEARCH, MapState
from mimic_explorer.ui.notice import Notice
from mimic_explorer.ui.state import ExplorerState
from mimic_explorer.ui.thumbnails import ThumbnailURIs
from mimic_explorer.util.positions import sorted_distinct

HEIGHT = 520
#: a fixed colour per category where a colouring has a meaning of its own
FIXED = {
    "kept": "#1f77b4",
    "dropped": "#d62728",
    "clean": "#1f77b4",
    "mislabeled": "#d62728",
    "swapped caption": "#d62728",
    "agrees": "#9aa7b1",
    "differs": "#d62728",
    "none": "#c5ccd3",
    "keep": "#2ca02c",
    "drop": "#d62728",
    "relabel": "#ff7f0e",
    "match": "#d62728",
    "other": "#c5ccd3",
    "(other)": "#c5ccd3",
}
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#393b79",
    "#637939",
    "#8c6d31",
    "#843c39",
    "#7b4173",
    "#3182bd",
    "#e6550d",
    "#31a354",
    "#756bb1",
    "#636363",
]
CSS = """
.me-selected { font: 600 14px system-ui, sans-serif; color: #1f2328; }
.me-selected .hint { font-weight: 400; color: #57606a; }
.me-hover { font: 12px system-ui, sans-serif; color: #1f2328; }
.me-hover img { width: 128px; height: 128px; object-fit: contain; background: #111; border-radius: 6px;
  display: block; }
.me-hover .cap { margin-top: 6px; overflow-wrap: anywhere; }
.me-hover .muted { color: #57606a; }
"""


def colour_key(categories: list[str]) -> dict[str, str]:
    """A colour for every category: its own where it has one (``FIXED``), else the palette in turn."""
    key, spare = {}, iter(PALETTE * (1 + len(categories) // len(PALETTE)))
    for name in categories:
        key[name] = FIXED.get(name) or next(spare)
    return key


class MapView(Viewer):
    """The Map tab of one explorer (see the module docstring)."""

    colouring = param.Selector(default=SCORE, objects=[SCORE], doc="What colours the points.")
    version = param.Integer(default=0, doc="Bumped when the selection changes (redraws its highlight).")

    def __init__(
        self,
        state: ExplorerState,
        model: FilterModel,
        live: LiveCounts,
        thumbs: ThumbnailURIs,
        notice: Notice,
        open_sample: Callable[[int], None],
        on_selection: Callable[[], None],
        **params,
    ):
        super().__init__(**params)
        self.state, self.model, self.live, self.thumbs, self.notice = state, model, live, thumbs, notice
        self.open_sample, self.on_selection = open_sample, on_selection
        self.map = MapState(state)
        self._kept_for: tuple[str, np.ndarray] | None = None  # (the rule, its keep mask): ``_kept_mask``
        self.param.colouring.objects = self.map.colourings()
        self.colouring = SCORE
        wide = dict(sizing_mode="stretch_width")
        self.header = pn.pane.HTML("", stylesheets=[CSS], css_classes=["map-selected"], **wide)
        self.hover = pn.pane.HTML(
            '<div class="me-hover muted">Hover over the map to see a sample; click to open it.</div>',
            stylesheets=[CSS],
            width=160,
        )
        self.plot = pn.pane.HoloViews(None, height=HEIGHT, sizing_mode="stretch_width", css_classes=["map-plot"])
        self.colour_select = pn.widgets.Select.from_param(self.param.colouring, name="Colour by", width=200)
        self.search = pn.widgets.TextInput(label="Highlight captions containing", width=260, visible=state.has_captions)
        self.clear = pn.widgets.Button(label="Clear selection", color="light", width=130)
        self.export_selection = pn.widgets.FileDownload(
            callback=self.selection_file,
            filename=f"selection-{state.run.run_id}.csv",
            label="Export the selection",
            color="primary",
            width=170,
            css_classes=["map-export"],
        )
        self.and_filter = pn.widgets.Button(label="AND into the filter", color="light", width=160)
        self.note = pn.widgets.TextInput(placeholder="note (optional)", width=180)
        self.mark_keep = pn.widgets.Button(label="Mark keep", color="success", width=100)
        self.mark_drop = pn.widgets.Button(label="Mark drop", color="danger", width=100, css_classes=["map-drop"])
        classes = [f"{c}: {state.label_name(c)}" for c in state.counter.classes.tolist() if c >= 0]
        self.relabel_to = pn.widgets.Select(options=classes, width=150, visible=state.has_classes)
        self.mark_relabel = pn.widgets.Button(label="Relabel to", color="warning", width=100, visible=state.has_classes)
        self.clear.on_click(lambda event: self.set_selection(None))
        self.and_filter.on_click(lambda event: self.and_into_filter())
        self.mark_keep.on_click(lambda event: self._mark("keep"))
        self.mark_drop.on_click(lambda event: self._mark("drop"))
        self.mark_relabel.on_click(lambda event: self._mark("relabel", self.relabel_to.value.split(":", 1)[0]))
        self.search.param.watch(self._on_search, "value")
        self.selected: np.ndarray | None = None
        self._body = pn.Column(**wide)
        self._layout = pn.Column(self._body, css_classes=["map-view"], **wide)
        self._built = False
        live.param.watch(self._on_counts, "counts")

    # ------------------------------------------------------------------ building

    def build(self) -> None:
        """Load (or make) the layout and draw the view; a run without one gets a message saying why."""
        if self._built:
            return
        if not self.map.can_map:
            self._body[:] = [pn.pane.Alert(self._no_map_text(), alert_type="info", sizing_mode="stretch_width")]
            return
        if not self.map.make_on_open:
            button = pn.widgets.Button(label="Make the map now (PCA)", color="primary", width=220)
            button.on_click(lambda event: self._make_now())
            self._body[:] = [
                pn.pane.Markdown(
                    f"This run's {self.state.total:,} samples have no map yet. Make it once with "
                    f"`mimic-explorer map {self.state.run.path}` (with a progress bar; also builds the "
                    "nearest-neighbour index), or here (the page waits while it is made)."
                ),
                button,
            ]
            return
        self._make_now()

    def _no_map_text(self) -> str:
        return (
            "This run has no embeddings to map. Runs with a reference keep them (train --reference …, "
            "score --model … --reference …): a linear probe's backbone features, a network's penultimate "
            "features, a pair's image and caption embeddings. You can also bring your own coordinates: "
            "mimic-explorer map RUN --coords FILE.parquet (sample_id, x, y)."
        )

    def _make_now(self) -> None:
        try:
            self.map.load()
        except (MapError, ValueError) as exc:
            self._body[:] = [pn.pane.Alert(f"No map: {exc}", alert_type="warning", sizing_mode="stretch_width")]
            return
        self._built = True
        actions = pn.Row(
            self.clear, self.export_selection, self.and_filter, self.note, self.mark_keep, self.mark_drop, **_wrap()
        )
        if self.state.has_classes:
            actions.extend([self.mark_relabel, self.relabel_to])
        parts = [
            pn.Row(self.colour_select, self.search, pn.pane.Markdown(f"map: `{self.map.name}`"), **_wrap()),
            self.header,
            actions,
            pn.Row(self.plot, self.hover, sizing_mode="stretch_width"),
        ]
        if self.map.has_suggestions:
            parts += [
                pn.pane.Markdown("#### Given × suggested label (click a cell to select its samples)"),
                self._confusion(),
            ]
        self._body[:] = parts
        self._draw()
        self._say_selection()

    # ------------------------------------------------------------------ the plot

    def _frame(self) -> tuple[pd.DataFrame, bool]:
        keep = self._kept_mask() if self.colouring == KEPT else None  # only the "kept" colouring reads it
        values = self.map.values(self.colouring, keep, self.search.value)
        coords = self.map.coords
        # the columns as they are (a consolidating copy of 12.8 M rows took 0.3 s of every draw)
        frame = pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "c": values}, copy=False)
        finite = self.map.finite_rows()
        return (frame if finite is None else frame[finite]), isinstance(values, pd.Categorical)

    @param.depends("colouring", watch=True)
    def _draw(self) -> None:
        if not self._built:
            return
        import datashader as ds
        from holoviews.operation.datashader import datashade, dynspread, rasterize

        frame, categorical = self._frame()
        points = hv.Points(frame, ["x", "y"], ["c"])
        tools = ["box_select", "lasso_select", "tap"]
        common = dict(responsive=True, height=HEIGHT, tools=tools, active_tools=["box_select"])
        if categorical:
            categories = [str(c) for c in frame["c"].cat.categories]
            shaded = dynspread(
                datashade(points, aggregator=ds.count_cat("c"), color_key=colour_key(categories), min_alpha=90),
                threshold=0.6,
                max_px=3,
            )
            legend = hv.NdOverlay(
                {
                    name: hv.Points([(np.nan, np.nan)]).opts(color=colour)
                    for name, colour in colour_key(categories).items()
                }
            ).opts(legend_position="right")
            element = shaded.opts(**common) * legend
        else:
            shaded = rasterize(points, aggregator=ds.mean("c")).opts(
                cmap="viridis", colorbar=True, clabel=self.state.column, **common
            )
            element = dynspread(shaded, threshold=0.6, max_px=3, how="max")  # spread means, never sum them
        box = hv.streams.BoundsXY(source=shaded)
        lasso = hv.streams.Lasso(source=shaded)
        tap = hv.streams.Tap(source=shaded)
        pointer = hv.streams.PointerXY(source=shaded)
        box.add_subscriber(lambda bounds: self._on_box(bounds))
        lasso.add_subscriber(lambda geometry: self._on_lasso(geometry))
        tap.add_subscriber(lambda x, y: self._on_tap(x, y))
        pointer.add_subscriber(lambda x, y: self._on_pointer(x, y))
        self._streams = (box, lasso, tap, pointer)
        highlight = hv.DynamicMap(self._selected_points, streams=[hv.streams.Params(self, ["version"])])
        marks = dynspread(datashade(highlight, cmap=["#111111"], min_alpha=255), threshold=0.9, max_px=2)
        import holoviews.plotting.bokeh  # noqa: F401 - registers the bokeh options the next line names

        # one legend of the categories (datashade's layers would each add theirs)
        self.plot.object = (element * marks).opts(hv.opts.RGB(show_legend=False))

    def _selected_points(self, version: int) -> hv.Points:
        coords = self.map.coords
        chosen = self.selected if self.selected is not None else np.zeros(0, dtype=np.int64)
        return hv.Points(pd.DataFrame({"x": coords[chosen, 0], "y": coords[chosen, 1]}), ["x", "y"])

    def _radius(self) -> float:
        x0, y0, x1, y1 = self.map.extent()
        return 0.01 * max(x1 - x0, y1 - y0, 1e-9)

    # ------------------------------------------------------------------ reactions

    def _on_box(self, bounds) -> None:
        if bounds is not None:
            self.set_selection(self.map.box(bounds))

    def _on_lasso(self, geometry) -> None:
        if geometry is not None and len(geometry) >= 3:
            self.set_selection(self.map.lasso(np.asarray(geometry)))

    def _on_tap(self, x, y) -> None:
        if x is None or y is None:
            return
        position = self.map.nearest(float(x), float(y), self._radius())
        if position is not None:
            self.open_sample(position)

    def _on_pointer(self, x, y) -> None:
        if x is None or y is None:
            return
        position = self.map.nearest(float(x), float(y), self._radius())
        if position is None:
            return
        self.hover.object = self._hover_html(position)

    def _hover_html(self, position: int) -> str:
        record = self.state.record(position)
        sample_id = str(record["sample_id"])
        lines = [f"<b>{html.escape(sample_id)}</b>"]
        if self.state.has_classes:
            lines.append(f"label {html.escape(str(record.get('label name', record.get('label'))))}")
            if "ref_pred name" in record:
                lines.append(f"suggested {html.escape(str(record['ref_pred name']))} ({record.get('ref_prob', 0):.2f})")
        score = record.get(self.state.column)
        if isinstance(score, float):
            lines.append(f"{html.escape(self.state.column)} {score:.3f}")
        caption = record.get("caption")
        cap = f'<div class="cap">{html.escape(str(caption))}</div>' if isinstance(caption, str) else ""
        return (
            f'<div class="me-hover"><img src="{self.thumbs.uri(sample_id, position)}" alt="{html.escape(sample_id)}">'
            f"{cap}<div>{'<br>'.join(lines)}</div></div>"
        )

    def _on_search(self, event) -> None:
        if event.new.strip():
            self.colouring = SEARCH
        self._draw()

    def _on_counts(self, event) -> None:
        if self._built and self.colouring == KEPT:
            self._draw()
        self._say_selection()

    # ------------------------------------------------------------------ the selection

    def set_selection(self, positions: np.ndarray | None) -> None:
        """Select the samples at row ``positions`` (None: clear): galleries, header and highlight follow."""
        self.selected = None if positions is None else sorted_distinct(positions)
        self.state.select(self.selected)
        self.version += 1
        self._say_selection()
        self.on_selection()

    def _kept_mask(self) -> np.ndarray:
        """The current filter's keep mask: the live counts' where they hold one, else the rule applied once
        per rule (at millions of samples the counts come from binary searches, without a mask, and applying
        the rule again for every selection took half a second at 12.8 M)."""
        counts = self.live.counts
        if counts is not None and counts.keep is not None:
            return counts.keep
        rule = self.model.to_rule()
        if self._kept_for is None or self._kept_for[0] != repr(rule):
            self._kept_for = (repr(rule), self.state.apply(rule).keep)
        return self._kept_for[1]

    def selected_counts(self) -> tuple[int, int] | None:
        """(selected, of them kept by the current filter), or None without a selection."""
        if self.selected is None:
            return None
        return len(self.selected), int(self._kept_mask()[self.selected].sum())

    def _say_selection(self) -> None:
        held = len(self.model.selected_ids)
        note = (
            f' <span class="hint">· the filter keeps only a selection of {held:,} samples ("AND into the filter" '
            "with nothing selected takes it out)</span>"
            if held
            else ""
        )
        found = self.selected_counts()
        if found is None:
            self.header.object = (
                '<div class="me-selected"><span class="hint">Drag a box or a lasso on the map to select '
                f"samples; the galleries then show the selection.</span>{note}</div>"
            )
            return
        n, kept = found
        self.header.object = f'<div class="me-selected">selected {n:,} · kept {kept:,}{note}</div>'

    def selection_file(self) -> io.BytesIO:
        """The selected samples as a csv keep-list (every selected row, whatever the filter keeps)."""
        if self.selected is None or len(self.selected) == 0:
            self.notice.show("Nothing is selected: drag a box or a lasso on the map first.", "warning")
            return io.BytesIO(b"")
        ids = self.state.samples["sample_id"].to_numpy()[self.selected]
        result = apply_rule(self.state.samples, selection(ids.astype(str)))
        with tempfile.TemporaryDirectory(prefix="selection-") as folder:
            out = write_keep_list(self.state.samples, result, self.state.column, "csv", Path(folder) / "s.csv")
            return io.BytesIO(out.read_bytes())

    def and_into_filter(self) -> None:
        """AND the selection into the filter (an ids clause); an empty selection removes it."""
        if self.selected is None or len(self.selected) == 0:
            self.model.selected_ids = []
            self.notice.show("The filter no longer holds a selection.", "info")
            return
        self.model.selected_ids = self.state.samples["sample_id"].to_numpy()[self.selected].astype(str).tolist()
        self.notice.show(
            f"The filter now keeps only samples among the {len(self.selected):,} selected (an ids clause, "
            "recorded in the spec).",
            "info",
        )

    def _mark(self, decision: str, label: str | None = None) -> None:
        if self.selected is None or len(self.selected) == 0:
            self.notice.show("Nothing is selected to mark.", "warning")
            return
        ids = self.state.samples["sample_id"].to_numpy()[self.selected].astype(str)
        try:
            self.review(ids, decision, label, self.note.value)
        except (ReviewError, FilterError) as exc:
            self.notice.show(f"Not recorded: {exc}", "danger")

    def review(self, ids, decision: str, label=None, note: str = "") -> int:
        """Record ``decision`` for ``ids`` in the run's review log; the map redraws when it shows the decisions."""
        rows = append_reviews(
            self.state.run.layout,
            ids,
            decision,
            run_ids=self.state.samples["sample_id"].to_numpy(),
            class_names=self.state.class_names,
            label=label,
            note=note,
        )
        self.notice.show(f"Recorded {decision} for {len(rows):,} samples (exports apply it).", "success")
        if self._built and self.colouring == REVIEW:
            self._draw()
        return len(rows)

    # ------------------------------------------------------------------ the suggested-label matrix

    def _confusion(self):
        counts = self.map.confusion()
        heat = hv.HeatMap(counts, ["suggested name", "given name"], ["count", "given", "suggested"]).opts(
            tools=["hover", "tap"],
            cmap="Blues",
            logz=True,
            colorbar=True,
            width=560,
            height=460,
            xrotation=45,
            xlabel="suggested (reference)",
            ylabel="given label",
        )
        tap = hv.streams.Tap(source=heat)
        tap.add_subscriber(lambda x, y: self._on_cell(x, y))
        self._cell_tap = tap
        return pn.pane.HoloViews(heat, css_classes=["map-confusion"])

    def _on_cell(self, x, y) -> None:
        if x is None or y is None:
            return
        names = {self.state.label_name(c): int(c) for c in self.state.counter.classes.tolist() if c >= 0}
        if str(x) in names and str(y) in names:
            self.set_selection(self.map.cell(names[str(y)], names[str(x)]))

    def __panel__(self):
        return self._layout


def _wrap() -> dict:
    return dict(sizing_mode="stretch_width", styles={"flex-wrap": "wrap"})
