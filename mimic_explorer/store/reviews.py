"""A run's review log: per-sample decisions (keep, drop, relabel to a class) with a note and a time.

Why a log and not a table of current decisions: a decision is never edited in place, only followed
by a newer one, so the latest row per sample is the decision (``filters.reviews.latest``) and the
first N rows are exactly what the run's reviews were when N rows existed. A spec records N and the
sha256 of those rows, so re-applying it gives the same keep-list after later decisions too
(``applied_for_spec``). Appending rewrites ``reviews.parquet`` through a temporary file renamed into
place, under a lock (two app sessions marking at once both land), after every new row was checked:
a sample not in the run, a relabel to a class that does not exist, an unknown decision — one line,
and nothing is written.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd

from mimic_explorer.filters.reviews import DECISIONS, REVIEW_COLUMNS, AppliedReviews, empty_reviews, log_sha256
from mimic_explorer.store.atomic import write_parquet
from mimic_explorer.store.layout import RunLayout

#: longest note kept with a decision
MAX_NOTE_CHARS = 2000


class ReviewError(ValueError):
    """A review that cannot be recorded or a log that cannot be read; the message names the cause."""


def _some(values: Sequence, limit: int = 3) -> str:
    values = [str(v) for v in values]
    more = f" (+{len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(repr(v) for v in values[:limit]) + more


@contextlib.contextmanager
def _locked(layout: RunLayout) -> Iterator[None]:
    with open(layout.reviews_lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_reviews(layout: RunLayout) -> pd.DataFrame:
    """The whole log (oldest first; empty when the run has none); ``ReviewError`` when it cannot be read."""
    if not layout.reviews.exists():
        return empty_reviews()
    try:
        log = pd.read_parquet(layout.reviews)
    except Exception as exc:  # noqa: BLE001 - any reader failure is the file's: said in one line
        raise ReviewError(f"cannot read {layout.reviews}: {exc}") from None
    missing = [c for c in REVIEW_COLUMNS if c not in log.columns]
    if missing:
        raise ReviewError(f"{layout.reviews} has no column {missing[0]!r}: not a review log")
    log["sample_id"] = log["sample_id"].astype(str)
    return log[list(REVIEW_COLUMNS)]


def check_reviews(
    ids: Iterable[str],
    decision: str,
    label: int | str | None,
    run_ids: np.ndarray,
    class_names: Sequence[str],
) -> tuple[list[str], int | None]:
    """The ids (as text, each once, in the order given) and the class index of a decision, or ``ReviewError``.

    ``label`` (relabel only) is a class index or a class name of the run."""
    ids = list(dict.fromkeys(str(i) for i in ids))
    if not ids:
        raise ReviewError("no sample ids given to review")
    if decision not in DECISIONS:
        raise ReviewError(f"unknown decision {decision!r}; choose one of {', '.join(DECISIONS)}")
    known = pd.Index(np.asarray(run_ids).astype(str))
    unknown = [i for i, w in zip(ids, known.get_indexer(ids), strict=True) if w < 0]
    if unknown:
        raise ReviewError(f"{len(unknown)} of the {len(ids)} sample ids are not in this run: {_some(unknown)}")
    if decision != "relabel":
        if label is not None:
            raise ReviewError(f"a {decision} decision takes no label (only relabel does)")
        return ids, None
    if label is None or (isinstance(label, str) and not label.strip()):
        raise ReviewError("relabel needs the class to relabel to (--label NAME or index)")
    if not class_names:
        raise ReviewError("this run's samples have no classes (image-text pairs): nothing to relabel to")
    text = str(label).strip()
    if text in class_names:
        return ids, list(class_names).index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(class_names):
        return ids, int(text)
    shown = ", ".join(class_names[:10]) + (", …" if len(class_names) > 10 else "")
    raise ReviewError(
        f"no class {text!r} in this run; relabel to a class name or an index 0–{len(class_names) - 1} ({shown})"
    )


def append_reviews(
    layout: RunLayout,
    ids: Iterable[str],
    decision: str,
    *,
    run_ids: np.ndarray,
    class_names: Sequence[str] = (),
    label: int | str | None = None,
    note: str = "",
) -> pd.DataFrame:
    """Record one decision for each of ``ids`` (checked first: nothing is written when any is wrong).

    Parameters
    ----------
    layout
        The run's layout.
    ids
        The samples decided.
    decision
        ``keep``, ``drop`` or ``relabel``.
    run_ids
        Every sample id of the run (ids outside it are refused).
    class_names
        The run's classes (what a relabel may name).
    label
        The class (name or index) of a relabel.
    note
        Kept with each row (at most ``MAX_NOTE_CHARS`` characters).

    Returns
    -------
    pandas.DataFrame
        The rows appended.
    """
    ids, index = check_reviews(ids, decision, label, run_ids, class_names)
    note = str(note or "")
    if len(note) > MAX_NOTE_CHARS:
        raise ReviewError(f"a note is at most {MAX_NOTE_CHARS} characters, got {len(note)}")
    now = pd.Timestamp(_dt.datetime.now(_dt.UTC)).as_unit("us")
    rows = pd.DataFrame(
        {
            "sample_id": pd.Series(ids, dtype="str"),
            "decision": pd.Series([decision] * len(ids), dtype="str"),
            "label": pd.array([index] * len(ids), dtype="Int64"),
            "note": pd.Series([note] * len(ids), dtype="str"),
            "time": pd.Series([now] * len(ids), dtype="datetime64[us, UTC]"),
        }
    )
    with _locked(layout):
        log = read_reviews(layout)
        combined = rows if log.empty else pd.concat([log, rows], ignore_index=True)
        write_parquet(layout.reviews, combined.astype(rows.dtypes.to_dict()))
    return rows


def applied_now(layout: RunLayout) -> AppliedReviews:
    """Every decision of the log (latest per sample): what an export applies by default."""
    return AppliedReviews.of(read_reviews(layout))


def applied_for_spec(layout: RunLayout, recorded: dict[str, Any]) -> AppliedReviews:
    """The decisions a spec applied, from the first ``recorded['rows']`` rows of the log, checked against the recorded
    sha256 (``ReviewError`` when the log no longer starts with them)."""
    log = read_reviews(layout)
    rows = int(recorded["rows"])
    if len(log) < rows or log_sha256(log.iloc[:rows]) != recorded["sha256"]:
        raise ReviewError(
            f"the spec applied the first {rows} review decisions of this run, and the run's review log no longer "
            f"starts with them ({len(log)} rows now, another sha256): it was replaced or edited"
        )
    return AppliedReviews.of(log, rows)


def reviews_table(layout: RunLayout, class_names: Sequence[str] = ()) -> pd.DataFrame:
    """The latest decision per sample with the class name of a relabel (``mimic-explorer review --list``,
    ``export --format reviews``)."""
    decisions = AppliedReviews.of(read_reviews(layout)).decisions.copy()
    names = list(class_names)
    decisions["label_name"] = [
        names[int(v)] if pd.notna(v) and 0 <= int(v) < len(names) else "" for v in decisions["label"]
    ]
    return decisions
