"""Post-hoc cells of the detection study: every signal, aggregation, binarisation and combination
computed from one run's files (``samples.parquet`` and the recorded score parts), not by new runs.

Each cell is a utility (higher = keep) and a keep mask (its own threshold); ``metrics`` turns it into
AUROC, AP, F1 of "dropped = mislabeled" and the quality-estimate error (fraction kept − true clean
fraction).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mimic_explorer.stage2 import baselines
from mimic_explorer.stage2 import votes as stage2
from mimic_explorer.stage2.baselines import UTILITY_SIGN
from mimic_explorer.stage2.evaluation import detection_metrics

Cell = tuple[np.ndarray, np.ndarray]  # (utility, keep)
#: the default ranking with the package's split (``finalize.combined_split``: the noise-model quantile)
NOISE_MODEL_CELL = "combined_score; noise-model split"
#: the ranking before the model's loss joined it: (z(mean cos) + z(−log ref loss)) / 2, its GMM split
TWO_PART_CELL = "combined_score before (mean cos, ref loss); gmm"


def load(run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples, scores) of a run directory, samples in pool order."""
    from mimic_explorer.store.reader import open_run

    opened = open_run(run)
    return opened.samples.reset_index(drop=True), opened.scores


def load_probs(run: Path) -> np.ndarray | None:
    """The reference's class probabilities of a run (a row per samples row), or None."""
    from mimic_explorer.store.reader import open_run

    probs = open_run(run).reference_probs
    return None if probs is None else np.asarray(probs, dtype=np.float64)


def metrics(is_noisy: np.ndarray, cell: Cell) -> dict[str, float]:
    utility, keep = cell
    out = detection_metrics(is_noisy, utility, keep)
    return {k: out[k] for k in ("auroc", "ap", "precision", "recall", "f1", "estimated_quality", "quality_error")}


def split(utility: np.ndarray, rule: str) -> np.ndarray:
    """Keep mask of a continuous utility: ``sign`` (≥ 0), or the upper group of a 2-component ``gmm`` /
    2-means ``kmeans`` split (the rule stage 2 applies per epoch)."""
    if rule == "sign":
        return utility >= 0
    return stage2.split_two_groups(utility, rule)


def clean_posterior(values: np.ndarray) -> np.ndarray:
    """P(upper component | value) under a 2-component 1-D Gaussian mixture."""
    from sklearn.mixture import GaussianMixture

    x = np.asarray(values, dtype=np.float64).reshape(-1, 1)
    gmm = GaussianMixture(2, random_state=0).fit(x)
    return gmm.predict_proba(x)[:, int(np.argmax(gmm.means_.ravel()))]


def per_epoch(scores: pd.DataFrame, column: str, order: pd.Index) -> np.ndarray:
    """(N, E) matrix of one score column, rows in ``order`` (sample ids), columns epochs ascending."""
    table = scores.pivot_table(index="sample_id", columns="epoch", values=column, aggfunc="mean")
    return table.reindex(order).to_numpy(dtype=np.float64)


def ranks01(values: np.ndarray) -> np.ndarray:
    """Ranks scaled to (0, 1], ties averaged."""
    return pd.Series(values).rank(method="average").to_numpy() / len(values)


def stage2_cell(scores: pd.DataFrame, order: pd.Index, binarisation: str, aggregation: str) -> Cell:
    result = stage2.aggregate(scores, binarisation, aggregation).reindex(order)
    return result["mimic_score"].to_numpy(dtype=np.float64), result["keep"].fillna(False).to_numpy(dtype=bool)


