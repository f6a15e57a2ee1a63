"""The three galleries (lowest, highest, around the cut or in a score band) and the sample detail.

Cards are marked kept or dropped by the live counts of the filter; a click opens the sample in the
detail view and adds it to the ``Selection`` whose trajectories the "More views" tabs plot. In a run
with captions a search box narrows all three galleries to the samples whose caption contains the
text (``ExplorerState.narrow``), and says how many match.
"""

from __future__ import annotations

import html

import numpy as np
import panel as pn
import param
from panel.viewable import Viewer

from mimic_explorer.ui.controls import slider_step
from mimic_explorer.ui.detail import DetailView
from mimic_explorer.ui.filter_model import FilterModel
from mimic_explorer.ui.gallery import Gallery, gallery_html
from mimic_explorer.ui.live import LiveCounts
from mimic_explorer.ui.state import ExplorerState, robust_range
from mimic_explorer.ui.thumbnails import ThumbnailURIs

ALL_CLASSES = "all classes"
AROUND, BAND = "Around the threshold", "In a score band"
HINT = (
    "<span style='font:12px system-ui;color:#57606a'>{}Pink card: dropped by the current filter · click an image "
    "for its detail.</span>"
)
MATCH_CSS = ".me-match { font: 12px system-ui, sans-serif; color: #57606a; }"


def _default_band(state: ExplorerState) -> tuple[float, float]:
    """The middle fifth of the column's robust range."""
    lo, hi = robust_range(state.counter.sorted_finite, presorted=True)
    return (lo + 0.4 * (hi - lo), lo + 0.6 * (hi - lo))


class Selection(param.Parameterized):
    """The samples (row positions) picked by clicking cards, most recent last, at most ``limit``."""

    positions = param.List(default=[], item_type=int, doc="Row positions whose trajectories are plotted.")
    limit = 8

    def add(self, position: int) -> None:
        """Add ``position`` as the most recent pick (once), dropping the oldest beyond ``limit``."""
        self.positions = ([p for p in self.positions if p != position] + [int(position)])[-self.limit :]


