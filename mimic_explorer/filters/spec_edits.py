"""What was edited in a spec whose content no longer hashes to its ``spec_hash``.

Why: "hash mismatch" tells a person that something changed, not what. A hash cannot be inverted, but
a spec records the same facts twice (a threshold rule's value and its resolved threshold, ``kept``
and the per-class counts, a keep-count and the clause's kept count), so the likely single edits can
be undone one at a time: the edit whose undoing gives back ``spec_hash`` is the one that was made,
and the message names it ("rule 1's threshold is 0.8 but the hashed spec says 0.3"). When no single
edit explains the hash, the message names the facts that disagree with each other, or with what the
rule keeps on the run. The number of edits tried is bounded, so a large spec costs milliseconds.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import pandas as pd

from mimic_explorer.filters.formats import EXPORT_FORMATS
from mimic_explorer.filters.hashing import content_hash
from mimic_explorer.filters.rules import RULES, FilterError, FilterRule, all_of, apply_rule, is_number, numeric_columns

#: Fields a spec this version writes; a field beyond these that breaks the hash was added by hand.
KNOWN_FIELDS = frozenset(
    {
        "spec_version",
        "rule",
        "rules",
        "combine",
        "resolved_thresholds",
        "kept_by_clause",
        "kept",
        "total",
        "kept_per_class",
        "total_per_class",
        "run_id",
        "data_fingerprint",
        "versions",
        "format",
        "keep_mask_sha256",
        "spec_hash",
        "created",
        "keep_list",
    }
)
#: Most single edits tried before giving up on finding the one that was made.
MAX_TRIES = 256


def explain_edit(spec: dict[str, Any], recorded: str, samples: pd.DataFrame | None = None) -> str:
    """One clause naming what differs from the spec that was hashed to ``recorded``."""
    for tries, (what, undone) in enumerate(_single_edits(spec, samples)):
        if tries >= MAX_TRIES:
            break
        if content_hash(undone) == recorded:
            return what
    facts = _disagreements(spec, samples)
    if facts:
        return "; ".join(facts[:3])
    return f"its content hashes to {content_hash(spec)}, not to its spec_hash {recorded}"


def _clauses(spec: dict[str, Any]) -> list[tuple[str, dict, Any, Any]]:
    """(label, clause dict, its resolved thresholds, its kept count) for each clause a spec records,
    as far as they have the expected shape."""
    if isinstance(spec.get("rules"), list):
        thresholds = spec.get("resolved_thresholds")
        kept = spec.get("kept_by_clause")
        return [
            (
                f"rule {i + 1}",
                clause,
                thresholds[i] if isinstance(thresholds, list) and i < len(thresholds) else None,
                kept[i] if isinstance(kept, list) and i < len(kept) else None,
            )
            for i, clause in enumerate(spec["rules"])
            if isinstance(clause, dict)
        ]
    if isinstance(spec.get("rule"), dict):
        return [("the rule", spec["rule"], spec.get("resolved_thresholds"), spec.get("kept"))]
    return []


def _path_of(label: str) -> tuple[str, int | None]:
    """Where clause ``label`` sits in a spec: ("rules", index) in an AND, ("rule", None) alone."""
    return ("rules", int(label.split()[1]) - 1) if label.startswith("rule ") else ("rule", None)


def _with_clause(spec: dict[str, Any], label: str, **changes: Any) -> dict[str, Any]:
    """A copy of ``spec`` whose clause ``label`` has ``changes``."""
    undone = copy.deepcopy(spec)
    key, index = _path_of(label)
    clause = undone[key] if index is None else undone[key][index]
    for name, value in changes.items():
        clause[name] = value
    return undone


def _numbers_like(value: float) -> list[Any]:
    """A resolved threshold as the rule's value might have been written: 0.5, or 1 and 1.0."""
    if is_number(value) and math.isfinite(value) and float(value) == int(value):
        return [int(value), float(value)]
    return [value]


