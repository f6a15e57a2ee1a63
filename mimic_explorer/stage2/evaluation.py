"""Detection metrics when ground truth is known: how well a score finds mislabeled samples.

Convention: positives are the noisy samples; a filter predicts "noisy" for samples it drops; a score
ranks samples by utility (higher = keep), so its negation is the noisiness score for AUROC and AP.
"""

from __future__ import annotations

import numpy as np


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank (as in the Mann–Whitney statistic)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for ``positive`` (ties count one half)."""
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    ranks = _average_ranks(np.asarray(score, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(positive: np.ndarray, score: np.ndarray) -> float:
    """Average precision: Σ (R_k − R_{k−1}) · P_k over the distinct score thresholds, high to low
    (the step-wise definition scikit-learn uses)."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    sorted_score, hits = score[order], positive[order]
    last_of_group = np.r_[sorted_score[1:] != sorted_score[:-1], True]
    true_pos = np.cumsum(hits)[last_of_group]
    predicted = (np.flatnonzero(last_of_group) + 1).astype(np.float64)
    precision = true_pos / predicted
    recall = true_pos / max(int(positive.sum()), 1)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def detection_metrics(is_noisy: np.ndarray, utility: np.ndarray, keep: np.ndarray | None = None) -> dict[str, float]:
    """precision / recall / F1 of ``~keep`` against ``is_noisy``, AUROC and AP of ``-utility``,
    and the quality-estimate error (fraction kept − true clean fraction)."""
    is_noisy = np.asarray(is_noisy, dtype=bool)
    utility = np.asarray(utility, dtype=np.float64)
    out: dict[str, float] = {"true_quality": float(1.0 - is_noisy.mean())}
    if is_noisy.all() or (~is_noisy).all():
        out.update(auroc=float("nan"), ap=float("nan"))
    else:
        finite = np.nan_to_num(utility, nan=np.nanmin(utility) if np.isfinite(utility).any() else 0.0)
        out["auroc"] = auroc(is_noisy, -finite)
        out["ap"] = average_precision(is_noisy, -finite)
    if keep is not None:
        dropped = ~np.asarray(keep, dtype=bool)
        true_positives = float((dropped & is_noisy).sum())
        precision = true_positives / dropped.sum() if dropped.any() else 0.0
        recall = true_positives / is_noisy.sum() if is_noisy.any() else 0.0
        out["precision"] = float(precision)
        out["recall"] = float(recall)
        out["f1"] = float(2 * precision * recall / (precision + recall)) if precision + recall > 0 else 0.0
        out["estimated_quality"] = float(1.0 - dropped.mean())
        out["quality_error"] = out["estimated_quality"] - out["true_quality"]
    return out


def threshold_at_quality(utility: np.ndarray, quality: float) -> np.ndarray:
    """Keep mask of the top ``quality`` fraction by utility (for baselines without their own filter)."""
    utility = np.asarray(utility, dtype=np.float64)
    keep_count = round(quality * len(utility))
    order = np.argsort(-utility, kind="stable")
    keep = np.zeros(len(utility), dtype=bool)
    keep[order[:keep_count]] = True
    return keep
