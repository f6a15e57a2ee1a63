"""A pairs run's quality estimate from held-out clean pairs (``stage2.pair_quality``) and the split it sets
(``finalize.pair_combined_split``): the exact mean over wrong pairings, the clean fraction it recovers on
pools of known quality, and what the split says when it cannot estimate."""

from __future__ import annotations

import numpy as np
import pytest

from mimic_explorer.commands.finalize import PAIR_MIXTURE_WARNING, pair_combined_split
from mimic_explorer.stage2 import baselines, pair_quality

DIM = 32


def _unit(values: np.ndarray) -> np.ndarray:
    return values / np.linalg.norm(values, axis=1, keepdims=True)


def _pairs(n: int, rng: np.random.Generator, noise: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """n matched pairs: a caption embedding near its photo's."""
    image = _unit(rng.normal(size=(n, DIM)))
    return image, _unit(image + noise * _unit(rng.normal(size=(n, DIM))))


def _pool(n: int, clean: float, seed: int = 0):
    """A pool whose bad pairs are random mismatches (their captions deranged): its embeddings and the inputs of
    its combined score (the reference CLIP score; a model CLIP score and a proj, noisy views of it)."""
    rng = np.random.default_rng(seed)
    image, text = _pairs(n, rng)
    bad = rng.permutation(n)[: round((1 - clean) * n)]
    text[bad] = text[np.roll(bad, 1)]  # a derangement of the chosen pairs' captions
    clip = (image * text).sum(1)
    inputs = {
        "clip_score_ref": clip,
        "clip_score_model": clip + rng.normal(0, 0.1, n),
        "proj_mean": clip + rng.normal(0, 0.2, n),
    }
    return image, text, inputs


def test_the_mismatch_mean_is_the_mean_over_every_wrong_pairing():
    rng = np.random.default_rng(1)
    image, text = _pairs(40, rng)
    every = image @ text.T
    wrong = every[~np.eye(40, dtype=bool)].mean()
    found = pair_quality.mismatch_mean(image.sum(0), text.sum(0), float(np.trace(every)), 40)
    assert found == pytest.approx(wrong, rel=1e-12)
    assert np.isnan(pair_quality.mismatch_mean(image[:1].sum(0), text[:1].sum(0), 0.3, 1))


@pytest.mark.parametrize("clean", [0.5, 0.7, 0.9])
def test_held_out_clean_pairs_recover_the_clean_fraction_of_a_pool_of_random_mismatches(clean):
    image, text, inputs = _pool(4_000, clean)
    held_image, held_text = _pairs(1_000, np.random.default_rng(9))  # clean pairs drawn like the pool's
    clean_mean = float((held_image * held_text).sum(1).mean())
    mismatched = pair_quality.mismatch_mean(image.sum(0), text.sum(0), inputs["clip_score_ref"].sum(), len(image))
    estimate = pair_quality.clean_fraction(inputs["clip_score_ref"].mean(), clean_mean, mismatched)
    assert estimate == pytest.approx(clean, abs=0.03)
    # the split keeps the top q̂ of the combined score, and says how q̂ was found
    score, keep, report = pair_combined_split(
        inputs, pair_quality.CleanPairs(clean_mean, 1_000, image.sum(0), text.sum(0))
    )
    np.testing.assert_allclose(score, baselines.pair_combined_score(inputs))
    assert report.method == "held-out clean pairs" and report.trusted
    assert keep.mean() == pytest.approx(report.estimated_quality, abs=1e-3)
    assert abs(keep.mean() - clean) < 0.03
    assert score[keep].min() >= score[~keep].max()


def test_a_pool_that_scores_like_the_held_out_pairs_is_kept_and_the_ambiguity_said():
    """A clean pool and a pool of bad pairs the reference cannot see look alike to this estimate: it keeps
    (nearly) everything and says that either may be the case."""
    image, text, inputs = _pool(2_000, 1.0)
    held_image, held_text = _pairs(1_000, np.random.default_rng(9))
    clean_mean = float((held_image * held_text).sum(1).mean())
    _, keep, report = pair_combined_split(inputs, pair_quality.CleanPairs(clean_mean, 1_000, image.sum(0), text.sum(0)))
    assert keep.mean() > 0.95 and report.method == "held-out clean pairs"
    assert "either it is clean" in report.warnings[0] and not report.trusted


def test_without_held_out_pairs_the_split_is_the_mixture_and_says_it_is_a_rough_guide():
    _, _, inputs = _pool(2_000, 0.5)
    _, keep, report = pair_combined_split(inputs)
    assert report.method == "two-group mixture" and report.warnings == (PAIR_MIXTURE_WARNING,)
    assert keep.mean() == pytest.approx(report.estimated_quality)


def test_held_out_pairs_that_score_no_higher_than_random_pairings_give_no_estimate():
    image, text, inputs = _pool(2_000, 0.7)
    mismatched = pair_quality.mismatch_mean(image.sum(0), text.sum(0), inputs["clip_score_ref"].sum(), len(image))
    _, keep, report = pair_combined_split(
        inputs, pair_quality.CleanPairs(mismatched - 0.01, 100, image.sum(0), text.sum(0))
    )
    assert report.method == "two-group mixture" and keep.mean() == pytest.approx(report.estimated_quality)
    assert "no higher than random pairings" in report.warnings[0]


def test_held_out_pairs_unlike_the_pool_are_flagged():
    image, text, inputs = _pool(2_000, 0.7)
    pool_mean = float(inputs["clip_score_ref"].mean())
    _, keep, report = pair_combined_split(  # clean pairs that score lower than the pool itself: q̂ > 1
        inputs, pair_quality.CleanPairs(pool_mean - 0.1, 100, image.sum(0), text.sum(0))
    )
    assert report.method == "held-out clean pairs" and keep.all()
    assert "outside [0, 1]" in report.warnings[0] and not report.trusted