def _single_edits(spec: dict[str, Any], samples: pd.DataFrame | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(what was edited, the spec with that edit undone), likeliest first."""
    clauses = _clauses(spec)
    for label, clause, resolved, kept in clauses:
        kind, value = clause.get("kind"), clause.get("value")
        if (
            kind == "threshold"
            and isinstance(resolved, dict)
            and is_number(resolved.get("all"))
            and resolved["all"] != value
        ):
            for original in _numbers_like(resolved["all"]):
                yield (
                    f"{label}'s threshold is {value!r} but the hashed spec says {original!r}",
                    _with_clause(spec, label, value=original),
                )
        overrides = clause.get("class_overrides")
        if kind == "threshold" and isinstance(overrides, dict) and isinstance(resolved, dict):
            for cls, override in list(overrides.items())[:32]:
                if cls in resolved and resolved[cls] != override:
                    yield (
                        (
                            f"{label}'s threshold for class {cls} is {override!r} but the hashed spec says "
                            f"{resolved[cls]!r}"
                        ),
                        _with_clause(spec, label, class_overrides={**overrides, cls: resolved[cls]}),
                    )
            for cls in [c for c in resolved if c != "all" and c not in overrides][:32]:
                yield (
                    f"{label}'s threshold for class {cls} was removed (the hashed spec says {resolved[cls]!r})",
                    _with_clause(spec, label, class_overrides={**overrides, cls: resolved[cls]}),
                )
        if kind == "keep_count" and not clause.get("per_class") and is_number(kept) and kept != value:
            yield (
                f"{label}'s keep-count is {value!r} but the hashed spec says {kept!r}",
                _with_clause(spec, label, value=kept),
            )
        if isinstance(clause.get("per_class"), bool):
            flipped = not clause["per_class"]
            yield (
                (
                    f"{label}'s per_class is {str(clause['per_class']).lower()} but the hashed spec says "
                    f"{str(flipped).lower()}"
                ),
                _with_clause(spec, label, per_class=flipped),
            )
        elif "per_class" in clause:
            for original in (True, False):
                yield (
                    f"{label}'s per_class is {clause['per_class']!r} but the hashed spec says {str(original).lower()}",
                    _with_clause(spec, label, per_class=original),
                )
        for other in RULES:
            if other != kind:
                yield (
                    f"{label}'s kind is {kind!r} but the hashed spec says {other!r}",
                    _with_clause(spec, label, kind=other),
                )
        columns = [c.get("column") for _, c, _, _ in clauses] + ["mimic_score"]
        if samples is not None:
            columns += numeric_columns(samples)
        for column in dict.fromkeys(c for c in columns if isinstance(c, str) and c != clause.get("column")):
            yield (
                f"{label}'s column is {clause.get('column')!r} but the hashed spec says {column!r}",
                _with_clause(spec, label, column=column),
            )
    for name, per_class in (("kept", "kept_per_class"), ("total", "total_per_class")):
        counts = spec.get(per_class)
        if (
            isinstance(counts, dict)
            and all(is_number(v) for v in counts.values())
            and sum(counts.values()) != spec.get(name)
        ):
            yield (
                f"{name} is {spec.get(name)!r} but the hashed spec says {sum(counts.values())}",
                {**spec, name: sum(counts.values())},
            )
    for fmt in (*EXPORT_FORMATS, None):
        if fmt != spec.get("format"):
            yield f"format is {spec.get('format')!r} but the hashed spec says {fmt!r}", {**spec, "format": fmt}
    for version in (1, 2):
        if version != spec.get("spec_version"):
            yield (
                f"spec_version is {spec.get('spec_version')!r} but the hashed spec says {version}",
                {**spec, "spec_version": version},
            )
    for name in sorted(set(spec) - KNOWN_FIELDS):
        yield f"field {name!r} was added", {k: v for k, v in spec.items() if k != name}


def _disagreements(spec: dict[str, Any], samples: pd.DataFrame | None) -> list[str]:
    """Recorded facts that contradict each other, or what the recorded rule keeps on ``samples``."""
    facts = []
    for label, clause, resolved, _ in _clauses(spec):
        value = clause.get("value")
        if (
            clause.get("kind") == "threshold"
            and isinstance(resolved, dict)
            and "all" in resolved
            and resolved["all"] != value
        ):
            facts.append(f"{label}'s threshold is {value!r} but it resolved to {resolved['all']!r} when written")
    if samples is not None:
        try:
            clauses = [FilterRule.from_dict(c) for _, c, _, _ in _clauses(spec)]
            kept = apply_rule(samples, all_of(clauses)).kept
        except FilterError:
            kept = None
        if kept is not None and kept != spec.get("kept"):
            facts.append(f"its rule keeps {kept} samples of this run but it records kept {spec.get('kept')!r}")
    return facts
