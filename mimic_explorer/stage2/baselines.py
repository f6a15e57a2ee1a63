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
and the log tames the loss's heavy tail. Its keep threshold (``combined_keep``) is the score's
(1 − q̂) quantile, q̂ the clean fraction of a label-noise model fitted with the reference's class
probabilities (``stage2.noise_model``), so the kept fraction is the quality estimate.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

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
    """Column ``column`` as a utility (higher = more useful, by ``UTILITY_SIGN``), so every signal is ranked and
    evaluated the same way."""
    return UTILITY_SIGN[column] * samples[column].to_numpy(dtype=np.float64)


def available(samples: pd.DataFrame) -> list[str]:
    """The signals of ``UTILITY_SIGN`` that ``samples`` has, in that order."""
    return [c for c in UTILITY_SIGN if c in samples.columns]


#: positions per block of ``Moments``: chunks of a pool must start at multiples of it
MOMENT_BLOCK = 128


@dataclass(frozen=True)
class Standardiser:
    """(v − mean) / std with moments of the whole pool; NaN stays NaN; a constant column gives zeros."""

    mean: float
    std: float

    def __call__(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(self.mean):
            return np.full(len(values), np.nan)
        if self.std > 0:
            return (values - self.mean) / self.std
        return np.where(np.isfinite(values), 0.0, np.nan)


class Moments:
    """Mean and standard deviation of the finite values of a column given in chunks of positions.

    Why blocks and ``math.fsum``: chunked and in-memory Stage 2 must write the same bits. The values are
    summed per block of ``MOMENT_BLOCK`` pool positions with ``fsum`` (correctly rounded, so independent
    of memory layout and of how a block's values arrived), then the block sums with ``fsum`` (independent
    of their order). Any chunking whose ranges start at multiples of ``MOMENT_BLOCK`` gives the same
    moments. The variance is E[v²] − E[v]², ample for standardised scores of order one.
    """

    def __init__(self) -> None:
        self._sums: list[float] = []
        self._squares: list[float] = []
        self._count = 0
        self._last_block = -1

    def add(self, values: np.ndarray, positions: np.ndarray | None = None) -> None:
        """Values at ascending ``positions`` (default 0..n−1), none in a block an earlier call touched."""
        values = np.asarray(values, dtype=np.float64)
        positions = np.arange(len(values)) if positions is None else np.asarray(positions, dtype=np.int64)
        finite = np.isfinite(values)
        values, blocks = values[finite], positions[finite] // MOMENT_BLOCK
        if not len(values):
            return
        if blocks[0] <= self._last_block or (np.diff(blocks) < 0).any():
            raise ValueError(f"Moments needs ascending positions in chunks that start at multiples of {MOMENT_BLOCK}")
        self._last_block = int(blocks[-1])
        cuts = [0, *(np.flatnonzero(blocks[1:] != blocks[:-1]) + 1).tolist(), len(values)]
        plain, squares = values.tolist(), (values * values).tolist()
        self._sums += [math.fsum(plain[a:b]) for a, b in itertools.pairwise(cuts)]
        self._squares += [math.fsum(squares[a:b]) for a, b in itertools.pairwise(cuts)]
        self._count += len(values)

    @property
    def count(self) -> int:
        """How many finite values were added."""
        return self._count

    def standardiser(self) -> Standardiser:
        """The standardiser (v − mean) / std of the values added; NaN when none was finite."""
        if not self._count:
            return Standardiser(float("nan"), float("nan"))
        mean = math.fsum(self._sums) / self._count
        variance = max(math.fsum(self._squares) / self._count - mean * mean, 0.0)
        return Standardiser(mean, math.sqrt(variance))


def standardise(values: np.ndarray) -> np.ndarray:
    """(v − mean) / std over the finite values; NaN stays NaN; a constant column becomes zeros."""
    moments = Moments()
    moments.add(values)
    return moments.standardiser()(values)


def reference_utility(reference_loss: np.ndarray) -> np.ndarray:
    """−log of a loss (clipped at 1e-6): how a loss enters the combined score (the reference's, the model's)."""
    return -np.log(np.clip(np.asarray(reference_loss, dtype=np.float64), 1e-6, None))


def combined_score(
    cos_mean: np.ndarray,
    reference_loss: np.ndarray,
    model_loss: np.ndarray | None = None,
    *,
    scales: tuple[Standardiser, ...] | None = None,
) -> np.ndarray:
    """Utility (higher = keep) joining the mimic score, the loss under the reference and the model's own loss:
        ``(z(cos_mean) + z(−log reference_loss) + z(−log model_loss)) / 3`` with z the standardisation over the pool
        (without ``model_loss``, the mean of the first two).

        Why three witnesses: the mimic score says where the sample's gradient points, the reference how well a
        better model fits its label, the model how well the run itself does — the same three kinds of signal a
        pairs run's combined score averages (``PAIR_COMBINED_INPUTS``). Where one is weak the others carry the
        ranking: over the 20 disjoint-reference settings of benchmarks/RESULTS.md ("A split that estimates
        quality"), the three together are within 0.005 AUROC of the best single signal in all 20, the first two
        in 16. ``cos_mean`` is the sample's mean cos over the recorded epochs (a run that recorded no cos passes its
    mean proj); the log tames a loss's heavy tail so
        one badly fit sample does not set the scale (losses are clipped at 1e-6 first). Its keep threshold:
        ``finalize.combined_split`` (the noise-model quantile; without class probabilities the 2-component GMM
        split, ``stage2.split_two_groups(score, "gmm")``). ``scales``: the standardisers of the whole pool, one per
        part, when the values given are one chunk of it (``Moments``); else computed from the values.
    """
    parts = [np.asarray(cos_mean, dtype=np.float64), reference_utility(reference_loss)]
    if model_loss is not None:
        parts.append(reference_utility(model_loss))
    shapes = {part.shape for part in parts}
    if len(shapes) != 1:
        raise ValueError(
            "cos_mean, reference_loss and model_loss have different shapes "
            f"{[part.shape for part in parts]}; one value per sample each"
        )
    if scales is None:
        return np.mean([standardise(part) for part in parts], axis=0)
    if len(scales) != len(parts):
        raise ValueError(f"{len(scales)} standardisers for {len(parts)} parts of the combined score")
    return np.mean([scale(part) for scale, part in zip(scales, parts, strict=True)], axis=0)


# ---------------------------------------------------------------------------------------------------------------
# Image-text pairs: the combined score of a pairs run (``combined_score`` / ``combined_keep`` there).
#
# Why other inputs than the labelled one: on pairs the mimic score of a projection layer ranks bad pairs below the
# CLIP scores and the losses, and most clearly so when the bad captions were written for similar photos (hard
# negatives); a pair's loss and mimic score also depend on the batch it was scored in, its CLIP scores do not.
# benchmarks/RESULTS.md, "Image-text pairs: hard negatives and the default ranking (issue 25)".

#: the columns a pairs run's combined score averages, as standardised utilities (``pair_utility``)
PAIR_COMBINED_INPUTS = ("clip_score_ref", "clip_score_model", "proj_mean")


def pair_utility(column: str, values: np.ndarray) -> np.ndarray:
    """A pairs combined-score input as a utility: CLIP scores as they are, losses as −log(loss) (clipped at 1e-6,
    as ``reference_utility``), anything else signed by ``UTILITY_SIGN``."""
    values = np.asarray(values, dtype=np.float64)
    if column.endswith("_loss"):
        return reference_utility(values)
    return UTILITY_SIGN[column] * values


def pair_combined_score(inputs: dict[str, np.ndarray], scales: dict[str, Standardiser] | None = None) -> np.ndarray:
    """Utility (higher = keep) of a pairs run: the mean of the standardised utilities of ``PAIR_COMBINED_INPUTS``
    (``inputs``: one array per name, one value per pair). ``scales``: the standardisers of the whole pool, by name,
    when the values given are one chunk of it; else computed from the values."""
    parts = []
    for name in PAIR_COMBINED_INPUTS:
        values = pair_utility(name, inputs[name])
        parts.append(standardise(values) if scales is None else scales[name](values))
    shapes = {p.shape for p in parts}
    if len(shapes) != 1:
        raise ValueError(f"the combined score's inputs have different shapes {sorted(shapes)}; one value per pair each")
    return np.mean(parts, axis=0)
