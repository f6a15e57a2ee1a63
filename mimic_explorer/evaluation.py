"""Detection metrics when ground truth is known: how well a score finds mislabeled samples.

Convention: positives are the noisy samples; a filter predicts "noisy" for samples it drops; a score
ranks samples by utility (higher = keep), so its negation is the noisiness score for AUROC and AP.
"""

from __future__ import annotations

import numpy as np


def detection_metrics(is_noisy: np.ndarray, utility: np.ndarray, keep: np.ndarray | None = None) -> dict[str, float]:
    """precision / recall / F1 of ``~keep`` against ``is_noisy``, AUROC and AP of ``-utility``,
    and the quality-estimate error (fraction kept − true clean fraction)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    is_noisy = np.asarray(is_noisy, dtype=bool)
    utility = np.asarray(utility, dtype=np.float64)
    out: dict[str, float] = {"true_quality": float(1.0 - is_noisy.mean())}
    if is_noisy.all() or (~is_noisy).all():
        out.update(auroc=float("nan"), ap=float("nan"))
    else:
        finite = np.nan_to_num(utility, nan=np.nanmin(utility) if np.isfinite(utility).any() else 0.0)
        out["auroc"] = float(roc_auc_score(is_noisy, -finite))
        out["ap"] = float(average_precision_score(is_noisy, -finite))
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
    keep_count = int(round(quality * len(utility)))
    order = np.argsort(-utility, kind="stable")
    keep = np.zeros(len(utility), dtype=bool)
    keep[order[:keep_count]] = True
    return keep
