"""HoloViews elements for the explorer, built from precomputed arrays (no pandas work per frame).

Why static elements plus thin dynamic overlays: a threshold change must redraw in well under 0.2 s at a
million samples, so histograms, curves and rasters are computed once per column; only the threshold
lines move on each change, and they move in Bokeh directly (``Spans``).
"""

from __future__ import annotations

import threading
import time

import holoviews as hv
import holoviews.plotting.bokeh  # options below are bokeh options; works without hv.extension
import numpy as np
import pandas as pd

from mimic_explorer.ui.state import Histogram

BLUE, RED, GREEN, GREY, LINE = "#4c78a8", "#d62728", "#2ca02c", "#9aa5b1", "#e45756"
#: Above this many points the scatter is rasterized with Datashader instead of drawn point by point.
RASTERIZE_ABOVE = 50_000


def _log_safe(counts: np.ndarray, log: bool) -> np.ndarray:
    """On a log axis a zero-height bar has no bottom; draw empty bins at a tenth of one instead."""
    counts = counts.astype(float)
    return np.where(counts > 0, counts, 0.1) if log else counts


def histogram_element(
    hist: Histogram, column: str, log: bool = False, height: int = 300, noisy_word: str = "mislabeled"
) -> hv.Overlay:
    """Counts of ``column`` (robust range); noisy samples (``noisy_word``) drawn over the total when known."""
    opts = dict(
        line_color=None,
        logy=log,
        responsive=True,
        height=height,
        tools=["hover"],
        xlabel=column,
        ylabel="samples (log)" if log else "samples",
        show_grid=True,
    )
    if log:  # the axis starts at 0.5: empty bins (drawn at 0.1) stay out of sight, a single sample shows
        opts["ylim"] = (0.5, max(2.0, float(hist.counts.max()) * 2))
    total = hv.Histogram(
        (hist.edges, _log_safe(hist.counts, log)), kdims=[column], vdims=["samples"], label="all samples"
    )
    layers = [total.opts(color=BLUE, alpha=0.85, **opts)]
    if hist.noisy is not None:
        noisy = hv.Histogram(
            (hist.edges, _log_safe(hist.noisy, log)),
            kdims=[column],
            vdims=["samples"],
            label=f"{noisy_word} (ground truth)",
        )
        layers.append(noisy.opts(color=RED, alpha=0.75, **opts))
    overlay = hv.Overlay(layers)
    return overlay.opts(legend_position="top_left", title=f"Distribution of {column}")


class Spans:
    """Threshold lines whose Bokeh ``Span`` models are moved in place on every change.

    Why: re-rendering even a one-line HoloViews DynamicMap costs ~20 ms of Python per plot; moving
    the Span is a single property change, so a threshold change stays O(1) however many plots
    (one per class) show it. ``line(key, ...)`` makes the element and remembers its Span (via a plot
    hook); ``move(value_of)`` sets every Span from ``value_of(key)`` (None hides the line).
    """

    def __init__(self):
        self._models: dict[str, dict[int, object]] = {}
        self._values: dict[str, float | None] = {}

    def line(self, key: str, value: float | None, fallback: float = 0.0, horizontal: bool = False):
        """A dashed line for ``key`` at ``value`` (at ``fallback`` and hidden while it is None), whose Span is
        remembered once Bokeh renders it."""
        self._models[key] = {}
        self._values[key] = value
        visible = value is not None and np.isfinite(value)
        element = (hv.HLine if horizontal else hv.VLine)(value if visible else fallback)
        return element.opts(color=LINE, line_width=2.5, line_dash="dashed", hooks=[self._hook(key)])

    def _hook(self, key: str):
        def remember(plot, element):
            span = plot.handles.get("glyph")
            if span is None:
                return
            self._models.setdefault(key, {})[id(span)] = span
            value = self._values.get(key)
            span.visible = value is not None and bool(np.isfinite(value))
            if span.visible:
                span.location = float(value)

        return remember

    def move(self, value_of) -> None:
        """Set every remembered Span from ``value_of(key)`` (None hides the line)."""
        for key, models in self._models.items():
            value = value_of(key)
            self._values[key] = value
            visible = value is not None and bool(np.isfinite(value))
            for span in models.values():
                if visible:
                    span.location = float(value)
                if span.visible != visible:
                    span.visible = visible

    def forget(self, prefix: str) -> None:
        """Forget the lines whose key starts with ``prefix`` (their plots are gone)."""
        for key in [k for k in self._models if k.startswith(prefix)]:
            del self._models[key]


