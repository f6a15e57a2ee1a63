"""Filter rules → keep mask: frames in, arrays out (pandas/numpy only, no files).

A ``FilterRule`` is one clause on one column (threshold, quantile, top fraction, keep-count or the
run's ensemble filter); a ``CompoundRule`` is an AND of clauses on several columns, each resolved on
the whole pool on its own and then intersected — DataComp's "CLIP-score top 30 % minus the mimic
bottom 15 %" is ``all_of([FilterRule("top_fraction", 0.3, "clip_score_ref"), FilterRule("quantile",
0.15)])``. ``apply_rule`` resolves either against a run's samples (a DataFrame, or the app's
``SampleColumns``) into concrete thresholds and a keep mask.

Rules arrive from people (the CLI, the app) and from files (specs), so ``validate`` checks every
field by type and range and names the cause in one line: a threshold of ``[1]`` or ``"abc"``, a
``per_class`` of ``"false"`` (text, which Python would read as true), an unknown kind, a rule on a
text column, more than ``MAX_CLAUSES`` clauses. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

RULES = ("ensemble", "threshold", "quantile", "keep_count", "top_fraction")
#: The clause that keeps a set of samples named by id (a selection on the map ANDed into the filter).
IDS = "ids"
#: Most ids one ids clause may name (a spec of at most ``spec.MAX_SPEC_BYTES`` holds about 400 k 32-digit uids).
MAX_IDS = 1_000_000
#: The label of every sample of a pool without classes (image-text pairs), as samples.parquet writes it.
NO_CLASS = -1
#: A score column whose own Stage-2 split is not the run's ``keep``: the ensemble rule on it uses this.
OWN_KEEP = {"combined_score": "combined_keep"}
#: Most clauses in one AND. Each clause is resolved over the whole pool and holds its own mask (n bytes
#: each: 64 clauses at 12.8 M samples are 0.8 GB), and the filters people use have two or three; a
#: spec naming thousands of rules is a broken or hostile file, not a filter.
MAX_CLAUSES = 64
#: Most per-class threshold overrides in one clause (more classes than ImageNet-21k's 21,841).
MAX_CLASS_OVERRIDES = 100_000
#: Longest column name a rule may name (column names are identifiers, not documents).
MAX_COLUMN_CHARS = 256


def keep_column(column: str) -> str:
    """The keep column the ensemble rule on ``column`` reads: ``combined_keep`` (the combined score's own
    split: the top q̂ of it, q̂ the noise model's quality estimate) for ``combined_score``, the run's Stage-2
    vote ``keep`` for every other column."""
    return OWN_KEEP.get(column, "keep")


class FilterError(ValueError):
    """A filter rule or export request that cannot be carried out; the message names the cause."""


def _fraction_count(fraction: float, n: int) -> int:
    """How many samples "the top ``fraction``" of ``n`` is: ⌊fraction·n⌋, read so that 0.29·100 is 29
    (the product is rounded to 6 decimals first: floating point must not cost a sample)."""
    return math.floor(round(fraction * n, 6))


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message names a bad value, never a
    megabyte of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def is_number(value: Any) -> bool:
    """A real number that is not a truth value (JSON ``true`` is no threshold)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _plain_number(value: Any) -> int | float:
    """``value`` as a Python int or float: what a spec hashes and JSON writes back the same way
    (a NumPy integer would be hashed as text but written as a number)."""
    return int(value) if isinstance(value, numbers.Integral) else float(value)


@dataclass
class FilterRule:
    """One clause. ``value``: threshold (keep score ≥ value), quantile q (keep score ≥ the q-quantile,
    i.e. drop about the lowest q fraction), top fraction f (keep the ⌊f·n⌋ highest finite scores, ties
    at the cut kept) or keep-count n (the n highest scores). ``per_class`` resolves quantile / top
    fraction / keep-count within each class (keep-count split in proportion to class sizes).
    ``class_overrides`` maps a class index to its own threshold (threshold rule only). The ``ids``
    clause keeps exactly the samples named in ``ids`` (``selection``; its column is ``sample_id``)."""

    kind: str = "threshold"
    value: float | None = None
    column: str = "mimic_score"
    per_class: bool = False
    class_overrides: dict[int, float] = field(default_factory=dict)
    ids: tuple[str, ...] = ()

    def validate(self) -> None:
        """Raise ``FilterError`` naming the first field whose type or range is wrong."""
        if self.kind == IDS:
            self._validate_ids()
            return
        if not isinstance(self.kind, str) or self.kind not in RULES:
            raise FilterError(f"unknown rule {shown(self.kind)}; choose one of {', '.join(RULES)} (or {IDS})")
        if not isinstance(self.column, str) or not self.column or len(self.column) > MAX_COLUMN_CHARS:
            raise FilterError(
                f"a rule's column is a column name (text of 1 to {MAX_COLUMN_CHARS} characters), "
                f"got {shown(self.column)}"
            )
        if not isinstance(self.per_class, (bool, np.bool_)):
            raise FilterError(f"per_class is true or false, got {shown(self.per_class)}")
        self._validate_overrides()
        if self.kind == "ensemble":
            if self.per_class or self.class_overrides:
                raise FilterError("the ensemble filter is fixed per sample; --per-class does not apply to it")
            return
        if self.value is None:
            raise FilterError(f"the {self.kind} rule needs a value")
        if not is_number(self.value):
            raise FilterError(f"the {self.kind.replace('_', ' ')} value must be a number, got {shown(self.value)}")
        value = float(self.value)
        if math.isnan(value):
            raise FilterError(f"the {self.kind} value is NaN")
        if self.kind in ("quantile", "top_fraction") and not 0.0 <= value <= 1.0:
            raise FilterError(f"{self.kind.replace('_', ' ')} must be in [0, 1], got {value}")
        if self.kind == "keep_count" and (not math.isfinite(value) or value < 0 or value != int(value)):
            raise FilterError(f"keep-count must be a whole number ≥ 0, got {value}")
        if self.kind == "threshold" and self.per_class and not self.class_overrides:
            raise FilterError(
                "--per-class applies to --quantile, --top-fraction and --keep-count (a threshold is already one value "
                "for all classes)"
            )
        if self.class_overrides and self.kind != "threshold":
            raise FilterError("per-class threshold overrides apply to the threshold rule only")

    def _validate_ids(self) -> None:
        ids = self.ids
        if not isinstance(ids, (tuple, list)) or not all(isinstance(i, str) for i in ids):
            raise FilterError(f"an ids clause names its samples as a list of ids (text), got {shown(ids)}")
        if not ids:
            raise FilterError("an ids clause needs at least one sample id (an empty selection keeps nothing)")
        if len(ids) > MAX_IDS:
            raise FilterError(f"{len(ids):,} ids in one clause; at most {MAX_IDS:,} are accepted")
        if self.value is not None or self.per_class or self.class_overrides:
            raise FilterError("an ids clause has no value, per-class setting or overrides")

    @property
    def ids_sha256(self) -> str:
        """sha256 of the clause's ids (sorted, one per line): how a spec names a selection."""
        return ids_sha256(self.ids)

    def _validate_overrides(self) -> None:
        overrides = self.class_overrides
        if not isinstance(overrides, dict):
            raise FilterError(f"class_overrides maps a class to its threshold, got {shown(overrides)}")
        if len(overrides) > MAX_CLASS_OVERRIDES:
            raise FilterError(f"{len(overrides)} class overrides; at most {MAX_CLASS_OVERRIDES:,} are read")
        for cls, value in overrides.items():
            if not isinstance(cls, numbers.Integral) or isinstance(cls, (bool, np.bool_)):
                raise FilterError(f"a class override's class is a class index, got {shown(cls)}")
            if not is_number(value) or math.isnan(float(value)):
                raise FilterError(f"the override of class {cls} must be a number, got {shown(value)}")

    @property
    def clauses(self) -> list[FilterRule]:
        """One clause, itself: rules and ANDs of rules are walked the same way (``rule.clauses``)."""
        return [self]

    def to_dict(self) -> dict[str, Any]:
        """The clause as JSON values (what a spec records and hashes); an ids clause adds its sorted ids and
        their sha256 (the other kinds are written as they always were)."""
        if self.kind == IDS:
            ids = sorted(self.ids)
            return {"kind": IDS, "column": "sample_id", "ids": ids, "ids_sha256": ids_sha256(ids)}
        return {
            "kind": self.kind,
            "value": None if self.value is None else _plain_number(self.value),
            "column": self.column,
            "per_class": bool(self.per_class),
            "class_overrides": {str(k): float(v) for k, v in self.class_overrides.items()},
        }

    @classmethod
    def from_dict(cls, data: Any) -> FilterRule:
        """A clause from its ``to_dict`` form, read strictly: ``FilterError`` naming a missing or
        unknown field or a value of the wrong type (``per_class: "false"`` is refused, not read as
        true; an override's class must be an index written as text, as JSON keys are)."""
        if not isinstance(data, dict):
            raise FilterError(f"a rule is an object with kind, value and column, got {shown(data)}")
        if data.get("kind") == IDS:
            return cls._ids_from_dict(data)
        unknown = sorted(set(data) - {"kind", "value", "column", "per_class", "class_overrides"})
        if unknown:
            raise FilterError(
                f"unknown field {shown(unknown[0])} in a rule (fields: kind, value, column, per_class, class_overrides)"
            )
        if "kind" not in data:
            raise FilterError("a rule has no 'kind'")
        overrides = data.get("class_overrides") or {}
        if not isinstance(overrides, dict):
            raise FilterError(f"class_overrides maps a class to its threshold, got {shown(overrides)}")
        if len(overrides) > MAX_CLASS_OVERRIDES:
            raise FilterError(f"{len(overrides)} class overrides; at most {MAX_CLASS_OVERRIDES:,} are read")
        parsed: dict[int, Any] = {}
        for key, value in overrides.items():
            text = str(key).strip()
            if not text.lstrip("-").isdigit() or len(text) > 12:
                raise FilterError(f"a class override's class is a class index, got {shown(key)}")
            parsed[int(text)] = value
        per_class = data.get("per_class", False)
        rule = cls(
            data["kind"],
            data.get("value"),
            data.get("column", "mimic_score"),
            False if per_class is None else per_class,
            parsed,
        )
        rule.validate()
        rule.class_overrides = {k: float(v) for k, v in parsed.items()}
        return rule

    @classmethod
    def _ids_from_dict(cls, data: dict) -> FilterRule:
        unknown = sorted(set(data) - {"kind", "column", "ids", "ids_sha256"})
        if unknown:
            raise FilterError(
                f"unknown field {shown(unknown[0])} in an ids rule (fields: kind, column, ids, ids_sha256)"
            )
        ids = data.get("ids")
        if not isinstance(ids, list):
            raise FilterError(f"an ids rule's ids are a list of sample ids, got {shown(ids)}")
        rule = cls(IDS, None, "sample_id", False, {}, tuple(ids))
        rule.validate()
        if "ids_sha256" in data and data["ids_sha256"] != ids_sha256(ids):
            raise FilterError("the ids of an ids rule do not hash to its ids_sha256: the list was edited")
        return rule


def ids_sha256(ids) -> str:
    """sha256 of sample ids, sorted, one per line."""
    return hashlib.sha256("".join(f"{i}\n" for i in sorted(ids)).encode()).hexdigest()


def selection(ids) -> FilterRule:
    """The clause that keeps exactly the samples ``ids`` (duplicates dropped): AND it into a filter."""
    return FilterRule(IDS, None, "sample_id", False, {}, tuple(sorted({str(i) for i in ids})))


@dataclass
class CompoundRule:
    """Keep a sample only when every clause keeps it (AND). Each clause is resolved on the whole pool
    on its own (a top 30 % is 30 % of the pool, not of what the other clauses left), then the keep
    masks are intersected. Build one with ``all_of``, which returns a lone clause as itself."""

    clauses: list[FilterRule]

    def validate(self) -> None:
        """Raise ``FilterError`` for too few or too many clauses, or naming the first bad clause."""
        if len(self.clauses) < 2:
            raise FilterError("a compound filter needs at least two clauses (one clause is a FilterRule)")
        refuse_too_many_clauses(len(self.clauses))
        for number, clause in enumerate(self.clauses, 1):
            if not isinstance(clause, FilterRule):
                raise FilterError(f"a compound filter's clauses are FilterRules, got {type(clause).__name__}")
            try:
                clause.validate()
            except FilterError as exc:
                raise FilterError(f"rule {number}: {exc}") from None

    @property
    def column(self) -> str:
        """The first clause's column (the score a keep-list is sorted by)."""
        return self.clauses[0].column

    @property
    def kind(self) -> str:
        """``all_of``: what a spec records as the kind of an AND."""
        return "all_of"

    def to_dict(self) -> dict[str, Any]:
        """The AND as JSON values: ``{"combine": "and", "rules": [...]}`` (what a spec records and hashes)."""
        return {"combine": "and", "rules": [clause.to_dict() for clause in self.clauses]}


Rule = FilterRule | CompoundRule


def refuse_too_many_clauses(count: int) -> None:
    """``FilterError`` when a filter has more than ``MAX_CLAUSES`` clauses, saying why there is a cap."""
    if count > MAX_CLAUSES:
        raise FilterError(
            f"{count} rules in one filter; at most {MAX_CLAUSES} are accepted (each rule is "
            "resolved over the whole pool with its own mask, and real filters have a few)"
        )


def all_of(clauses: Sequence[FilterRule]) -> Rule:
    """The AND of ``clauses``: the clause itself when there is one, else a ``CompoundRule``.

    Parameters
    ----------
    clauses
        One to ``MAX_CLAUSES`` clauses.

    Returns
    -------
    Rule
        The lone clause, or a ``CompoundRule`` of them all (each resolved on the whole pool on its own).

    Raises
    ------
    FilterError
        No clause, or more than ``MAX_CLAUSES`` (said with the reason for the cap).
    """
    clauses = list(clauses)
    if not clauses:
        raise FilterError("a filter needs at least one rule")
    refuse_too_many_clauses(len(clauses))
    return clauses[0] if len(clauses) == 1 else CompoundRule(clauses)


_PHRASES = {
    "threshold": "≥ {:.4g}",
    "quantile": "drop the lowest {:.1%}",
    "top_fraction": "top {:.1%}",
    "keep_count": "top {:.0f}",
}


def describe(rule: Rule) -> str:
    """A rule in words, e.g. ``clip_score_ref top 30.0 % AND mimic_score drop the lowest 15.0 %``.

    Parameters
    ----------
    rule
        One clause or an AND of clauses.

    Returns
    -------
    str
        The rule as the CLI, the app and the spec's readers show it.
    """
    parts = []
    for clause in rule.clauses:
        if clause.kind == "ensemble":
            parts.append(f"the run's ensemble filter ({keep_column(clause.column)})")
            continue
        if clause.kind == IDS:
            parts.append(f"the {len(clause.ids):,} selected samples (ids {clause.ids_sha256[:12]})")
            continue
        text = f"{clause.column} {_PHRASES[clause.kind].format(float(clause.value))}"
        if clause.per_class:
            text += " per class"
        if clause.class_overrides:
            text += f" ({len(clause.class_overrides)} class override(s))"
        parts.append(text)
    return " AND ".join(parts)


@dataclass
class FilterResult:
    """A rule resolved on a run: the keep mask and what a spec records about it."""

    keep: np.ndarray  # bool, samples.parquet order
    thresholds: dict[str, float | None]  # "all" or class index (as str) -> resolved threshold (a compound: {})
    kept: int
    total: int
    kept_per_class: dict[str, int]
    total_per_class: dict[str, int]
    clauses: list[FilterResult] = field(default_factory=list, repr=False)  # a compound's clauses, each alone
    #: each sample's label after review decisions (relabels applied), when any decision relabels (``filters.reviews``)
    label_reviewed: np.ndarray | None = field(default=None, repr=False)

    @property
    def message(self) -> str | None:
        """A note when the rule keeps nothing or everything (allowed, but worth saying)."""
        if self.kept == 0:
            return "this filter keeps no samples"
        if self.kept == self.total:
            return "this filter keeps every sample"
        return None


def class_labels(samples: pd.DataFrame) -> np.ndarray:
    """Each sample's class; ``NO_CLASS`` for all when the pool has none (image-text pairs)."""
    if "label" in samples.columns:
        return samples["label"].to_numpy()
    return np.full(len(samples), NO_CLASS, dtype=np.int64)


def has_classes(samples: pd.DataFrame) -> bool:
    """Whether the pool is labelled (a pairs pool has no ``label`` column, or -1 everywhere)."""
    return "label" in samples.columns and bool((samples["label"].to_numpy() != NO_CLASS).any())


def refuse_per_class_without_classes(rule: FilterRule, classes_present: bool) -> None:
    """A per-class rule on a pool without classes would silently be the overall rule: say so instead."""
    if rule.per_class and not classes_present:
        raise FilterError(
            f"per-class {rule.kind.replace('_', ' ')} needs class labels, and this pool has none "
            "(image-text pairs): drop --per-class / ':per-class'"
        )


def numeric_columns(samples: pd.DataFrame) -> list[str]:
    """The columns a rule can cut (numbers or truth values), in the table's order."""
    return [str(name) for name, dtype in samples.dtypes.items() if pd.api.types.is_numeric_dtype(dtype)]


def _scores(samples: pd.DataFrame, column: str) -> np.ndarray:
    if column not in samples.columns:
        raise FilterError(f"the run has no column {column!r}; available: {', '.join(map(str, samples.columns))}")
    dtype = samples.dtypes[column]
    if not pd.api.types.is_numeric_dtype(dtype):
        held = "text" if pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype) else f"{dtype}"
        raise FilterError(
            f"column {column!r} holds {held} values, not scores; a rule cuts a numeric column: "
            f"{', '.join(numeric_columns(samples))}"
        )
    try:
        return samples[column].to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FilterError(f"column {column!r} cannot be read as scores ({exc})") from None


