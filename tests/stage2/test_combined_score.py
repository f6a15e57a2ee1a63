"""The combined detection score and the 2-group keep threshold for any utility."""

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.stage2 import baselines
from mimic_explorer.stage2 import votes as stage2
from mimic_explorer.stage2.evaluation import detection_metrics


def _pool(n_clean=600, n_noisy=400, seed=0):
    """Clean samples: high mean cos, low reference loss; noisy ones the opposite, with overlap."""
    rng = np.random.default_rng(seed)
    is_noisy = np.r_[np.zeros(n_clean, bool), np.ones(n_noisy, bool)]
    cos_mean = np.where(is_noisy, rng.normal(-0.2, 0.15, len(is_noisy)), rng.normal(0.2, 0.15, len(is_noisy)))
    reference_loss = np.where(is_noisy, rng.lognormal(1.0, 0.5, len(is_noisy)), rng.lognormal(-1.5, 0.8, len(is_noisy)))
    return cos_mean, reference_loss, is_noisy


def test_standardise_centres_and_scales_and_keeps_nan():
    z = baselines.standardise(np.array([1.0, 2.0, 3.0, np.nan]))
    np.testing.assert_allclose(z[:3], [-1.224744871, 0.0, 1.224744871])
    assert np.isnan(z[3])
    np.testing.assert_array_equal(baselines.standardise(np.array([4.0, 4.0])), [0.0, 0.0])


def test_combined_score_is_the_mean_of_two_standardised_utilities():
    cos_mean = np.array([0.3, -0.1, 0.2])
    loss = np.array([0.1, 2.0, 0.5])
    expected = (baselines.standardise(cos_mean) + baselines.standardise(-np.log(loss))) / 2
    np.testing.assert_allclose(baselines.combined_score(cos_mean, loss), expected)
    # higher = keep: the sample with the lowest loss and highest cos ranks first
    assert np.argmax(baselines.combined_score(cos_mean, loss)) == 0


def test_the_model_loss_is_a_third_standardised_utility():
    cos_mean = np.array([0.3, -0.1, 0.2, 0.0])
    reference_loss = np.array([0.1, 2.0, 0.5, 1.0])
    model_loss = np.array([0.2, 0.1, 3.0, 1.0])
    expected = (
        baselines.standardise(cos_mean)
        + baselines.standardise(-np.log(reference_loss))
        + baselines.standardise(-np.log(model_loss))
    ) / 3
    np.testing.assert_allclose(baselines.combined_score(cos_mean, reference_loss, model_loss), expected)
    # in chunks, with the whole pool's standardisers, the same numbers
    scales = tuple(
        baselines.Standardiser(float(np.mean(u)), float(np.std(u)))
        for u in (cos_mean, -np.log(reference_loss), -np.log(model_loss))
    )
    chunked = np.concatenate(
        [
            baselines.combined_score(cos_mean[a:b], reference_loss[a:b], model_loss[a:b], scales=scales)
            for a, b in ((0, 2), (2, 4))
        ]
    )
    np.testing.assert_allclose(chunked, expected)
    with pytest.raises(ValueError, match="2 standardisers for 3 parts"):
        baselines.combined_score(cos_mean, reference_loss, model_loss, scales=scales[:2])


def test_combined_score_does_not_let_one_huge_loss_set_the_scale():
    cos_mean = np.array([0.3, 0.2, -0.2, -0.3])
    loss = np.array([0.05, 0.1, 3.0, 3.0])
    with_outlier = loss.copy()
    with_outlier[3] = 1e4
    before = baselines.combined_score(cos_mean, loss)
    after = baselines.combined_score(cos_mean, with_outlier)
    # the clean pair stays separated from the noisy pair by a similar margin
    assert (after[:2].min() - after[2:].max()) > 0.5 * (before[:2].min() - before[2:].max())


def test_combined_score_refuses_mismatched_lengths():
    with pytest.raises(ValueError, match="one value per sample"):
        baselines.combined_score(np.zeros(3), np.ones(4))


def test_combined_score_with_its_gmm_split_finds_the_noisy_group_and_its_size():
    cos_mean, loss, is_noisy = _pool()
    score = baselines.combined_score(cos_mean, loss)
    keep = stage2.split_two_groups(score, "gmm")
    m = detection_metrics(is_noisy, score, keep)
    assert m["auroc"] > 0.97
    assert m["f1"] > 0.9
    assert abs(m["quality_error"]) < 0.05


def test_split_two_groups_keeps_the_upper_group_for_both_rules():
    values = np.r_[np.full(30, -2.0), np.full(70, 3.0)] + np.linspace(0, 0.1, 100)
    for method in ("gmm", "kmeans"):
        keep = stage2.split_two_groups(values, method)
        np.testing.assert_array_equal(keep, values > 0)


def test_split_two_groups_refuses_nan_and_unknown_rules():
    with pytest.raises(ValueError, match="finite"):
        stage2.split_two_groups(np.array([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match="gmm or kmeans"):
        stage2.split_two_groups(np.array([0.0, 1.0]), "otsu")


def test_cos_mean_and_combined_score_are_utilities():
    frame = pd.DataFrame({"cos_mean": [0.1, -0.1], "combined_score": [1.0, -1.0]})
    assert baselines.available(frame) == ["cos_mean", "combined_score"]
    np.testing.assert_array_equal(baselines.utility(frame, "combined_score"), [1.0, -1.0])
