"""The Explorer: one run's filter and the views that follow it, composed from separate components.

- ``filter`` (``FilterModel``): the rule as parameters; ``live`` (``LiveCounts``): its counts, updated
  in O(classes · log n) on every change;
- ``filter_controls``, ``exports``, ``distribution``, ``galleries`` (with the detail view) and
  ``more_views``: each watches the model or the counts and nothing else.

From Python, ``explorer.threshold = 0.5`` (and the other rule parameters of the first clause),
``.add_clause(column, ...)`` (AND a rule on another column), ``.keep_mask``, ``.set_rule(...)``,
``.search(text)`` (narrow the galleries to matching captions), ``.select(id)`` and ``.save_to_run()``
work as in the page, which follows; ``.selection`` (the ids selected on the map, settable),
``.review(ids, "drop")`` and ``.more_like_this(id)`` are the Map view's. The page opens on
``combined_score`` where the run has one (``ExplorerState.default_column``).
``Explorer(run).controls`` and ``.main`` are what a template puts in its sidebar and main area;
displayed on its own (Jupyter) it is the two side by side. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import panel as pn
from panel.viewable import Viewer

from mimic_explorer.filters.reviews import apply_reviews
from mimic_explorer.filters.rules import IDS, FilterError, Rule
from mimic_explorer.store.filter_files import SavedFilter, latest_saved_rule
from mimic_explorer.store.indexed_epochs import epoch_scores_for
from mimic_explorer.store.reader import Run, open_run
from mimic_explorer.store.reviews import ReviewError, applied_for_spec
from mimic_explorer.ui import plots
from mimic_explorer.ui.controls import FilterControls
from mimic_explorer.ui.counting import Counts
from mimic_explorer.ui.cut_lines import CutLines
from mimic_explorer.ui.detail import DetailView
from mimic_explorer.ui.distribution import Distribution
from mimic_explorer.ui.exports import ExportPanel
from mimic_explorer.ui.filter_model import RULE_PARAMS, ClauseModel, FilterModel
from mimic_explorer.ui.galleries import Galleries, Selection
from mimic_explorer.ui.live import LiveCounts
from mimic_explorer.ui.map_view import MapView
from mimic_explorer.ui.more_views import MoreViews
from mimic_explorer.ui.notice import Notice
from mimic_explorer.ui.state import ExplorerState
from mimic_explorer.ui.summary import Summary
from mimic_explorer.ui.thumbnails import ThumbnailURIs

#: pools up to this size list a sample's neighbours with its detail at once (an exact search of ~50 ms);
#: larger ones on "More like this"
AUTO_NEIGHBOURS_MAX = 50_000


def _rule_parameter(name: str) -> property:
    """``explorer.<name>`` reads and sets the filter model's parameter of that name."""
    return property(
        lambda self: getattr(self.filter, name),
        lambda self, value: setattr(self.filter, name, value),
        doc=FilterModel.param[name].doc,
    )


def _section(title: str) -> pn.pane.Markdown:
    return pn.pane.Markdown(f"### {title}", margin=(10, 5, 0, 5))


