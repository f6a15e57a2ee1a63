"""From recorded scores to the run's per-sample table, Stage 2 and evaluation.

Shared by ``train`` and ``score`` so both write the same ``samples.parquet`` columns and the same
evaluation block in ``meta.json``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mimic_explorer import baselines, stage2
from mimic_explorer.evaluation import detection_metrics, threshold_at_quality
from mimic_explorer.recording import proj_summaries


def samples_table(
    sample_ids: np.ndarray,
    sources: np.ndarray,
    labels: np.ndarray,
    true_labels: np.ndarray | None,
    is_noisy: np.ndarray | None,
) -> pd.DataFrame:
    frame = pd.DataFrame({"sample_id": np.asarray(sample_ids, dtype=object).astype(str),
                          "source": np.asarray(sources, dtype=object).astype(str),
                          "label": np.asarray(labels, dtype=np.int64)})
    if true_labels is not None:
        frame["true_label"] = np.asarray(true_labels, dtype=np.int64)
        frame["is_noisy"] = np.asarray(is_noisy, dtype=bool)
    return frame


def add_signals(samples: pd.DataFrame, signals: dict[str, np.ndarray], row_ids: np.ndarray) -> pd.DataFrame:
    """Join per-sample signal arrays (rows identified by ``row_ids``) onto ``samples``."""
    frame = pd.DataFrame({"sample_id": np.asarray(row_ids, dtype=object).astype(str)})
    for name in ("reference_loss", "model_loss", "reducible_loss", "grand"):
        if name in signals:
            frame[name] = signals[name].astype(np.float64)
    if "model_pred" in signals:
        frame["pred"] = signals["model_pred"].astype(np.int64)
    return samples.merge(frame, on="sample_id", how="left")


def add_stage2(samples: pd.DataFrame, scores: pd.DataFrame, binarisation: str, aggregation: str) -> pd.DataFrame:
    ensemble = stage2.aggregate(scores, binarisation, aggregation)
    samples = samples.join(ensemble[["mimic_score", "keep", "votes"]], on="sample_id")
    samples = samples.join(proj_summaries(scores), on="sample_id")
    samples["keep"] = samples["keep"].fillna(False).astype(bool)
    return samples


def evaluate(samples: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Detection metrics for mimic_score (its own filter) and every baseline (cut at the same kept
    fraction), when ground truth exists; empty otherwise."""
    if "is_noisy" not in samples.columns or "mimic_score" not in samples.columns:
        return {}
    valid = samples[np.isfinite(samples["mimic_score"].to_numpy(dtype=float))]
    if valid.empty:
        return {}
    quality = stage2.quality_estimate(valid["keep"].to_numpy())
    out = {"mimic_score": detection_metrics(valid["is_noisy"], valid["mimic_score"], valid["keep"])}
    for column in baselines.available(valid):
        if column == "mimic_score":
            continue
        util = baselines.utility(valid, column)
        if not np.isfinite(util).all():
            continue
        out[column] = detection_metrics(valid["is_noisy"], util, threshold_at_quality(util, quality))
    return out


def format_evaluation(evaluation: dict[str, dict[str, float]]) -> str:
    if not evaluation:
        return ""
    lines = [f"{'signal':<16}{'AUROC':>8}{'AP':>8}{'prec':>8}{'recall':>8}{'F1':>8}"]
    for name, m in evaluation.items():
        lines.append(f"{name:<16}{m['auroc']:>8.3f}{m['ap']:>8.3f}{m.get('precision', float('nan')):>8.3f}"
                     f"{m.get('recall', float('nan')):>8.3f}{m.get('f1', float('nan')):>8.3f}")
    m = evaluation["mimic_score"]
    lines.append(f"quality: estimated {m['estimated_quality']:.3f}, true {m['true_quality']:.3f} "
                 f"(error {m['quality_error']:+.3f})")
    return "\n".join(lines)
