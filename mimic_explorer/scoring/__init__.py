"""Mimic scores: task vectors, closed forms for linear heads, forward-mode and ghost-norm paths,
Stage-1 weights. Torch only (never imports pandas or panel); the one package module it imports is the
leaf ``models.heads`` (what the head is: a model concern).

``mimic_scores`` is the entry point; the other names are the building blocks the training loop uses.
"""

from mimic_explorer.scoring.api import PATHS, SCORE_METHODS, mimic_scores
from mimic_explorer.scoring.linear_head import (
    cross_entropy_output_grad,
    linear_grad_dot,
    linear_grad_sqnorm,
    linear_weighted_grad,
)
from mimic_explorer.scoring.stage1 import METHODS, reweighted_grads, score_basis, stage1_weights

__all__ = [
    "METHODS",
    "PATHS",
    "SCORE_METHODS",
    "cross_entropy_output_grad",
    "linear_grad_dot",
    "linear_grad_sqnorm",
    "linear_weighted_grad",
    "mimic_scores",
    "reweighted_grads",
    "score_basis",
    "stage1_weights",
]
