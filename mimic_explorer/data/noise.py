"""Seeded label-noise injection that records the truth, so detection can be evaluated.

Symmetric noise follows the paper: exactly ``int(rate · N)`` samples are chosen without replacement and
each is flipped to a uniformly random *other* class. Asymmetric noise flips a chosen fraction of each
source class of a class-pair map (e.g. CIFAR-10's truck→automobile) to its target class.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The standard CIFAR-10 asymmetric map (class indices): truck→automobile, bird→airplane,
#: deer→horse, cat↔dog.
CIFAR10_ASYMMETRIC = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}


@dataclass(frozen=True)
class NoisyLabels:
    labels: np.ndarray  # labels used for training
    true_labels: np.ndarray
    is_noisy: np.ndarray  # bool


def _check_rate(rate: float) -> None:
    if not (0.0 <= rate < 1.0) or not np.isfinite(rate):
        raise ValueError(f"label noise rate must be in [0, 1), got {rate}")


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


def asymmetric_noise(
    labels: np.ndarray, rate: float, class_map: dict[int, int], seed: int = 0
) -> NoisyLabels:
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
