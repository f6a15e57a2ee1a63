"""UI-free explorer state: everything the views show, computed from a run with pandas/numpy only.

Why separate: the views stay thin and the logic is testable (and benchmarkable at a million samples)
without a browser. Sorting happens once per score column; after that a threshold change costs a few
``searchsorted`` calls (see ``counting.RuleCounter``). Nothing here imports panel or torch.
"""

from __future__ import annotations

import functools
from functools import cached_property

import numpy as np
import pandas as pd

from mimic_explorer.filters.rules import CompoundRule, FilterResult, FilterRule, Rule, apply_rule, describe, has_classes
from mimic_explorer.store.histogram import (
    Histogram,
    class_bin_counts,
    histogram,
    robust_range,
)  # the views import them from here
from mimic_explorer.store.index_build import NON_SCORE_COLUMNS  # identities and categories
from mimic_explorer.store.reader import Run
from mimic_explorer.store.sample_columns import SampleColumns, indexed_samples
from mimic_explorer.ui.counting import Counts, RuleCounter, SampleGroups, compound_counts
from mimic_explorer.util.positions import sorted_distinct

#: Score columns listed first, in this order, when a run has them: the default ranking (issue 15's
#: combined score where there is one, else the mimic score), then the CLIP scores of a pairs pool.
LEADING_COLUMNS = ("combined_score", "mimic_score", "clip_score_ref", "clip_score_model")


