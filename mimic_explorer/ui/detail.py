"""The detail view of one sample: larger image, its caption in full (image-text pairs), its score
trajectory over epochs, and every field of its row — every text field shown whole, wrapped."""

from __future__ import annotations

import html
import math
from collections.abc import Callable

import holoviews as hv
import numpy as np
import panel as pn
from panel.viewable import Viewer

from mimic_explorer.store.scores import EpochScores
from mimic_explorer.ui.gallery import Gallery, gallery_html
from mimic_explorer.ui.plots import detail_trajectory
from mimic_explorer.ui.state import ExplorerState
from mimic_explorer.ui.thumbnails import ThumbnailURIs

CSS = """
.me-detail img { width: 192px; height: 192px; object-fit: contain; image-rendering: pixelated; background: #111;
  border-radius: 8px; display: block; }
.me-detail table { border-collapse: collapse; font: 12px system-ui, sans-serif; margin-top: 8px; width: 100%; }
.me-detail td { padding: 2px 6px; border-bottom: 1px solid #eaeef2; overflow-wrap: anywhere; vertical-align: top; }
.me-detail img.photo { image-rendering: auto; object-fit: cover; }
.me-detail .caption { font: 14px/1.4 system-ui, sans-serif; color: #1f2328; margin-top: 8px; overflow-wrap: anywhere; }
.me-detail td:first-child { color: #57606a; white-space: nowrap; }
.me-detail .noisy { color: #cf222e; font-weight: 600; }
.me-hint { color: #57606a; font: 13px system-ui, sans-serif; }
"""


def _value(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple, np.ndarray)):  # e.g. every caption of a photo: one a line
        return "<br>".join(html.escape(str(v)) for v in value)
    return html.escape(str(value))


class DetailView(Viewer):
    """Shows one sample (``show(position)``); starts with a hint to click an image."""

    def __init__(self, state: ExplorerState, thumbs: ThumbnailURIs, epochs: EpochScores, **params):
        super().__init__(**params)
        self.state, self.thumbs, self.epochs = state, thumbs, epochs
        self.position: int | None = None
        #: (position, k) -> (rows, similarities) of its nearest neighbours; set when the run has embeddings
        self.similar: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None
        #: select rows on the map (the neighbours); set with ``similar``
        self.select_rows: Callable[[np.ndarray], None] | None = None
        #: list the neighbours with every sample shown (when they are cheap), not only on "More like this"
        self.auto_similar = False
        self.neighbours = np.zeros(0, dtype=np.int64)
        self.more_button = pn.widgets.Button(
            label="More like this", color="light", visible=False, css_classes=["more-like-this"]
        )
        self.select_neighbours = pn.widgets.Button(label="Select these on the map", color="light", visible=False)
        self.more_gallery = Gallery(sizing_mode="stretch_width")
        self.more_gallery.on_click(lambda position, sample_id: self.show(position))
        self.more_button.on_click(lambda event: self.show_similar())
        self.select_neighbours.on_click(
            lambda event: self.select_rows(self.neighbours) if self.select_rows is not None else None
        )
        self._info = pn.pane.HTML(
            '<div class="me-hint">Click any image to see it here: larger, with its '
            "trajectory over training and every signal.</div>",
            stylesheets=[CSS],
            sizing_mode="stretch_width",
        )
        self._plot = pn.pane.HoloViews(None, sizing_mode="stretch_width")
        self._layout = pn.Column(
            pn.pane.Markdown("#### Sample detail", margin=(0, 5)),
            self._info,
            self._plot,
            self.more_button,
            self.more_gallery,
            self.select_neighbours,
            sizing_mode="stretch_width",
        )

    def show(self, position: int) -> None:
        """Show the sample at row ``position``: its thumbnail, caption, every column, and its per-epoch trajectory when
        the run has one."""
        self.position = int(position)
        self.more_button.visible = self.similar is not None
        self.more_gallery.cards, self.select_neighbours.visible = "", False
        record = self.state.record(position)
        sample_id = str(record["sample_id"])
        noisy = bool(record.get("is_noisy", False))
        caption = record.get("caption")
        caption_html = f'<div class="caption">{html.escape(str(caption))}</div>' if isinstance(caption, str) else ""
        marked = " class=noisy" if noisy else ""
        rows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td{marked if k == 'is_noisy' else ''}>{_value(v)}</td></tr>"
            for k, v in record.items()
        )
        title = html.escape(sample_id)
        flag = f' <span class="noisy">· {self.state.noisy_word}</span>' if noisy else ""
        photo = ' class="photo"' if caption_html else ""
        self._info.object = (
            f'<div class="me-detail"><div style="font:600 14px system-ui;margin-bottom:6px">{title}{flag}</div>'
            f'<img{photo} src="{self.thumbs.uri(sample_id, self.position)}" alt="{title}">{caption_html}'
            f"<table>{rows}</table></div>"
        )
        try:
            frame = self.state.trajectories([self.position]) if self.epochs.available else None
        except (OSError, ValueError) as exc:  # a damaged score part: say so, keep the rest of the view
            frame, note = None, f"per-epoch scores unreadable: {exc}"
        else:
            note = "no per-epoch scores for this sample"
        if frame is not None and not frame.empty:
            signals = [s for s in ("proj", "weight") if s in frame.columns]
            self._plot.object = detail_trajectory(frame, signals)
        else:
            self._plot.object = hv.Curve([], "epoch", "value").opts(title=note, width=300, height=160)
        if self.auto_similar and self.similar is not None:
            self.show_similar()

    def show_similar(self, k: int = 12) -> np.ndarray:
        """The ``k`` samples most like the one shown, as a gallery under it ("More like this"); returns their rows."""
        if self.similar is None or self.position is None:
            return np.zeros(0, dtype=np.int64)
        rows, _ = self.similar(self.position, k)
        self.neighbours = np.asarray(rows, dtype=np.int64)
        self.more_gallery.cards = gallery_html(
            self.state.samples,
            self.neighbours,
            self.thumbs,
            self.state.label_name,
            self.state.column,
            "No neighbours (this sample has no embedding).",
            self.state.has_classes,
        )
        self.select_neighbours.visible = self.select_rows is not None and len(self.neighbours) > 0
        return self.neighbours

    def __panel__(self):
        return self._layout
