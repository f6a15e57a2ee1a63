"""A run's samples read through its app index: the part of a DataFrame the explorer uses, at any size.

Why: the explorer's logic was written against ``Run.samples`` (a pandas frame of the whole table).
``SampleColumns`` answers the same questions — ``len``, ``columns``, ``dtypes``, ``"label" in``,
``samples[column]`` and ``samples.iloc[positions]`` — from memory-mapped index files, so opening a
12.8 M-row run reads only what the first screen shows, and every existing code path keeps working
(tests compare both on the same runs). Numeric columns are Series over the memory maps (no copy);
a text column (``sample_id``) is read whole only when something asks for all of it (the scatter's
hover, a search by id); rows by position cost O(rows asked). Anything else a DataFrame offers falls
back to the full frame, read once — correct, only as slow as before.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from mimic_explorer.store.app_index import AppIndex, IndexUnavailable, open_index
from mimic_explorer.store.reader import Run

log = logging.getLogger(__name__)


class _Rows:
    """``samples.iloc[...]``: positions read through the index; anything else through the full frame."""

    def __init__(self, owner: SampleColumns):
        self._owner = owner

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            position = int(key) + (self._owner.app_index.n if key < 0 else 0)
            return self._owner.app_index.rows([position]).iloc[0]
        array = np.asarray(key) if isinstance(key, (list, np.ndarray, pd.Index)) else None
        if array is not None and array.dtype.kind in "iu":
            return self._owner.app_index.rows(array)
        return self._owner.full.iloc[key]


class SampleColumns:
    """``samples.parquet`` through an ``AppIndex`` (see the module docstring for what it supports)."""

    def __init__(self, index: AppIndex, run: Run | None = None):
        self.app_index = index
        self.run = run
        self._series: dict[str, pd.Series] = {}

    def __len__(self) -> int:
        return self.app_index.n

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns), as a DataFrame says it."""
        return self.app_index.n, len(self.app_index.columns)

    @cached_property
    def columns(self) -> pd.Index:
        """The column names, as a DataFrame has them."""
        return pd.Index(self.app_index.columns)

    @cached_property
    def dtypes(self) -> pd.Series:
        """Column dtypes without reading a text column (text columns report ``object``)."""
        return pd.Series({name: self.app_index.dtype(name) or np.dtype(object) for name in self.app_index.columns})

    def __contains__(self, name: object) -> bool:
        return name in self.app_index.columns

    def __getitem__(self, name):
        if not isinstance(name, str) or name not in self.app_index.columns:
            return self.full[name]
        if name not in self._series:
            if self.app_index.is_numeric(name):
                values = self.app_index.column(name)
                self._series[name] = pd.Series(values, name=name, copy=False)
            else:
                self._series[name] = self.app_index.text_column(name)
        return self._series[name]

    def get(self, name: str, default: Any = None):
        """Column ``name``, or ``default`` when the table has no such column (as ``DataFrame.get``)."""
        return self[name] if name in self else default  # noqa: SIM401 - this is the get that rule would call

    @property
    def iloc(self) -> _Rows:
        """Rows by position, as ``DataFrame.iloc`` (read from the index, not the whole table)."""
        return _Rows(self)

    @cached_property
    def full(self) -> pd.DataFrame:
        """The whole table in pandas (what an operation this view does not know needs)."""
        log.info("reading all of %s into memory", self.app_index.layout.samples)
        return self.run.samples if self.run is not None else _read_samples(self.app_index)

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("app_index", "run"):
            raise AttributeError(name)
        return getattr(self.full, name)


def _read_samples(index: AppIndex) -> pd.DataFrame:
    frame = pd.read_parquet(index.layout.samples)
    frame["sample_id"] = frame["sample_id"].astype(str)
    return frame


def indexed_samples(run: Run) -> SampleColumns | pd.DataFrame:
    """The run's samples through its app index (built on first open), or — when no index can be built
    here (read-only folder, full disk) — ``run.samples`` itself, with the reason logged."""
    if getattr(run, "path", None) is None:  # samples held in memory, no run directory to index
        return run.samples
    try:
        return SampleColumns(open_index(run.path), run)
    except IndexUnavailable as exc:
        log.warning("%s; reading the whole table instead", exc)
        return run.samples
