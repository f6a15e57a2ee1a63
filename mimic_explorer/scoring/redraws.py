"""A pair's mimic score averaged over several batchings of its chunk (``score --redraws K``).

Why: under InfoNCE a pair's gradient depends on its batch-mates, its negatives
(``scoring.contrastive``), so the batch a pair happens to land in is one random draw of its score.
``score --redraws K`` scores each chunk in the pool's order (draw 0, what a run without the flag
does) and in K − 1 seeded shuffles of the chunk; a pair's proj, cos, loss and gradient norm become
the means over its K draws. A run stays reproducible (the shuffles follow ``--seed`` and the chunk)
and resumable (the draws of a chunk are done before its part is written).

How much the batching mattered is kept too: each chunk's totals hold the sum over its pairs of the
variance of proj between draws, and the sums of the pairs' mean proj and its square, so the run's
summary can say what share of one draw's proj variance is batch noise (``batch_noise``) — the number
that says whether K > 1 was worth its cost (K scoring passes, decoding included).

Arrays in, arrays out: nothing here knows which task or command runs it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from mimic_explorer.scoring.prepared import BatchScores

#: chunk totals (``store.chunk_signals``) of the spread between draws, summed over a chunk's pairs
WITHIN = "redraw_proj_variance"  # Σ_i var_k proj_ik (unbiased, over a pair's K draws)
MEANS = "redraw_proj_mean"  # Σ_i mean_k proj_ik
SQUARES = "redraw_proj_mean_sq"  # Σ_i (mean_k proj_ik)²
PAIRS = "redraw_pairs"  # pairs with every draw
REDRAW_TOTALS = (WITHIN, MEANS, SQUARES, PAIRS)


def redraw_order(start: int, stop: int, seed: int, draw: int) -> np.ndarray:
    """The pool positions ``start … stop − 1`` in the order of batching ``draw``: draw 0 is the pool's
    order; draw k > 0 a shuffle seeded by (``seed``, ``start``, k) alone, so any rank, process count or
    resume makes the same batches."""
    positions = np.arange(start, stop, dtype=np.int64)
    if draw == 0:
        return positions
    return positions[np.random.default_rng([seed, start, draw]).permutation(len(positions))]


def _host(values: torch.Tensor | None) -> np.ndarray | None:
    return None if values is None else values.detach().double().cpu().numpy()


class RedrawSums:
    """The re-drawn batchings' scores of one chunk (positions ``start … stop − 1``), summed per pair."""

    FIELDS = ("proj", "cos", "loss", "grad_norm")

    def __init__(self, start: int, stop: int):
        self.start = start
        size = stop - start
        self.count = np.zeros(size, dtype=np.int64)
        self.sums = {name: np.zeros(size) for name in self.FIELDS}
        self.squares = np.zeros(size)  # Σ_k proj_ik², for the spread between draws
        self._pairs = 0
        self._within = self._means = self._mean_squares = 0.0

    def add(self, positions: np.ndarray, scores: BatchScores) -> None:
        """Add one re-drawn batch's scores (row i: pool position ``positions[i]``)."""
        rows = np.asarray(positions, dtype=np.int64) - self.start
        self.count[rows] += 1
        for name in self.FIELDS:
            values = _host(getattr(scores, name))
            if values is not None:
                self.sums[name][rows] += values
        self.squares[rows] += _host(scores.proj) ** 2

    def averaged(self, positions: np.ndarray, scores: BatchScores) -> BatchScores:
        """Draw 0's ``scores`` of a batch made the means over every draw of its pairs (the model's outputs stay
        draw 0's: they do not depend on the batch); the spread between draws is added to the chunk's totals."""
        rows = np.asarray(positions, dtype=np.int64) - self.start
        draws = self.count[rows] + 1
        proj = _host(scores.proj)

        def mean(name: str) -> torch.Tensor | None:
            values = getattr(scores, name)
            if values is None:
                return None
            total = _host(values) + self.sums[name][rows]
            return torch.as_tensor(total / draws, dtype=values.dtype, device=values.device)

        mean_proj = (proj + self.sums["proj"][rows]) / draws
        several = draws > 1
        square_sum = proj**2 + self.squares[rows]
        within = (square_sum - draws * mean_proj**2)[several] / (draws[several] - 1)
        self._pairs += int(several.sum())
        self._within += float(np.clip(within, 0.0, None).sum())
        self._means += float(mean_proj[several].sum())
        self._mean_squares += float((mean_proj[several] ** 2).sum())
        return replace(scores, **{name: mean(name) for name in self.FIELDS})

    def totals(self) -> dict[str, np.ndarray]:
        """The chunk's spread between draws, as chunk totals (``REDRAW_TOTALS``)."""
        return {
            WITHIN: np.float64(self._within),
            MEANS: np.float64(self._means),
            SQUARES: np.float64(self._mean_squares),
            PAIRS: np.float64(self._pairs),
        }


def batch_noise(totals: dict[str, np.ndarray], draws: int) -> dict | None:
    """What the batching adds to proj, from a run's summed chunk totals: the mean variance of a pair's proj
    between batchings, the variance of the pairs' mean proj over the pool, and the share of one draw's
    variance that is batch noise (before averaging) and that is left after averaging ``draws`` of them.
    None without the totals (a run of one draw) or without two pairs."""
    if any(name not in totals for name in REDRAW_TOTALS):
        return None
    pairs = float(totals[PAIRS])
    if pairs < 2:
        return None
    within = float(totals[WITHIN]) / pairs
    mean = float(totals[MEANS]) / pairs
    between = max(float(totals[SQUARES]) / pairs - mean**2 - within / draws, 0.0)  # the pairs' own spread
    one_draw = between + within
    return {
        "draws": draws,
        "pairs": int(pairs),
        "proj_variance_between_draws": within,
        "proj_variance_between_pairs": between,
        "noise_share_one_draw": within / one_draw if one_draw > 0 else float("nan"),
        "noise_share_averaged": (within / draws) / (between + within / draws) if one_draw > 0 else float("nan"),
    }
