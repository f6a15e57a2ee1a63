"""The pairs signal study of ``bench_pairs_flickr.py --study`` (issue 25): every per-pair signal of a pool
run, their z-score combinations and AND filters, measured against the truth, after the runs.

Why after the runs: every signal studied is a column of the runs' ``samples.parquet`` or is computed from
what a run stores (the reference's unit embeddings, ``embeddings/image.npy`` and ``text.npy``), so the
whole study costs seconds once the runs exist.

The batch-noise part: a pair's InfoNCE loss (and its gradient) depends on the B − 1 pairs it was batched
with, so one batching is one noisy draw. With the reference's embeddings the loss under the reference can
be recomputed (a) in the run's kind of batching (B random pairs; K re-drawn batchings averaged), and (b)
against a fixed bank of negatives (the whole pool here): how much ranking quality the batch noise costs,
and what each remedy buys, measured on the loss whose inputs are stored. The mimic score's own batch noise
is seen through ``proj_last`` (one batching, the last epoch) against ``proj_mean`` (the mean over the
epochs' batchings).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from mimic_explorer.stage2.baselines import standardise
from mimic_explorer.stage2.evaluation import auroc
from mimic_explorer.stage2.votes import TwoGroupSplit

#: utility (higher = keep) of each studied column: losses enter as −log(loss), as the labelled combined score's
LOSSES = ("reference_loss", "model_loss", "reference_loss_bank", "reference_loss_k1", "reference_loss_k8")


def utility(frame: pd.DataFrame, column: str) -> np.ndarray:
    values = frame[column].to_numpy(np.float64)
    if column in LOSSES:
        return -np.log(np.clip(values, 1e-6, None))
    return values


def zmean(frame: pd.DataFrame, columns: tuple[str, ...]) -> np.ndarray:
    """Mean of the columns' standardised utilities (the labelled ``combined_score``'s form)."""
    return np.mean([standardise(utility(frame, c)) for c in columns], axis=0)


def infonce_losses(image: np.ndarray, text: np.ndarray, scale: float, batches: list[np.ndarray]) -> np.ndarray:
    """Each pair's symmetric InfoNCE loss inside its batch (``batches``: index arrays covering the pool)."""
    out = np.full(len(image), np.nan)
    for index in batches:
        logits = scale * image[index] @ text[index].T
        rows = np.diag(logits) - logsumexp(logits, axis=1)
        cols = np.diag(logits) - logsumexp(logits, axis=0)
        out[index] = -0.5 * (rows + cols)
    return out


def random_batches(n: int, size: int, seed: int) -> list[np.ndarray]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i : i + size] for i in range(0, n, size) if len(order[i : i + size]) >= 2]


def batch_remedies(image: np.ndarray, text: np.ndarray, scale: float, size: int, k: int = 8) -> dict[str, np.ndarray]:
    """The reference loss in one random batching, averaged over ``k`` seeded re-drawn batchings, and
    against the whole pool as a fixed bank of negatives."""
    draws = [infonce_losses(image, text, scale, random_batches(len(image), size, seed)) for seed in range(k)]
    return {
        "reference_loss_k1": draws[0],
        f"reference_loss_k{k}": np.mean(draws, axis=0),
        "reference_loss_bank": infonce_losses(image, text, scale, [np.arange(len(image))]),
    }


def kept_bad(is_noisy: np.ndarray, keep: np.ndarray) -> float:
    """The fraction of bad pairs among those kept."""
    return float(is_noisy[keep].mean()) if keep.any() else float("nan")


def top(values: np.ndarray, count: int) -> np.ndarray:
    keep = np.zeros(len(values), dtype=bool)
    keep[np.argsort(-values, kind="stable")[:count]] = True
    return keep


