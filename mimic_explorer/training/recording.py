"""Score rows: one sample at one epoch (or one scoring pass), in the run directory's long format.

Why one builder: training records every epoch of every sample, ``score`` records one pass of a fixed
checkpoint, and image-text pairs add their per-pair columns — three writers of one table. They stay
one table (the app, Stage 2 and resuming read them alike) only while one function builds its rows.
Columns and sort order are described in ``store.layout``; ``pred`` is left out when the task has no
prediction to record (a pairs ``score``), and a task's extra columns (CLIP scores, …) follow.

Why Arrow: a run builds one table per epoch; taking rows of an Arrow string array is a C++ gather,
where building Python strings per row costs more than an epoch of a linear probe.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import torch

from mimic_explorer.training.loop import EpochRecord

SCORE_COLUMNS = ["sample_id", "epoch", "step", "position", "proj", "weight", "cos", "loss", "pred", "batch_size"]
Values = np.ndarray | torch.Tensor | None


def _floats(values: Values, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    if isinstance(values, torch.Tensor):
        values = values.detach().double().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _ints(values: Values | int, n: int, dtype) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    if np.ndim(values) == 0:
        return np.full(n, values, dtype=dtype)
    return np.asarray(values, dtype=dtype)


def score_rows(
    sample_ids: pa.Array | np.ndarray,
    index: np.ndarray,
    *,
    epoch: int,
    step: np.ndarray | int,
    proj: Values,
    weight: Values,
    cos: Values,
    loss: Values,
    pred: Values,
    batch_size: np.ndarray | int | None = None,
    positions: np.ndarray | None = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> pa.Table:
    """Score rows of the samples ``index`` (rows of ``sample_ids``; their pool positions are
    ``positions[index]``, or ``index`` itself without ``positions``).

    ``step``, ``batch_size``: per row or one value for all (``batch_size`` defaults to the row
    count: one batch). ``proj`` / ``weight`` / ``cos`` / ``loss``: per row, NaN when None; ``pred``
    per row, the column left out when None. ``extra``: further columns, in order."""
    index = np.asarray(index, dtype=np.int64)
    n = len(index)
    ids = sample_ids if isinstance(sample_ids, pa.Array) else pa.array(np.asarray(sample_ids, dtype=object).astype(str))
    columns = {
        "sample_id": ids.take(pa.array(index)),
        "epoch": np.full(n, epoch, dtype=np.int32),
        "step": _ints(step, n, np.int64),
        "position": index if positions is None else np.asarray(positions, dtype=np.int64)[index],
        "proj": _floats(proj, n),
        "weight": _floats(weight, n),
        "cos": _floats(cos, n),
        "loss": _floats(loss, n),
        "pred": None if pred is None else _ints(pred, n, np.int32),
        "batch_size": _ints(n if batch_size is None else batch_size, n, np.int32),
    }
    names = [name for name in SCORE_COLUMNS if columns[name] is not None]
    arrays = [columns[name] for name in names]
    for name, values in (extra or {}).items():
        names.append(name)
        arrays.append(values)
    return pa.table(arrays, names=names)


def epoch_table(record: EpochRecord, sample_ids: pa.Array, positions: np.ndarray | None = None) -> pa.Table:
    """One training epoch's rows, ids taken from a prebuilt Arrow array of all sample ids.

    ``record.index`` indexes ``sample_ids`` and ``positions`` (the pool position of each index: the
    features' positions for a linear probe); without ``positions`` the index is the pool position."""
    return score_rows(
        sample_ids,
        record.index,
        epoch=record.epoch,
        step=record.step,
        proj=record.proj,
        weight=record.weight,
        cos=record.cos,
        loss=record.loss,
        pred=record.pred,
        batch_size=record.batch_size,
        positions=positions,
    )


def epoch_frame(record: EpochRecord, sample_ids: np.ndarray, positions: np.ndarray | None = None):
    """``epoch_table`` as a pandas frame (the demo keeps its few epochs in memory)."""
    return epoch_table(record, pa.array(np.asarray(sample_ids, dtype=object).astype(str)), positions).to_pandas()


def scored_batch_rows(
    sample_ids: pa.Array | np.ndarray,
    positions: np.ndarray,
    step: int,
    scores,
    weights: torch.Tensor,
    pred: Values = None,
    extra: Mapping[str, np.ndarray] | None = None,
) -> pa.Table:
    """The rows of one batch a fixed checkpoint scored (``score``: epoch 0): its ``BatchScores``' proj, cos
    and loss with the batch's Stage-1 weights, and the task's prediction and extra columns."""
    return score_rows(
        sample_ids,
        positions,
        epoch=0,
        step=step,
        proj=scores.proj,
        weight=weights,
        cos=scores.cos,
        loss=scores.loss,
        pred=pred,
        extra=extra,
    )
