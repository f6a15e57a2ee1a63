"""Filter rules → keep mask → keep-list files plus a reproducible filter spec.

One code path for the CLI (``mimic-explorer export``) and the app ("Download keep-list", "Save to
run"). A ``FilterRule`` is one clause on one column (threshold, quantile, top fraction, keep-count or
the run's ensemble filter); a ``CompoundRule`` is an AND of clauses on several columns, each resolved
on the whole pool on its own and then intersected — DataComp's "CLIP-score top 30 % minus the mimic
bottom 15 %" is ``all_of([FilterRule("top_fraction", 0.3, "clip_score_ref"), FilterRule("quantile",
0.15)])``. Either is resolved against a run's samples into concrete thresholds and a keep mask; the
spec written beside every export records the rule (every clause), the resolved thresholds, the counts
overall and per class, and the run's identity, and carries its own hash. Re-applying a spec to a
different run or data is refused. pandas/numpy only. See docs/ARCHITECTURE.md.

Spec forms: a single clause is written as ``{"spec_version": 1, "rule": {...}, "resolved_thresholds":
{...}}`` — the form every earlier spec has, so those keep loading and a single rule hashes as before;
an AND is ``{"spec_version": 2, "combine": "and", "rules": [{...}, ...], "resolved_thresholds": [{...},
...], "kept_by_clause": [n, ...]}``, one entry per clause in order.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import pandas as pd

RULES = ("ensemble", "threshold", "quantile", "keep_count", "top_fraction")
FORMATS = ("csv", "json", "parquet", "npy", "uids")
SPEC_VERSION = 1  # a single clause
COMPOUND_SPEC_VERSION = 2  # an AND of clauses
#: The label of every sample of a pool without classes (image-text pairs), as samples.parquet writes it.
NO_CLASS = -1
#: A score column whose own Stage-2 split is not the run's ``keep``: the ensemble rule on it uses this.
OWN_KEEP = {"combined_score": "combined_keep"}


def keep_column(column: str) -> str:
    """The keep column the ensemble rule on ``column`` reads: ``combined_keep`` (the GMM split of the
    combined score) for ``combined_score``, the run's Stage-2 vote ``keep`` for every other column."""
    return OWN_KEEP.get(column, "keep")


class FilterError(ValueError):
    """A filter rule or export request that cannot be carried out; the message names the cause."""


def top_count(fraction: float, n: int) -> int:
    """How many samples "the top ``fraction``" of ``n`` is: ⌊fraction·n⌋, read so that 0.29·100 is 29
    (the product is rounded to 6 decimals first: floating point must not cost a sample)."""
    return int(math.floor(round(fraction * n, 6)))


@dataclass
class FilterRule:
    """One clause. ``value``: threshold (keep score ≥ value), quantile q (keep score ≥ the q-quantile,
    i.e. drop about the lowest q fraction), top fraction f (keep the ⌊f·n⌋ highest finite scores, ties
    at the cut kept) or keep-count n (the n highest scores). ``per_class`` resolves quantile / top
    fraction / keep-count within each class (keep-count split in proportion to class sizes).
    ``class_overrides`` maps a class index to its own threshold (threshold rule only)."""

    kind: str = "threshold"
    value: float | None = None
    column: str = "mimic_score"
    per_class: bool = False
    class_overrides: dict[int, float] = field(default_factory=dict)

    def validate(self) -> None:
        if self.kind not in RULES:
            raise FilterError(f"unknown rule {self.kind!r}; choose one of {', '.join(RULES)}")
        if self.kind == "ensemble":
            if self.per_class or self.class_overrides:
                raise FilterError("the ensemble filter is fixed per sample; --per-class does not apply to it")
            return
        if self.value is None:
            raise FilterError(f"the {self.kind} rule needs a value")
        value = float(self.value)
        if math.isnan(value):
            raise FilterError(f"the {self.kind} value is NaN")
        if self.kind in ("quantile", "top_fraction") and not 0.0 <= value <= 1.0:
            raise FilterError(f"{self.kind.replace('_', ' ')} must be in [0, 1], got {value}")
        if self.kind == "keep_count" and (value < 0 or value != int(value)):
            raise FilterError(f"keep-count must be a whole number ≥ 0, got {value}")
        if self.kind == "threshold" and self.per_class and not self.class_overrides:
            raise FilterError("--per-class applies to --quantile, --top-fraction and --keep-count (a threshold is already one value for all classes)")
        if self.class_overrides and self.kind != "threshold":
            raise FilterError("per-class threshold overrides apply to the threshold rule only")

    @property
    def clauses(self) -> list["FilterRule"]:
        return [self]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class_overrides"] = {str(k): float(v) for k, v in self.class_overrides.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FilterRule":
        overrides = {int(k): float(v) for k, v in (data.get("class_overrides") or {}).items()}
        return cls(data["kind"], data.get("value"), data.get("column", "mimic_score"), bool(data.get("per_class")), overrides)


