"""The Explorer: a thin Panel view over ``ExplorerState``.

Shows the score distribution with the threshold drawn on it, the lowest- and highest-scoring images,
a "Threshold" control with a live "Kept: N of M", and a "Download keep-list" button that writes the same
keep-list as ``mimic-explorer export``.
"""

from __future__ import annotations

import io
import os

import holoviews as hv
import numpy as np
import panel as pn
import param
from panel.viewable import Viewer

from mimic_explorer.filters import render_export
from mimic_explorer.store.reader import Run, open_run
from mimic_explorer.ui.gallery import gallery_html
from mimic_explorer.ui.plots import histogram_plot
from mimic_explorer.ui.state import ExplorerState, histogram, robust_range


class Explorer(Viewer):
    """Explore one run: ``Explorer(run_or_path)``; ``.threshold`` and ``.keep_mask`` work from Python."""

    threshold = param.Number(default=0.0, doc="Keep samples whose score is at least this value.")
    gallery_size = param.Integer(default=24, bounds=(1, 500), doc="Images per gallery.")

    def __init__(self, run: Run | str | os.PathLike, **params):
        self.run = run if isinstance(run, Run) else open_run(run)
        self.state = ExplorerState(self.run)
        params.setdefault("threshold", self.state.default_threshold())
        super().__init__(**params)
        lo, hi = robust_range(self.state.scores)
        lo, hi = min(lo, self.threshold), max(hi, self.threshold)
        self._slider = pn.widgets.FloatSlider(
            name="Threshold", start=lo, end=hi, step=(hi - lo) / 500 or 0.001, value=self.threshold, width=360
        )
        self._slider.link(self, value="threshold", bidirectional=True)
        self._kept = pn.pane.HTML(sizing_mode="stretch_width", css_classes=["kept-count"])
        self._hist = histogram(self.state.scores)
        self._plot = pn.pane.HoloViews(
            hv.DynamicMap(pn.bind(self._histogram_view, self.param.threshold)), sizing_mode="stretch_width"
        )
        self._lowest = pn.pane.HTML(sizing_mode="stretch_width")
        self._highest = pn.pane.HTML(sizing_mode="stretch_width")
        self._download = pn.widgets.FileDownload(
            callback=self._keep_list_csv, filename=f"keep-list-{self.run.run_id}.csv",
            label="Download keep-list", button_type="primary", width=220,
        )
        self._refresh()

    # ------------------------------------------------------------------ reactions

    @param.depends("threshold", "gallery_size", watch=True)
    def _refresh(self) -> None:
        result = self.state.apply(self.threshold)
        self._kept.object = f"<b style='font-size:1.2em'>Kept: {result.kept} of {result.total}</b>"
        k = self.gallery_size
        label_name = self.state.label_name
        column = self.state.column
        thumbs = self.run.thumbnails
        self._lowest.object = gallery_html(self.state.lowest(k), thumbs, label_name, column, self.threshold)
        self._highest.object = gallery_html(self.state.highest(k), thumbs, label_name, column, self.threshold)

    def _histogram_view(self, threshold: float):
        return histogram_plot(self._hist, threshold, self.state.column)

    def _keep_list_csv(self) -> io.BytesIO:
        result = self.state.apply(self.threshold)
        return io.BytesIO(render_export(self.samples, result, self.state.column, "csv"))

    # ------------------------------------------------------------------ Python API

    @property
    def samples(self):
        return self.state.samples

    @property
    def keep_mask(self) -> np.ndarray:
        """Boolean mask in ``run.samples`` order for the current threshold."""
        return self.state.apply(self.threshold).keep

    def summary_markdown(self) -> str:
        meta = self.run.meta
        samples = self.samples
        lines = [
            f"### Run `{self.run.run_id}`",
            f"**{len(samples)}** samples · **{len(self.run.class_names)}** classes · "
            f"method `{meta.get('method', '?')}` · {meta.get('config', {}).get('epochs', '?')} epochs",
        ]
        if "keep" in samples.columns:
            lines.append(f"Estimated quality (ensemble filter): **{samples['keep'].mean():.3f}**")
        for warning in meta.get("warnings", []):
            lines.append(f"⚠️ {warning}")
        return "\n\n".join(lines)

    def __panel__(self):
        controls = pn.Row(self._slider, self._kept, self._download, sizing_mode="stretch_width")
        return pn.Column(
            pn.pane.Markdown(self.summary_markdown(), sizing_mode="stretch_width"),
            controls,
            self._plot,
            pn.pane.Markdown(f"#### Lowest {self.state.column}"),
            self._lowest,
            pn.pane.Markdown(f"#### Highest {self.state.column}"),
            self._highest,
            sizing_mode="stretch_width",
        )
