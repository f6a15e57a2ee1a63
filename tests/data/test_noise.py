import numpy as np
import pytest

from mimic_explorer.data.noise import CIFAR10_ASYMMETRIC, asymmetric_noise, symmetric_noise


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.9])
def test_symmetric_noise_flips_exactly_int_rate_n_never_to_own_class(rate):
    labels = np.random.default_rng(1).integers(0, 10, size=1001)
    noisy = symmetric_noise(labels, rate, 10, seed=3)
    assert noisy.is_noisy.sum() == int(rate * 1001)
    assert (noisy.labels[noisy.is_noisy] != labels[noisy.is_noisy]).all()
    assert (noisy.labels[~noisy.is_noisy] == labels[~noisy.is_noisy]).all()
    np.testing.assert_array_equal(noisy.true_labels, labels)


def test_symmetric_noise_targets_are_spread_over_other_classes():
    labels = np.zeros(20000, dtype=int)
    noisy = symmetric_noise(labels, 0.5, 10, seed=0)
    counts = np.bincount(noisy.labels[noisy.is_noisy], minlength=10)
    assert counts[0] == 0
    assert counts[1:].min() > 0.8 * counts[1:].mean()


def test_noise_is_seeded():
    labels = np.arange(500) % 7
    a, b, c = (symmetric_noise(labels, 0.3, 7, seed=s) for s in (5, 5, 6))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


def test_asymmetric_noise_follows_the_class_map():
    labels = np.repeat(np.arange(10), 100)
    noisy = asymmetric_noise(labels, 0.3, CIFAR10_ASYMMETRIC, seed=0)
    assert noisy.is_noisy.sum() == 30 * len(CIFAR10_ASYMMETRIC)
    for source, target in CIFAR10_ASYMMETRIC.items():
        flipped = noisy.is_noisy & (labels == source)
        assert flipped.sum() == 30
        assert (noisy.labels[flipped] == target).all()
    untouched = ~np.isin(labels, list(CIFAR10_ASYMMETRIC))
    assert not noisy.is_noisy[untouched].any()


@pytest.mark.parametrize("rate", [-0.1, 1.0, float("nan")])
def test_noise_rate_outside_range_is_refused(rate):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        symmetric_noise(np.zeros(10, dtype=int), rate, 3)