@dataclass
class CompoundRule:
    """Keep a sample only when every clause keeps it (AND). Each clause is resolved on the whole pool
    on its own (a top 30 % is 30 % of the pool, not of what the other clauses left), then the keep
    masks are intersected. Build one with ``all_of``, which returns a lone clause as itself."""

    clauses: list[FilterRule]

    def validate(self) -> None:
        if len(self.clauses) < 2:
            raise FilterError("a compound filter needs at least two clauses (one clause is a FilterRule)")
        for clause in self.clauses:
            if not isinstance(clause, FilterRule):
                raise FilterError(f"a compound filter's clauses are FilterRules, got {type(clause).__name__}")
            clause.validate()

    @property
    def column(self) -> str:
        """The first clause's column (the score a keep-list is sorted by)."""
        return self.clauses[0].column

    @property
    def kind(self) -> str:
        return "all_of"

    def to_dict(self) -> dict[str, Any]:
        return {"combine": "and", "rules": [clause.to_dict() for clause in self.clauses]}


Rule = Union[FilterRule, CompoundRule]


def all_of(clauses: Sequence[FilterRule]) -> Rule:
    """The AND of ``clauses``: the clause itself when there is one, else a ``CompoundRule``."""
    clauses = list(clauses)
    if not clauses:
        raise FilterError("a filter needs at least one rule")
    return clauses[0] if len(clauses) == 1 else CompoundRule(clauses)


_PHRASES = {"threshold": "≥ {:.4g}", "quantile": "drop the lowest {:.1%}", "top_fraction": "top {:.1%}",
            "keep_count": "top {:.0f}"}


def describe(rule: Rule) -> str:
    """A rule in words, e.g. ``clip_score_ref top 30.0 % AND mimic_score drop the lowest 15.0 %``."""
    parts = []
    for clause in rule.clauses:
        if clause.kind == "ensemble":
            parts.append(f"the run's ensemble filter ({keep_column(clause.column)})")
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
    keep: np.ndarray  # bool, samples.parquet order
    thresholds: dict[str, float | None]  # "all" or class index (as str) -> resolved threshold (a compound: {})
    kept: int
    total: int
    kept_per_class: dict[str, int]
    total_per_class: dict[str, int]
    clauses: list["FilterResult"] = field(default_factory=list, repr=False)  # a compound's clauses, each alone

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
        raise FilterError(f"per-class {rule.kind.replace('_', ' ')} needs class labels, and this pool has none "
                          "(image-text pairs): drop --per-class / ':per-class'")


def _scores(samples: pd.DataFrame, column: str) -> np.ndarray:
    if column not in samples.columns:
        raise FilterError(f"the run has no column {column!r}; available: {', '.join(map(str, samples.columns))}")
    return samples[column].to_numpy(dtype=np.float64)


def _top_count(scores: np.ndarray, count: int) -> tuple[np.ndarray, float | None]:
    keep = np.zeros(len(scores), dtype=bool)
    count = min(int(count), len(scores))
    if count <= 0:
        return keep, None
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    keep[order[:count]] = True
    return keep, float(scores[order[count - 1]])


