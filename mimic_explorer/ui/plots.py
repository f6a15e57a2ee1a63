"""HoloViews plots for the explorer (histogram with the threshold drawn on it)."""

from __future__ import annotations

import holoviews as hv

from mimic_explorer.ui.state import Histogram


def histogram_plot(hist: Histogram, threshold: float, column: str, log: bool = False) -> hv.Overlay:
    bars = hv.Histogram((hist.edges, hist.counts), kdims=[column], vdims=["count"]).opts(
        color="#4c78a8", line_color=None, logy=log, tools=["hover"], responsive=True, height=280,
        title=f"Distribution of {column}",
    )
    line = hv.VLine(threshold).opts(color="#d62728", line_width=2, line_dash="dashed")
    return bars * line
