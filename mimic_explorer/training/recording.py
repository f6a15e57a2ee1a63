"""Turn training records into the run directory's tables.

``scores`` is long format (one row per sample per epoch, its columns and sort order described in
``store.layout``); the per-sample summaries (mean / min / last proj) are derived from it so the two can
never disagree.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from mimic_explorer.training.loop import EpochRecord

SCORE_COLUMNS = ["sample_id", "epoch", "step", "position", "proj", "weight", "cos", "loss", "pred", "batch_size"]


def epoch_frame(record: EpochRecord, sample_ids: np.ndarray, positions: np.ndarray | None = None) -> pd.DataFrame:
    """One epoch's rows in the contract's long format (plus position, cos, loss, pred, batch_size)."""
    return epoch_table(record, pa.array(np.asarray(sample_ids, dtype=object).astype(str)), positions).to_pandas()


def epoch_table(record: EpochRecord, sample_ids: pa.Array, positions: np.ndarray | None = None) -> pa.Table:
    """One epoch's rows as an Arrow table, ids taken from a prebuilt Arrow array of all sample ids.

    ``record.index`` indexes ``sample_ids`` and ``positions`` (the pool position of each index: the
    features' positions for a linear probe); without ``positions`` the index is the pool position.

    Why Arrow: a run builds one table per epoch; taking rows of an Arrow string array is a C++
    gather, where building Python strings per row costs more than an epoch of a linear probe.
    """
    n = len(record.index)
    index = np.asarray(record.index, dtype=np.int64)

    def floats(values: np.ndarray | None) -> np.ndarray:
        return np.full(n, np.nan) if values is None else values.astype(np.float64)

    columns = {
        "sample_id": sample_ids.take(pa.array(index)),
        "epoch": np.full(n, record.epoch, dtype=np.int32),
        "step": record.step.astype(np.int64),
        "position": index if positions is None else np.asarray(positions, dtype=np.int64)[index],
        "proj": floats(record.proj),
        "weight": floats(record.weight),
        "cos": floats(record.cos),
        "loss": record.loss.astype(np.float64),
        "pred": record.pred.astype(np.int32),
        "batch_size": record.batch_size.astype(np.int32),
    }
    return pa.table([columns[name] for name in SCORE_COLUMNS], names=SCORE_COLUMNS)


def proj_summaries(scores: pd.DataFrame) -> pd.DataFrame:
    """Per-sample mean, min and last-epoch proj, indexed by sample_id."""
    ordered = scores.sort_values(["epoch", "step"], kind="stable")
    grouped = ordered.groupby("sample_id", sort=False)["proj"]
    return pd.DataFrame({"proj_mean": grouped.mean(), "proj_min": grouped.min(), "proj_last": grouped.last()})