def _releasing(method):
    """Run ``method``, then unmap the index pages it touched (``AppIndex.release``): a question about
    the pool reads whole columns, and their pages must not stay in the server's resident memory."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        finally:
            if self._app_index is not None:
                self._app_index.release()

    return wrapper


def _default_threshold(counter: RuleCounter) -> float:
    """``ExplorerState.default_threshold`` of the counter's column: the lowest finite score its own keep
    split keeps (when that split keeps some and drops some), else the median of the finite scores.

    Read along the ascending order, a block at a time, until a kept sample appears (no copy of the
    kept scores: 128 M of them would be a gigabyte); the median from its one or two middle values."""
    values = counter.sorted_finite
    if len(values) == 0:
        return 0.0
    keep = counter.ensemble  # the column's own split: combined_keep for combined_score
    if keep is not None and keep.any() and not keep.all():
        order, scores, block = counter.ascending, counter.scores, 1 << 20
        for start in range(0, len(order), block):
            positions = np.asarray(order[start : start + block])
            kept = positions[keep[positions]]
            kept_scores = scores[kept]
            kept_scores = kept_scores[np.isfinite(kept_scores)]
            if len(kept_scores):
                return float(kept_scores.min())  # ascending: the block's smallest kept is the overall smallest
    n = len(values)
    if n % 2:
        return float(values[n // 2])
    return float(np.mean(np.array([values[n // 2 - 1], values[n // 2]], dtype=np.float64)))  # as np.median


class ExplorerState:
    """A run's samples plus sorted views of one score column; answers every question the views ask."""

    def __init__(self, run: Run, column: str | None = None):
        """``column``: the score to open on (default ``default_column``)."""
        self.run = run
        self.samples = indexed_samples(run)  # the run's app index (memory-mapped), or the whole table without one
        self.class_names = run.class_names
        numeric = [
            c
            for c in self.samples.columns
            if c not in NON_SCORE_COLUMNS
            and pd.api.types.is_numeric_dtype(self.samples.dtypes[c])
            and not pd.api.types.is_bool_dtype(self.samples.dtypes[c])
        ]
        self.score_columns = [c for c in LEADING_COLUMNS if c in numeric] + [
            c for c in numeric if c not in LEADING_COLUMNS
        ]
        if not self.score_columns:
            raise ValueError("the run's samples have no numeric score column")
        self.has_classes = self._shared(("has-classes",), lambda: has_classes(self.samples))
        self.has_captions = "caption" in self.samples.columns
        #: what a ground-truth noisy sample is in this pool's words
        self.noisy_word = "mislabeled" if self.has_classes or not self.has_captions else "swapped caption"
        self.query, self.matches = "", None
        #: the samples selected on the map (row positions, ascending), None when nothing is selected
        self.selected: np.ndarray | None = None
        self._caption_matches: np.ndarray | None = None
        self._counters: dict[str, RuleCounter] = {}
        self.column = column if column in self.score_columns else self.default_column

    @property
    def default_column(self) -> str:
        """The score the app opens on: ``combined_score`` where the run has it (it ranks noisy samples
        better than ``mimic_score`` alone: benchmarks/RESULTS.md, issue 15; on image-text pairs it is the
        pairs combined score, issue 25), else ``mimic_score``."""
        return next((c for c in ("combined_score", "mimic_score") if c in self.score_columns), self.score_columns[0])

    # ------------------------------------------------------------------ the score column

    @property
    def column(self) -> str:
        """The score column every view shows."""
        return self._column

    @column.setter
    def column(self, column: str) -> None:
        """Switch every view to ``column``; ``ValueError`` names the columns when there is no such one."""
        if column not in self.score_columns:
            raise ValueError(f"no score column {column!r}; available: {', '.join(self.score_columns)}")
        self._column = column
        self.counter = self.counter_for(column)
        self.__dict__.pop("_orderings", None)

    @_releasing
    def counter_for(self, column: str | None) -> RuleCounter:
        """The (cached) sorted view of any score column (None: the current one)."""
        if column is None:
            return self.counter
        if column not in self.score_columns:
            raise ValueError(f"no score column {column!r}; available: {', '.join(self.score_columns)}")
        if column not in self._counters:
            index = self._app_index
            stored = index is not None and column in index.score_columns
            self._counters[column] = self._shared(
                ("counter", column),
                lambda: RuleCounter(
                    self.samples,
                    column,
                    ascending=index.order(column) if stored else None,
                    stored=index.grouped(column) if stored else None,
                    groups=self.groups,
                ),
            )
        return self._counters[column]

    @cached_property
    def groups(self) -> SampleGroups:
        """Class codes and (class, mislabeled) groups, one copy for every column's counter."""
        return self._shared(("groups",), lambda: SampleGroups(self.samples))

    def _shared(self, key: tuple, build):
        """One value per run in this process when the samples come through the app index (every
        session on a run shares its counters: memory stays one run's worth, not one per session)."""
        index = self._app_index
        return build() if index is None else index.shared(key, build)

    @property
    def app_index(self):
        """The run's ``AppIndex`` when the samples are read through it, else None."""
        return self._app_index

    @property
    def _app_index(self):
        """The run's ``AppIndex`` when the samples are read through it (stored orders, histograms)."""
        return self.samples.app_index if isinstance(self.samples, SampleColumns) else None

    @property
    def scores(self) -> np.ndarray:
        """The current column's scores, by row position."""
        return self.counter.scores

    @property
    def order(self) -> np.ndarray:
        """Sample positions by score, lowest first (NaN last)."""
        return self.counter.ascending

    @property
    def total(self) -> int:
        """How many samples the run has."""
        return len(self.samples)

    @property
    def has_truth(self) -> bool:
        """Whether the run knows which samples are noisy (ground truth), so views can show it."""
        return self.counter.has_truth

    @property
    def has_ensemble(self) -> bool:
        """Whether the run has Stage 2's ensemble vote (``keep``), so the ensemble rule is offered."""
        return self.counter.ensemble is not None

    def column_ready(self, column: str) -> bool:
        """Whether switching to ``column`` is quick: its order is in the index (or the run is read whole,
        where a column is sorted in memory in well under a second). A column the index sorts on first
        use is not ready until ``prepare_column`` ran."""
        index = self._app_index
        if index is None or column not in index.score_columns:
            return True
        return column in self._counters or index.is_sorted(column)

    def prepare_column(self, column: str) -> None:
        """Do the slow part of switching to ``column`` now (sort it if the index has not, build its
        counter and range), e.g. in a background thread while the app says so; the switch is then quick."""
        self.counter_for(column)
        self.score_range(column)

    def score_range(self, column: str | None = None) -> tuple[float, float]:
        """The full finite range of a column (what a typed threshold is checked against)."""
        values = self.counter_for(column).sorted_finite
        if len(values) == 0:
            return 0.0, 1.0
        return float(values[0]), float(values[-1])

    @_releasing
    def default_threshold(self, column: str | None = None) -> float:
        """Start where the column's own filter cuts it (``combined_keep`` for ``combined_score``), else
        where the run's ensemble filter does, else at the median."""
        counter = self.counter_for(column)
        return self._shared(("default-threshold", counter.column), lambda: _default_threshold(counter))

    # ------------------------------------------------------------------ rules and counts

    @_releasing
    def counts(self, rule: Rule) -> Counts:
        """Live counts for a rule whose (first) clause is on the current column: O(classes · log n) for
        one clause, a vector comparison per clause for an AND (``counting.compound_counts``)."""
        rule = self._on_column(rule)
        if isinstance(rule, CompoundRule):
            return compound_counts(rule, self.counter_for, self.ids_mask)
        return self.counter.counts(rule)

    @_releasing
    def apply(self, rule: Rule | float) -> FilterResult:
        """The authoritative keep mask, from the same code as ``mimic-explorer export``."""
        if not isinstance(rule, (FilterRule, CompoundRule)):
            rule = FilterRule("threshold", float(rule), self.column)
        return apply_rule(self.samples, self._on_column(rule))

    def _on_column(self, rule: Rule) -> Rule:
        first = rule.clauses[0]
        if first.column != self.column and first.kind != "ensemble":
            raise ValueError(f"rule is on {first.column!r} but the state is on {self.column!r}")
        return rule

    def cut(self, counts: Counts, label: int | None = None) -> float | None:
        """The threshold a rule resolved to, overall or for one class (None: no single cut)."""
        if label is not None and str(label) in counts.thresholds:
            value = counts.thresholds[str(label)]
        else:
            value = counts.thresholds.get("all")
        return None if value is None or not np.isfinite(value) else float(value)

    @_releasing
    def keep_status(self, positions: np.ndarray, rule: Rule, counts: Counts) -> np.ndarray:
        """Whether each of a few samples (gallery cards) is kept, without building the full mask (an
        AND's counts carry theirs)."""
        positions = np.asarray(positions, dtype=np.int64)
        if counts.keep is not None:
            return counts.keep[positions]
        if rule.kind == "ensemble":
            return self.counter.ensemble[positions]
        if rule.kind == "keep_count":
            if rule.per_class:
                codes = self.counter.codes[positions]
                kept_by_class = np.array([counts.kept_per_class[k] for k in self.counter.class_keys])
                return self.counter.class_ranks[positions] < kept_by_class[codes]
            return self.counter.global_ranks[positions] < counts.kept
        labels = self.samples["label"].to_numpy()[positions] if "label" in self.samples.columns else None
        scores = self.scores[positions]
        cuts = np.array(
            [
                np.nan if (c := self.cut(counts, None if labels is None else int(label))) is None else c
                for label in (labels if labels is not None else [None] * len(positions))
            ],
            dtype=np.float64,
        )
        with np.errstate(invalid="ignore"):
            return scores >= cuts

    def retention_table(
        self, counts: Counts, overrides: dict[int, float] | None = None, rule: Rule | None = None
    ) -> pd.DataFrame:
        """Per class, before and after: samples, share of the dataset, kept, share of the kept set,
        fraction retained, the threshold that applied — the class balance a filter leaves behind. A
        pool without classes gets ``overall_table`` instead."""
        if not self.has_classes:
            return self.overall_table(counts, rule)
        keys = self.counter.class_keys
        total = np.array([counts.total_per_class[k] for k in keys], dtype=np.int64)
        kept = np.array([counts.kept_per_class[k] for k in keys], dtype=np.int64)
        overrides = overrides or {}
        frame = pd.DataFrame(
            {
                "label": self.counter.classes.astype(int),
                "class": [self.label_name(c) for c in self.counter.classes.tolist()],
                "samples": total,
                "share before %": np.round(100 * total / max(total.sum(), 1), 1),
                "kept": kept,
                "share after %": np.round(100 * kept / max(kept.sum(), 1), 1),
                "retained %": np.round(100 * kept / np.maximum(total, 1), 1),
                "threshold": [self._rounded(self.cut(counts, int(c))) for c in self.counter.classes.tolist()],
                "override": [overrides.get(int(c), np.nan) for c in self.counter.classes.tolist()],
            }
        )
        if self.has_truth:
            noisy_per_class = self.counter.total_per_group.reshape(-1, 2)[:, 1]
            frame.insert(7, "mislabeled", noisy_per_class)
        return frame

    def overall_table(self, counts: Counts, rule: Rule | None = None) -> pd.DataFrame:
        """Before and after over the whole pool (a pool without classes): one row for the filter, and
        for an AND one row per clause first, each counted alone, so a person sees which clause cuts."""
        rows = []
        parts = list(zip(rule.clauses, counts.clauses, strict=False)) if rule is not None and counts.clauses else []
        for clause, part in [*parts, (None, counts)]:
            row = {
                "class": describe(clause) if clause is not None else ("all clauses (AND)" if parts else "all samples"),
                "samples": part.total,
                "kept": part.kept,
                "dropped": part.dropped,
                "retained %": round(100 * part.kept / max(part.total, 1), 1),
                "threshold": self._rounded(self.cut(part)),
            }
            if part.noisy_total is not None:
                row[f"{self.noisy_word} dropped"] = part.noisy_dropped
            rows.append(row)
        return pd.DataFrame(rows)

    @staticmethod
    def _rounded(value: float | None) -> float:
        return np.nan if value is None else round(value, 4)

    # ------------------------------------------------------------------ distributions

    @_releasing
    def histogram(self, column: str | None = None, log: bool = False) -> Histogram:
        """The histogram of ``column`` (the current one by default): from the run's index when it holds one, else
        computed once and kept."""
        column = column or self.column
        key = ("hist", column)
        cache = self.__dict__.setdefault("_hist_cache", {})
        if key not in cache and self._app_index is not None:
            cache[key] = self._app_index.histogram(column)
        if cache.get(key) is None:
            values = self.samples[column].to_numpy(dtype=np.float64)
            presorted = self.counter.sorted_finite if column == self.column else None
            cache[key] = histogram(
                values, noisy=self.counter.noisy if self.has_truth else None, sorted_finite=presorted
            )
        return cache[key]

    @_releasing
    def class_histograms(self, limit: int = 20) -> tuple[np.ndarray, dict[int, np.ndarray], list[int]]:
        """Shared bin edges and counts per class (the ``limit`` largest classes) for small multiples."""
        hist = self.histogram()
        edges = hist.edges
        n_classes = len(self.counter.classes)
        stored = self._app_index.class_bin_counts(self.column) if self._app_index is not None else None
        if stored is not None and stored.shape == (n_classes, len(edges) - 1):  # counted when the index was built
            table = stored
        else:
            table = self._shared(
                ("class-histograms", self.column),
                lambda: class_bin_counts(self.scores, self.counter.codes, n_classes, edges),
            )
        largest = np.argsort(-self.counter.total_per_class, kind="stable")[:limit]
        shown = sorted(int(self.counter.classes[c]) for c in largest)
        code_of = {int(c): i for i, c in enumerate(self.counter.classes.tolist())}
        return edges, {label: table[code_of[label]] for label in shown}, shown

    @_releasing
    def kept_curve(self) -> pd.DataFrame:
        """How many samples a threshold keeps, over the column's robust range (the kept-vs-threshold plot)."""
        lo, hi = robust_range(self.counter.sorted_finite, presorted=True)
        return self.counter.kept_curve(lo=lo, hi=hi)

    # ------------------------------------------------------------------ galleries

    @cached_property
    def _orderings(self) -> dict[int | None, tuple[np.ndarray, np.ndarray]]:
        return {}

    @_releasing
    def narrow(self, query: str) -> int | None:
        """Galleries show only samples whose caption contains ``query`` (case-insensitive substring;
        empty: every sample). Returns how many match (None when not narrowed)."""
        query = (query or "").strip()
        if query and not self.has_captions:
            raise ValueError("this run has no captions to search")
        self.query = query
        self._caption_matches = self.caption_matches(query) if query else None
        self._combine_matches()
        return None if self._caption_matches is None else int(self._caption_matches.sum())

    def caption_matches(self, query: str) -> np.ndarray:
        """Which samples' captions contain ``query`` (case-insensitive), by row (the map highlights them)."""
        return (
            self.samples["caption"]
            .astype(str)
            .str.contains(query, case=False, regex=False, na=False)
            .to_numpy(dtype=bool)
        )

    def select(self, positions: np.ndarray | None) -> int | None:
        """Galleries show only the samples at row ``positions`` (a selection on the map; None: every sample).
        Returns how many are selected (None when nothing is)."""
        if positions is None:
            self.selected = None
        else:
            self.selected = sorted_distinct(positions)
        self._combine_matches()
        return None if self.selected is None else len(self.selected)

    def _combine_matches(self) -> None:
        """``matches``: the caption matches AND the selection (None when neither narrows)."""
        matches = self._caption_matches
        if self.selected is not None:
            chosen = np.zeros(self.total, dtype=bool)
            chosen[self.selected] = True
            matches = chosen if matches is None else matches & chosen
        self.matches = matches
        self.__dict__.pop("_orderings", None)

    def positions_of(self, sample_ids) -> np.ndarray:
        """Row positions of many sample ids at once (−1 for an id not in the run): through the app index's
        sorted id hashes when there is one (no id column read), else an index over the table's ids."""
        if self._app_index is not None:
            return self._app_index.positions_of(sample_ids)
        return self._position_of.get_indexer([str(i) for i in sample_ids])

    def ids_mask(self, clause: FilterRule) -> np.ndarray:
        """The keep mask of an ids clause (a selection ANDed into the filter), by row."""
        where = self.positions_of(clause.ids)
        if (where < 0).any():
            raise ValueError(f"{int((where < 0).sum())} of the selection's ids are not in this run")
        keep = np.zeros(self.total, dtype=bool)
        keep[where] = True
        return keep

    @_releasing
    def _ordered(self, label: int | None) -> tuple[np.ndarray, np.ndarray]:
        """(positions ascending by score, their sorted finite scores), for all samples or one class,
        among the caption matches when narrowed. Kept per column: the "around the threshold" gallery
        asks on every threshold change, and gathering a million scores each time would cost more than
        the rest of the change."""
        if label not in self._orderings:
            order = self.order
            if self.matches is not None:
                order = order[self.matches[order]]
            if label is not None:
                order = order[self.samples["label"].to_numpy()[order] == label]
            stored = label is None and self.matches is None and self._app_index is not None
            if stored:  # read through the stored order: nothing gathered here
                scores = self._app_index.sorted_values(self.column)
                n_finite = self._app_index.finite_count(self.column)
            else:
                scores = self.scores[order]
                n_finite = int(np.isfinite(scores).sum())
            self._orderings[label] = (order[:n_finite], scores[:n_finite])
        return self._orderings[label]

    def lowest(self, k: int, label: int | None = None) -> np.ndarray:
        """The row positions of the ``k`` lowest-scoring samples (of class ``label`` when given)."""
        return self._ordered(label)[0][:k]

    def highest(self, k: int, label: int | None = None) -> np.ndarray:
        """The row positions of the ``k`` highest-scoring samples (of class ``label`` when given)."""
        return self._ordered(label)[0][::-1][:k]

    def around(self, threshold: float, k: int, label: int | None = None) -> np.ndarray:
        """The k samples closest to the threshold: half just below it, half at or above it."""
        order, scores = self._ordered(label)
        at = int(np.searchsorted(scores, threshold, side="left"))
        start = max(0, min(at - k // 2, len(order) - k))
        return order[start : start + k]

    def band(self, lo: float, hi: float, k: int, label: int | None = None) -> np.ndarray:
        """Up to k samples spread evenly (by rank) across the scores in [lo, hi]."""
        order, scores = self._ordered(label)
        i0 = int(np.searchsorted(scores, lo, side="left"))
        i1 = int(np.searchsorted(scores, hi, side="right"))
        if i1 <= i0:
            return order[:0]
        picks = np.unique(np.linspace(i0, i1 - 1, min(k, i1 - i0)).round().astype(np.int64))
        return order[picks]

    def rows(self, positions: np.ndarray) -> pd.DataFrame:
        """The samples at row ``positions`` (read by position, not the whole table)."""
        return self.samples.iloc[np.asarray(positions, dtype=np.int64)]

    def trajectories(self, positions) -> pd.DataFrame:
        """Per-epoch rows (``EpochScores.trajectories``) of a few samples: from the run's index when it
        holds them (O(epochs) per sample), else read from the score parts."""
        index = self._app_index
        if index is not None and index.has_trajectories:
            return index.trajectories(positions)
        return self.run.epoch_scores.trajectories(self.rows(positions)["sample_id"].astype(str).tolist())

    # ------------------------------------------------------------------ one sample

    @cached_property
    def _position_of(self) -> pd.Index:
        return pd.Index(self.samples["sample_id"])

    def position(self, sample_id: str) -> int | None:
        """Row position of a sample id (ids are unique in a run), or None when it is not in the run."""
        if self._app_index is not None:
            found = int(self._app_index.positions_of([sample_id])[0])
            return None if found < 0 else found
        try:
            found = self._position_of.get_loc(str(sample_id))
        except KeyError:
            return None
        if isinstance(found, (int, np.integer)):
            return int(found)
        return int(np.flatnonzero(found)[0]) if not isinstance(found, slice) else int(found.start)

    def record(self, position: int) -> dict:
        """Every column of one sample, with label names resolved (for the detail view)."""
        row = self.samples.iloc[int(position)].to_dict()
        for key in ("label", "true_label", "pred", "ref_pred"):
            if key in row and pd.notna(row[key]):
                row[f"{key} name"] = self.label_name(row[key])
        return row

    def label_name(self, label) -> str:
        """The class name of ``label``, or the label itself when it is not a class index."""
        try:
            index = int(label)
        except (TypeError, ValueError):
            return str(label)
        if 0 <= index < len(self.class_names):
            return str(self.class_names[index])
        return str(label)