class Explorer(Viewer):
    """Explore one run: distributions, galleries, live counts of a filter rule, and exports.

    Shown by ``mimic-explorer serve`` and inline in Jupyter; its parameters (the rule's column,
    rule, threshold, quantile, …) are also a Python API for setting the filter from a notebook.

    Parameters
    ----------
    run
        An opened ``Run`` or the path of a run directory.
    restore
        Start from the filter last saved with the run (unless a rule is given here).
    **params
        The rule's parameters (``column``, ``rule``, ``threshold``, ``quantile``, ``top_fraction``,
        ``keep_count``, ``per_class``, ``class_overrides``) and display ones of the distribution and
        the galleries.

    Raises
    ------
    RunError
        ``run`` is a path that is not a complete run directory (``store.reader.open_run``).
    ValueError
        A ``column`` the run has no scores for.
    """

    column, rule, threshold = _rule_parameter("column"), _rule_parameter("rule"), _rule_parameter("threshold")
    quantile, keep_count = _rule_parameter("quantile"), _rule_parameter("keep_count")
    top_fraction = _rule_parameter("top_fraction")
    per_class, class_overrides = _rule_parameter("per_class"), _rule_parameter("class_overrides")

    def __init__(self, run: Run | str | os.PathLike, *, restore: bool = True, **params):
        super().__init__()
        self.run = run if isinstance(run, Run) else open_run(run)
        given = {name: params.pop(name) for name in RULE_PARAMS if name in params}
        self.state = ExplorerState(self.run, given.get("column"))
        self.notice = Notice()
        self.filter = FilterModel(
            columns=self.state.score_columns,
            column=self.state.column,
            threshold=self.state.default_threshold(),
            keep_count=round(0.7 * self.state.total),
        )
        restored = (
            self._restore()
            if restore and not ({"rule", "threshold", "quantile", "top_fraction", "keep_count"} & set(given))
            else None
        )
        self.filter.param.update(**given)
        self.live = LiveCounts(self.state, self.filter, self.notice.show)
        self.lines = CutLines(self.state, self.filter, self.live)
        index = self.state.app_index
        if index is not None and index.has_thumbnails:  # by position from the index: no ids read
            self.run.thumbnails.locate_with(index.thumbnail_location)
        self.thumbs = ThumbnailURIs(self.run.thumbnails)
        self.picks = Selection()
        self.summary = Summary(self.run.run_id, str(self.run.path), self.run.meta, self.samples)
        self.filter_controls = FilterControls(self.filter, self.live, self.state, self.notice)
        self.exports = ExportPanel(self.run, self.state, self.filter, self.notice)
        self.distribution = Distribution(
            self.state,
            self.filter,
            self.live,
            self.lines,
            **{k: params.pop(k) for k in list(params) if k in Distribution.param},
        )
        epochs = epoch_scores_for(self.state.app_index, self.run.epoch_scores)  # the index's arrays when exact
        self.detail = DetailView(self.state, self.thumbs, epochs)
        self.galleries = Galleries(self.state, self.filter, self.live, self.thumbs, self.detail, self.picks, **params)
        self.map_view = MapView(
            self.state,
            self.filter,
            self.live,
            self.thumbs,
            self.notice,
            open_sample=self.galleries.open,
            on_selection=self.galleries.refresh,
        )
        if self.map_view.map.has_neighbours:
            self.detail.similar = self.map_view.map.more_like_this
            self.detail.select_rows = self._select_rows
            self.detail.auto_similar = self.state.total <= AUTO_NEIGHBOURS_MAX
        self.more_views = MoreViews(
            self.state,
            self.live,
            self.lines,
            epochs,
            self.picks,
            self.distribution.param.log_counts,
            map_view=self.map_view,
        )
        self.live.param.watch(self._move_lines, "counts")
        if self.state.total > plots.RASTERIZE_ABOVE:  # the Scatter tab will rasterize: compile its kernels now
            plots.warm_up_datashader()
        if isinstance(restored, SavedFilter):
            self.notice.show(*self._restored_text(restored))
        elif restored:
            self.notice.show(restored, "info")

    # ------------------------------------------------------------------ Python API

    @property
    def samples(self) -> pd.DataFrame:
        """The run's samples (through its app index where it has one: memory-mapped columns, not the whole table)."""
        return self.state.samples

    @property
    def counts(self) -> Counts | None:
        """Live counts of the current rule."""
        return self.live.counts

    @property
    def message(self) -> str:
        """The last notice shown (bad input, saves, restores)."""
        return self.notice.message

    @property
    def selected(self) -> list[int]:
        """Row positions of the clicked samples (their trajectories are plotted)."""
        return self.picks.positions

    @property
    def selection(self) -> list[str] | None:
        """The sample ids selected on the map (None: no selection); set it to a list of ids to select them (the
        galleries and the "selected N · kept K" line follow), or to None to clear it."""
        chosen = self.map_view.selected
        if chosen is None:
            return None
        return self.samples["sample_id"].to_numpy()[chosen].astype(str).tolist()

    @selection.setter
    def selection(self, ids) -> None:
        if ids is None:
            self.map_view.set_selection(None)
            return
        ids = [str(i) for i in ids]
        where = self.state.positions_of(ids)
        if (where < 0).any():
            unknown = [i for i, w in zip(ids, where, strict=True) if w < 0]
            raise ValueError(f"{len(unknown)} of the {len(ids)} ids are not in this run: {unknown[:3]}")
        self.map_view.set_selection(where)

    @property
    def selection_counts(self) -> tuple[int, int] | None:
        """(selected, of them kept by the current filter) — the map's "selected N · kept K" — or None."""
        return self.map_view.selected_counts()

    def review(self, ids, decision: str, label=None, note: str = "") -> int:
        """Record a decision (``keep``, ``drop`` or ``relabel`` with ``label``, a class name or index) for the samples
        ``ids`` in the run's review log; exports apply it on top of the filter. Returns how many were recorded.
        ``ValueError`` (one line, nothing written) for an id not in the run or a class that does not exist."""
        return self.map_view.review(ids, decision, label, note)

    def more_like_this(self, sample_id: str, k: int = 12) -> list[str]:
        """The ids of the ``k`` samples most like ``sample_id`` in the map's embedding (nearest first)."""
        position = self.state.position(sample_id)
        if position is None:
            raise ValueError(f"no sample {sample_id!r} in this run")
        rows, _ = self.map_view.map.more_like_this(position, k)
        return self.samples["sample_id"].to_numpy()[rows].astype(str).tolist()

    def _select_rows(self, rows) -> None:
        self.map_view.set_selection(rows)

    @property
    def current_rule(self) -> Rule:
        """The filter as a ``FilterRule``, or a ``CompoundRule`` when clauses are ANDed (what exports
        and saved specs record)."""
        return self.filter.to_rule()

    @property
    def keep_mask(self) -> np.ndarray:
        """Boolean mask in ``run.samples`` order for the current filter (the export code path)."""
        return self.state.apply(self.current_rule).keep

    def set_rule(self, rule: Rule) -> None:
        """Show a rule (one clause or an AND, e.g. from a spec) in the controls."""
        self.filter.set_rule(rule)

    def add_clause(self, column: str | None = None, **params) -> ClauseModel:
        """AND a rule on another column, e.g. ``add_clause("clip_score_ref", rule="top_fraction",
        top_fraction=0.3)``; returns the clause (its parameters drive the counts like the first's)."""
        return self.filter.add_clause(column, **params)

    def search(self, text: str) -> int | None:
        """Narrow the galleries to samples whose caption contains ``text`` (case-insensitive); returns
        how many match (None for an empty text, which shows every sample again)."""
        return self.galleries.search(text)

    def select(self, sample_id: str) -> None:
        """Open a sample in the detail view and add it to the trajectories (as a click on its card)."""
        position = self.state.position(sample_id)
        if position is None:
            self.notice.show(f"No sample {sample_id!r} in this run.", "warning")
            return
        self.galleries.open(position, sample_id)

    def save_to_run(self, export_format: str = "csv"):
        """Write keep-list + spec into ``RUN/filters/`` (restored when the run is opened again)."""
        return self.exports.save_to_run(export_format)

    # ------------------------------------------------------------------ internals

    def _restore(self) -> SavedFilter | str | None:
        """Take on the filter last saved with the run (its spec verified: an edited spec is refused and
        said); returns it (``_restored_text`` says what happened once the counts exist), or why it was
        not taken on."""
        try:
            found = latest_saved_rule(self.run.path, self.run.meta, self.state.samples)
        except FilterError as exc:
            self.notice.show(f"Saved filter not restored: {exc}", "warning")
            return None
        if found is None:
            return None
        missing = [
            c.column
            for c in found.rule.clauses
            if c.kind not in ("ensemble", IDS) and c.column not in self.state.score_columns
        ]
        if missing:
            return (
                f"Saved filter {found.spec_path.name} is on column {missing[0]!r}, which this run lacks; not restored."
            )
        self.filter.set_rule(found.rule)
        return found

    def _restored_text(self, saved: SavedFilter) -> tuple[str, str]:
        """What the restore did, and the notice's kind: a warning when the saved filter keeps other counts
        now than when it was saved, or its keep-list is not the one its spec describes."""
        spec, counts = saved.spec, self.live.counts
        text = (
            f"Restored the filter saved with this run ({saved.spec_path.name}, {spec.get('created', '?')}): "
            f"kept {spec.get('kept')} of {spec.get('total')}."
        )
        problems = []
        kept, kept_per_class = (None, None) if counts is None else (counts.kept, counts.kept_per_class)
        if spec.get("reviews"):  # saved with review decisions on top: count them as the spec did
            try:
                reviews = applied_for_spec(self.run.layout, spec["reviews"])
            except ReviewError as exc:
                problems.append(f"Its review decisions cannot be re-applied: {exc}.")
            else:
                result = apply_reviews(self.samples, self.state.apply(saved.rule), reviews)
                kept, kept_per_class = result.kept, result.kept_per_class
                text += f" It applied {spec['reviews']['samples']} review decisions (the page's exports apply all)."
        if kept is not None and (kept != spec.get("kept") or kept_per_class != spec.get("kept_per_class")):
            problems.append(f"It keeps {kept} now: this run's samples changed since it was saved.")
        if saved.keep_list_problem:
            problems.append(f"Its keep-list does not match: {saved.keep_list_problem}.")
        return " ".join([text, *problems]), "warning" if problems else "info"

    def _move_lines(self, event=None) -> None:
        self.lines.move()
        pn.io.push_notebook(self.main)  # the lines are Bokeh models: a notebook needs the push, a server does not

    # ------------------------------------------------------------------ layout

    @property
    def controls(self) -> pn.Column:
        """The filter, export and gallery controls (a template's sidebar)."""
        if not hasattr(self, "_controls"):
            self._controls = pn.Column(
                pn.pane.Markdown("### Filter", margin=(0, 5)),
                self.filter_controls,
                _section("Export"),
                self.exports,
                _section("Galleries"),
                self.galleries.search_box,
                self.galleries.size_slider,
                self.galleries.class_select,
                self.distribution.log,
                sizing_mode="stretch_width",
            )
        return self._controls

    @property
    def main(self) -> pn.Column:
        """Summary, distribution and retention, galleries with the detail view, then the other plots."""
        if not hasattr(self, "_main"):
            self._main = pn.Column(
                self.summary,
                self.distribution,
                self.galleries,
                _section("More views"),
                self.more_views,
                sizing_mode="stretch_width",
            )
        return self._main

    def __panel__(self):
        return pn.Row(pn.Column(self.controls, width=330), self.main, sizing_mode="stretch_width")
