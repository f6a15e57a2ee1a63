"""The "More views" tabs: kept vs threshold, the map, per class, scatter, per epoch, trajectories.

Each tab is built the first time it is shown, so per-epoch scores are read only when asked for; the
plots that show the cut take their lines from the shared ``CutLines``. A pool without classes
(image-text pairs) has no "Per class" tab, and its scatter opens on mimic_score against the CLIP score
under the reference (DataComp's standard filter), rasterized with Datashader past 50 k points.
"""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import pyarrow as pa
from panel.viewable import Viewer

from mimic_explorer.store.scores import EpochScores
from mimic_explorer.ui import plots
from mimic_explorer.ui.cut_lines import CutLines
from mimic_explorer.ui.galleries import Selection
from mimic_explorer.ui.live import LiveCounts
from mimic_explorer.ui.state import ExplorerState

NO_EPOCHS = "This run recorded no per-epoch scores."


#: the scatter draws every sample up to this many, and one run of ``SCATTER_RUN`` consecutive samples in
#: k of a larger run (at 4 M points a 600 × 400 raster holds ~16 points a pixel: the density a person
#: reads is the same; 128 M took 13 s)
SCATTER_MOST_POINTS = 4_000_000
#: consecutive samples drawn together past the cap. Why runs, not every k-th sample: one sample in k
#: reads a value from every page of each column and of the ids (4.3 GB of pages at 128 M samples, 2.3 s);
#: runs read one page in k. Runs every k × 1,024 samples still cover the whole pool evenly.
SCATTER_RUN = 1024


def scatter_sample(total: int, every: int) -> np.ndarray | slice:
    """The positions the scatter draws: every sample when ``every`` is 1, else the first ``SCATTER_RUN``
    samples of every ``every × SCATTER_RUN`` (one sample in ``every``, a page in ``every`` of each file)."""
    if every == 1:
        return slice(None)
    starts = np.arange(0, total, SCATTER_RUN * every)
    positions = (starts[:, None] + np.arange(SCATTER_RUN)).ravel()
    return positions[positions < total]


