"""The threshold lines drawn over every plot, moved in place when the live counts change.

Why shared: the histogram, the per-class plots, the kept-vs-threshold curve and the scatter each
show where the current rule cuts; one ``CutLines`` knows where that is (``value``) and moves all of
their lines at once (``plots.Spans``: a property change per line, however many plots there are).
"""

from __future__ import annotations

from mimic_explorer.ui import plots
from mimic_explorer.ui.filter_model import FilterModel
from mimic_explorer.ui.live import LiveCounts
from mimic_explorer.ui.state import ExplorerState


class CutLines:
    """``line(key, fallback)`` makes a line element; after each recount every line moves to ``value(key)``.

    Keys: ``"kept-h"`` is the kept count (horizontal), ``"class-<label>"`` a class's own cut, any other
    key the overall cut (the threshold itself under "by value")."""

    def __init__(self, state: ExplorerState, model: FilterModel, live: LiveCounts):
        self.state, self.model, self.live = state, model, live
        self.spans = plots.Spans()

    def value(self, key: str) -> float | None:
        """Where line ``key`` belongs under the current counts (None before the first count, or where the rule has no
        such cut)."""
        counts = self.live.counts
        if counts is None:
            return None
        if key == "kept-h":
            return float(counts.kept)
        if key.startswith("class-"):
            return self.state.cut(counts, int(key[6:]))
        if self.model.rule == "threshold":
            return float(self.model.threshold)
        return self.state.cut(counts)

    def line(self, key: str, fallback: float = 0.0, horizontal: bool = False):
        """A line element for ``key`` at its current place (at ``fallback`` while it has none)."""
        return self.spans.line(key, self.value(key), fallback, horizontal=horizontal)

    def move(self) -> None:
        """Move every line to its place under the new counts."""
        self.spans.move(self.value)
