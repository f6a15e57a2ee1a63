"""Threshold rules → keep mask → keep-list files plus a reproducible filter spec.

One code path for the CLI (``mimic-explorer export``) and the app ("Download keep-list", "Save to
run"): a ``FilterRule`` is resolved against a run's samples into concrete thresholds and a keep mask;
the spec written beside every export records the rule, the resolved thresholds, the counts overall and
per class, and the run's identity, and carries its own hash. Re-applying a spec to a different run or
data is refused. pandas/numpy only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RULES = ("ensemble", "threshold", "quantile", "keep_count")
FORMATS = ("csv", "json", "parquet", "npy", "uids")
SPEC_VERSION = 1


class FilterError(ValueError):
    """A filter rule or export request that cannot be carried out; the message names the cause."""


@dataclass
class FilterRule:
    """What to keep. ``value``: threshold (keep score ≥ value), quantile q (keep score ≥ the q-quantile,
    i.e. drop about the lowest q fraction), or keep-count n (the n highest scores). ``per_class`` resolves
    quantile / keep-count within each class (keep-count split in proportion to class sizes).
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
        if self.kind == "quantile" and not 0.0 <= value <= 1.0:
            raise FilterError(f"quantile must be in [0, 1], got {value}")
        if self.kind == "keep_count" and (value < 0 or value != int(value)):
            raise FilterError(f"keep-count must be a whole number ≥ 0, got {value}")
        if self.kind == "threshold" and self.per_class and not self.class_overrides:
            raise FilterError("--per-class applies to --quantile and --keep-count (a threshold is already one value for all classes)")
        if self.class_overrides and self.kind != "threshold":
            raise FilterError("per-class threshold overrides apply to the threshold rule only")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class_overrides"] = {str(k): float(v) for k, v in self.class_overrides.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FilterRule":
        overrides = {int(k): float(v) for k, v in (data.get("class_overrides") or {}).items()}
        return cls(data["kind"], data.get("value"), data.get("column", "mimic_score"), bool(data.get("per_class")), overrides)


@dataclass
class FilterResult:
    keep: np.ndarray  # bool, samples.parquet order
    thresholds: dict[str, float | None]  # "all" or class index (as str) -> resolved threshold
    kept: int
    total: int
    kept_per_class: dict[str, int]
    total_per_class: dict[str, int]

    @property
    def message(self) -> str | None:
        """A note when the rule keeps nothing or everything (allowed, but worth saying)."""
        if self.kept == 0:
            return "this filter keeps no samples"
        if self.kept == self.total:
            return "this filter keeps every sample"
        return None


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


def apply_rule(samples: pd.DataFrame, rule: FilterRule) -> FilterResult:
    """Resolve ``rule`` on a run's samples into a keep mask and concrete thresholds."""
    rule.validate()
    n = len(samples)
    labels = samples["label"].to_numpy() if "label" in samples.columns else np.zeros(n, dtype=int)
    thresholds: dict[str, float | None] = {}
    if rule.kind == "ensemble":
        if "keep" not in samples.columns:
            raise FilterError("the run has no ensemble filter (column 'keep')")
        keep = samples["keep"].to_numpy(dtype=bool)
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
    kept_per_class, total_per_class = {}, {}
    for cls in np.unique(labels).tolist():
        members = labels == cls
        kept_per_class[str(cls)] = int(keep[members].sum())
        total_per_class[str(cls)] = int(members.sum())
    return FilterResult(keep, thresholds, int(keep.sum()), n, kept_per_class, total_per_class)


def _resolve_one(scores: np.ndarray, kind: str, value: float, n: int) -> tuple[np.ndarray, float | None]:
    if kind == "quantile":
        finite = scores[np.isfinite(scores)]
        if len(finite) == 0:
            return np.zeros(n, dtype=bool), None
        drop = int(np.floor(value * len(finite)))  # the lowest floor(q·n) samples go
        if drop >= len(finite):
            return np.zeros(n, dtype=bool), None
        cut = float(np.partition(finite, drop)[drop])
        return scores >= cut, cut
    return _top_count(scores, int(value))


# ---------------------------------------------------------------------------------------- spec


def _canonical(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def build_spec(run_meta: dict[str, Any], rule: FilterRule, result: FilterResult, export_format: str | None) -> dict[str, Any]:
    """The reproducible filter spec: rule, resolved thresholds, counts, run identity, own hash."""
    fingerprints = run_meta.get("fingerprints") or {}
    body = {
        "spec_version": SPEC_VERSION,
        "rule": rule.to_dict(),
        "resolved_thresholds": result.thresholds,
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


def rule_from_spec(spec: dict[str, Any], run_meta: dict[str, Any]) -> FilterRule:
    """The rule of a saved spec, refusing a spec that was made on another run or other data."""
    if "rule" not in spec:
        raise FilterError("not a filter spec: it has no 'rule'")
    fingerprints = run_meta.get("fingerprints") or {}
    if spec.get("run_id") != run_meta.get("run_id"):
        raise FilterError(f"the spec was made on run {spec.get('run_id')!r}, not on this run ({run_meta.get('run_id')!r})")
    if spec.get("data_fingerprint") != fingerprints.get("data"):
        raise FilterError("the spec's data fingerprint differs from this run's data: refusing to re-apply it")
    return FilterRule.from_dict(spec["rule"])


# ---------------------------------------------------------------------------------------- export


def keep_list(samples: pd.DataFrame, result: FilterResult, column: str) -> pd.DataFrame:
    """The kept rows: sample_id, source, label, score, keep (sorted by score, highest first)."""
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


def datacomp_uids(sample_ids: np.ndarray) -> np.ndarray:
    """DataComp-style keep-list: 128-bit hex uids as a sorted structured array of two uint64."""
    ids = [str(s).lower() for s in sample_ids]
    bad = next((s for s in ids if len(s) != 32 or any(c not in "0123456789abcdef" for c in s)), None)
    if bad is not None:
        raise FilterError(f"sample ids are not 128-bit hex uids (e.g. {bad!r}); use csv, json, parquet or npy")
    pairs = np.array([(int(s[:16], 16), int(s[16:], 16)) for s in ids], dtype=np.dtype("u8,u8"))
    pairs.sort()
    return pairs


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
        np.save(buffer, datacomp_uids(samples["sample_id"].to_numpy()[result.keep]))
        return buffer.getvalue()
    frame = keep_list(samples, result, column)
    if export_format == "csv":
        return frame.to_csv(index=False).encode()
    if export_format == "json":
        return frame.to_json(orient="records", indent=1).encode()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def export(
    samples: pd.DataFrame, run_meta: dict[str, Any], rule: FilterRule, export_format: str, out: str | Path
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
    run_dir: str | Path, samples: pd.DataFrame, run_meta: dict[str, Any], rule: FilterRule, export_format: str = "csv"
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


def latest_saved_rule(run_dir: str | Path, run_meta: dict[str, Any]) -> tuple[FilterRule, dict[str, Any], Path] | None:
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
        rule.validate()
    except FilterError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FilterError(f"saved filter {specs[0].name} is malformed: {exc}") from None
    return rule, spec, specs[0]
