"""The filter as a ``param.Parameterized``: its parameters ARE the rule.

Why: the controls, the Python API (``explorer.threshold = 0.5``), saved specs and exports all speak
of one rule. Widgets are ``from_param`` views of these parameters, so nothing converts a rule into
widget values or back by hand; ``to_rule`` / ``to_spec`` / ``set_rule`` / ``from_spec`` are the only
translations, and a spec read back gives the same spec (hash included). See docs/ARCHITECTURE.md.

One ``FilterModel`` is one clause on one score column. An AND of clauses on several columns would be
a parent holding a list of ``FilterModel``s whose ``to_rule`` combines theirs; nothing here assumes
it is the only clause.
"""

from __future__ import annotations

from typing import Any, Sequence

import param

from mimic_explorer.filters import RULES, FilterError, FilterResult, FilterRule, build_spec

#: The parameters that make up a rule (in the order a rule names them).
RULE_PARAMS = ("column", "rule", "threshold", "quantile", "keep_count", "per_class", "class_overrides")


class FilterModel(param.Parameterized):
    """What to keep, as parameters. ``FilterModel(columns=[...])`` limits ``column`` to a run's scores.

    Two edits imply a rule on their own, as a person would mean them: giving a threshold (or a
    per-class override) means "by value"; switching to "by value" without giving a threshold starts
    at ``resolved_cut``, where the previous rule cut the column.
    """

    column = param.Selector(default="mimic_score", objects=["mimic_score"], doc="Score column the filter uses.")
    rule = param.Selector(default="threshold", objects=list(RULES), doc="How the keep set is chosen.")
    threshold = param.Number(default=0.0, doc="Keep samples whose score is at least this value (rule 'threshold').")
    quantile = param.Number(default=0.3, bounds=(0.0, 1.0), doc="Drop about this fraction, lowest scores first.")
    keep_count = param.Integer(default=0, bounds=(0, None), doc="Keep the N highest-scoring samples.")
    per_class = param.Boolean(default=False, doc="Quantile / keep-count within each class.")
    class_overrides = param.Dict(default={}, doc="Per-class thresholds {label: value} (rule 'threshold').")
    resolved_cut = param.Number(default=None, allow_None=True, precedence=-1,
                                doc="Where the current rule cuts the column (set by whoever counts it); not part of the rule.")

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
        elif self.rule != "threshold" and ("threshold" in changed or ("class_overrides" in changed and self.class_overrides)):
            # the given threshold replaces the old rule's cut, so "by value" must not start there
            self.param.update(rule="threshold", resolved_cut=None)

    # ------------------------------------------------------------------ rule

    def to_rule(self) -> FilterRule:
        """The ``FilterRule`` these parameters describe (what exports and specs record)."""
        if self.rule == "ensemble":
            return FilterRule("ensemble", None, self.column)
        if self.rule == "threshold":
            overrides = {int(k): float(v) for k, v in self.class_overrides.items()}
            return FilterRule("threshold", float(self.threshold), self.column, False, overrides)
        value = float(self.quantile) if self.rule == "quantile" else int(self.keep_count)
        return FilterRule(self.rule, value, self.column, bool(self.per_class))

    def set_rule(self, rule: FilterRule) -> None:
        """Take on ``rule`` in one update; parameters the rule does not use keep their values."""
        rule.validate()
        updates: dict[str, Any] = {"rule": rule.kind}
        if rule.column in self.param.column.objects:
            updates["column"] = rule.column
        elif rule.kind != "ensemble":  # the ensemble filter ignores the column
            raise FilterError(f"no score column {rule.column!r} here; available: {', '.join(self.param.column.objects)}")
        if rule.kind == "threshold":
            updates.update(threshold=float(rule.value), class_overrides=dict(rule.class_overrides))
        elif rule.kind == "quantile":
            updates.update(quantile=float(rule.value), per_class=rule.per_class)
        elif rule.kind == "keep_count":
            updates.update(keep_count=int(rule.value), per_class=rule.per_class)
        self.param.update(**updates)

    # ------------------------------------------------------------------ spec

    def to_spec(self, run_meta: dict[str, Any], result: FilterResult, export_format: str | None) -> dict[str, Any]:
        """The filter spec of this rule (``filters.build_spec``); ``result`` is the rule applied to the run."""
        return build_spec(run_meta, self.to_rule(), result, export_format)

    def set_from_spec(self, spec: dict[str, Any]) -> None:
        """Take on the rule of a saved spec (whose run the caller has checked: ``filters.rule_from_spec``)."""
        self.set_rule(_spec_rule(spec))

    @classmethod
    def from_spec(cls, spec: dict[str, Any], columns: Sequence[str] | None = None) -> "FilterModel":
        """A model holding the rule of ``spec``; ``columns``: the run's score columns (default: the spec's)."""
        rule = _spec_rule(spec)
        model = cls(columns=list(columns) if columns is not None else [rule.column])
        model.set_rule(rule)
        return model


def _spec_rule(spec: dict[str, Any]) -> FilterRule:
    if not isinstance(spec, dict) or not isinstance(spec.get("rule"), dict):
        raise FilterError("not a filter spec: it has no 'rule'")
    try:
        return FilterRule.from_dict(spec["rule"])
    except (KeyError, TypeError, ValueError) as exc:
        raise FilterError(f"the spec's rule is malformed: {exc}") from None
