"""Seeded noise injection (labels, captions) that records the truth, so detection can be evaluated.

Symmetric noise follows the paper: exactly ``int(rate · N)`` samples are chosen without replacement and
each is flipped to a uniformly random *other* class. Asymmetric noise flips a chosen fraction of each
source class of a class-pair map (e.g. CIFAR-10's truck→automobile) to its target class. Caption noise
is the image-text analogue (a web-crawled pair whose text describes another image): exactly
``int(rate · N)`` pairs are chosen and their captions permuted among themselves so that none keeps
its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The standard CIFAR-10 asymmetric map (class indices): truck→automobile, bird→airplane,
#: deer→horse, cat↔dog.
CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


@dataclass(frozen=True)
class NoisyLabels:
    """Labels after injected noise (``labels``, what training sees), the truth (``true_labels``) and which changed
    (``is_noisy``): the truth is kept so a run can measure how well its scores find the noise."""

    labels: np.ndarray  # labels used for training
    true_labels: np.ndarray
    is_noisy: np.ndarray  # bool


def _check_rate(rate: float, what: str = "label") -> None:
    if not (0.0 <= rate < 1.0) or not np.isfinite(rate):
        raise ValueError(f"{what} noise rate must be in [0, 1), got {rate}")


def symmetric_noise(labels: np.ndarray, rate: float, num_classes: int, seed: int = 0) -> NoisyLabels:
    """Flip exactly int(rate·N) labels, each to a uniformly random class other than its own."""
    _check_rate(rate)
    if num_classes < 2:
        raise ValueError("symmetric label noise needs at least 2 classes")
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    count = int(rate * len(labels))
    chosen = rng.choice(len(labels), size=count, replace=False)
    offsets = rng.integers(1, num_classes, size=count)  # 1..C-1 never maps a class to itself
    noisy = labels.copy()
    noisy[chosen] = (labels[chosen] + offsets) % num_classes
    flags = np.zeros(len(labels), dtype=bool)
    flags[chosen] = True
    return NoisyLabels(noisy, labels, flags)


def asymmetric_noise(labels: np.ndarray, rate: float, class_map: dict[int, int], seed: int = 0) -> NoisyLabels:
    """For each source class in ``class_map``, flip exactly int(rate·n_class) of its samples to the target."""
    _check_rate(rate)
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    flags = np.zeros(len(labels), dtype=bool)
    for source, target in sorted(class_map.items()):
        if source == target:
            raise ValueError(f"asymmetric map sends class {source} to itself")
        members = np.flatnonzero(labels == source)
        chosen = rng.choice(members, size=int(rate * len(members)), replace=False)
        noisy[chosen] = target
        flags[chosen] = True
    return NoisyLabels(noisy, labels, flags)


@dataclass(frozen=True)
class NoisyCaptions:
    """Captions after injected noise: pair i carries the caption of pair ``order[i]``; ``is_noisy`` marks the pairs
    whose caption is not their own."""

    order: np.ndarray  # int64: pair i now carries the caption of pair order[i]
    is_noisy: np.ndarray  # bool: order[i] != i


def caption_noise(n: int, rate: float, seed: int = 0) -> NoisyCaptions:
    """Swap captions among exactly int(rate·n) seeded-chosen pairs, none keeping its own.

    Returns the new caption order (``captions[order]`` is the noisy pool's caption column) and
    ``is_noisy``. The chosen pairs' captions are a uniformly random derangement of themselves
    (rejection sampling: a random permutation has no fixed point with probability about 1/e). Two
    chosen pairs may happen to have the same text; they still count as noisy, because the pairing is
    what was corrupted. ``rate`` 0 returns the identity; a positive rate that chooses fewer than two
    pairs is refused (one caption cannot be moved to another pair).
    """
    _check_rate(rate, "caption")
    n = int(n)
    count = int(rate * n)
    order = np.arange(n, dtype=np.int64)
    flags = np.zeros(n, dtype=bool)
    if rate == 0:
        return NoisyCaptions(order, flags)
    if count < 2:
        raise ValueError(
            f"caption noise at rate {rate} chooses {count} of {n} pair(s); swapping captions needs at least 2 "
            "(raise the rate or use a larger pool)"
        )
    rng = np.random.default_rng(seed)
    chosen = rng.choice(n, size=count, replace=False)
    while True:
        perm = rng.permutation(count)
        if not (perm == np.arange(count)).any():
            break
    order[chosen] = chosen[perm]
    flags[chosen] = True
    return NoisyCaptions(order, flags)
