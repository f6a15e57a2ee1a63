"""Stage 2's per-epoch votes and their aggregation (``stage2/votes``): keep rules, ranks, the quality estimate."""

import numpy as np
import pandas as pd
import pytest

from mimic_explorer.stage2 import votes as stage2


def _scores(weights_by_epoch, batch_size=4):
    rows = []
    for epoch, weights in enumerate(weights_by_epoch):
        for i, w in enumerate(weights):
            rows.append(
                dict(
                    sample_id=f"s{i}",
                    epoch=epoch,
                    step=epoch,
                    proj=np.log(w * batch_size),
                    weight=w,
                    batch_size=batch_size,
                )
            )
    return pd.DataFrame(rows)


def test_weight_binarisation_is_above_uniform():
    scores = _scores([[0.4, 0.3, 0.2, 0.1]])
    np.testing.assert_array_equal(stage2.binarise(scores, "weight"), [True, True, False, False])


def test_uniform_weight_counts_as_keep():
    scores = _scores([[0.25, 0.25, 0.25, 0.25]])
    assert stage2.binarise(scores, "weight").all()


def test_majority_unanimity_and_mean():
    # s0 kept 3/3, s1 kept 2/3, s2 kept 1/3, s3 never
    scores = _scores([[0.4, 0.4, 0.1, 0.1], [0.3, 0.3, 0.3, 0.1], [0.7, 0.1, 0.1, 0.1]])
    majority = stage2.aggregate(scores, "weight", "majority")
    assert majority["keep"].tolist() == [True, True, False, False]
    assert majority["votes"].astype(int).tolist() == [3, 2, 1, 0]
    unanimity = stage2.aggregate(scores, "weight", "unanimity")
    assert unanimity["keep"].tolist() == [True, False, False, False]
    mean = stage2.aggregate(scores, "weight", "mean")
    expected = (scores.assign(r=scores.weight * 4).groupby("sample_id")["r"].mean() >= 1).tolist()
    assert mean["keep"].tolist() == expected


def test_mimic_score_ranks_by_votes_then_weight():
    scores = _scores([[0.4, 0.3, 0.2, 0.1], [0.4, 0.3, 0.2, 0.1]])
    result = stage2.aggregate(scores)
    assert result["mimic_score"].is_monotonic_decreasing
    assert result["mimic_score"].iloc[0] > result["mimic_score"].iloc[1]  # same votes, higher weight


def test_samples_recorded_with_uniform_weights_are_ranked_by_mean_proj():
    # scores recorded while training plainly: every weight is 1/B, so the weights cannot break ties
    proj = [[0.5, -0.2, 0.1, -0.9], [0.3, -0.4, 0.2, -0.1]]
    rows = [
        dict(sample_id=f"s{i}", epoch=e, step=e, proj=p, weight=0.25, batch_size=4)
        for e, values in enumerate(proj)
        for i, p in enumerate(values)
    ]
    result = stage2.aggregate(pd.DataFrame(rows), "gmm")
    means = np.mean(proj, axis=0)
    votes = result["votes"].to_numpy()
    for a in range(4):
        for b in range(4):
            if votes[a] == votes[b] and means[a] > means[b]:
                assert result["mimic_score"].iloc[a] > result["mimic_score"].iloc[b]
    assert result["mimic_score"].nunique() == 4  # no ties left
    assert stage2.aggregate(pd.DataFrame(rows), "weight", "mean")["keep"].tolist() == (means >= 0).tolist()


def test_proj_binarisation_and_two_group_splits():
    rng = np.random.default_rng(0)
    proj = np.concatenate([rng.normal(-3, 0.3, 50), rng.normal(2, 0.3, 150)])
    scores = pd.DataFrame(
        dict(sample_id=[f"s{i}" for i in range(200)], epoch=0, step=0, proj=proj, weight=1 / 200, batch_size=200)
    )
    truth = proj > 0
    np.testing.assert_array_equal(stage2.binarise(scores, "proj"), truth)
    np.testing.assert_array_equal(stage2.binarise(scores, "kmeans"), truth)
    np.testing.assert_array_equal(stage2.binarise(scores, "gmm"), truth)


def test_unknown_rules_are_refused():
    scores = _scores([[0.5, 0.5]], batch_size=2)
    with pytest.raises(ValueError, match="binarisation"):
        stage2.binarise(scores, "median")
    with pytest.raises(ValueError, match="aggregation"):
        stage2.aggregate(scores, "weight", "vote")


def test_quality_estimate_is_fraction_kept():
    assert stage2.quality_estimate(np.array([True, False, True, True])) == 0.75
