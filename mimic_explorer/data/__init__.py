"""Data sources, label and caption noise and thumbnails."""

from mimic_explorer.data.digits import ArrayDataset, load_digits_dataset
from mimic_explorer.data.noise import (
    CIFAR10_ASYMMETRIC,
    NoisyCaptions,
    NoisyLabels,
    asymmetric_noise,
    caption_noise,
    symmetric_noise,
)

__all__ = [
    "CIFAR10_ASYMMETRIC",
    "ArrayDataset",
    "NoisyCaptions",
    "NoisyLabels",
    "asymmetric_noise",
    "caption_noise",
    "load_digits_dataset",
    "symmetric_noise",
]