class Galleries(Viewer):
    """Lowest / highest / third gallery of ``model``'s column, with the detail view beside them."""

    gallery_size = param.Integer(default=16, bounds=(1, 200), doc="Images per gallery (k).")
    gallery_class = param.Selector(default=ALL_CLASSES, objects=[ALL_CLASSES], doc="Restrict galleries to one class.")
    third_gallery = param.Selector(default=AROUND, objects=[AROUND, BAND])
    band = param.Range(default=(0.0, 1.0), doc="Score band for the third gallery.")
    caption_query = param.String(default="", doc="Show only samples whose caption contains this (case-insensitive).")

    def __init__(
        self,
        state: ExplorerState,
        model: FilterModel,
        live: LiveCounts,
        thumbs: ThumbnailURIs,
        detail: DetailView,
        selection: Selection,
        **params,
    ):
        super().__init__(band=_default_band(state))
        self.state, self.model, self.live, self.thumbs, self.detail, self.selection = (
            state,
            model,
            live,
            thumbs,
            detail,
            selection,
        )
        self.param.gallery_class.objects = [ALL_CLASSES] + [
            f"{c}: {state.label_name(c)}" for c in state.counter.classes.tolist()
        ]
        lo, hi = state.score_range()
        wide = dict(sizing_mode="stretch_width")
        self.size_slider = pn.widgets.IntSlider.from_param(
            self.param.gallery_size, label="Images per gallery", start=4, end=64, **wide
        )
        self.class_select = pn.widgets.Select.from_param(
            self.param.gallery_class, label="Gallery class", visible=state.has_classes, **wide
        )
        self.query_input = pn.widgets.TextInput.from_param(
            self.param.caption_query, name="Search captions", placeholder="a word or phrase, then Enter", **wide
        )
        self.match_note = pn.pane.HTML("", stylesheets=[MATCH_CSS], css_classes=["caption-matches"], **wide)
        self.search_box = pn.Column(self.query_input, self.match_note, visible=state.has_captions, **wide)
        self.third = pn.widgets.RadioButtonGroup.from_param(self.param.third_gallery, color="light")
        self.band_slider = pn.widgets.RangeSlider.from_param(
            self.param.band,
            label="Score band",
            start=lo,
            end=hi,
            step=slider_step(lo, hi),
            format="0.000",
            throttled=True,
            visible=self.param.third_gallery.rx() == BAND,
            **wide,
        )
        self.galleries = {name: Gallery(**wide) for name in ("lowest", "highest", "third")}
        for gallery in self.galleries.values():
            gallery.on_click(self.open)
        self.titles = {name: pn.pane.Markdown("", margin=(10, 5, 0, 5)) for name in self.galleries}
        self.thumb_note = pn.pane.Alert(
            "This run has no thumbnails (or they moved): galleries show placeholders; everything else works.",
            alert_type="info",
            visible=False,
            **wide,
        )
        self.shown: dict[str, np.ndarray] = {}
        self.param.update(**params)
        self.refresh()
        hint = HINT.format(f"Red border: {state.noisy_word} (ground truth) · " if state.has_truth else "")
        cards = pn.Column(
            self.thumb_note,
            pn.pane.HTML(hint, margin=(0, 5)),
            self.titles["lowest"],
            self.galleries["lowest"],
            self.titles["highest"],
            self.galleries["highest"],
            pn.Row(self.titles["third"], self.third, align="center"),
            self.band_slider,
            self.galleries["third"],
            **wide,
        )
        self._layout = pn.Row(cards, pn.Column(detail, width=340, styles={"position": "sticky", "top": "0"}), **wide)
        live.param.watch(self._on_counts, "counts")
        live.param.watch(self._on_column, "column")

    def _label(self) -> int | None:
        return None if self.gallery_class == ALL_CLASSES else int(self.gallery_class.split(":", 1)[0])

    def search(self, text: str) -> int | None:
        """Narrow the galleries to captions containing ``text``; how many match (None: not narrowed)."""
        self.caption_query = text
        return None if self.state.matches is None else int(self.state.matches.sum())

    @param.depends("caption_query", watch=True)
    def _on_query(self) -> None:
        matched = self.state.narrow(self.caption_query)
        query = html.escape(self.state.query)
        self.match_note.object = (
            ""
            if matched is None
            else f'<span class="me-match">{matched:,} of {self.state.total:,} captions contain “{query}”</span>'
        )
        self.refresh()

    def open(self, position: int, sample_id: str = "") -> None:
        """Show a sample in the detail view and add it to the selection (a click on its card)."""
        self.detail.show(position)
        self.selection.add(position)

    # ------------------------------------------------------------------ reactions

    @param.depends("gallery_size", "gallery_class", watch=True)
    def refresh(self) -> None:
        """Redraw all three galleries (new column, class or size)."""
        for name in self.galleries:
            self._draw(name)
        self._mark_dropped()
        self.thumb_note.visible = not self.thumbs.complete

    @param.depends("third_gallery", "band", watch=True)
    def _on_third(self) -> None:
        self._draw("third")
        self._mark_dropped()

    def _on_counts(self, event) -> None:
        if self.third_gallery == AROUND:
            self._draw("third")
        self._mark_dropped()

    def _on_column(self, event) -> None:
        lo, hi = self.state.score_range()
        self.band_slider.param.update(start=lo, end=hi, step=slider_step(lo, hi))
        self.band = _default_band(self.state)
        self.refresh()

    # ------------------------------------------------------------------ drawing

    def _draw(self, name: str) -> None:
        k, label, column = self.gallery_size, self._label(), self.state.column
        where = "" if label is None else f" in class {self.state.label_name(label)}"
        if self.state.query:
            where += f" among captions with “{html.escape(self.state.query)}”"
        if self.state.selected is not None:
            where += f" among the {len(self.state.selected):,} selected on the map"
        empty = "No samples."
        if name == "lowest":
            positions = self.state.lowest(k, label)
            title = f"#### Lowest {len(positions)} by {column}{where}"
        elif name == "highest":
            positions = self.state.highest(k, label)
            title = f"#### Highest {len(positions)} by {column}{where}"
        elif self.third_gallery == AROUND:
            cut = self.state.cut(self.live.counts) if self.live.counts is not None else None
            cut = self.model.threshold if cut is None else cut
            positions, title = self.state.around(cut, k, label), f"#### {k} around the threshold ({cut:.4g}){where}"
        else:
            lo, hi = self.band
            positions = self.state.band(lo, hi, k, label)
            title = f"#### {len(positions)} in the band {lo:.4g} – {hi:.4g}{where}"
            empty = f"No samples with {column} between {lo:.4g} and {hi:.4g}."
        if self.state.query and len(positions) == 0 and name != "third":
            empty = f"No caption contains “{self.state.query}”."  # gallery_html escapes it
        if self.state.selected is not None and len(positions) == 0 and name != "third":
            empty = "No selected sample here."
        self.shown[name] = positions
        self.titles[name].object = title
        self.galleries[name].cards = gallery_html(
            self.state.samples, positions, self.thumbs, self.state.label_name, column, empty, self.state.has_classes
        )

    def _mark_dropped(self) -> None:
        counts = self.live.counts
        if counts is None:
            return
        rule = self.model.to_rule()
        for name, gallery in self.galleries.items():
            positions = self.shown.get(name)
            if positions is None or len(positions) == 0:
                gallery.dropped = []
                continue
            kept = self.state.keep_status(positions, rule, counts)
            gallery.dropped = [int(p) for p in positions[~kept]]

    def __panel__(self):
        return self._layout