def _top_count(scores: np.ndarray, count: int) -> tuple[np.ndarray, float | None]:
    keep = np.zeros(len(scores), dtype=bool)
    count = min(int(count), len(scores))
    if count <= 0:
        return keep, None
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    keep[order[:count]] = True
    return keep, float(scores[order[count - 1]])


def proportional_counts(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder, deterministic): how a
    per-class keep-count is shared out, here and in the app's live counts."""
    exact = sizes * (total / max(sizes.sum(), 1))
    counts = np.floor(exact).astype(int)
    remainder = total - counts.sum()
    for i in np.argsort(-(exact - counts), kind="stable")[:remainder]:
        counts[i] += 1
    return np.minimum(counts, sizes)


def apply_rule(samples: pd.DataFrame, rule: Rule) -> FilterResult:
    """Resolve ``rule`` on a run's samples into a keep mask and concrete thresholds.

    Parameters
    ----------
    samples
        ``samples.parquet`` as a DataFrame (or the app's ``SampleColumns``): the rule's columns, and
        ``label`` for per-class rules.
    rule
        One clause or an AND of clauses; validated first.

    Returns
    -------
    FilterResult
        The keep mask in row order, resolved thresholds, counts overall and per class (a compound's
        clauses each resolved alone in ``clauses``).

    Raises
    ------
    FilterError
        A bad rule (its first wrong field) or a column the samples lack.
    """
    rule.validate()
    labels = class_labels(samples)
    if isinstance(rule, CompoundRule):
        parts = [apply_rule(samples, clause) for clause in rule.clauses]
        keep = np.logical_and.reduce([part.keep for part in parts])
        return _result(keep, labels, {}, parts)
    n = len(samples)
    thresholds: dict[str, float | None] = {}
    if rule.kind == IDS:
        return _result(ids_mask(samples, rule), labels, thresholds)
    refuse_per_class_without_classes(rule, has_classes(samples))
    if rule.kind == "ensemble":
        own = keep_column(rule.column)
        if own not in samples.columns:
            raise FilterError(f"the run has no ensemble filter for {rule.column} (column {own!r})")
        keep = samples[own].to_numpy(dtype=bool)
    else:
        scores = _scores(samples, rule.column)
        value = float(rule.value)
        if rule.kind == "threshold":
            keep = scores >= value
            thresholds["all"] = value
            for cls, cls_value in rule.class_overrides.items():
                members = labels == cls
                keep[members] = scores[members] >= cls_value
                thresholds[str(cls)] = float(cls_value)
        elif not rule.per_class:
            stored = _stored_finite(samples, rule.column) if rule.kind != "keep_count" else None
            if stored is not None:  # the run's index holds the column's order: the cut is one read, not a partition
                cut = fraction_cut(stored, rule.kind, value)
                keep = scores >= cut if cut is not None else np.zeros(n, dtype=bool)
                thresholds["all"] = cut
            else:
                keep, thresholds["all"] = _resolve_one(scores, rule.kind, value, n)
        else:
            keep = np.zeros(n, dtype=bool)
            classes = np.unique(labels)
            if rule.kind == "keep_count":
                sizes = np.array([(labels == c).sum() for c in classes])
                per_class_counts = dict(
                    zip(classes.tolist(), proportional_counts(sizes, min(int(value), n)).tolist(), strict=True)
                )
            for cls in classes.tolist():
                members = np.flatnonzero(labels == cls)
                target = per_class_counts[cls] if rule.kind == "keep_count" else value
                sub_keep, thresholds[str(cls)] = _resolve_one(scores[members], rule.kind, target, len(members))
                keep[members] = sub_keep
    _hand_back_pages(samples)
    return _result(keep, labels, thresholds)


