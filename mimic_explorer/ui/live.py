"""The counts of the filter's current rule, kept up to date as the rule changes (no panel here).

Why a separate piece: every view that follows the filter (the "Kept" line, the retention table, the
threshold lines, the galleries' kept/dropped marks) wants the same answer, computed once per change
in O(classes · log n) by ``ExplorerState.counts`` (an AND of clauses: a vector comparison per
clause). Views watch ``counts`` (rule changes) and ``column`` (a new score column for the first
clause: new ranges, histograms and galleries), never the rule itself.
"""

from __future__ import annotations

from collections.abc import Callable

import param

from mimic_explorer.filters.rules import FilterError
from mimic_explorer.ui.counting import Counts
from mimic_explorer.ui.filter_model import RULE_PARAMS, FilterModel
from mimic_explorer.ui.state import ExplorerState


class LiveCounts(param.Parameterized):
    """``counts`` of ``model``'s rule on ``state``; ``notify(text, kind)`` hears why a rule cannot be counted."""

    counts = param.ClassSelector(class_=Counts, default=None, doc="Live counts of the current rule (read-only).")
    column = param.String(default="", doc="The score column the state and the counts are on.")

    def __init__(self, state: ExplorerState, model: FilterModel, notify: Callable[[str, str], None]):
        super().__init__()
        self.state, self.model, self.notify = state, model, notify
        state.column = model.column
        model.threshold_for = state.default_threshold
        self.recount()
        self.column = model.column
        model.param.watch(self._follow, [*RULE_PARAMS, "more", "selected_ids"])

    def _follow(self, *events: param.parameterized.Event) -> None:
        changed = {event.name for event in events}
        if "column" not in changed:
            self.recount()
            return
        self.state.column = self.model.column
        # the old column's threshold and overrides mean nothing on the new one (unless given with it)
        reset = {} if "class_overrides" in changed else {"class_overrides": {}}
        if "threshold" not in changed and self.model.rule == "threshold":
            reset["threshold"] = self.state.default_threshold()
        self.model.param.update(**reset)
        self.recount()
        self.column = self.model.column

    def recount(self) -> None:
        """Count the current rule again and move the resolved cut; a rule the counter refuses is shown as a notice and
        the last counts stay."""
        try:
            counts = self.state.counts(self.model.to_rule())
        except (FilterError, ValueError) as exc:
            self.notify(str(exc), "danger")
            return
        self.model.resolved_cut = self.state.cut(counts)
        for clause, part in zip(self.model.more, (counts.clauses or [])[1:], strict=False):
            clause.resolved_cut = self.state.cut(part)
        self.counts = counts
