"""Mimic scores: task vectors, closed forms for linear heads, Stage-1 weights. Torch only."""

from mimic_explorer.scoring.linear_head import (
    cross_entropy_output_grad,
    linear_grad_dot,
    linear_grad_sqnorm,
    linear_weighted_grad,
)
from mimic_explorer.scoring.stage1 import METHODS, score_basis, stage1_weights

__all__ = [
    "METHODS",
    "cross_entropy_output_grad",
    "linear_grad_dot",
    "linear_grad_sqnorm",
    "linear_weighted_grad",
    "score_basis",
    "stage1_weights",
]
