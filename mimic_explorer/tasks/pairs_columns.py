"""The per-pair columns of an image-text ``score`` run: the score rows of one batch, and the pool's
``samples.parquet`` table from the rows of every batch.

Why a module: besides the mimic score a DataComp user filters on CLIP scores (the cosine of a pair's
two embeddings, DataComp's standard filter) and on the loss under the reference; each is computed
from the same batch the mimic score came from, so every column of a pair speaks of one batch, which
``score_batch`` records (InfoNCE couples the batch: a pair's loss and mimic score depend on the other
pairs it was scored with).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch
from torch import Tensor

from mimic_explorer.models.dual import DualOutput
from mimic_explorer.scoring.contrastive import InfoNCELoss, clip_score
from mimic_explorer.scoring.prepared import BatchScores

#: score-row columns of a pairs run beyond the long format's sample_id, epoch, step, proj, weight
PAIR_COLUMNS = ("clip_score_model", "clip_score_ref", "reference_loss", "truncated")
#: score-row columns ``pair_samples`` reads (with ``score_batch``, derived from ``step``)
PAIR_ROW_COLUMNS = ("sample_id", "step", "loss", "batch_size", *PAIR_COLUMNS)
#: step numbers a chunk's batches may use (``score_step``)
STEPS_PER_CHUNK = 100_000


def _numpy(values: Tensor) -> np.ndarray:
    return values.detach().double().cpu().numpy()


def batch_rows(sample_ids: np.ndarray, positions: np.ndarray, step: int, scores: BatchScores, weights: Tensor,
               reference: DualOutput, truncated: np.ndarray) -> pd.DataFrame:
    """One batch's score rows: the pairs' pool positions, proj (cos), the Stage-1 weight, the pair's loss
    under the model, the CLIP scores under model and reference, the loss under the reference, and
    whether the caption was cut."""
    outputs = scores.outputs
    with torch.no_grad():
        reference_loss = InfoNCELoss()(reference, None)
        return pd.DataFrame({
            "sample_id": np.asarray(sample_ids, dtype=object).astype(str), "epoch": 0, "step": step,
            "position": np.asarray(positions, dtype=np.int64), "proj": _numpy(scores.proj), "weight": _numpy(weights),
            "cos": _numpy(scores.cos) if scores.cos is not None else np.nan, "loss": _numpy(scores.loss),
            "batch_size": np.int32(len(sample_ids)),
            "clip_score_model": _numpy(clip_score(outputs.image, outputs.text)),
            "clip_score_ref": _numpy(clip_score(reference.image, reference.text)),
            "reference_loss": _numpy(reference_loss), "truncated": np.asarray(truncated, dtype=bool),
        })


def score_step(chunk: int, step: int, rank: int = 0, world: int = 1) -> int:
    """The ``step`` of the ``step``-th batch of a rank's ``chunk``: unique over the run and ascending in
    the order of the chunk parts' names (chunk, then rank), so a batch's number follows from it alone."""
    return (chunk * world + rank) * STEPS_PER_CHUNK + step


def batch_steps(parts: Sequence[Path]) -> np.ndarray:
    """The sorted distinct ``step`` of every scoring batch of the parts (one small column read per part:
    memory is one value per batch, not per pair)."""
    found = [np.unique(pq.read_table(path, columns=["step"]).column("step").to_numpy()) for path in parts]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def score_batches(steps: np.ndarray, all_steps: np.ndarray) -> np.ndarray:
    """``score_batch`` of rows with these ``steps``: the batch's number, dense from 0 over the run."""
    return np.searchsorted(all_steps, np.asarray(steps)).astype(np.int64)


def read_pair_scores(parts: Sequence[Path]) -> pd.DataFrame:
    """Every part's rows with ``score_batch`` (the in-memory path, for small pools and tests; a run
    finishes a range of positions at a time, ``pipeline/pairs_score.py``)."""
    frame = pd.concat([pd.read_parquet(path) for path in parts], ignore_index=True)
    frame["score_batch"] = score_batches(frame["step"].to_numpy(), batch_steps(parts))
    return frame


def pair_samples(samples: pd.DataFrame, captions: np.ndarray, true_captions: np.ndarray, positions: np.ndarray,
                 is_noisy: np.ndarray | None, scores: pd.DataFrame) -> pd.DataFrame:
    """``samples`` (one row per good pair, at pool ``positions``) with its caption (and, when captions
    were swapped, the original and ``is_noisy``), and the per-pair columns of its score row."""
    samples = samples.copy()
    samples["caption"] = pd.array(captions[positions].astype(str), dtype="str")
    if is_noisy is not None:
        samples["true_caption"] = pd.array(true_captions[positions].astype(str), dtype="str")
        samples["is_noisy"] = np.asarray(is_noisy[positions], dtype=bool)
    per_pair = scores.set_index("sample_id")
    for column in ("clip_score_ref", "clip_score_model", "reference_loss"):
        samples[column] = samples["sample_id"].map(per_pair[column]).astype(np.float64)
    samples["model_loss"] = samples["sample_id"].map(per_pair["loss"]).astype(np.float64)
    samples["score_batch"] = samples["sample_id"].map(per_pair["score_batch"]).astype("Int64")
    samples["batch_size"] = samples["sample_id"].map(per_pair["batch_size"]).astype("Int64")
    samples["caption_truncated"] = samples["sample_id"].map(per_pair["truncated"]).fillna(False).astype(bool)
    return samples
