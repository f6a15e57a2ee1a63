"""Closed-form per-sample gradient geometry for a linear layer ``z = W h + b``.

Why: for a linear layer the per-sample gradient is an outer product, ``g_i = (δ_i h_iᵀ, δ_i)``,
so its inner product with a task vector and its norm need only the layer's input ``h`` and the
gradient at its output ``δ``. Last-layer mimic scores therefore cost one forward pass and no
backward pass, and never materialise a B×P gradient matrix.

Arrays in, arrays out: nothing here knows about models, runs or files.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mimic_explorer.scoring.outer import bias_sqnorm, weight_sqnorm


def cross_entropy_output_grad(logits: Tensor, targets: Tensor) -> Tensor:
    """δ_i = ∂ℓ_i/∂z_i for unreduced cross-entropy: softmax(z_i) − onehot(y_i)."""
    grad = torch.softmax(logits, dim=-1)
    return grad.scatter_add(-1, targets.unsqueeze(-1), torch.full_like(targets, -1, dtype=grad.dtype).unsqueeze(-1))


def cross_entropy_with_output_grad(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(ℓ_i, δ_i) for unreduced cross-entropy from one log-softmax: callers that need the losses
    and the output gradient of the same logits (a probe step, end-of-run signals) skip a softmax."""
    log_p = torch.log_softmax(logits, dim=-1)
    losses = -log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    minus_one = torch.full_like(targets, -1, dtype=log_p.dtype).unsqueeze(-1)
    return losses, log_p.exp_().scatter_add_(-1, targets.unsqueeze(-1), minus_one)


def linear_grad_dot(features: Tensor, output_grad: Tensor, v_weight: Tensor | None, v_bias: Tensor | None) -> Tensor:
    """⟨g_i, V⟩ for every sample: δ_iᵀ V_W h_i + δ_iᵀ V_b, summed over positions if any.

    features: (B, D) or (B, ..., D); output_grad: (B, C) or (B, ..., C); v_weight: (C, D); v_bias: (C,).
    A ``None`` part is left out (the weight or the bias is not among the mimic layers).
    """
    terms = []
    if v_weight is not None:
        terms.append(((output_grad @ v_weight) * features).sum(-1))
    if v_bias is not None:
        terms.append(output_grad @ v_bias)
    dot = (
        terms[0] + terms[1] if len(terms) == 2 else terms[0] if terms else output_grad.new_zeros(output_grad.shape[:-1])
    )
    # (B,) already without positions: no reshape and sum (a training step calls this once per batch)
    return dot if dot.dim() == 1 else dot.reshape(dot.shape[0], -1).sum(-1)


def linear_grad_sqnorm(features: Tensor, output_grad: Tensor, has_bias: bool, has_weight: bool = True) -> Tensor:
    """‖g_i‖² for every sample.

    Without positions: ‖δ_i‖² (‖h_i‖² + 1). With positions the weight gradient is Σ_t δ_t h_tᵀ, whose
    squared Frobenius norm is the Gram form Σ_{t,t'} (h_t·h_t')(δ_t·δ_t') (or the direct form when
    that is cheaper, see ``scoring.outer``); the bias gradient is Σ_t δ_t.
    """
    if features.dim() == 2:
        d_sq = (output_grad * output_grad).sum(-1)
        sq = d_sq * (features * features).sum(-1) if has_weight else torch.zeros_like(d_sq)
        if has_bias:
            sq = sq + d_sq
        return sq
    features = features.reshape(features.shape[0], 1, -1, features.shape[-1])
    output_grad = output_grad.reshape(output_grad.shape[0], 1, -1, output_grad.shape[-1])
    sq = output_grad.new_zeros(output_grad.shape[0])
    if has_weight:
        sq = sq + weight_sqnorm(features, output_grad)
    if has_bias:
        sq = sq + bias_sqnorm(output_grad)
    return sq


def linear_grad_geometry(
    features: Tensor, output_grad: Tensor, v_weight: Tensor | None, v_bias: Tensor | None, need_norm: bool
) -> tuple[Tensor, Tensor | None]:
    """(⟨g_i, V⟩, ‖g_i‖² when ``need_norm``) over the parts of the layer ``v_weight``/``v_bias`` name
    (a ``None`` part is not among the mimic layers): what the head path and a training step both need."""
    dot = linear_grad_dot(features, output_grad, v_weight, v_bias)
    if not need_norm:
        return dot, None
    return dot, linear_grad_sqnorm(features, output_grad, has_bias=v_bias is not None, has_weight=v_weight is not None)


def linear_weighted_grad(
    features: Tensor, output_grad: Tensor, sample_weights: Tensor, has_bias: bool
) -> tuple[Tensor, Tensor | None]:
    """Σ_i w_i g_i for a linear layer in one matmul: (Σ_i w_i δ_i h_iᵀ, Σ_i w_i δ_i)."""
    weighted = output_grad * sample_weights.reshape(-1, *([1] * (output_grad.dim() - 1)))
    flat_d = weighted.reshape(-1, weighted.shape[-1])
    flat_h = features.reshape(-1, features.shape[-1])
    grad_w = flat_d.transpose(0, 1) @ flat_h
    grad_b = flat_d.sum(0) if has_bias else None
    return grad_w, grad_b
