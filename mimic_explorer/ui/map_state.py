"""UI-free state of the Map view: the run's 2-D layout, what colours it, selections, the suggested-label matrix.

Why separate from the view: selecting in a box or a lasso, finding the point under the cursor, the
given × suggested confusion matrix and the colour columns are numpy over every sample — tested and
benchmarked without a browser, at millions of points (``ui/state.py`` is the same split for the rest
of the page). Nothing here imports panel or torch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import numpy as np
import pandas as pd

from mimic_explorer.maps.run_map import current_map, neighbour_search
from mimic_explorer.store.reviews import ReviewError, applied_now
from mimic_explorer.ui.state import ExplorerState

#: most categories a colouring shows; the rest are one "other" category
MAX_CATEGORIES = 20
#: the colourings the map offers (those the run can show), in this order
SCORE, CLASS, KEPT, TRUTH, SUGGESTED, DIFFERS, REVIEW, SEARCH = (
    "score",
    "class",
    "kept by the filter",
    "ground truth",
    "suggested label",
    "suggestion differs",
    "review decision",
    "caption search",
)
#: pools past this many samples are not laid out by opening the view (``mimic-explorer map`` makes it)
MAKE_ON_OPEN_MAX = 200_000

Progress = Callable[[str, int, int], None]


def _quiet(stage: str, done: int, total: int) -> None:
    return None


def points_in_polygon(x: np.ndarray, y: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Whether each point (x, y) lies inside ``polygon`` ((k, 2) vertices; even-odd rule), vectorised over the
    points after a bounding-box cut (a lasso covers a small part of a large map)."""
    polygon = np.asarray(polygon, dtype=np.float64)
    inside = np.zeros(len(x), dtype=bool)
    if len(polygon) < 3:
        return inside
    lo, hi = polygon.min(axis=0), polygon.max(axis=0)
    candidates = np.flatnonzero((x >= lo[0]) & (x <= hi[0]) & (y >= lo[1]) & (y <= hi[1]))
    px, py = x[candidates].astype(np.float64), y[candidates].astype(np.float64)
    hit = np.zeros(len(candidates), dtype=bool)
    x1, y1 = polygon[:, 0], polygon[:, 1]
    x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
    for ax, ay, bx, by in zip(x1, y1, x2, y2, strict=True):
        crosses = (ay > py) != (by > py)
        if not crosses.any():
            continue
        with np.errstate(divide="ignore", invalid="ignore"):
            at = ax + (py - ay) * (bx - ax) / (by - ay)
        hit ^= crosses & (px < at)
    inside[candidates] = hit
    return inside


