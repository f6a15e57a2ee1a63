"""The filter as ``param.Parameterized`` objects: their parameters ARE the rule.

Why: the controls, the Python API (``explorer.threshold = 0.5``), saved specs and exports all speak
of one rule. Widgets are ``from_param`` views of these parameters, so nothing converts a rule into
widget values or back by hand; ``to_rule`` / ``to_spec`` / ``set_rule`` / ``from_spec`` are the only
translations, and a spec read back gives the same spec (hash included). See docs/ARCHITECTURE.md.

A ``ClauseModel`` is one clause on one score column. The ``FilterModel`` is the first clause itself
(the column the histogram, galleries and cut lines follow) plus ``more``: further clauses, each
usually on another column, ANDed with it (``filters.CompoundRule``). Any edit of a further clause,
and adding or removing one, is announced as a change of ``more``, so a view watches the first
clause's parameters and ``more`` and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import param

from mimic_explorer.filters.rules import IDS, RULES, FilterError, FilterResult, FilterRule, Rule, all_of, selection
from mimic_explorer.filters.spec import build_spec, rule_in_spec

#: The parameters that make up a clause (in the order a rule names them).
RULE_PARAMS = ("column", "rule", "threshold", "quantile", "top_fraction", "keep_count", "per_class", "class_overrides")


class ClauseModel(param.Parameterized):
    """One clause, as parameters. ``ClauseModel(columns=[...])`` limits ``column`` to a run's scores.

    Two edits imply a rule on their own, as a person would mean them: giving a threshold (or a
    per-class override) means "by value"; switching to "by value" without giving a threshold starts
    at ``resolved_cut``, where the previous rule cut the column.
    """

    column = param.Selector(default="mimic_score", objects=["mimic_score"], doc="Score column the clause uses.")
    rule = param.Selector(default="threshold", objects=list(RULES), doc="How the keep set is chosen.")
    threshold = param.Number(default=0.0, doc="Keep samples whose score is at least this value (rule 'threshold').")
    quantile = param.Number(default=0.3, bounds=(0.0, 1.0), doc="Drop about this fraction, lowest scores first.")
    top_fraction = param.Number(default=0.3, bounds=(0.0, 1.0), doc="Keep this fraction, highest scores first.")
    keep_count = param.Integer(default=0, bounds=(0, None), doc="Keep the N highest-scoring samples.")
    per_class = param.Boolean(default=False, doc="Quantile / top fraction / keep-count within each class.")
    class_overrides = param.Dict(default={}, doc="Per-class thresholds {label: value} (rule 'threshold').")
    resolved_cut = param.Number(
        default=None,
        allow_None=True,
        precedence=-1,
        doc="Where the current rule cuts the column (set by whoever counts it); not part of the rule.",
    )

    def __init__(self, columns: Sequence[str] | None = None, **params):
        super().__init__()
        if columns is not None:
            self.param.column.objects = list(columns)
            params.setdefault("column", columns[0])
        self.param.update(**params)
        self.param.watch(self._follow_edits, ["rule", "threshold", "class_overrides"])

    def _follow_edits(self, *events: param.parameterized.Event) -> None:
        changed = {event.name for event in events}
        if "rule" in changed:
            if self.rule == "threshold" and "threshold" not in changed and self.resolved_cut is not None:
                self.threshold = self.resolved_cut
        elif self.rule != "threshold" and (
            "threshold" in changed or ("class_overrides" in changed and self.class_overrides)
        ):
            # the given threshold replaces the old rule's cut, so "by value" must not start there
            self.param.update(rule="threshold", resolved_cut=None)

    def clause(self) -> FilterRule:
        """The ``FilterRule`` these parameters describe."""
        if self.rule == "ensemble":
            return FilterRule("ensemble", None, self.column)
        if self.rule == "threshold":
            overrides = {int(k): float(v) for k, v in self.class_overrides.items()}
            return FilterRule("threshold", float(self.threshold), self.column, False, overrides)
        value = {
            "quantile": float(self.quantile),
            "top_fraction": float(self.top_fraction),
            "keep_count": int(self.keep_count),
        }[self.rule]
        return FilterRule(self.rule, value, self.column, bool(self.per_class))

    def clause_updates(self, rule: FilterRule) -> dict[str, Any]:
        """The parameter values that say ``rule`` (validated); parameters it does not use are left out."""
        rule.validate()
        updates: dict[str, Any] = {"rule": rule.kind}
        if rule.column in self.param.column.objects:
            updates["column"] = rule.column
        elif rule.kind != "ensemble":  # the ensemble filter ignores the column
            raise FilterError(
                f"no score column {rule.column!r} here; available: {', '.join(self.param.column.objects)}"
            )
        if rule.kind == "threshold":
            updates.update(threshold=float(rule.value), class_overrides=dict(rule.class_overrides))
        elif rule.kind in ("quantile", "top_fraction"):
            updates.update({rule.kind: float(rule.value), "per_class": rule.per_class})
        elif rule.kind == "keep_count":
            updates.update(keep_count=int(rule.value), per_class=rule.per_class)
        return updates


class FilterModel(ClauseModel):
    """The whole filter: this model's own parameters are the first clause; ``more`` holds the clauses
    ANDed with it. ``to_rule()`` is a ``FilterRule`` while ``more`` is empty (exactly as before there
    were clauses), a ``CompoundRule`` otherwise."""

    more = param.List(
        default=[],
        item_type=ClauseModel,
        doc="Further clauses; a sample is kept only when every clause keeps it (AND).",
    )
    selected_ids = param.List(
        default=[],
        item_type=str,
        doc="A selection ANDed into the filter: only these samples are kept (an ids clause, last); empty: none.",
    )

    def __init__(self, columns: Sequence[str] | None = None, **params):
        super().__init__(columns, **params)
        self._watched: dict[int, tuple[ClauseModel, Any]] = {}
        #: a new clause's (or a further clause's new column's) starting threshold; set by whoever knows the scores
        self.threshold_for: Callable[[str], float] | None = None
        self.param.watch(self._attach, "more")
        self._attach()

    # ------------------------------------------------------------------ further clauses

    def add_clause(self, column: str | None = None, **params) -> ClauseModel:
        """AND a clause on ``column`` (default: the first score column no clause uses yet); ``params``
        set its rule, e.g. ``add_clause("clip_score_ref", rule="top_fraction", top_fraction=0.3)``.
        A new clause starts as "drop the lowest 0 %" (it keeps every sample until it is moved)."""
        columns = list(self.param.column.objects)
        used = {self.column, *(c.column for c in self.more)}
        column = column or next((c for c in columns if c not in used), columns[0])
        if column not in columns:
            raise FilterError(f"no score column {column!r} here; available: {', '.join(columns)}")
        params = {"rule": "quantile", "quantile": 0.0, **params}
        if "threshold" not in params and self.threshold_for is not None:
            params["threshold"] = self.threshold_for(column)
        clause = ClauseModel(columns=columns, column=column, **params)
        self.more = [*self.more, clause]
        return clause

    def remove_clause(self, clause: ClauseModel | int) -> None:
        """Drop a further clause (the object, or its index in ``more``)."""
        index = clause if isinstance(clause, int) else next(i for i, c in enumerate(self.more) if c is clause)
        self.more = [c for i, c in enumerate(self.more) if i != index]

    def _attach(self, event=None) -> None:
        """Watch the clauses now in ``more`` (and stop watching removed ones)."""
        current = {id(c): c for c in self.more}
        for key in [k for k in self._watched if k not in current]:
            clause, watcher = self._watched.pop(key)
            clause.param.unwatch(watcher)
        for key, clause in current.items():
            if key not in self._watched:
                self._watched[key] = (clause, clause.param.watch(self._clause_edited, list(RULE_PARAMS)))

    def _clause_edited(self, *events: param.parameterized.Event) -> None:
        clause, changed = events[0].obj, {event.name for event in events}
        if "column" in changed and "threshold" not in changed and clause.rule == "threshold" and self.threshold_for:
            # the old column's threshold means nothing on the new one; this update comes back here
            clause.param.update(threshold=self.threshold_for(clause.column), class_overrides={})
            return
        self.param.trigger("more")

    # ------------------------------------------------------------------ rule

    def to_rule(self) -> Rule:
        """The rule these parameters describe (what exports and specs record); a selection ANDed in is its last
        clause (``filters.rules.selection``)."""
        clauses = [self.clause(), *(c.clause() for c in self.more)]
        if self.selected_ids:
            clauses.append(selection(self.selected_ids))
        return all_of(clauses)

    def set_rule(self, rule: Rule) -> None:
        """Take on ``rule`` (one clause or an AND) in one update; parameters it does not use keep their values."""
        rule.validate()
        chosen = [c for c in rule.clauses if c.kind == IDS]
        first, *others = [c for c in rule.clauses if c.kind != IDS]
        if len(chosen) > 1:
            raise FilterError("a filter holds at most one selection (ids clause)")
        columns = list(self.param.column.objects)
        more = []
        for clause in others:
            model = ClauseModel(columns=columns)
            model.param.update(**model.clause_updates(clause))
            more.append(model)
        ids = list(chosen[0].ids) if chosen else []
        self.param.update(**self.clause_updates(first), more=more, selected_ids=ids)

    # ------------------------------------------------------------------ spec

    def to_spec(self, run_meta: dict[str, Any], result: FilterResult, export_format: str | None) -> dict[str, Any]:
        """The filter spec of this rule (``filters.spec.build_spec``); ``result`` is the rule applied to the run."""
        return build_spec(run_meta, self.to_rule(), result, export_format)

    def set_from_spec(self, spec: dict[str, Any]) -> None:
        """Take on the rule of a saved spec: its values checked and its hash verified (``SpecError``, a
        ``FilterError``, names an edit); whose run it is, the caller checks (``filters.spec.rule_from_spec``)."""
        self.set_rule(rule_in_spec(spec))

    @classmethod
    def from_spec(cls, spec: dict[str, Any], columns: Sequence[str] | None = None) -> FilterModel:
        """A model holding the rule of ``spec`` (verified as in ``set_from_spec``); ``columns``: the run's
        score columns (default: the spec's)."""
        rule = rule_in_spec(spec)
        model = cls(
            columns=list(columns)
            if columns is not None
            else list(dict.fromkeys(c.column for c in rule.clauses if c.kind != IDS))
        )
        model.set_rule(rule)
        return model