def and_filter(is_noisy: np.ndarray, clip: np.ndarray, mimic: np.ndarray, top_fraction=0.7, drop=0.15) -> dict:
    """DataComp's compound filter: CLIP-score top ``top_fraction`` minus the mimic bottom ``drop``, against
    the CLIP score alone cut at the same size (bad pairs among those kept)."""
    n = len(clip)
    both = top(clip, int(top_fraction * n)) & top(mimic, n - int(drop * n))
    alone = top(clip, int(both.sum()))
    return {
        "kept": int(both.sum()),
        "clip_and_mimic_bad": kept_bad(is_noisy, both),
        "clip_only_bad": kept_bad(is_noisy, alone),
    }


def split_quality(values: np.ndarray) -> float:
    """The fraction a seeded 2-component GMM puts in its upper group (the quality estimate of a keep split)."""
    finite = values[np.isfinite(values)]
    return float(TwoGroupSplit.fit(finite, "gmm").upper(finite).mean())


def study(frame: pd.DataFrame, is_noisy: np.ndarray, combos: dict[str, tuple[str, ...]]) -> dict[str, dict]:
    """AUROC (bad pairs rank low) of every single column and combination, and the GMM split's kept
    fraction of each."""
    out = {}
    singles = {c: (c,) for c in frame.columns if c != "sample_id"}
    for name, columns in {**singles, **combos}.items():
        if not all(c in frame.columns for c in columns):
            continue
        values = zmean(frame, columns) if len(columns) > 1 else utility(frame, columns[0])
        if not np.isfinite(values).all():
            continue
        out[name] = {"auroc": auroc(is_noisy, -values), "kept": split_quality(standardise(values))}
    return out


def mismatch_null(image: np.ndarray, text: np.ndarray, count: int = 20_000, seed: int = 0) -> np.ndarray:
    """CLIP scores of random mismatched pairs of the pool (photo i, caption j ≠ i) under the reference: the
    distribution a randomly swapped caption's score is drawn from."""
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, len(image), count), rng.integers(0, len(image), count)
    i, j = i[i != j], j[i != j]
    return (image[i] * text[j]).sum(1)


def storey_quality(score: np.ndarray, null: np.ndarray, lam: float = 0.5) -> float:
    """1 − Storey's null proportion: p_i = P_null(S ≥ s_i); bad pairs' p-values are uniform, so
    #{p > λ} / (N (1 − λ)) estimates their fraction (an over-estimate where clean pairs look like the null)."""
    null = np.sort(null)
    p = 1.0 - np.searchsorted(null, score, side="left") / len(null)
    return float(1.0 - min(1.0, (p > lam).mean() / (1.0 - lam)))


def known_null_quality(score: np.ndarray, null: np.ndarray, iterations: int = 300) -> float:
    """The clean fraction of a two-part mixture whose bad part has the null's density (a kernel estimate)
    and whose clean part is Gaussian, by EM."""
    from scipy.stats import gaussian_kde, norm

    f0 = gaussian_kde(null)(score)
    bad, mean, sd = 0.5, float(np.quantile(score, 0.75)), float(score.std())
    for _ in range(iterations):
        f1 = norm.pdf(score, mean, sd)
        r = bad * f0 / (bad * f0 + (1 - bad) * f1)
        bad, w = float(r.mean()), 1 - r
        mean = float((w * score).sum() / w.sum())
        sd = float(np.sqrt((w * (score - mean) ** 2).sum() / w.sum()))
    return 1.0 - bad


def mismatch_mean(image: np.ndarray, text: np.ndarray) -> float:
    """The exact mean CLIP score of every mismatched pair (photo i, caption j ≠ i) of the pool:
    (Σu · Σt − Σ u_i·t_i) / (N (N − 1)), O(N·D)."""
    n = len(image)
    return float((image.sum(0) @ text.sum(0) - (image * text).sum()) / (n * (n - 1)))


def held_out_quality(clip: np.ndarray, null_mean: float, clean_mean: float) -> float:
    """The clean fraction q solving mean(pool) = q · mean(clean) + (1 − q) · mean(mismatched): the reference
    CLIP score's mean over clean held-out pairs and over the pool's mismatched pairs as the two parts."""
    return float((clip.mean() - null_mean) / (clean_mean - null_mean))