class MoreViews(Viewer):
    """Lazily built tabs; ``log_counts`` is the parameter (of another component) that sets log axes."""

    def __init__(
        self,
        state: ExplorerState,
        live: LiveCounts,
        lines: CutLines,
        epochs: EpochScores,
        selection: Selection,
        log_counts,
        map_view=None,
        **params,
    ):
        super().__init__(**params)
        self.state, self.live, self.lines, self.epochs, self.selection = state, live, lines, epochs, selection
        self.log_counts = log_counts
        self.map_view = map_view
        wide = dict(sizing_mode="stretch_width")
        builders = {
            "Kept vs threshold": lambda: pn.param.ParamFunction(pn.bind(self._kept_curve, live.param.column), **wide),
            "Map": self._map,
            "Per class": lambda: pn.param.ParamFunction(
                pn.bind(self._per_class, live.param.column, log_counts), **wide
            ),
            "Scatter": self._scatter_view,
            "Per epoch": self._epoch_view,
            "Trajectories": self._trajectory_view,
        }
        if not state.has_classes:
            del builders["Per class"]
        if map_view is None:
            del builders["Map"]
        self._builders = list(builders.values())
        self.tabs = pn.Tabs(*[(name, pn.Column(**wide)) for name in builders], dynamic=True, **wide)
        self.tabs.param.watch(lambda event: self.open_tab(event.new), "active")
        self.open_tab(self.tabs.active)

    def open_tab(self, index: int) -> None:
        """Build a tab's views the first time it is shown."""
        holder = self.tabs[index]
        if len(holder) == 0:
            holder[:] = [self._builders[index]()]

    def _map(self):
        self.map_view.build()
        return self.map_view

    def _kept_curve(self, column: str):
        curve = self.state.kept_curve()
        x0 = float(curve["threshold"].iloc[0])
        lines = self.lines.line("kept-v", x0) * self.lines.line("kept-h", 0.0, horizontal=True)
        return pn.pane.HoloViews(
            plots.kept_curve_element(curve, self.state.total, self.state.noisy_word) * lines,
            sizing_mode="stretch_width",
        )

    def _per_class(self, column: str, log: bool):
        edges, per_class, shown = self.state.class_histograms(limit=20)
        names = {c: self.state.label_name(c) for c in shown}
        elements = plots.class_grid(edges, per_class, names, column, log)
        panels = [element * self.lines.line(f"class-{label}", edges[0]) for label, element in elements.items()]
        note = "" if len(shown) == len(self.state.counter.classes) else f" (the {len(shown)} largest classes)"
        layout = hv.Layout(panels).cols(5).opts(shared_axes=False) if panels else hv.Curve([])
        return pn.Column(
            pn.pane.Markdown(f"Distribution of **{column}** per class with each class's threshold{note}."),
            pn.pane.HoloViews(layout, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    def _scatter_view(self):
        columns = self.state.score_columns
        column = self.state.column
        if "clip_score_ref" in columns and "mimic_score" in columns:  # pairs: mimic against the CLIP score
            column, default_y = "mimic_score", "clip_score_ref"
        else:
            default_y = next(
                (c for c in ("reference_loss", "proj_mean", "model_loss") if c in columns and c != column),
                columns[1] if len(columns) > 1 else columns[0],
            )
        x = pn.widgets.Select(label="x", options=columns, value=column, width=180)
        y = pn.widgets.Select(label="y", options=columns, value=default_y, width=180)
        self.live.param.watch(lambda event: setattr(x, "value", event.new), "column")
        return pn.Column(
            pn.Row(x, y),
            pn.param.ParamFunction(pn.bind(self._scatter, x, y), lazy=True, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    def _scatter_ids(self, sample: np.ndarray | slice):
        """The ids of the samples at ``sample`` (``scatter_sample``), as stored (Arrow text stays Arrow:
        no str per sample); through the index a record batch at a time (a take on the whole column first
        joins its 100+ batches: 8 s at 128 M)."""
        index = self.state.app_index
        if isinstance(sample, slice):
            return self.state.samples["sample_id"].array
        if index is None:
            return self.state.samples["sample_id"].array[sample]
        ids = index.take_text(sample, ["sample_id"]).column("sample_id")
        return pd.arrays.ArrowExtensionArray(ids.cast(pa.string()))

    def _scatter(self, xcol: str, ycol: str):
        if xcol == ycol:
            return pn.pane.Markdown("Pick two different scores for x and y.")
        samples, counter = self.state.samples, self.state.counter
        total = len(samples)
        every = -(-total // SCATTER_MOST_POINTS)  # past the cap, one sample in k (runs of SCATTER_RUN)
        sample = scatter_sample(total, every)
        frame = pd.DataFrame(
            {
                xcol: np.asarray(samples[xcol].to_numpy()[sample], dtype=float),
                ycol: np.asarray(samples[ycol].to_numpy()[sample], dtype=float),
                "sample_id": self._scatter_ids(sample),
            }
        )
        if self.state.has_classes:
            names = [self.state.label_name(c) for c in counter.classes.tolist()]
            if len(set(names)) == len(names):  # categories from codes: no string per sample
                frame["class"] = pd.Categorical.from_codes(counter.codes[sample], categories=names)
            else:
                frame["class"] = np.asarray(names, dtype=object)[counter.codes[sample]]
        if self.state.has_captions and len(frame) <= plots.RASTERIZE_ABOVE:  # hover shows it (small runs only)
            frame["caption"] = samples["caption"].astype(str).str.slice(0, 90).to_numpy()[sample]
        truth = self.state.has_truth
        if truth:  # from codes: building 12.8 M strings to categorise them took seconds
            words = sorted(["clean", self.state.noisy_word])
            noisy = counter.noisy[sample]
            codes = np.where(noisy, words.index(self.state.noisy_word), words.index("clean")).astype(np.int8)
            frame["truth"] = pd.Categorical.from_codes(codes, categories=words)
        frame = frame[np.isfinite(frame[xcol]) & np.isfinite(frame[ycol])]
        element = plots.scatter_element(frame, xcol, ycol, truth, self.state.noisy_word)
        if xcol == self.state.column:
            element = element * self.lines.line("scatter", float(frame[xcol].min()) if len(frame) else 0.0)
        big = len(frame) > plots.RASTERIZE_ABOVE
        note = (
            f"{len(frame):,} points rasterized with Datashader; hover marks the nearest sample and names it."
            if big
            else f"{len(frame):,} points; hover names the sample."
        )
        if every > 1:
            note += (
                f" A sample: one in {every} of the run's {total:,}, in runs of {SCATTER_RUN:,} consecutive samples"
                " spread evenly over the pool."
            )
        return pn.Column(
            pn.pane.Markdown(note), pn.pane.HoloViews(element, sizing_mode="stretch_width"), sizing_mode="stretch_width"
        )

    def _signal_select(self) -> pn.widgets.Select:
        return pn.widgets.Select(label="Signal", options=self.epochs.signals, value=self.epochs.signals[0], width=160)

    def _epoch_view(self):
        if not self.epochs.available or not self.epochs.signals:
            return pn.pane.Markdown(NO_EPOCHS)
        signal = self._signal_select()
        samples = self.state.samples
        noisy_ids = self.epochs.noisy_marker(self.state.counter.noisy, samples) if self.state.has_truth else None

        def bands(sig: str):
            return pn.pane.HoloViews(
                plots.epoch_bands_element(self.epochs.quantile_bands(sig, noisy_ids), sig), sizing_mode="stretch_width"
            )

        def epoch_hist(sig: str, ep: int, log: bool):
            return pn.pane.HoloViews(
                plots.histogram_element(
                    self.epochs.histogram(sig, ep, noisy_ids),
                    f"{sig} (epoch {ep})",
                    log,
                    noisy_word=self.state.noisy_word,
                ),
                sizing_mode="stretch_width",
            )

        epochs = self.epochs.epochs
        items = [signal, pn.param.ParamFunction(pn.bind(bands, signal), lazy=True, sizing_mode="stretch_width")]
        if len(epochs) > 1:
            epoch = pn.widgets.DiscreteSlider(label="Epoch", options=epochs, value=epochs[-1], width=300)
            items[0] = pn.Row(signal, epoch)
            items.append(
                pn.param.ParamFunction(
                    pn.bind(epoch_hist, signal, epoch, self.log_counts), lazy=True, sizing_mode="stretch_width"
                )
            )
        return pn.Column(*items, sizing_mode="stretch_width")

    def _trajectory_view(self):
        if not self.epochs.available or not self.epochs.signals:
            return pn.pane.Markdown(NO_EPOCHS)
        signal = self._signal_select()
        clear = pn.widgets.Button(label="Clear selection", color="light", width=140)
        clear.on_click(lambda event: setattr(self.selection, "positions", []))
        return pn.Column(
            pn.Row(signal, clear),
            pn.pane.Markdown("Click images in the galleries to add samples."),
            pn.param.ParamFunction(
                pn.bind(self._trajectories, signal, self.selection.param.positions),
                lazy=True,
                sizing_mode="stretch_width",
            ),
            sizing_mode="stretch_width",
        )

    def _trajectories(self, signal: str, positions: list[int]):
        # the ids read by position (the whole id column is 128 M strings at DataComp scale: 5 s)
        ids = self.state.rows(positions)["sample_id"].astype(str).tolist() if positions else []
        frame = self.epochs.trajectories(ids, [signal])
        noisy = self.state.counter.noisy  # all False without ground truth
        labels = {
            sid: f"{sid} ({self.state.noisy_word})" if noisy[pos] else sid
            for pos, sid in zip(positions, ids, strict=True)
        }
        return pn.pane.HoloViews(plots.trajectories_element(frame, signal, labels), sizing_mode="stretch_width")

    def __panel__(self):
        return self.tabs
