"""Per-epoch scores of a run, read lazily: trajectories of a few samples and per-epoch distributions.

Why lazy and column-wise: the long-format score table is samples × epochs rows (20 M at a million
samples over 20 epochs). The app opens a run without touching it; a trajectory reads only the rows of
the asked-for ids and a distribution only the columns it plots, through pyarrow's dataset scanner.
``Run.epoch_scores`` gives one per run; part names come from ``RunLayout`` (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from mimic_explorer.store.histogram import Histogram, histogram
from mimic_explorer.store.layout import RunLayout

#: Per-epoch signals the app knows how to plot, in the order it offers them.
SIGNALS = ("proj", "weight", "cos", "loss")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class EpochScores:
    """The per-epoch score parts of one run directory (``Run.epoch_scores``)."""

    def __init__(self, run_dir: str | Path):
        parts = RunLayout(Path(run_dir)).score_parts()
        self._dataset = ds.dataset([str(p) for p in parts], format="parquet") if parts else None

    @property
    def available(self) -> bool:
        """Whether the run has score parts."""
        return self._dataset is not None

    @cached_property
    def signals(self) -> list[str]:
        """The per-epoch signals the parts hold, in the order the app offers them (``SIGNALS``)."""
        if self._dataset is None:
            return []
        names = set(self._dataset.schema.names)
        return [s for s in SIGNALS if s in names]

    @cached_property
    def epochs(self) -> list[int]:
        """The epochs the parts hold, ascending."""
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

    @classmethod
    def noisy_marker(cls, noisy: np.ndarray, samples) -> pa.Array:
        """What ``values`` and ``quantile_bands`` take to split clean / mislabeled, from the mask by row
        position: the set of those samples' ids (the parts know samples by id)."""
        return cls.id_set(samples["sample_id"].to_numpy()[noisy])

    @staticmethod
    def id_set(sample_ids) -> pa.Array:
        """Ids as the set ``values`` and ``quantile_bands`` mark rows by (build once, pass many times)."""
        return pa.array(np.asarray(sample_ids, dtype=object), pa.string())

    def values(
        self, signal: str, epoch: int | None = None, noisy_ids: pa.Array | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One signal's values (one epoch, or all) and, given the mislabeled ids (``id_set``), which rows they are."""
        if self._dataset is None or signal not in self.signals:
            return np.array([]), None
        flt = None if epoch is None else pc.field("epoch") == epoch
        columns = [signal] + (["sample_id"] if noisy_ids is not None else [])
        table = self._dataset.to_table(columns=columns, filter=flt)
        values = table.column(signal).to_numpy().astype(np.float64)
        noisy = None
        if noisy_ids is not None:
            noisy = pc.is_in(table.column("sample_id"), value_set=noisy_ids).to_numpy(zero_copy_only=False)
        return values, noisy

    def histogram(self, signal: str, epoch: int, noisy_ids: pa.Array | None = None) -> Histogram:
        """The histogram of one signal in one epoch (mislabeled rows counted apart given ``noisy_ids``)."""
        values, noisy = self.values(signal, epoch, noisy_ids)
        return histogram(values, noisy=noisy)

    def quantile_bands(self, signal: str, noisy_ids: pa.Array | None = None) -> pd.DataFrame:
        """Per epoch (and per group clean / mislabeled when ``noisy_ids`` — from ``id_set`` — is
        given): the 5/25/50/75/95 % quantiles. One score part at a time, so memory stays one epoch."""
        names = [f"q{round(q * 100)}" for q in QUANTILES]
        rows = []
        if self._dataset is None or signal not in self.signals:
            return pd.DataFrame(columns=["epoch", "group", *names])
        columns = ["epoch", signal] + (["sample_id"] if noisy_ids is not None else [])
        for fragment in self._dataset.get_fragments():
            table = fragment.to_table(columns=columns)
            epochs = table.column("epoch").to_numpy()
            values = table.column(signal).to_numpy().astype(np.float64)
            noisy = (
                pc.is_in(table.column("sample_id"), value_set=noisy_ids).to_numpy(zero_copy_only=False)
                if noisy_ids is not None
                else None
            )
            for epoch in np.unique(epochs):
                in_epoch = epochs == epoch
                groups = (
                    {"all": in_epoch} if noisy is None else {"clean": in_epoch & ~noisy, "mislabeled": in_epoch & noisy}
                )
                for group, mask in groups.items():
                    part = values[mask]
                    part = part[np.isfinite(part)]
                    if len(part):
                        rows.append(
                            {
                                "epoch": int(epoch),
                                "group": group,
                                **dict(zip(names, np.quantile(part, QUANTILES), strict=True)),
                            }
                        )
        return (
            pd.DataFrame(rows, columns=["epoch", "group", *names])
            .sort_values(["group", "epoch"])
            .reset_index(drop=True)
        )
