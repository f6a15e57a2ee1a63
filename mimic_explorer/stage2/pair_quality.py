"""The clean fraction of an image-text pool from held-out clean pairs: a pairs run's quality estimate.

Why not a mixture on the scores: on Flickr8k pools with 30 % and 50 % swapped captions, a two-group
mixture on the default ranking kept 0.62-0.68 of every pool whatever its clean fraction, and the
Stage-2 vote 0.75-0.79 (benchmarks/RESULTS.md, "Image-text pairs: hard negatives and the default
ranking"). What did follow the clean fraction is a method of moments on the reference's CLIP score s:
the pool's mean is a mix of the clean pairs' mean and the mismatched pairs' mean,

    mean(pool) = q · mean(clean) + (1 − q) · mean(mismatched),

where mean(clean) comes from held-out pairs known to be clean (``--test-data``), and
mean(mismatched) — the mean over every *wrong* pairing of the pool's own photos and captions — is exact
from the sums of the pool's unit embeddings: Σ_{i≠j} u_i·t_j = (Σu)·(Σt) − Σ u_i·t_i. It measured 0.697
and 0.503 against true 0.700 and 0.500. What it assumes, and so when not to trust it: that the
held-out pairs are drawn like the pool's clean ones, and that a bad pair scores like a random pairing —
captions written for similar photos (hard negatives) score like clean ones under the reference, and
the estimate counts them as clean (0.91-1.04 on such pools).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: a raw estimate this far outside [0, 1] says the held-out pairs are not drawn like the pool's clean ones
OUTSIDE = 0.05
#: an estimate this close to 1 cannot tell a clean pool from one whose bad pairs the reference cannot see
NEARLY_CLEAN = 0.05


@dataclass(frozen=True)
class CleanPairs:
    """What the clean-fraction estimate needs beyond the pool's CLIP scores: the reference's mean CLIP score
    over held-out clean pairs, and the sums of the pool's unit image and caption embeddings under the
    reference (over the pairs that have a CLIP score)."""

    clean_mean: float
    clean_count: int
    image_sum: np.ndarray
    text_sum: np.ndarray


def add_embedding_sums(sums: dict[str, np.ndarray], signals: dict[str, np.ndarray]) -> None:
    """Add one batch's embeddings (``embedding_*`` arrays of ``signals``, a row per pair) to ``sums``, by name, in
    float64: what ``mismatch_mean`` needs of a pool, gathered batch by batch."""
    for name, values in signals.items():
        if name.startswith("embedding_"):
            total = np.asarray(values, dtype=np.float64).sum(axis=0)
            sums[name] = total if name not in sums else sums[name] + total


def mismatch_mean(image_sum: np.ndarray, text_sum: np.ndarray, matched_sum: float, count: int) -> float:
    """The mean CLIP score over every wrong pairing (i ≠ j) of ``count`` pairs with unit embeddings summing to
    ``image_sum`` and ``text_sum``, whose own pairings' scores sum to ``matched_sum``."""
    if count < 2:
        return float("nan")
    cross = float(np.dot(np.asarray(image_sum, dtype=np.float64), np.asarray(text_sum, dtype=np.float64)))
    return (cross - float(matched_sum)) / (count * (count - 1))


def clean_fraction(pool_mean: float, clean_mean: float, mismatched_mean: float) -> float:
    """q with pool_mean = q · clean_mean + (1 − q) · mismatched_mean, not clipped (NaN when the reference scores
    clean pairs no higher than random pairings: nothing to place the pool between)."""
    gap = clean_mean - mismatched_mean
    if not np.isfinite(gap) or gap <= 0:
        return float("nan")
    return (pool_mean - mismatched_mean) / gap


def estimate_warnings(raw: float, clean_mean: float, mismatched_mean: float) -> tuple[str, ...]:
    """Why not to trust a clean-fraction estimate ``raw`` (before clipping to [0, 1])."""
    if not np.isfinite(raw):
        return (
            (
                f"the reference scores the held-out clean pairs ({clean_mean:.3f}) no higher than random "
                f"pairings of the pool ({mismatched_mean:.3f}): no estimate; the split is the two-group mixture"
            ),
        )
    if 1 - NEARLY_CLEAN <= raw <= 1 + OUTSIDE:
        return (
            (
                f"the pool scores like the held-out clean pairs (estimate {raw:.3f}): either it is clean, or its bad "
                "pairs are ones the reference scores like clean ones (captions written for similar photos), which "
                "this estimate cannot see; the split keeps nearly everything"
            ),
        )
    if raw < -OUTSIDE or raw > 1 + OUTSIDE:
        return (
            (
                f"the estimate before clipping is {raw:.3f}, outside [0, 1]: the held-out pairs do not score like the "
                "pool's clean pairs (are they drawn like the pool?)"
            ),
        )
    return ()