def class_grid(
    edges: np.ndarray, per_class: dict[int, np.ndarray], names: dict[int, str], column: str, log: bool = False
) -> dict[int, hv.Histogram]:
    """One small histogram per class, sharing bins; the caller overlays each class's threshold line."""
    return {
        label: hv.Histogram((edges, _log_safe(counts, log)), kdims=[column], vdims=["samples"]).opts(
            color=BLUE,
            line_color=None,
            logy=log,
            width=250,
            height=170,
            title=f"{names[label]} (n={int(counts.sum())})",
            xlabel="",
            ylabel="",
            toolbar=None,
            fontsize={"title": 10},
            **({"ylim": (0.5, max(2.0, float(counts.max()) * 2))} if log else {}),
        )
        for label, counts in per_class.items()
    }


def kept_curve_element(curve: pd.DataFrame, total: int, noisy_word: str = "mislabeled") -> hv.Overlay:
    """How many samples a single global threshold keeps, for every threshold (clean / noisy too)."""
    opts = dict(responsive=True, height=300, tools=["hover"], show_grid=True, ylabel="samples kept", xlabel="threshold")
    layers = [hv.Curve(curve, "threshold", "kept", label="all").opts(color=BLUE, line_width=2.5, **opts)]
    if "clean kept" in curve:
        layers.append(
            hv.Curve(curve, "threshold", "clean kept", label="clean").opts(color=GREEN, line_width=1.8, **opts)
        )
        layers.append(
            hv.Curve(curve, "threshold", "noisy kept", label=noisy_word).opts(color=RED, line_width=1.8, **opts)
        )
    return hv.Overlay(layers).opts(title=f"Kept versus threshold (of {total})", legend_position="top_right")


def scatter_element(frame: pd.DataFrame, x: str, y: str, color_by_truth: bool, noisy: str = "mislabeled") -> hv.Element:
    """Two scores against each other, hover naming the sample. ``frame`` has x, y, sample_id and,
    when known, class, caption and truth (``"clean"`` or ``noisy``). Small runs: one glyph per point.
    Large: Datashader rasterizes (by truth, when known), and the point nearest the cursor is looked up
    and shown with its id (``inspect_points``)."""
    vdims = [c for c in ("sample_id", "class", "caption", "truth") if c in frame.columns and c not in (x, y)]
    points = hv.Points(frame, [x, y], vdims)
    common = dict(responsive=True, height=420, show_grid=True, xlabel=x, ylabel=y)
    if len(frame) <= RASTERIZE_ABOVE:
        hover = [("sample", "@sample_id")] + [(c, f"@{c}") for c in ("class", "caption") if c in vdims]
        hover += [(x, f"@{{{x}}}"), (y, f"@{{{y}}}")]
        if color_by_truth:
            hover.append(("truth", "@truth"))
        from bokeh.models import HoverTool

        return points.opts(
            color="truth" if color_by_truth else BLUE,
            cmap={"clean": BLUE, noisy: RED} if color_by_truth else None,
            size=5,
            alpha=0.6,
            tools=[HoverTool(tooltips=hover)],
            legend_position="top_left",
            **common,
        )
    import datashader as ds
    from holoviews.operation.datashader import datashade, inspect_points, rasterize

    if color_by_truth:
        shaded = datashade(
            points, aggregator=ds.count_cat("truth"), color_key={"clean": BLUE, noisy: RED}, min_alpha=60
        ).opts(**common)
    else:
        shaded = rasterize(points).opts(cmap="Blues", cnorm="eq_hist", colorbar=True, **common)
    nearest = inspect_points.instance(max_indicators=1, pixels=6)(shaded).opts(
        color="black", fill_alpha=0, line_width=2, size=12, tools=["hover"], responsive=True, height=420
    )
    return shaded * nearest