def _hand_back_pages(samples) -> None:
    """Hand back the pages a rule read through the run's app index (``AppIndex.release``), where
    ``samples`` come through one. Why: a rule reads whole columns, and a page read through a map stays
    in the process's resident memory until handed back (1.2 GB at 128 M samples, held through the
    export that follows)."""
    index = getattr(samples, "app_index", None)
    if index is not None:
        index.release()


def ids_mask(samples: pd.DataFrame, rule: FilterRule) -> np.ndarray:
    """The keep mask of an ids clause; ``FilterError`` when some of its ids are not in the run."""
    where = pd.Index(np.asarray(samples["sample_id"]).astype(str)).get_indexer(list(rule.ids))
    missing = np.flatnonzero(where < 0)
    if len(missing):
        examples = ", ".join(repr(rule.ids[i]) for i in missing[:3])
        raise FilterError(
            f"{len(missing)} of the selection's {len(rule.ids)} sample ids are not in this run: {examples}"
        )
    keep = np.zeros(len(samples), dtype=bool)
    keep[where] = True
    return keep


def _result(
    keep: np.ndarray, labels: np.ndarray, thresholds: dict[str, float | None], clauses: list[FilterResult] | None = None
) -> FilterResult:
    kept_per_class, total_per_class = {}, {}
    for cls in np.unique(labels).tolist():
        members = labels == cls
        kept_per_class[str(cls)] = int(keep[members].sum())
        total_per_class[str(cls)] = int(members.sum())
    return FilterResult(keep, thresholds, int(keep.sum()), len(keep), kept_per_class, total_per_class, clauses or [])


