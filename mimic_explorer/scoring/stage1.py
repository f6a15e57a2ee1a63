"""Stage-1 sample weights: turn per-sample mimic scores into a convex combination of gradients.

Why: Grad-Mimic re-weights a mini-batch so that samples whose gradient points toward the reference
count more. normed_proj / normed_cos use a temperature softmax over the batch, so weights sum to 1 and
the uniform weight is 1/B — the Stage-2 binarisation threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mimic_explorer.util.choices import METHODS

__all__ = ["METHODS", "score_basis", "stage1_weights"]


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


def reweighted_grads(
    losses: Tensor, weights: Tensor, params: Sequence[Tensor], retain_graph: bool = False
) -> tuple[Tensor, ...]:
    """Σ_i w_i g_i for any mimic layers: one backward of the weighted loss Σ_i w_i ℓ_i.

    Why: for mimic layers other than a linear head (where ``linear_weighted_grad`` is one matmul) the
    re-weighted gradient is still a single backward pass — the gradient of a weighted sum is the
    weighted sum of the per-sample gradients. ``weights`` are treated as constants (detached), and
    the result is returned rather than accumulated into ``.grad``, so the caller decides where it goes.
    Parameters the loss does not reach get zeros.
    """
    if losses.dim() != 1 or weights.shape != losses.shape:
        raise ValueError(
            f"losses and weights must both have shape (B,); got {tuple(losses.shape)} and {tuple(weights.shape)}"
        )
    params = list(params)
    grads = torch.autograd.grad((losses * weights.detach()).sum(), params, retain_graph=retain_graph, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params, strict=True))