def _class_codes(values: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The index of each value in the sorted ``classes``, ``len(classes)`` for a value that is none of them:
    a lookup table for small non-negative classes (the usual class ids), a binary search otherwise."""
    k = len(classes)
    if k and classes.dtype.kind in "iu" and classes.min() >= 0 and classes.max() < 1 << 20:
        table = np.full(int(classes.max()) + 2, k, dtype=np.int64)
        table[classes] = np.arange(k)
        return table[np.where((values >= 0) & (values <= classes.max()), values, classes.max() + 1)]
    if not k:
        return np.zeros(len(values), dtype=np.int64)  # every value is "none of them" (code k = 0)
    where = np.minimum(np.searchsorted(classes, values), k - 1)
    return np.where(classes[where] == values, where, k)


class MapState:
    """The run's map for one explorer: coordinates by row, colourings, selections, the suggested-label matrix."""

    def __init__(self, state: ExplorerState):
        self.state = state
        self.run = state.run
        self.layout = self.run.layout
        self.name: str | None = None
        self._coords: np.ndarray | None = None
        self._finite: tuple[np.ndarray, np.ndarray | None] | None = None  # (coords, their finite rows)
        self._search = None

    # ------------------------------------------------------------------ the layout

    @property
    def can_map(self) -> bool:
        """Whether the run has embeddings or coordinates to show."""
        return bool(self.layout.embedding_sources() or self.layout.map_names())

    @property
    def made(self) -> bool:
        """Whether a layout is kept in the run already (opening the view costs a read, not a fit)."""
        return bool(self.layout.map_names())

    @property
    def make_on_open(self) -> bool:
        """Whether opening the view may lay the pool out (small pools); large ones ask first."""
        return self.made or self.state.total <= MAKE_ON_OPEN_MAX

    def load(self, progress: Progress = _quiet) -> np.ndarray:
        """The coordinates (made and kept on first use: PCA of the default embedding); ``MapError`` naming why not."""
        if self._coords is None:
            self.name, coords = current_map(self.layout, self.state.total, progress)
            self._coords = np.asarray(coords, dtype=np.float32)
        return self._coords

    def use(self, name: str, coords: np.ndarray) -> None:
        """Show another layout (just made or imported)."""
        self.name, self._coords = name, np.asarray(coords, dtype=np.float32)

    @property
    def coords(self) -> np.ndarray:
        """(samples, 2) float32 by row (loaded first)."""
        return self.load()

    def finite_rows(self) -> np.ndarray | None:
        """Which rows have finite coordinates, or None when all do (the plot then takes the columns as they
        are, without a filtered copy); found once per layout."""
        coords = self.coords
        if self._finite is None or self._finite[0] is not coords:
            finite = np.isfinite(coords).all(axis=1)
            self._finite = (coords, None if finite.all() else finite)
        return self._finite[1]

    # ------------------------------------------------------------------ colourings

    def colourings(self) -> list[str]:
        """The colourings this run can show, in ``SCORE … SEARCH`` order."""
        columns = self.state.samples.columns
        found = [SCORE]
        if self.state.has_classes:
            found.append(CLASS)
        found.append(KEPT)
        if self.state.has_truth:
            found.append(TRUTH)
        if "ref_pred" in columns:
            found += [SUGGESTED, DIFFERS]
        found.append(REVIEW)
        if self.state.has_captions:
            found.append(SEARCH)
        return found

    def _named(self, labels: np.ndarray) -> pd.Categorical:
        """Class labels as names: the ``MAX_CATEGORIES`` − 1 most common classes (in class order), the rest
        ``(other)`` (as are unknown labels, −1)."""
        labels = np.asarray(labels)
        counts = pd.Series(labels[labels >= 0]).value_counts()
        top = np.sort(counts.index.to_numpy()[: MAX_CATEGORIES - 1])
        codes = pd.Index(top).get_indexer(labels)
        others = codes < 0
        codes = np.where(others, len(top), codes)
        categories = [self.state.label_name(v) for v in top.tolist()] + (["(other)"] if others.any() else [])
        return pd.Categorical.from_codes(codes, categories=list(dict.fromkeys(categories)))

    def values(self, colouring: str, keep: np.ndarray | None = None, query: str = "") -> np.ndarray | pd.Categorical:
        """What colours each point: a float array (``SCORE``) or a categorical (every other colouring)."""
        samples, n = self.state.samples, self.state.total
        if colouring == SCORE:
            return self.state.scores.astype(np.float32)
        if colouring == CLASS:
            return self._named(samples["label"].to_numpy())
        if colouring == KEPT:
            keep = np.ones(n, dtype=bool) if keep is None else keep
            return pd.Categorical(np.where(keep, "kept", "dropped"), categories=["kept", "dropped"])
        if colouring == TRUTH:
            word = self.state.noisy_word
            return pd.Categorical(np.where(self.state.counter.noisy, word, "clean"), categories=["clean", word])
        if colouring == SUGGESTED:
            return self._named(pd.to_numeric(samples["ref_pred"]).fillna(-1).to_numpy(dtype=np.int64))
        if colouring == DIFFERS:
            return pd.Categorical(np.where(self.differs, "differs", "agrees"), categories=["agrees", "differs"])
        if colouring == REVIEW:
            return pd.Categorical(self.decisions, categories=["none", "keep", "drop", "relabel"])
        if colouring == SEARCH:
            matches = self.state.caption_matches(query) if query.strip() else np.zeros(n, dtype=bool)
            return pd.Categorical(np.where(matches, "match", "other"), categories=["other", "match"])
        raise ValueError(f"unknown colouring {colouring!r}; choose one of {', '.join(self.colourings())}")

    @cached_property
    def differs(self) -> np.ndarray:
        """Whether the reference's suggested label differs from the given one, by row (False where unknown)."""
        samples = self.state.samples
        if "ref_pred" not in samples.columns:
            return np.zeros(self.state.total, dtype=bool)
        suggested = pd.to_numeric(samples["ref_pred"]).fillna(-1).to_numpy(dtype=np.int64)
        return (suggested >= 0) & (suggested != samples["label"].to_numpy())

    @property
    def decisions(self) -> np.ndarray:
        """Each sample's latest review decision by row (``none`` where there is none)."""
        out = np.full(self.state.total, "none", dtype=object)
        try:
            latest = applied_now(self.layout).decisions
        except ReviewError:
            return out
        where = self.state.positions_of(latest["sample_id"])
        found = where >= 0
        out[where[found]] = latest["decision"].to_numpy()[found]
        return out

    # ------------------------------------------------------------------ selections

    def box(self, bounds: tuple[float, float, float, float]) -> np.ndarray:
        """Rows inside (left, bottom, right, top), ascending."""
        x0, y0, x1, y1 = bounds
        x, y = self.coords[:, 0], self.coords[:, 1]
        return np.flatnonzero((x >= min(x0, x1)) & (x <= max(x0, x1)) & (y >= min(y0, y1)) & (y <= max(y0, y1)))

    def lasso(self, polygon: np.ndarray) -> np.ndarray:
        """Rows inside a lasso's polygon ((k, 2) vertices), ascending."""
        return np.flatnonzero(points_in_polygon(self.coords[:, 0], self.coords[:, 1], polygon))

    def nearest(self, x: float, y: float, radius: float) -> int | None:
        """The row closest to (x, y) within ``radius`` (data units), or None (the hover's sample)."""
        coords = self.coords
        near = np.flatnonzero((np.abs(coords[:, 0] - x) <= radius) & (np.abs(coords[:, 1] - y) <= radius))
        if len(near) == 0:
            return None
        d = (coords[near, 0] - x) ** 2 + (coords[near, 1] - y) ** 2
        return int(near[int(np.argmin(d))])

    def extent(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the finite points (the hover radius is a share of it)."""
        finite = np.isfinite(self.coords).all(axis=1)
        if not finite.any():
            return 0.0, 0.0, 1.0, 1.0
        lo, hi = self.coords[finite].min(axis=0), self.coords[finite].max(axis=0)
        return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])

    # ------------------------------------------------------------------ suggested labels

    @property
    def has_suggestions(self) -> bool:
        """Whether the run has the reference's suggested label (labelled runs with a reference)."""
        return self.state.has_classes and "ref_pred" in self.state.samples.columns

    def confusion(self) -> pd.DataFrame:
        """Counts of given × suggested label (long form: given, suggested, count and their names), the given
        label's ``MAX_CATEGORIES`` most common classes."""
        # once per run in this process (every session's Map tab shows the same table), counted over the class
        # codes the counter already holds (a pandas value_counts of the label pairs factorised 12.8 M rows: 1 s
        # of the Map tab's first render)
        return self.state._shared(("confusion",), self._confusion)

    def _confusion(self) -> pd.DataFrame:
        classes, codes = self.state.counter.classes, self.state.counter.codes
        k = len(classes)
        suggested = pd.to_numeric(self.state.samples["ref_pred"]).fillna(-1).to_numpy(dtype=np.int64)
        suggested_code = _class_codes(suggested, classes)
        table = np.bincount(codes.astype(np.int64) * (k + 1) + suggested_code, minlength=k * (k + 1))
        table = table.reshape(k, k + 1)
        given_totals = table.sum(axis=1)
        top = np.argsort(-given_totals, kind="stable")[:MAX_CATEGORIES]
        top = top[given_totals[top] > 0]
        chosen = np.sort(top)
        cells = [(g, s) for g in chosen.tolist() for s in chosen.tolist() if table[g, s] > 0]
        counts = pd.DataFrame(
            {
                "given": classes[[g for g, _ in cells]] if cells else np.zeros(0, dtype=classes.dtype),
                "suggested": classes[[s for _, s in cells]] if cells else np.zeros(0, dtype=classes.dtype),
                "count": np.array([table[g, s] for g, s in cells], dtype=np.int64),
            }
        )
        counts["given name"] = [self.state.label_name(v) for v in counts["given"]]
        counts["suggested name"] = [self.state.label_name(v) for v in counts["suggested"]]
        return counts.sort_values(["given", "suggested"]).reset_index(drop=True)

    def cell(self, given: int, suggested: int) -> np.ndarray:
        """Rows whose given label is ``given`` and suggested label ``suggested``."""
        samples = self.state.samples
        suggested_now = pd.to_numeric(samples["ref_pred"]).fillna(-1).to_numpy(dtype=np.int64)
        return np.flatnonzero((samples["label"].to_numpy() == given) & (suggested_now == suggested))

    # ------------------------------------------------------------------ more like this

    @property
    def has_neighbours(self) -> bool:
        """Whether "more like this" can answer (the run has embeddings)."""
        return bool(self.layout.embedding_sources())

    def more_like_this(self, position: int, k: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosine similarities) of the ``k`` samples most like row ``position`` in the map's embedding."""
        if self._search is None:
            source = self.name.split("-")[0] if self.name else None
            source = source if source in self.layout.embedding_sources() else None
            self._search = neighbour_search(self.layout, source, self.state.total)
        return self._search.query_row(int(position), k)
