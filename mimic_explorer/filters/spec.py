"""The reproducible filter spec: build it, hash it, read a rule back from it, verify it.

A spec records a filter (every clause), what it resolved to on one run (thresholds, counts overall
and per class, the keep mask's sha256), that run's identity (run id, data fingerprint) and its own
``spec_hash``: sha256 of the canonical JSON of every field but ``spec_hash``, ``created`` and
``keep_list`` (the keep-list file's size and hash, which ``store/filter_files.py`` adds when it
writes the pair), cut to 16 hex digits. Reading one back checks, in this order, that every value
has its type and range, that it was made on this run and these data, and that its content still
hashes to ``spec_hash``: an edited threshold is refused with what was edited
(``filters/spec_edits.py``), never silently re-applied. Re-applied to its run, the keep mask must
hash to the recorded ``keep_mask_sha256`` (``check_reapplied``).

The hash detects edits, not forgery: whoever edits a spec can recompute its hash. What it protects
against is the careless or mistaken edit and the spec that no longer describes its keep-list.

Forms (unchanged since the first spec, so every spec written before still verifies): a single clause
is ``{"spec_version": 1, "rule": {...}, "resolved_thresholds": {...}, ...}``; an AND is
``{"spec_version": 2, "combine": "and", "rules": [...], "resolved_thresholds": [...],
"kept_by_clause": [...], ...}``, one entry per clause in order. Dicts and JSON text only: files are
``store/``'s. See docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from datetime import UTC
from typing import Any

import pandas as pd

from mimic_explorer.filters.formats import EXPORT_FORMATS
from mimic_explorer.filters.hashing import content_hash, mask_sha256
from mimic_explorer.filters.rules import (
    MAX_CLAUSES,
    CompoundRule,
    FilterError,
    FilterResult,
    FilterRule,
    Rule,
    all_of,
    is_number,
    refuse_too_many_clauses,
    shown,
)
from mimic_explorer.filters.spec_edits import explain_edit

SPEC_VERSION = 1  # a single clause
COMPOUND_SPEC_VERSION = 2  # an AND of clauses
#: Largest spec file read. A spec with per-class thresholds for 100,000 classes is about 10 MB; a
#: larger file is not a spec this tool wrote, and is refused before it is parsed.
MAX_SPEC_BYTES = 16 * 1024 * 1024
_HEX16 = re.compile(r"[0-9a-f]{16}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class SpecError(FilterError):
    """A spec that cannot be read, does not verify, or does not belong here; the message names why."""


def build_spec(
    run_meta: dict[str, Any],
    rule: Rule,
    result: FilterResult,
    export_format: str | None,
    reviews: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The reproducible filter spec of ``rule`` resolved on a run.

    Parameters
    ----------
    run_meta
        The run's ``meta.json`` (run id, data fingerprint, versions).
    rule
        The filter, one clause or an AND.
    result
        ``apply_rule(samples, rule)`` on that run.
    export_format
        The keep-list's format (None for a spec alone).
    reviews
        What the review decisions applied on top of the rule were (``filters.reviews.AppliedReviews.facts``:
        rows of the review log read, samples decided, sha256); None when none were applied (the field is
        then left out, so a spec without reviews is the same as before reviews existed).

    Returns
    -------
    dict
        Every clause, resolved thresholds, counts, run identity, the keep mask's sha256, ``spec_hash``
        and ``created``.
    """
    fingerprints = run_meta.get("fingerprints") or {}
    if isinstance(rule, CompoundRule):
        described: dict[str, Any] = {
            "spec_version": COMPOUND_SPEC_VERSION,
            "combine": "and",
            "rules": [c.to_dict() for c in rule.clauses],
            "resolved_thresholds": [part.thresholds for part in result.clauses],
            "kept_by_clause": [part.kept for part in result.clauses],
        }
    else:
        described = {"spec_version": SPEC_VERSION, "rule": rule.to_dict(), "resolved_thresholds": result.thresholds}
    spec = {
        **described,
        "kept": result.kept,
        "total": result.total,
        "kept_per_class": result.kept_per_class,
        "total_per_class": result.total_per_class,
        "run_id": run_meta.get("run_id"),
        "data_fingerprint": fingerprints.get("data"),
        "versions": run_meta.get("versions", {}),
        "format": export_format,
        "keep_mask_sha256": mask_sha256(result.keep),
    }
    if reviews is not None:
        spec["reviews"] = dict(reviews)
    spec["spec_hash"] = content_hash(spec)
    spec["created"] = _dt.datetime.now(UTC).isoformat(timespec="seconds")  # the clock is read through _dt
    return spec


