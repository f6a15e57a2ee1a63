"""Detection metrics of a keep/drop split and a score (``stage2/evaluation``) against scikit-learn's."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

from mimic_explorer.stage2.evaluation import detection_metrics, threshold_at_quality


@pytest.mark.parametrize("seed", range(5))
def test_detection_metrics_agree_with_sklearn(seed):
    rng = np.random.default_rng(seed)
    noisy = rng.random(400) < 0.3
    utility = rng.normal(size=400) - 1.5 * noisy
    keep = utility > np.quantile(utility, 0.3)
    m = detection_metrics(noisy, utility, keep)
    dropped = ~keep
    assert m["precision"] == pytest.approx(precision_score(noisy, dropped))
    assert m["recall"] == pytest.approx(recall_score(noisy, dropped))
    assert m["f1"] == pytest.approx(f1_score(noisy, dropped))
    assert m["auroc"] == pytest.approx(roc_auc_score(noisy, -utility))
    assert m["ap"] == pytest.approx(average_precision_score(noisy, -utility))
    assert m["quality_error"] == pytest.approx(keep.mean() - (1 - noisy.mean()))


def test_nothing_dropped_gives_zero_precision_not_an_error():
    m = detection_metrics(np.array([True, False]), np.array([0.0, 1.0]), np.array([True, True]))
    assert m["precision"] == 0.0 and m["f1"] == 0.0


def test_threshold_at_quality_keeps_the_top_fraction():
    keep = threshold_at_quality(np.array([0.1, 0.9, 0.5, 0.7]), 0.5)
    assert keep.tolist() == [False, True, False, True]


@pytest.mark.parametrize("seed", range(3))
def test_auroc_and_ap_with_heavy_ties_agree_with_sklearn(seed):
    from mimic_explorer.stage2.evaluation import auroc, average_precision

    rng = np.random.default_rng(seed)
    positive = rng.random(300) < 0.4
    score = np.round(rng.normal(size=300) + positive, 1)  # many ties
    assert auroc(positive, score) == pytest.approx(roc_auc_score(positive, score))
    assert average_precision(positive, score) == pytest.approx(average_precision_score(positive, score))
