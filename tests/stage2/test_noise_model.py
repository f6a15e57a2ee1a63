"""The label-noise model behind the combined score's split: its clean-fraction estimate, the split it gives,
and the warnings that say when not to trust them."""

import itertools

import numpy as np
import pytest

from mimic_explorer.commands.finalize import _Combined
from mimic_explorer.stage2 import baselines, noise_model
from mimic_explorer.stage2 import votes as stage2

K = 10


def _pool(n=20_000, flips=None, rate=0.4, sharpness=2.5, seed=0):
    """A labelled pool with a *calibrated* reference: each sample's class probabilities p are drawn first and
    its true class from p, so p(j | x) is exactly P(true = j | p). Given labels: ``flips`` (true -> noisy
    class, each flipped with probability ``rate``: class-dependent noise) or, without it, symmetric noise at
    ``rate``. Returns (probs, given labels, is_noisy)."""
    rng = np.random.default_rng(seed)
    centre = rng.integers(0, K, n)
    logits = rng.normal(0.0, 1.0, (n, K))
    logits[np.arange(n), centre] += sharpness
    if flips:  # the confusable pairs look alike to the reference too
        for a, b in flips.items():
            both = np.isin(centre, (a, b))
            logits[both, a] = logits[both, b] = np.maximum(logits[both, a], logits[both, b]) - 0.5
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    true = (rng.random(n)[:, None] > np.cumsum(probs, 1)).sum(1).clip(0, K - 1)
    given = true.copy()
    if flips:
        for a, b in flips.items():
            move = (true == a) & (rng.random(n) < rate)
            given[move] = b
    else:
        move = rng.random(n) < rate
        given[move] = (true[move] + rng.integers(1, K, move.sum())) % K
    return probs, given, given != true


def _scores(probs, given, is_noisy, seed=1):
    """A mean cos and a reference loss for the pool: the loss is the reference's own, the cos a noisy view of
    the label's correctness."""
    rng = np.random.default_rng(seed)
    loss = -np.log(np.clip(probs[np.arange(len(given)), given], 1e-12, None))
    cos = np.where(is_noisy, -0.1, 0.1) + rng.normal(0.0, 0.15, len(given))
    return cos, loss


ASYMMETRIC = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}  # truck→automobile, bird→airplane, deer→horse, cat↔dog


@pytest.mark.parametrize("flips, rate", [(None, 0.2), (None, 0.6), (ASYMMETRIC, 0.4)], ids=["sym20", "sym60", "asym40"])
def test_the_noise_model_estimates_the_clean_fraction(flips, rate):
    probs, given, is_noisy = _pool(flips=flips, rate=rate)
    model = noise_model.fit_noise_model(probs, given)
    assert model.converged
    assert abs(model.clean_fraction - (1 - is_noisy.mean())) < 0.03
    if flips:  # the transition it found: trucks given as automobiles, birds as airplanes
        assert model.transition[9, 1] == pytest.approx(rate, abs=0.08)
        assert model.transition[2, 0] == pytest.approx(rate, abs=0.08)
        assert model.transition[0, 0] > 0.9  # airplanes were never flipped
    posterior = model.posterior(probs, given)
    assert posterior[~is_noisy].mean() > posterior[is_noisy].mean() + 0.2


def test_class_dependent_noise_the_split_keeps_the_clean_fraction_where_a_score_mixture_does_not():
    probs, given, is_noisy = _pool(flips=ASYMMETRIC, rate=0.4)
    cos, loss = _scores(probs, given, is_noisy)
    combined = _Combined(len(given), stage2.FIT_CAP)
    combined.add(np.arange(len(given)), cos, loss, given, probs)
    assert combined.fit()
    keep = combined.columns(cos, loss)["combined_keep"]
    truth = 1 - is_noisy.mean()
    assert abs(keep.mean() - truth) < 0.03
    assert combined.report.method == "noise model"
    assert combined.report.estimated_quality == pytest.approx(keep.mean(), abs=1e-3)  # kept fraction = estimate
    mixture = stage2.split_two_groups(baselines.combined_score(cos, loss), "gmm").mean()
    assert abs(mixture - truth) > abs(keep.mean() - truth)  # the old split, for comparison


def test_the_split_is_the_same_fitted_in_one_range_or_in_chunks_and_on_a_subsample():
    probs, given, is_noisy = _pool(n=6_000, flips=ASYMMETRIC)
    cos, loss = _scores(probs, given, is_noisy)
    results = []
    for cuts in ([0, 6_000], [0, 1_280, 2_560, 6_000]):
        combined = _Combined(len(given), 2_000)  # the fit sees ~2,000 of 6,000 rows
        for a, b in itertools.pairwise(cuts):
            combined.add(np.arange(a, b), cos[a:b], loss[a:b], given[a:b], probs[a:b])
        combined.fit()
        results.append(
            np.concatenate(
                [combined.columns(cos[a:b], loss[a:b])["combined_keep"] for a, b in itertools.pairwise(cuts)]
            )
        )
    np.testing.assert_array_equal(results[0], results[1])
    assert abs(results[0].mean() - (1 - is_noisy.mean())) < 0.05


