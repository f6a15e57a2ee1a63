"""Data sources, label noise and thumbnails."""

from mimic_explorer.data.digits import ArrayDataset, load_digits_dataset
from mimic_explorer.data.noise import CIFAR10_ASYMMETRIC, NoisyLabels, asymmetric_noise, symmetric_noise

__all__ = [
    "ArrayDataset",
    "CIFAR10_ASYMMETRIC",
    "NoisyLabels",
    "asymmetric_noise",
    "load_digits_dataset",
    "symmetric_noise",
]
