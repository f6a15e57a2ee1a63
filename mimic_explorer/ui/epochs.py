"""Per-epoch scores, read lazily: trajectories of a few samples and per-epoch distributions.

Why lazy and column-wise: the long-format score table is samples × epochs rows (20 M at a million
samples over 20 epochs). The explorer opens without touching it; a trajectory reads only the rows of
the asked-for ids and a distribution only the columns it plots, through pyarrow's dataset scanner.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds

from mimic_explorer.store.paths import SCORES_DIR, SCORES_FILE

#: Per-epoch signals the app knows how to plot, in the order it offers them.
SIGNALS = ("proj", "weight", "cos", "loss")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class EpochScores:
    """The per-epoch score parts of one run directory."""

    def __init__(self, run_dir: str | Path):
        run_dir = Path(run_dir)
        single = run_dir / SCORES_FILE
        parts = [single] if single.exists() else sorted((run_dir / SCORES_DIR).glob("*.parquet"))
        self._dataset = ds.dataset([str(p) for p in parts], format="parquet") if parts else None

    @property
    def available(self) -> bool:
        return self._dataset is not None

    @cached_property
    def signals(self) -> list[str]:
        if self._dataset is None:
            return []
        names = set(self._dataset.schema.names)
        return [s for s in SIGNALS if s in names]

    @cached_property
    def epochs(self) -> list[int]:
        if self._dataset is None:
            return []
        column = self._dataset.to_table(columns=["epoch"]).column("epoch")
        return sorted(int(e) for e in pc.unique(column).to_pylist())

    def trajectories(self, sample_ids: list[str], signals: list[str] | None = None) -> pd.DataFrame:
        """Rows ``sample_id, epoch, <signals>`` for the given ids, one row per (sample, epoch)."""
        signals = [s for s in (signals or self.signals) if s in self.signals]
        columns = ["sample_id", "epoch", *signals]
        if self._dataset is None or not sample_ids:
            return pd.DataFrame(columns=columns)
        table = self._dataset.to_table(columns=columns, filter=pc.field("sample_id").isin([str(s) for s in sample_ids]))
        frame = table.to_pandas()
        frame["sample_id"] = frame["sample_id"].astype(str)
        return frame.groupby(["sample_id", "epoch"], as_index=False)[signals].mean().sort_values(["sample_id", "epoch"])

    def signal(self, signal: str, epoch: int | None = None) -> pd.DataFrame:
        """``sample_id, epoch, <signal>`` for every sample (one epoch, or all)."""
        if self._dataset is None or signal not in self.signals:
            return pd.DataFrame(columns=["sample_id", "epoch", signal])
        flt = None if epoch is None else pc.field("epoch") == epoch
        frame = self._dataset.to_table(columns=["sample_id", "epoch", signal], filter=flt).to_pandas()
        frame["sample_id"] = frame["sample_id"].astype(str)
        return frame

    def quantile_bands(self, signal: str, noisy_ids: set[str] | None = None) -> pd.DataFrame:
        """Per epoch (and per group clean/mislabeled when ``noisy_ids`` is given): 5/25/50/75/95 %."""
        frame = self.signal(signal)
        if frame.empty:
            return pd.DataFrame(columns=["epoch", "group", *[f"q{int(q * 100)}" for q in QUANTILES]])
        if noisy_ids is not None:
            frame["group"] = np.where(frame["sample_id"].isin(noisy_ids), "mislabeled", "clean")
        else:
            frame["group"] = "all"
        bands = frame.groupby(["epoch", "group"])[signal].quantile(list(QUANTILES)).unstack()
        bands.columns = [f"q{int(round(q * 100))}" for q in bands.columns]
        return bands.reset_index()
