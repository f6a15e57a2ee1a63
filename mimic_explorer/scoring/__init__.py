"""Mimic scores: task vectors, closed forms for linear heads, forward-mode, ghost-norm and Jacobian
paths, pluggable per-sample losses, Stage-1 weights. Torch only (never imports pandas or panel); the
one package module it imports is the leaf ``models.heads`` (what the head is).

``mimic_scores`` scores one batch; ``PreparedScorer`` scores many against one reference; the other
names are the building blocks the training loop uses. See docs/ARCHITECTURE.md.
"""

from mimic_explorer.scoring.api import mimic_scores
from mimic_explorer.scoring.linear_head import (
    cross_entropy_output_grad,
    linear_grad_dot,
    linear_grad_sqnorm,
    linear_weighted_grad,
)
from mimic_explorer.scoring.losses import CallableLoss, CrossEntropyLoss, PerSampleLoss
from mimic_explorer.scoring.prepared import PATHS, SCORE_METHODS, BatchScores, PreparedScorer
from mimic_explorer.scoring.projection import Projection, mimic_projection
from mimic_explorer.scoring.stage1 import METHODS, reweighted_grads, score_basis, stage1_weights

__all__ = [
    "METHODS",
    "PATHS",
    "SCORE_METHODS",
    "BatchScores",
    "CallableLoss",
    "CrossEntropyLoss",
    "PerSampleLoss",
    "PreparedScorer",
    "Projection",
    "cross_entropy_output_grad",
    "linear_grad_dot",
    "linear_grad_sqnorm",
    "linear_weighted_grad",
    "mimic_projection",
    "mimic_scores",
    "reweighted_grads",
    "score_basis",
    "stage1_weights",
]