def fraction_cut(sorted_finite: np.ndarray, kind: str, value: float) -> float | None:
    """The lowest score a quantile (drop the lowest ⌊q·n⌋) or top-fraction (keep the ⌊f·n⌋ highest)
    rule keeps, from the finite scores sorted ascending; None when it keeps nothing."""
    n = len(sorted_finite)
    drop = int(np.floor(value * n)) if kind == "quantile" else n - _fraction_count(value, n)
    if n == 0 or drop >= n:
        return None
    return float(sorted_finite[drop])


def _stored_finite(samples, column: str):
    """The column's finite scores ascending as the run's app index reads them through its stored order
    (``store.ordered_values.OrderedValues``), when ``samples`` come through one; else None."""
    index = getattr(samples, "app_index", None)
    if index is None or column not in index.score_columns:
        return None
    values = index.sorted_values(column)
    valid = index.valid_count(column)
    lo = int(values[:valid].searchsorted(-np.inf, side="right"))
    return values[lo : lo + index.finite_count(column)]


def _resolve_one(scores: np.ndarray, kind: str, value: float, n: int) -> tuple[np.ndarray, float | None]:
    if kind in ("quantile", "top_fraction"):
        finite = scores[np.isfinite(scores)]
        n_finite = len(finite)
        drop = int(np.floor(value * n_finite)) if kind == "quantile" else n_finite - _fraction_count(value, n_finite)
        if drop >= n_finite:
            return np.zeros(n, dtype=bool), None
        cut = float(np.partition(finite, drop)[drop])
        return scores >= cut, cut
    return _top_count(scores, int(value))
