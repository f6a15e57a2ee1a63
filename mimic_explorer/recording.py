"""Turn training records into the run directory's tables.

``scores`` is long format (one row per sample per epoch); the per-sample summaries (mean / min / last
proj) are derived from it so the two can never disagree.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mimic_explorer.train import EpochRecord

SCORE_COLUMNS = ["sample_id", "epoch", "step", "proj", "weight", "cos", "loss", "pred", "batch_size"]


def epoch_frame(record: EpochRecord, sample_ids: np.ndarray) -> pd.DataFrame:
    """One epoch's rows in the contract's long format (plus cos, loss, pred, batch_size)."""
    frame = pd.DataFrame(
        {
            "sample_id": np.asarray(sample_ids, dtype=object)[record.index].astype(str),
            "epoch": np.full(len(record.index), record.epoch, dtype=np.int32),
            "step": record.step.astype(np.int64),
            "proj": record.proj.astype(np.float64) if record.proj is not None else np.nan,
            "weight": record.weight.astype(np.float64) if record.weight is not None else np.nan,
            "cos": record.cos.astype(np.float64) if record.cos is not None else np.nan,
            "loss": record.loss.astype(np.float64),
            "pred": record.pred.astype(np.int32),
            "batch_size": record.batch_size.astype(np.int32),
        }
    )
    return frame[SCORE_COLUMNS]


def proj_summaries(scores: pd.DataFrame) -> pd.DataFrame:
    """Per-sample mean, min and last-epoch proj, indexed by sample_id."""
    ordered = scores.sort_values(["epoch", "step"], kind="stable")
    grouped = ordered.groupby("sample_id", sort=False)["proj"]
    return pd.DataFrame({"proj_mean": grouped.mean(), "proj_min": grouped.min(), "proj_last": grouped.last()})
