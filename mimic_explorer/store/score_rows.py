"""Rows of a run by pool position: the score rows of a range of samples, and samples row ↔ position.

Why: at millions of samples the long score table is tens of millions of rows. Stage 2 works through
it one range of positions at a time and the app reads one sample's trajectory; both must read only
the row groups that can hold those positions. Score parts are sorted by (epoch, position) and their
row groups never span two epochs (``store.writer.write_score_part``), so each row group's min/max
``position`` statistics are a tight range; ``ScoreRows`` indexes those statistics once and reads
matching row groups by number. Formats: ``store.layout`` (docs/ARCHITECTURE.md, the run-directory
contract). Runs written before positions existed have no ``position`` column: ``ScoreRows.positioned``
is False for them and ``of_sample_ids`` still reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from mimic_explorer.store.layout import RunLayout


@dataclass(frozen=True)
class _Group:
    part: int
    group: int
    lo: int
    hi: int


class ScoreRows:
    """The score parts of one run directory, read by pool position."""

    def __init__(self, run_dir: str | os.PathLike | RunLayout):
        layout = run_dir if isinstance(run_dir, RunLayout) else RunLayout(Path(run_dir))
        self.parts = layout.score_parts()
        self._meta = [pq.read_metadata(p) for p in self.parts]
        self.positioned = bool(self.parts) and all("position" in m.schema.names for m in self._meta)
        self._groups = self._index() if self.positioned else []
        self._lo = np.array([g.lo for g in self._groups], dtype=np.int64)
        self._hi = np.array([g.hi for g in self._groups], dtype=np.int64)

    def _index(self) -> list[_Group]:
        groups = []
        for part, meta in enumerate(self._meta):
            column = meta.schema.names.index("position")
            for group in range(meta.num_row_groups):
                chunk = meta.row_group(group)
                stats = chunk.column(column).statistics
                if chunk.num_rows == 0:
                    continue
                if stats is None or not stats.has_min_max:  # no statistics: the group may hold anything
                    groups.append(_Group(part, group, np.iinfo(np.int64).min, np.iinfo(np.int64).max))
                else:
                    groups.append(_Group(part, group, int(stats.min), int(stats.max)))
        return groups

    @property
    def available(self) -> bool:
        """Whether the run has score parts."""
        return bool(self.parts)

    @property
    def columns(self) -> list[str]:
        """The columns of the score rows (those of the first part)."""
        return list(self._meta[0].schema.names) if self._meta else []

    def row_groups(self, start: int, stop: int) -> list[tuple[Path, int]]:
        """(part, row group) of every row group that may hold a position in ``[start, stop)``."""
        hit = np.flatnonzero((self._hi >= start) & (self._lo < stop))
        return [(self.parts[self._groups[i].part], self._groups[i].group) for i in hit]

    def range(self, start: int, stop: int, columns: list[str] | None = None) -> pd.DataFrame:
        """Every score row with ``start <= position < stop`` (all epochs, all ranks), in part order."""
        self._require_positions()
        columns = self._with_position(columns)
        tables = []
        by_part: dict[int, list[int]] = {}
        for i in np.flatnonzero((self._hi >= start) & (self._lo < stop)):
            by_part.setdefault(self._groups[i].part, []).append(self._groups[i].group)
        for part, groups in sorted(by_part.items()):
            table = pq.ParquetFile(self.parts[part], metadata=self._meta[part]).read_row_groups(groups, columns=columns)
            position = table.column("position")
            tables.append(table.filter(pc.and_(pc.greater_equal(position, start), pc.less(position, stop))))
        return self._frame(tables, columns)

    def of_positions(self, positions, columns: list[str] | None = None) -> pd.DataFrame:
        """The score rows of the given pool positions (one sample's trajectory, a page of a gallery)."""
        self._require_positions()
        positions = np.unique(np.asarray(positions, dtype=np.int64))
        columns = self._with_position(columns)
        if len(positions) == 0:
            return self._frame([], columns)
        wanted = pa.array(positions)
        tables = []
        by_part: dict[int, list[int]] = {}
        for i, group in enumerate(self._groups):
            inside = np.searchsorted(positions, self._lo[i], side="left")
            if inside < len(positions) and positions[inside] <= self._hi[i]:
                by_part.setdefault(group.part, []).append(group.group)
        for part, groups in sorted(by_part.items()):
            table = pq.ParquetFile(self.parts[part], metadata=self._meta[part]).read_row_groups(groups, columns=columns)
            tables.append(table.filter(pc.is_in(table.column("position"), value_set=wanted)))
        return self._frame(tables, columns)

    def of_sample_ids(self, sample_ids, columns: list[str] | None = None) -> pd.DataFrame:
        """The score rows of the given ids, for any run (older ones have no positions): a scan of the
        ``sample_id`` column of every part."""
        if not self.parts:
            return pd.DataFrame(columns=columns or [])
        dataset = ds.dataset([str(p) for p in self.parts], format="parquet")
        ids = pa.array([str(s) for s in sample_ids], pa.string())
        return dataset.to_table(columns=columns, filter=pc.field("sample_id").isin(ids)).to_pandas()

    def _with_position(self, columns: list[str] | None) -> list[str] | None:
        if columns is None:
            return None
        return list(columns) if "position" in columns else [*columns, "position"]

    def _frame(self, tables: list[pa.Table], columns: list[str] | None) -> pd.DataFrame:
        if not tables:
            schema = self._meta[0].schema.to_arrow_schema()
            names = columns or schema.names
            return pa.schema([schema.field(n) for n in names]).empty_table().to_pandas()
        return pa.concat_tables(tables).to_pandas()

    def _require_positions(self) -> None:
        if not self.positioned:
            raise ValueError(
                "this run's score parts have no position column (written before positions were "
                "recorded); read them by sample id"
            )
