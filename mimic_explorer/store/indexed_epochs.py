"""Per-epoch distributions and trajectories from the app index's (epochs × samples) arrays.

Why: the "Per epoch" tab plots each signal's quantile bands over epochs and one epoch's histogram,
split clean / mislabeled. Read from the score parts (``store.scores.EpochScores``) that means decoding
every part and testing 12.8 M ids against a set of the mislabeled ones per part — 20 s and more at
DataComp scale. The index already holds every (sample, epoch) cell as one array row per epoch, and
the mislabeled samples are a mask by position, so a band is one row of an array.

Exact where it is used: only when every (sample, epoch) cell holds one score row (``most_rows`` ≤ 1
in the index manifest — a cell's value is then that row's value, and the distribution of the cells is
the distribution of the rows). A run that scored a sample twice in an epoch keeps ``EpochScores``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mimic_explorer.store.atomic import load_npy, release_mapped_pages
from mimic_explorer.store.histogram import Histogram, histogram, histogram_from_record, histogram_record
from mimic_explorer.store.scores import QUANTILES, EpochScores
from mimic_explorer.store.trajectory_index import row_counts


class IndexedEpochScores:
    """``EpochScores``'s questions answered from an ``AppIndex`` (see the module docstring); the mislabeled
    samples are passed as a boolean mask by row position (``noisy_marker``), not as a set of ids."""

    def __init__(self, index, parts: EpochScores):
        self._index = index
        self._parts = parts
        self._record = index.manifest["trajectories"]

    available = True

    @property
    def signals(self) -> list[str]:
        """The per-epoch signals, in the order the app offers them."""
        return list(self._record["signals"])

    @property
    def epochs(self) -> list[int]:
        """The epochs, ascending."""
        return [int(e) for e in self._record["epochs"]]

    @staticmethod
    def noisy_marker(noisy: np.ndarray, samples) -> np.ndarray:
        """What ``values`` and ``quantile_bands`` take to split clean / mislabeled: the mask itself."""
        return np.asarray(noisy, dtype=bool)

    def _epoch_row(self, signal: str, epoch_number: int) -> tuple[np.ndarray, np.ndarray]:
        """(the signal's value of every sample in one epoch, which samples have a row that epoch): stored means,
        or sums of one row each — the values themselves (``most_rows`` ≤ 1)."""
        k = self.signals.index(signal)
        values = self._index._map(self._index.files.trajectory(k))[epoch_number]  # read where the caller picks
        present = np.asarray(row_counts(self._record, self._index.files, self._index._map)[epoch_number]) > 0
        return values, present

    def values(
        self, signal: str, epoch: int | None = None, noisy: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One signal's values (one epoch, or all, epoch after epoch) and, given the mislabeled mask, which they are."""
        if signal not in self.signals:
            return np.array([]), None
        numbers = range(len(self.epochs)) if epoch is None else [self.epochs.index(int(epoch))]
        chunks, marks = [], []
        for number in numbers:
            values, present = self._epoch_row(signal, number)
            chunks.append(np.asarray(values[present], dtype=np.float64))
            if noisy is not None:
                marks.append(noisy[present])
        self._index.release()
        return np.concatenate(chunks), (np.concatenate(marks) if noisy is not None else None)

    def quantile_bands(self, signal: str, noisy: np.ndarray | None = None) -> pd.DataFrame:
        """Per epoch (and per group clean / mislabeled when ``noisy`` is given): the 5/25/50/75/95 % quantiles —
        those the index build stored when ``noisy`` is the run's own ``is_noisy`` (or None), else computed."""
        rows = []
        if signal in self.signals:
            stored = (self._record.get("bands") or {}).get(signal)
            if stored is not None and (noisy is None or self._is_the_runs_truth(noisy)):
                rows = [row for group in _groups(noisy is not None) for row in stored.get(group, [])]
            else:
                for number, epoch in enumerate(self.epochs):
                    values, present = self._epoch_row(signal, number)
                    rows += band_rows(values, present, noisy, epoch)
                    self._index.release()
        return _bands_frame(rows)

    def histogram(self, signal: str, epoch: int, noisy: np.ndarray | None = None) -> Histogram:
        """One signal's histogram in one epoch (mislabeled counted apart given the mask): the one the index
        build stored when ``noisy`` is the run's own ``is_noisy`` (or None), else computed from the row."""
        number = self.epochs.index(int(epoch))
        stored = ((self._record.get("histograms") or {}).get(signal) or {}).get("split" if noisy is not None else "all")
        if stored is not None and (noisy is None or self._is_the_runs_truth(noisy)):
            return histogram_from_record(stored[number])
        values, present = self._epoch_row(signal, number)
        found = histogram(values[present], noisy=None if noisy is None else noisy[present])
        self._index.release()
        return found

    def _is_the_runs_truth(self, noisy: np.ndarray) -> bool:
        if not self._index.is_numeric("is_noisy"):
            return False
        same = np.array_equal(np.asarray(self._index.column("is_noisy"), dtype=bool), noisy)
        self._index.release()
        return same

    def trajectories(self, sample_ids: list[str], signals: list[str] | None = None) -> pd.DataFrame:
        """Rows ``sample_id, epoch, <signals>`` for the given ids: the index's trajectories, found by id."""
        signals = [s for s in (signals or self.signals) if s in self.signals]
        positions = self._index.positions_of(sample_ids)
        frame = self._index.trajectories(positions[positions >= 0])
        return frame[["sample_id", "epoch", *signals]].reset_index(drop=True)


BAND_NAMES = [f"q{round(q * 100)}" for q in QUANTILES]


def _groups(split: bool) -> tuple[str, ...]:
    return ("clean", "mislabeled") if split else ("all",)


def band_rows(values: np.ndarray, present: np.ndarray, noisy: np.ndarray | None, epoch: int) -> list[dict]:
    """One epoch's quantile-band rows (``EpochScores.quantile_bands``'s): each group's finite values."""
    groups = {"all": present} if noisy is None else {"clean": present & ~noisy, "mislabeled": present & noisy}
    rows = []
    for group, mask in groups.items():
        part = values[mask]  # in the values' own dtype (float32 trajectories: half the bytes of a float64 copy)
        part = np.asarray(part[np.isfinite(part)], dtype=np.float64)
        if len(part):
            quantiles = np.quantile(part, QUANTILES, overwrite_input=True).tolist()  # part is this loop's copy
            rows.append({"epoch": int(epoch), "group": group, **dict(zip(BAND_NAMES, quantiles, strict=True))})
    return rows


def _bands_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["epoch", "group", *BAND_NAMES])
    return frame.sort_values(["group", "epoch"]).reset_index(drop=True)


