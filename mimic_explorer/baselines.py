"""Baseline signals shown beside the mimic score, each turned into a *utility* (higher = keep), and the
combined score that joins the mimic score with the loss under the reference.

Why: users ask "is this better than just looking at the loss?". Each baseline's orientation is fixed
here once, so evaluation, the app and exports agree on it.

Why a combined score: with a reference trained on clean images that never saw the pool, the loss
under the reference ranks mislabeled samples at least as well as any mimic aggregate we measured
(benchmarks/RESULTS.md, "Detection with a reference that never saw the pool"): for a linear head the
mimic projection is the first-order change of a sample's loss along the task vector, i.e. a local
*reducible* loss, which subtracts the model's own view of the sample. Averaging the standardised
mean cos with the standardised log reference loss ranks within 0.008 AUROC of the reference loss on
symmetric noise and 0.04 above it on asymmetric noise (where the mimic score alone is also better),
and its values split into two groups more cleanly than the heavy-tailed loss, so a 2-component fit
gives a keep threshold and a quality estimate.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

#: column -> sign that turns it into a utility (higher = more useful)
UTILITY_SIGN = {
    "mimic_score": +1.0,
    "reference_loss": -1.0,  # high loss under the better model: likely mislabeled
    "model_loss": -1.0,
    "reducible_loss": +1.0,  # RHO-LOSS: learnable and not yet learnt → worth training on
    "grand": -1.0,  # GraNd: large gradient norm late in training marks hard / noisy samples
    "proj_mean": +1.0,
    "proj_min": +1.0,
    "proj_last": +1.0,
    "cos_mean": +1.0,
    "combined_score": +1.0,
    "clip_score_ref": +1.0,  # image-text pairs: cosine of the pair's embeddings under the reference (DataComp's filter)
    "clip_score_model": +1.0,
}


def utility(samples: pd.DataFrame, column: str) -> np.ndarray:
    return UTILITY_SIGN[column] * samples[column].to_numpy(dtype=np.float64)


def available(samples: pd.DataFrame) -> list[str]:
    return [c for c in UTILITY_SIGN if c in samples.columns]


def standardise(values: np.ndarray) -> np.ndarray:
    """(v − mean) / std over the finite values; NaN stays NaN; a constant column becomes zeros."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(len(values), np.nan)
    centre, spread = values[finite].mean(), values[finite].std()
    return (values - centre) / spread if spread > 0 else np.where(finite, 0.0, np.nan)


def combined_score(cos_mean: np.ndarray, reference_loss: np.ndarray) -> np.ndarray:
    """Utility (higher = keep) joining the mimic score and the loss under the reference:
    ``(z(cos_mean) + z(−log reference_loss)) / 2`` with z the standardisation over the pool.

    ``cos_mean`` is the sample's mean cos over the recorded epochs; the log tames the loss's heavy
    tail so one badly fit sample does not set the scale (losses are clipped at 1e-6 first). Its keep
    threshold is ``stage2.split_two_groups(score, "gmm")``.
    """
    cos_mean = np.asarray(cos_mean, dtype=np.float64)
    reference_loss = np.asarray(reference_loss, dtype=np.float64)
    if cos_mean.shape != reference_loss.shape:
        raise ValueError(f"cos_mean has shape {cos_mean.shape}, reference_loss {reference_loss.shape}; one value per sample each")
    return (standardise(cos_mean) + standardise(-np.log(np.clip(reference_loss, 1e-6, None)))) / 2