def _proportional_counts(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` over groups in proportion to ``sizes`` (largest remainder, deterministic)."""
    exact = sizes * (total / max(sizes.sum(), 1))
    counts = np.floor(exact).astype(int)
    remainder = total - counts.sum()
    for i in np.argsort(-(exact - counts), kind="stable")[:remainder]:
        counts[i] += 1
    return np.minimum(counts, sizes)


def apply_rule(samples: pd.DataFrame, rule: Rule) -> FilterResult:
    """Resolve ``rule`` (one clause or an AND of clauses) on a run's samples into a keep mask and
    concrete thresholds."""
    rule.validate()
    labels = class_labels(samples)
    if isinstance(rule, CompoundRule):
        parts = [apply_rule(samples, clause) for clause in rule.clauses]
        keep = np.logical_and.reduce([part.keep for part in parts])
        return _result(keep, labels, {}, parts)
    refuse_per_class_without_classes(rule, has_classes(samples))
    n = len(samples)
    thresholds: dict[str, float | None] = {}
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
            keep, thresholds["all"] = _resolve_one(scores, rule.kind, value, n)
        else:
            keep = np.zeros(n, dtype=bool)
            classes = np.unique(labels)
            if rule.kind == "keep_count":
                sizes = np.array([(labels == c).sum() for c in classes])
                per_class_counts = dict(zip(classes.tolist(), _proportional_counts(sizes, min(int(value), n)).tolist()))
            for cls in classes.tolist():
                members = np.flatnonzero(labels == cls)
                target = per_class_counts[cls] if rule.kind == "keep_count" else value
                sub_keep, thresholds[str(cls)] = _resolve_one(scores[members], rule.kind, target, len(members))
                keep[members] = sub_keep
    return _result(keep, labels, thresholds)


def _result(keep: np.ndarray, labels: np.ndarray, thresholds: dict[str, float | None],
            clauses: list[FilterResult] | None = None) -> FilterResult:
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
    drop = int(np.floor(value * n)) if kind == "quantile" else n - top_count(value, n)
    if n == 0 or drop >= n:
        return None
    return float(sorted_finite[drop])


def _resolve_one(scores: np.ndarray, kind: str, value: float, n: int) -> tuple[np.ndarray, float | None]:
    if kind in ("quantile", "top_fraction"):
        finite = scores[np.isfinite(scores)]
        n_finite = len(finite)
        drop = int(np.floor(value * n_finite)) if kind == "quantile" else n_finite - top_count(value, n_finite)
        if drop >= n_finite:
            return np.zeros(n, dtype=bool), None
        cut = float(np.partition(finite, drop)[drop])
        return scores >= cut, cut
    return _top_count(scores, int(value))


# ---------------------------------------------------------------------------------------- spec


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def build_spec(run_meta: dict[str, Any], rule: Rule, result: FilterResult, export_format: str | None) -> dict[str, Any]:
    """The reproducible filter spec: rule (every clause), resolved thresholds, counts, run identity, own hash."""
    fingerprints = run_meta.get("fingerprints") or {}
    if isinstance(rule, CompoundRule):
        described: dict[str, Any] = {
            "spec_version": COMPOUND_SPEC_VERSION, "combine": "and", "rules": [c.to_dict() for c in rule.clauses],
            "resolved_thresholds": [part.thresholds for part in result.clauses],
            "kept_by_clause": [part.kept for part in result.clauses],
        }
    else:
        described = {"spec_version": SPEC_VERSION, "rule": rule.to_dict(), "resolved_thresholds": result.thresholds}
    body = {
        **described,
        "kept": result.kept,
        "total": result.total,
        "kept_per_class": result.kept_per_class,
        "total_per_class": result.total_per_class,
        "run_id": run_meta.get("run_id"),
        "data_fingerprint": fingerprints.get("data"),
        "versions": run_meta.get("versions", {}),
        "format": export_format,
        "keep_mask_sha256": hashlib.sha256(np.packbits(result.keep).tobytes()).hexdigest(),
    }
    spec = dict(body)
    spec["spec_hash"] = hashlib.sha256(_canonical(body).encode()).hexdigest()[:16]
    spec["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return spec


def rule_in_spec(spec: Any) -> Rule:
    """The rule a spec records (one clause, or the AND of its ``rules``), validated; ``FilterError``
    naming the cause for anything that is not a spec this version can read."""
    if not isinstance(spec, dict) or not (isinstance(spec.get("rule"), dict) or isinstance(spec.get("rules"), list)):
        raise FilterError("not a filter spec: it has no 'rule'")
    version = spec.get("spec_version", SPEC_VERSION)
    if isinstance(version, int) and version > COMPOUND_SPEC_VERSION:
        raise FilterError(f"the spec was written by a newer mimic_explorer (spec version {version}; this one reads "
                          f"≤ {COMPOUND_SPEC_VERSION}); upgrade the package")
    try:
        if "rules" in spec:
            if spec.get("combine", "and") != "and":
                raise FilterError(f"the spec combines its rules with {spec['combine']!r}; only 'and' is known")
            rule = all_of([FilterRule.from_dict(data) for data in spec["rules"]])
        else:
            rule = FilterRule.from_dict(spec["rule"])
    except FilterError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FilterError(f"the spec's rule is malformed: {exc!r}") from None
    rule.validate()
    return rule


def rule_from_spec(spec: dict[str, Any], run_meta: dict[str, Any]) -> Rule:
    """The rule of a saved spec, refusing a spec that was made on another run or other data."""
    if not isinstance(spec, dict) or ("rule" not in spec and "rules" not in spec):
        raise FilterError("not a filter spec: it has no 'rule'")
    fingerprints = run_meta.get("fingerprints") or {}
    if spec.get("run_id") != run_meta.get("run_id"):
        raise FilterError(f"the spec was made on run {spec.get('run_id')!r}, not on this run ({run_meta.get('run_id')!r})")
    if spec.get("data_fingerprint") != fingerprints.get("data"):
        raise FilterError("the spec's data fingerprint differs from this run's data: refusing to re-apply it")
    return rule_in_spec(spec)


# ---------------------------------------------------------------------------------------- export


def keep_list(samples: pd.DataFrame, result: FilterResult, column: str) -> pd.DataFrame:
    """The kept rows: sample_id, source, label, score, keep (sorted by ``column``, highest first; a
    compound filter's keep-list is sorted by its first clause's column)."""
    score = samples[column] if column in samples.columns else samples.get("mimic_score")
    frame = pd.DataFrame(
        {
            "sample_id": samples["sample_id"].astype(str),
            "source": samples["source"] if "source" in samples.columns else "",
            "label": samples["label"] if "label" in samples.columns else -1,
            "score": score.astype(np.float64) if score is not None else np.nan,
            "keep": result.keep,
        }
    )
    return frame[frame["keep"]].sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


UID_DTYPE = np.dtype([("f0", "<u8"), ("f1", "<u8")])


def _examples(values: pd.Series, limit: int = 3) -> str:
    return ", ".join(repr(v) for v in values.head(limit).tolist())


def datacomp_uids(pool_ids: Sequence[str] | np.ndarray, keep: np.ndarray) -> np.ndarray:
    """DataComp's subset format: the kept samples' 128-bit hex uids as a sorted structured array of
    dtype ``[('f0', '<u8'), ('f1', '<u8')]`` (high and low 64 bits), one row per kept pair — what
    DataComp's ``--subset_file`` reads with ``np.load``. Every id of the pool must be a 32-hex-digit
    uid and no uid may occur twice (a subset names each pair once); otherwise ``FilterError`` names
    examples."""
    lowered = check_uids(pool_ids)
    kept = lowered[np.asarray(keep, dtype=bool)]
    halves = np.frombuffer(bytes.fromhex("".join(kept.tolist())), dtype=">u8").reshape(-1, 2)
    pairs = np.empty(len(halves), dtype=UID_DTYPE)
    pairs["f0"], pairs["f1"] = halves[:, 0], halves[:, 1]
    pairs.sort(order=["f0", "f1"])
    return pairs


def check_uids(pool_ids: Sequence[str] | np.ndarray) -> pd.Series:
    """The pool's ids, lower-cased, when every one is a distinct 32-hex-digit uid (what ``--format uids``
    needs); ``FilterError`` naming the first offending ids otherwise."""
    ids = pd.Series(np.asarray(pool_ids), dtype=object).astype(str)
    bad = ~ids.str.fullmatch(r"[0-9a-fA-F]{32}")
    if bad.any():
        raise FilterError(f"{int(bad.sum())} of {len(ids)} sample ids are not 32-hex-digit (128-bit) uids, e.g. "
                          f"{_examples(ids[bad])}; --format uids needs DataComp uids (use csv, json, parquet or npy)")
    lowered = ids.str.lower()
    repeated = lowered[lowered.duplicated(keep=False)]
    if len(repeated):
        raise FilterError(f"{repeated.nunique()} uid(s) occur more than once in the pool, e.g. "
                          f"{_examples(pd.Series(repeated.unique()))}: a DataComp subset names each pair once")
    return lowered


def render_export(samples: pd.DataFrame, result: FilterResult, column: str, export_format: str) -> bytes:
    """The bytes of a keep-list in one of FORMATS (npy: boolean mask in samples.parquet order;
    uids: DataComp-style sorted 128-bit uid array of the kept samples)."""
    if export_format not in FORMATS:
        raise FilterError(f"unknown format {export_format!r}; choose one of {', '.join(FORMATS)}")
    buffer = io.BytesIO()
    if export_format == "npy":
        np.save(buffer, result.keep)
        return buffer.getvalue()
    if export_format == "uids":
        np.save(buffer, datacomp_uids(samples["sample_id"].to_numpy(), result.keep))
        return buffer.getvalue()
    frame = keep_list(samples, result, column)
    if export_format == "csv":
        return frame.to_csv(index=False).encode()
    if export_format == "json":
        return frame.to_json(orient="records", indent=1).encode()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def export(
    samples: pd.DataFrame, run_meta: dict[str, Any], rule: Rule, export_format: str, out: str | Path
) -> tuple[FilterResult, dict[str, Any], Path, Path]:
    """Write the keep-list to ``out`` and the spec to ``out.spec.json``, both atomically."""
    from mimic_explorer.store.atomic import write_bytes, write_json

    out = Path(out).expanduser()
    if not out.parent.is_dir():
        raise FilterError(f"cannot write {out}: folder {out.parent} does not exist")
    result = apply_rule(samples, rule)
    data = render_export(samples, result, rule.column, export_format)
    spec = build_spec(run_meta, rule, result, export_format)
    spec_path = out.with_name(out.name + ".spec.json")
    write_bytes(out, data)
    write_json(spec_path, spec)
    return result, spec, out, spec_path


# ---------------------------------------------------------------------------------------- saved with the run


def save_to_run(
    run_dir: str | Path, samples: pd.DataFrame, run_meta: dict[str, Any], rule: Rule, export_format: str = "csv"
) -> tuple[FilterResult, dict[str, Any], Path, Path]:
    """``export`` into the run's own ``filters/`` folder (the app's "Save to run"), named by the rule's
    hash so saving the same rule twice replaces the earlier files instead of piling up copies."""
    from mimic_explorer.store.layout import RunLayout

    folder = RunLayout(run_dir).filters_dir
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise FilterError(f"cannot save into {folder}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(_canonical(rule.to_dict()).encode()).hexdigest()[:12]
    return export(samples, run_meta, rule, export_format, folder / f"keep-list-{digest}.{export_format}")


def saved_specs(run_dir: str | Path) -> list[Path]:
    """Spec files saved with a run, newest first."""
    from mimic_explorer.store.layout import RunLayout

    folder = RunLayout(run_dir).filters_dir
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.spec.json"), key=lambda p: p.stat().st_mtime, reverse=True)


def latest_saved_rule(run_dir: str | Path, run_meta: dict[str, Any]) -> tuple[Rule, dict[str, Any], Path] | None:
    """The rule of the most recently saved spec of this run (None if none); ``FilterError`` when that
    spec is unreadable or belongs to another run."""
    specs = saved_specs(run_dir)
    if not specs:
        return None
    try:
        spec = json.loads(specs[0].read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FilterError(f"saved filter {specs[0].name} cannot be read: {exc}") from None
    try:
        rule = rule_from_spec(spec, run_meta)
    except FilterError as exc:
        raise FilterError(f"saved filter {specs[0].name}: {exc}") from None
    return rule, spec, specs[0]