def epoch_bands_element(bands: pd.DataFrame, signal: str) -> hv.Overlay:
    """Per-epoch 5–95 % and 25–75 % bands with the median, per group (clean / mislabeled / all)."""
    colors = {"clean": BLUE, "mislabeled": RED, "all": BLUE}
    size = dict(responsive=True, height=320)
    layers = []
    for group, part in bands.groupby("group", sort=True):
        color = colors.get(group, GREY)
        part = part.sort_values("epoch")
        layers.append(
            hv.Area(part, "epoch", ["q5", "q95"], label=f"{group} 5–95 %").opts(
                color=color, alpha=0.15, line_alpha=0, **size
            )
        )
        layers.append(
            hv.Area(part, "epoch", ["q25", "q75"], label=f"{group} 25–75 %").opts(
                color=color, alpha=0.3, line_alpha=0, **size
            )
        )
        layers.append(
            hv.Curve(part, "epoch", "q50", label=f"{group} median").opts(
                color=color, line_width=2.5, tools=["hover"], **size
            )
        )
    if not layers:
        return hv.Overlay([hv.Curve([], "epoch", signal).opts(**size)])
    return hv.Overlay(layers).opts(
        title=f"{signal} per epoch (quantile bands)", legend_position="right", ylabel=signal, show_grid=True
    )


def trajectories_element(frame: pd.DataFrame, signal: str, labels: dict[str, str]) -> hv.Overlay:
    """One line per selected sample over epochs; hover names the sample."""
    size = dict(responsive=True, height=320)
    layers = []
    for sample_id, part in frame.groupby("sample_id", sort=False):
        label = labels.get(sample_id, sample_id)
        layers.append(hv.Curve(part, "epoch", signal, label=label).opts(line_width=2, tools=["hover"], **size))
        layers.append(hv.Scatter(part, "epoch", signal, label=label).opts(size=5, **size))
    if not layers:
        return hv.Overlay([hv.Curve([], "epoch", signal).opts(**size)]).opts(
            title="Click images to add their trajectories here"
        )
    return hv.Overlay(layers).opts(
        title=f"{signal} over epochs (selected samples)", legend_position="right", show_grid=True
    )


def detail_trajectory(frame: pd.DataFrame, signals: list[str]) -> hv.Layout | hv.Curve:
    """Small per-signal trajectories of one sample for the detail view."""
    if frame.empty or not signals:
        return hv.Curve([], "epoch", "value").opts(title="no per-epoch scores recorded", width=300, height=160)
    curves = [
        (
            hv.Curve(frame, "epoch", s).opts(color=BLUE, line_width=2, tools=["hover"])
            * hv.Scatter(frame, "epoch", s).opts(color=BLUE, size=5)
        ).opts(title=s, width=310, height=150, show_grid=True, xlabel="")
        for s in signals
    ]
    return hv.Layout(curves).cols(1).opts(shared_axes=False)


_WARM = threading.Lock()
_warmed = False


def warm_up_datashader(delay: float = 1.0) -> threading.Thread | None:
    """Compile Datashader's aggregation and shading kernels in the background, once per process.

    Why: the first rasterized scatter of a process spends about two seconds in numba compiling the
    kernels for its column types (float64 x/y, a categorical truth column, a plain count) — at 12.8 M
    points more than the drawing itself. A tiny frame of the same types compiles the same kernels, so a
    large run's Explorer starts this after ``delay`` (its first render goes first) and the Scatter tab,
    opened later, only aggregates."""
    global _warmed
    with _WARM:
        if _warmed:
            return None
        _warmed = True

    def compile_kernels() -> None:
        time.sleep(delay)
        import datashader as ds
        import datashader.transfer_functions as tf

        frame = pd.DataFrame(
            {
                "x": np.linspace(0.0, 1.0, 8),
                "y": np.linspace(1.0, 0.0, 8),
                "truth": pd.Categorical.from_codes(np.arange(8) % 2, categories=["clean", "noisy"]),
            }
        )
        canvas = ds.Canvas(plot_width=16, plot_height=16, x_range=(0.0, 1.0), y_range=(0.0, 1.0))
        tf.shade(canvas.points(frame, "x", "y", ds.count_cat("truth")), color_key=[BLUE, RED], min_alpha=60)
        tf.shade(canvas.points(frame, "x", "y", ds.count()), cmap=["white", BLUE], how="eq_hist")

    thread = threading.Thread(target=compile_kernels, name="datashader-warm-up", daemon=True)
    thread.start()
    return thread