# ---------------------------------------------------------------------------------------- reading


def parse_spec_json(data: bytes | str) -> dict[str, Any]:
    """A spec's JSON text as a dict: ``SpecError`` for more than ``MAX_SPEC_BYTES``, text that is not
    JSON (or nests too deep to parse), or JSON that is not an object."""
    size = len(data.encode("utf-8") if isinstance(data, str) else data)
    if size > MAX_SPEC_BYTES:
        raise SpecError(
            f"{size:,} bytes is too large for a filter spec (at most {MAX_SPEC_BYTES // 2**20} MiB are read)"
        )
    try:
        spec = json.loads(data)
    except (ValueError, RecursionError) as exc:
        reason = "it nests too deep" if isinstance(exc, RecursionError) else str(exc)
        raise SpecError(f"not JSON: {reason}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"not a filter spec: a JSON object is expected, got {type(spec).__name__}")
    return spec


def _spec_version(spec: dict[str, Any]) -> int:
    version = spec.get("spec_version", SPEC_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SpecError(f"spec_version is a whole number ≥ 1, got {shown(version)}")
    if version > COMPOUND_SPEC_VERSION:
        raise SpecError(
            f"the spec was written by a newer mimic_explorer (spec version {version}; this one reads "
            f"≤ {COMPOUND_SPEC_VERSION}); upgrade the package"
        )
    return version


def _check_fields(spec: dict[str, Any]) -> None:
    """Type and range of the recorded facts (not the rule): counts are whole numbers ≥ 0, the format
    is a known one, ids are text, hashes are hex."""
    for name in ("kept", "total"):
        if name in spec and (not isinstance(spec[name], int) or isinstance(spec[name], bool) or spec[name] < 0):
            raise SpecError(f"{name} is a whole number ≥ 0, got {shown(spec[name])}")
    if isinstance(spec.get("kept"), int) and isinstance(spec.get("total"), int) and spec["kept"] > spec["total"]:
        raise SpecError(f"kept ({spec['kept']}) is more than total ({spec['total']})")
    for name in ("kept_per_class", "total_per_class"):
        counts = spec.get(name, {})
        if not isinstance(counts, dict) or not all(is_number(v) and v >= 0 for v in counts.values()):
            raise SpecError(f"{name} maps each class to a count ≥ 0, got {shown(counts)}")
    if spec.get("format") is not None and spec.get("format") not in EXPORT_FORMATS:
        raise SpecError(f"format is one of {', '.join(EXPORT_FORMATS)}, got {shown(spec.get('format'))}")
    for name in ("run_id", "data_fingerprint"):
        if spec.get(name) is not None and not isinstance(spec[name], str):
            raise SpecError(f"{name} is text, got {shown(spec[name])}")
    if "reviews" in spec:
        _check_reviews(spec["reviews"])
    if "keep_mask_sha256" in spec and not (
        isinstance(spec["keep_mask_sha256"], str) and _HEX64.fullmatch(spec["keep_mask_sha256"])
    ):
        raise SpecError(f"keep_mask_sha256 is 64 hex digits, got {shown(spec['keep_mask_sha256'])}")


def _check_reviews(reviews: Any) -> None:
    """The ``reviews`` field: rows read and samples decided (whole numbers ≥ 0) and the rows' sha256."""
    if not isinstance(reviews, dict) or set(reviews) != {"rows", "samples", "sha256"}:
        raise SpecError(f"reviews records rows, samples and sha256, got {shown(reviews)}")
    for name in ("rows", "samples"):
        value = reviews[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpecError(f"reviews.{name} is a whole number ≥ 0, got {shown(value)}")
    if not (isinstance(reviews["sha256"], str) and _HEX64.fullmatch(reviews["sha256"])):
        raise SpecError(f"reviews.sha256 is 64 hex digits, got {shown(reviews['sha256'])}")


def reviews_in_spec(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The review decisions a (verified) spec applied (rows, samples, sha256), or None when it applied none."""
    return spec.get("reviews")


def _rule_of(spec: dict[str, Any]) -> Rule:
    """The rule a spec records, every clause read strictly (no hash check)."""
    if not isinstance(spec, dict) or not ("rule" in spec or "rules" in spec):
        raise SpecError("not a filter spec: it has no 'rule'")
    _spec_version(spec)
    _check_fields(spec)
    if "rules" in spec:
        if spec.get("combine", "and") != "and":
            raise SpecError(f"the spec combines its rules with {shown(spec['combine'])}; only 'and' is known")
        rules = spec["rules"]
        if not isinstance(rules, list) or not rules:
            raise SpecError(f"'rules' is a list of one to {MAX_CLAUSES} rules, got {shown(rules)}")
        try:
            refuse_too_many_clauses(len(rules))
        except FilterError as exc:
            raise SpecError(str(exc)) from None
        clauses = []
        for number, data in enumerate(rules, 1):
            try:
                clauses.append(FilterRule.from_dict(data))
            except FilterError as exc:
                raise SpecError(f"rule {number}: {exc}") from None
        return all_of(clauses)
    try:
        return FilterRule.from_dict(spec["rule"])
    except FilterError as exc:
        raise SpecError(f"the spec's rule: {exc}") from None


def _verify_spec(spec: dict[str, Any], samples: pd.DataFrame | None = None) -> None:
    """Refuse a spec whose content does not hash to its ``spec_hash``, naming what was edited.

    ``samples`` (the run's, optional) lets the message say what the edited rule keeps on this run when
    no single edit explains the mismatch."""
    recorded = spec.get("spec_hash")
    if not isinstance(recorded, str) or not _HEX16.fullmatch(recorded):
        raise SpecError(
            "the spec has no valid spec_hash, so it cannot be verified; a spec that mimic-explorer "
            "writes always has one: export the filter again"
        )
    if content_hash(spec) != recorded:
        raise SpecError(
            f"the spec was edited after it was written ({explain_edit(spec, recorded, samples)}); "
            "refusing it: export the filter again instead of editing its spec"
        )


def rule_in_spec(spec: Any, samples: pd.DataFrame | None = None) -> Rule:
    """The rule a spec records: every value checked by type and range, then the spec's hash verified.

    Unlike ``rule_from_spec`` it does not compare the spec with a run: for reading a spec on its own.

    Parameters
    ----------
    spec
        The spec, as JSON values (``parse_spec_json`` of the file).
    samples
        A run's samples, optional: only used to say what an edited rule keeps.

    Returns
    -------
    Rule
        The verified rule.

    Raises
    ------
    SpecError
        A value of the wrong type or range, a spec of a newer version, or one edited after it was
        written (naming what was edited); a ``FilterError``.
    """
    rule = _rule_of(spec)
    _verify_spec(spec, samples)
    return rule


def rule_from_spec(spec: Any, run_meta: dict[str, Any], samples: pd.DataFrame | None = None) -> Rule:
    """The rule of a saved spec for the run ``run_meta`` describes.

    Parameters
    ----------
    spec
        The spec, as JSON values (``parse_spec_json`` of the file).
    run_meta
        The run's ``meta.json``: the spec must name its run id and data fingerprint.
    samples
        The run's samples, optional: only used to say what an edited rule keeps.

    Returns
    -------
    Rule
        The verified rule.

    Raises
    ------
    SpecError
        A bad value, a spec of another run or other data, or an edit after it was written, named; a
        ``FilterError``.
    """
    rule = _rule_of(spec)
    fingerprints = run_meta.get("fingerprints") or {}
    if spec.get("run_id") != run_meta.get("run_id"):
        raise SpecError(
            f"the spec was made on run {spec.get('run_id')!r}, not on this run ({run_meta.get('run_id')!r})"
        )
    if spec.get("data_fingerprint") != fingerprints.get("data"):
        raise SpecError("the spec's data fingerprint differs from this run's data: refusing to re-apply it")
    _verify_spec(spec, samples)
    return rule


def check_reapplied(spec: dict[str, Any], result: FilterResult) -> None:
    """Refuse when the spec's rule, re-applied to its own run, keeps other samples than it recorded
    (``keep_mask_sha256``): the run's samples changed since, and the spec no longer reproduces."""
    recorded = spec.get("keep_mask_sha256")
    if recorded is None or recorded == mask_sha256(result.keep):
        return
    kept = spec.get("kept")
    which = (
        f"the same number ({result.kept}) but other samples"
        if kept == result.kept
        else f"{result.kept} samples, not the {kept} it records"
    )
    raise SpecError(
        f"re-applied to this run, the spec's rule keeps {which} (keep_mask_sha256 differs): the run's "
        "samples changed since the spec was written; export the rule itself to accept the new keep-list"
    )