def stored_epoch_views(files, record: dict, noisy: np.ndarray | None) -> tuple[dict | None, dict | None]:
    """(the bands of every signal, each (signal, epoch)'s histogram) for the index manifest — of all
    samples, and clean / mislabeled when the run has ground truth — computed once at build, so the Per
    epoch tab's first render reads them; (None, None) when a (sample, epoch) cell may hold several rows
    (the bands are then the rows')."""
    if record.get("most_rows", 2) > 1:
        return None, None
    rows_file = row_counts(record, files, lambda path: load_npy(path, mmap_mode="r"))
    bands, histograms = {}, {}
    for k, signal in enumerate(record["signals"]):
        array = load_npy(files.trajectory(k), mmap_mode="r")
        by_group: dict[str, list[dict]] = {}
        by_split: dict[str, list[dict]] = {"all": [], **({"split": []} if noisy is not None else {})}
        for number, epoch in enumerate(record["epochs"]):
            values, present = array[number], np.asarray(rows_file[number]) > 0  # values read where the masks pick
            for split in (False, True) if noisy is not None else (False,):
                for row in band_rows(values, present, noisy if split else None, epoch):
                    by_group.setdefault(row["group"], []).append(row)
            present_values = values[present]  # the stored dtype (float32: half a float64 copy); exact either way
            by_split["all"].append(histogram_record(histogram(present_values)))
            if noisy is not None:
                by_split["split"].append(histogram_record(histogram(present_values, noisy=noisy[present])))
            del present_values
            release_mapped_pages(array), release_mapped_pages(rows_file)
        bands[signal], histograms[signal] = by_group, by_split
    return bands, histograms


def epoch_scores_for(index, parts: EpochScores):
    """The per-epoch reader for a run: from the index when it holds one score row per (sample, epoch)
    cell, else the score parts themselves."""
    record = index.manifest.get("trajectories") if index is not None else None
    if not record or record.get("most_rows", 2) > 1:
        return parts
    return IndexedEpochScores(index, parts)
