"""Errors of data sources: fatal ones (the input cannot describe a pool) and per-sample ones.

Why two kinds: a wrong path, an empty class folder or a label outside the class list means the user
asked for something else, and no run should start; a corrupt JPEG or a stray text file is one bad sample
in a million and must be recorded and skipped, never crash a run. ``ErrorLog`` collects the latter so
a caller can write ``errors.parquet`` and say how many were skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ERROR_COLUMNS = ["sample_id", "path", "reason"]


class DataSourceError(ValueError):
    """The SPEC or its files cannot describe a pool (missing path, empty folder, bad labels, …)."""


@dataclass(frozen=True)
class BadSample:
    """One sample that could not be used: its id, where it lives, and why."""

    sample_id: str
    path: str
    reason: str


class BadSampleError(Exception):
    """Raised by ``Source.load`` for a sample that cannot be decoded; carries a ``BadSample``."""

    def __init__(self, bad: BadSample):
        super().__init__(f"{bad.sample_id} ({bad.path}): {bad.reason}")
        self.bad = bad


class ErrorLog:
    """Bad samples by id (the first reason wins, so re-reading a sample every epoch adds nothing)."""

    def __init__(self, items: Iterable[BadSample] = ()):
        self._items: dict[str, BadSample] = {}
        self.extend(items)

    def add(self, bad: BadSample) -> None:
        """Record ``bad`` unless its sample is already recorded (the first reason is the one kept)."""
        self._items.setdefault(bad.sample_id, bad)

    def extend(self, items: Iterable[BadSample]) -> None:
        """Record every sample of ``items``, as ``add`` does."""
        for bad in items:
            self.add(bad)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[BadSample]:
        return iter(self._items.values())

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._items

    @property
    def sample_ids(self) -> list[str]:
        """The ids of the recorded samples, in the order they were first recorded."""
        return list(self._items)

    def to_frame(self):
        """A pandas DataFrame with columns ``sample_id, path, reason`` (the ``errors.parquet`` rows)."""
        import pandas as pd

        return pd.DataFrame(
            [(b.sample_id, b.path, b.reason) for b in self._items.values()], columns=ERROR_COLUMNS, dtype=object
        ).astype("string")

    def write_parquet(self, path: str | os.PathLike) -> Path:
        """Write the log atomically (temp file + rename), even when empty, so readers never see half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.to_frame().to_parquet(tmp, index=False)
        os.replace(tmp, path)
        return path

    def summary(self, limit: int = 5) -> str:
        """One human line: how many were skipped and the first few reasons."""
        if not self._items:
            return "no bad samples"
        head = "; ".join(f"{b.sample_id}: {b.reason}" for b in list(self._items.values())[:limit])
        more = f" (+{len(self) - limit} more)" if len(self) > limit else ""
        return f"skipped {len(self)} bad sample(s): {head}{more}"