def gm_cells(
    samples: pd.DataFrame,
    scores: pd.DataFrame,
    extra: dict[str, Cell] | None = None,
    probs: np.ndarray | None = None,
    reports: dict | None = None,
) -> dict[str, Cell]:
    """Every cell of one Grad-Mimic run (recorded epochs), plus ``extra`` (e.g. cleanlab). ``probs``: the
    reference's class probabilities (the noise-model split and the label posterior); the split's report
    goes into ``reports`` under "combined split" when given."""
    order = pd.Index(samples["sample_id"])
    proj = per_epoch(scores, "proj", order)
    cos = per_epoch(scores, "cos", order)
    epochs = proj.shape[1]
    cells: dict[str, Cell] = {}
    cells["mimic_score (weight ≥ 1/B, majority)"] = (
        samples["mimic_score"].to_numpy(float),
        samples["keep"].to_numpy(bool),
    )
    for binarisation in stage2.BINARISATIONS:
        for aggregation in ("majority", "unanimity"):
            cells[f"vote {binarisation} / {aggregation}"] = stage2_cell(scores, order, binarisation, aggregation)
    cells["vote: mean B·weight ≥ 1"] = stage2_cell(scores, order, "weight", "mean")
    k = min(5, epochs)
    aggregates = {
        "mean proj (all epochs)": proj.mean(1),
        f"mean proj, last {k}": proj[:, -k:].mean(1),
        f"mean proj, first {k}": proj[:, :k].mean(1),
        "proj, last epoch": proj[:, -1],
        "mean cos (all epochs)": cos.mean(1),
    }
    for name, values in aggregates.items():
        for rule in ("sign", "gmm", "kmeans"):
            cells[f"{name}; {rule}"] = (values, split(values, rule))
    for first in (1, 3, 5, 10):
        if first < epochs:
            cells[f"first {first} epochs: vote weight / majority"] = stage2_cell(
                scores[scores["epoch"] < first], order, "weight", "majority"
            )
    for column in ("reference_loss", "reducible_loss", "grand", "model_loss"):
        if column in samples:
            utility = UTILITY_SIGN[column] * samples[column].to_numpy(np.float64)
            for rule in ("gmm", "kmeans"):
                cells[f"{column}; {rule}"] = (utility, split(utility, rule))
    if "reference_loss" in samples:
        ref = -samples["reference_loss"].to_numpy(np.float64)
        mean_proj = proj.mean(1)
        combos = {
            "rank-avg(mean proj, −ref loss)": (ranks01(mean_proj) + ranks01(ref)) / 2,
            "rank-avg(mimic_score, −ref loss)": (
                ranks01(cells["mimic_score (weight ≥ 1/B, majority)"][0]) + ranks01(ref)
            )
            / 2,
        }
        log_ref = -np.log(np.clip(samples["reference_loss"].to_numpy(np.float64), 1e-12, None))
        zscore = lambda v: (v - v.mean()) / v.std()  # noqa: E731
        combos["z-avg(mean proj, −log ref loss)"] = (zscore(mean_proj) + zscore(log_ref)) / 2
        for name, values in combos.items():
            for rule in ("gmm", "kmeans"):
                cells[f"{name}; {rule}"] = (values, split(values, rule))
        model_loss = samples["model_loss"].to_numpy(np.float64) if "model_loss" in samples.columns else None
        combined = baselines.combined_score(cos.mean(1), samples["reference_loss"].to_numpy(np.float64), model_loss)
        for rule in ("gmm", "kmeans"):
            cells[f"combined_score; {rule}"] = (combined, split(combined, rule))
        two_parts = baselines.combined_score(cos.mean(1), samples["reference_loss"].to_numpy(np.float64))
        cells[TWO_PART_CELL] = (two_parts, split(two_parts, "gmm"))
        if probs is not None:
            from mimic_explorer.commands.finalize import combined_split
            from mimic_explorer.stage2.noise_model import fit_noise_model

            labels = samples["label"].to_numpy(np.int64)
            score, keep, report = combined_split(
                samples["cos_mean"].to_numpy(np.float64),
                samples["reference_loss"].to_numpy(np.float64),
                labels,
                probs,
                model_loss=model_loss,
            )
            cells[NOISE_MODEL_CELL] = (score, keep)
            if reports is not None and report is not None:
                reports["combined split"] = report.as_dict()
            posterior = fit_noise_model(probs, labels).posterior(probs, labels)
            cells["label posterior (noise model); ≥ 0.5"] = (posterior, posterior >= 0.5)
        posterior = (clean_posterior(mean_proj) + clean_posterior(log_ref)) / 2
        cells["posterior-avg(mean proj, −log ref loss); ≥ 0.5"] = (posterior, posterior >= 0.5)
        cells["posterior(mean proj); ≥ 0.5"] = (clean_posterior(mean_proj), clean_posterior(mean_proj) >= 0.5)
    cells.update(extra or {})
    return cells


def evaluate_cells(samples: pd.DataFrame, cells: dict[str, Cell]) -> dict[str, dict[str, float]]:
    is_noisy = samples["is_noisy"].to_numpy(bool)
    return {name: metrics(is_noisy, cell) for name, cell in cells.items()}
