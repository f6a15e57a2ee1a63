"""Stage-1 sample weights: turn per-sample mimic scores into a convex combination of gradients.

Why: Grad-Mimic re-weights a mini-batch so that samples whose gradient points toward the reference
count more. normed_proj / normed_cos use a temperature softmax over the batch, so weights sum to 1 and
the uniform weight is 1/B — the Stage-2 binarisation threshold.
"""

from __future__ import annotations

import torch
from torch import Tensor

METHODS = ("proj", "cos", "normed_proj", "normed_cos")


def stage1_weights(scores: Tensor, method: str, temperature: float = 1.0) -> Tensor:
    """Weights over the batch for a Stage-1 method.

    normed_*: softmax(score / T). proj / cos: the raw scores clipped at zero and normalised to sum to 1
    (a batch where nothing points toward the reference falls back to uniform weights).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if method.startswith("normed_"):
        return torch.softmax(scores / temperature, dim=0)
    positive = scores.clamp_min(0)
    total = positive.sum()
    if total <= 0:
        return torch.full_like(scores, 1.0 / scores.numel())
    return positive / total


def score_basis(method: str) -> str:
    """Which raw score a method weights: 'proj' or 'cos'."""
    return "cos" if method.endswith("cos") else "proj"
