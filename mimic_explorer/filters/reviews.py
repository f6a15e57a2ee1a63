"""Review decisions on top of a filter: frames in, arrays out (the file is ``store.reviews``'s).

A person's decision about a sample overrides what the rule decided: ``keep`` keeps it, ``drop``
drops it, ``relabel`` keeps it under another class (exports then carry ``label_reviewed``). Only the
latest decision per sample counts. What a spec records of the reviews it applied (``facts``) names
them exactly: how many rows of the append-only review log were read (a later decision does not
change an old spec's keep-list), how many samples they decide, and the sha256 of those rows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from mimic_explorer.filters.rules import FilterResult, class_labels

DECISIONS = ("keep", "drop", "relabel")
#: the columns of a review row, in the order the log holds them
REVIEW_COLUMNS = ("sample_id", "decision", "label", "note", "time")


def empty_reviews() -> pd.DataFrame:
    """A review log with no rows (the columns and dtypes of one)."""
    return pd.DataFrame(
        {
            "sample_id": pd.Series(dtype="str"),
            "decision": pd.Series(dtype="str"),
            "label": pd.Series(dtype="Int64"),
            "note": pd.Series(dtype="str"),
            "time": pd.Series(dtype="datetime64[us, UTC]"),
        }
    )


def latest(log: pd.DataFrame) -> pd.DataFrame:
    """One row per sample: its latest decision (the last row of the log that names it)."""
    return log.drop_duplicates("sample_id", keep="last").reset_index(drop=True)


def log_sha256(log: pd.DataFrame) -> str:
    """sha256 of the log's rows as canonical text (id, decision, label, note, time per line): what a spec records."""
    digest = hashlib.sha256()
    for row in log[list(REVIEW_COLUMNS)].itertuples(index=False):
        label = "" if pd.isna(row.label) else str(int(row.label))
        when = "" if pd.isna(row.time) else pd.Timestamp(row.time).isoformat()
        digest.update(f"{row.sample_id}\t{row.decision}\t{label}\t{row.note}\t{when}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class AppliedReviews:
    """The review log's first ``rows`` rows, which a filter applies: their latest decision per sample."""

    rows: int
    decisions: pd.DataFrame  # latest per sample: sample_id, decision, label
    sha256: str

    @classmethod
    def of(cls, log: pd.DataFrame, rows: int | None = None) -> AppliedReviews:
        """The first ``rows`` rows of ``log`` (default: all)."""
        prefix = log if rows is None else log.iloc[:rows]
        return cls(len(prefix), latest(prefix), log_sha256(prefix))

    def facts(self) -> dict[str, Any]:
        """What a spec records: rows read, samples decided, and the rows' sha256."""
        return {"rows": self.rows, "samples": len(self.decisions), "sha256": self.sha256}

    @property
    def relabels(self) -> bool:
        """Whether any decision relabels a sample (exports then carry ``label_reviewed``)."""
        return bool((self.decisions["decision"] == "relabel").any())


def apply_reviews(samples: pd.DataFrame, result: FilterResult, reviews: AppliedReviews) -> FilterResult:
    """``result`` with the decisions laid over it: keep and relabel keep a sample, drop drops it; counts
    overall and per class recomputed, and ``label_reviewed`` (each sample's label, the new one where
    relabelled) when any decision relabels.

    Parameters
    ----------
    samples
        The run's samples (``sample_id``, ``label``), in the order of ``result.keep``.
    result
        The rule's result on ``samples``.
    reviews
        The decisions to apply.

    Returns
    -------
    FilterResult
        A new result (the rule's thresholds and clauses as they were).
    """
    if not reviews.rows:
        return result
    ids = pd.Index(np.asarray(samples["sample_id"]).astype(str))
    where = ids.get_indexer(reviews.decisions["sample_id"].astype(str))
    decided = reviews.decisions[where >= 0]
    where = where[where >= 0]
    keep = result.keep.copy()
    decision = decided["decision"].to_numpy()
    keep[where[decision == "drop"]] = False
    keep[where[decision != "drop"]] = True
    labels = class_labels(samples)
    reviewed = None
    if reviews.relabels:
        reviewed = np.asarray(labels, dtype=np.int64).copy()
        relabel = decision == "relabel"
        reviewed[where[relabel]] = decided["label"].to_numpy()[relabel].astype(np.int64)
    kept_per_class, total_per_class = {}, {}
    for cls in np.unique(labels).tolist():
        members = labels == cls
        kept_per_class[str(cls)] = int(keep[members].sum())
        total_per_class[str(cls)] = int(members.sum())
    return replace(
        result,
        keep=keep,
        kept=int(keep.sum()),
        kept_per_class=kept_per_class,
        total_per_class=total_per_class,
        label_reviewed=reviewed,
    )