def test_overlapping_groups_are_flagged_and_separated_ones_are_not():
    probs, given, is_noisy = _pool(flips=None, rate=0.4, sharpness=6.0)  # a confident reference
    posterior = noise_model.fit_noise_model(probs, given).posterior(probs, given)
    rng = np.random.default_rng(2)
    for gap, flagged in ((3.0, False), (0.3, True)):
        score = np.where(is_noisy, -gap / 2, gap / 2) + rng.normal(0.0, 0.5, len(given))
        d = noise_model.ashman_d(score, posterior)
        assert d <= noise_model.ashman_d(score, ~is_noisy)  # soft memberships mix the groups: conservative
        warned = noise_model.split_warnings(noise_model.SplitReport("noise model", 0.6, 0.6, d), K)
        assert any("overlap" in w for w in warned) is flagged


def test_disagreement_missing_probabilities_and_a_chance_level_reference_are_flagged():
    report = noise_model.SplitReport("noise model", 0.8, 0.65, 2.5, reference_accuracy=0.5)
    assert [w for w in noise_model.split_warnings(report, K) if "disagree" in w]
    assert not noise_model.split_warnings(noise_model.SplitReport("noise model", 0.8, 0.75, 2.5, 0.5), K)
    chance = noise_model.SplitReport("noise model", 0.8, 0.75, 2.5, reference_accuracy=0.12)
    assert [w for w in noise_model.split_warnings(chance, K) if "chance" in w]
    fallback = noise_model.SplitReport("two-group mixture", 0.7, 0.7, float("nan"))
    assert [w for w in noise_model.split_warnings(fallback) if "no class probabilities" in w]
    assert noise_model.SplitReport("noise model", 0.8, 0.75, 2.5).as_dict()["trusted"] is True


def test_without_class_probabilities_the_split_falls_back_to_the_score_mixture_and_says_so():
    probs, given, is_noisy = _pool(n=4_000)
    cos, loss = _scores(probs, given, is_noisy)
    combined = _Combined(len(given), stage2.FIT_CAP)
    combined.add(np.arange(len(given)), cos, loss, given)
    combined.fit()
    keep = combined.columns(cos, loss)["combined_keep"]
    np.testing.assert_array_equal(keep, stage2.split_two_groups(baselines.combined_score(cos, loss), "gmm"))
    assert combined.report.method == "two-group mixture" and not combined.report.trusted


def test_with_the_model_loss_the_ranking_has_three_parts_and_the_mixture_stays_on_two():
    """The model's loss joins the ranking; the two-group mixture (cross-check and fallback split) is still fitted
    on mean cos and the reference loss, and without class probabilities the split keeps the top (its clean
    fraction) of the three-part ranking."""
    probs, given, is_noisy = _pool(n=4_000)
    cos, loss = _scores(probs, given, is_noisy)
    model_loss = np.where(is_noisy, 2.0, 0.3) * np.random.default_rng(5).lognormal(0.0, 0.4, len(given))
    combined = _Combined(len(given), stage2.FIT_CAP)
    combined.add(np.arange(len(given)), cos, loss, given, None, model_loss)
    combined.fit()
    out = combined.columns(cos, loss, model_loss)
    np.testing.assert_allclose(out["combined_score"], baselines.combined_score(cos, loss, model_loss))
    mixture = stage2.split_two_groups(baselines.combined_score(cos, loss), "gmm").mean()
    assert combined.report.estimated_quality == pytest.approx(mixture)
    assert out["combined_keep"].mean() == pytest.approx(mixture, abs=1e-3)
    kept_scores = out["combined_score"][out["combined_keep"]]
    assert kept_scores.min() >= out["combined_score"][~out["combined_keep"]].max()  # the top of the ranking


def test_quantile_threshold_keeps_the_asked_fraction():
    values = np.arange(100.0)
    assert (values >= noise_model.quantile_threshold(values, 0.3)).sum() == 30
    assert noise_model.quantile_threshold(values, 1.0) == -np.inf
    assert noise_model.quantile_threshold(values, 0.0) == np.inf


def test_fit_refuses_mismatched_or_unusable_rows():
    with pytest.raises(ValueError, match="one row"):
        noise_model.fit_noise_model(np.ones((3, 2)) / 2, np.zeros(4, dtype=int))
    with pytest.raises(ValueError, match="no row"):
        noise_model.fit_noise_model(np.full((3, 2), np.nan), np.zeros(3, dtype=int))
